"""``Response``: Sanic's HTTPResponse with a cheaper way of holding and encoding its headers.

Counted with valgrind (bench/README.md, "Keys: instructions per request"), Sanic's way
costs ~7,700 instructions for each header: they go into a case-insensitive multidict, then
every name and value is checked and encoded on its own and formatted into the head one by
one. A keyed answer carries six ``x-ratelimit-*`` headers on top of the usual seven:
~46,000 instructions, two thirds of what its admission by the limiter costs.

The proxy writes its own headers with lowercase names, so a plain dict holds them (Sanic
itself only tests and sets lowercase names on a response). The head is encoded in one piece:
every ``name: value`` line joined, checked once to be ASCII without the characters Sanic
strips (CR, LF, NUL), encoded once, and handed to Sanic's formatter as a single (name, rest)
pair whose rest runs on over the following lines, so the bytes on the wire are exactly
Sanic's. Anything else (an upper-case name, a value that is not ASCII or holds CR, LF or
NUL) takes Sanic's own path, which sanitises it.

The checks are the cheap ones in C: ``str.islower`` walks a string through the Unicode
tables (~45 instructions a character) and ``bytes.translate`` or ``count`` take 5-10 a byte
(~17,000 instructions for a keyed answer's head, counted); ``lower`` takes a few and
``in`` for one character is a ``memchr``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, cast

from sanic import HTTPResponse
from sanic.compat import Header


class Response(HTTPResponse):
    def __init__(
        self,
        body: Any = None,
        status: int = 200,
        headers: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(body, status=status, content_type=content_type)
        if headers:
            own = dict(headers)
            names = "".join(own)
            # Unchanged by lower(): no upper-case (or title-case) letter in any name.
            self.headers = cast(Header, own) if names == names.lower() else Header(own)
        else:
            self.headers = cast(Header, {})

    @property
    def processed_headers(self) -> Iterator[tuple[bytes, bytes]]:
        headers = cast(dict[str, Any], self.headers)  # or a Header, see __init__
        if self.status >= 200 and self.status not in (204, 304):  # answers with a body
            headers.setdefault("content-type", self.content_type)
        if type(headers) is dict:
            lines = [f"{name}: {value}" for name, value in headers.items()]
            head = "\r\n".join(lines)
            if lines and head.isascii():
                # Sanic strips CR, LF and NUL from names and values; the lines have none.
                text = "".join(lines)
                if "\r" not in text and "\n" not in text and "\x00" not in text:
                    name, _, rest = head.encode("ascii").partition(b": ")
                    return iter(((name, rest),))
        return iter([_encoded(name, value) for name, value in headers.items()])


def _encoded(name: str, value: Any) -> tuple[bytes, bytes]:
    text = value if isinstance(value, str) else f"{value}"
    if name.isprintable() and text.isprintable():
        return name.encode("ascii"), text.encode(errors="surrogateescape")
    sanitize = HTTPResponse._sanitize_header_value
    return sanitize(name).encode("ascii"), sanitize(text).encode(errors="surrogateescape")
