"""``Response``: Sanic's HTTPResponse with a cheaper way of holding and encoding its headers.

Counted with valgrind (bench/README.md, "Keys: instructions per request"), Sanic's way
costs ~7,700 instructions for each header: they go into a case-insensitive multidict, then
every name and value is checked and encoded on its own and formatted into the head one by
one. A keyed answer carries six ``x-ratelimit-*`` headers on top of the usual seven:
~46,000 instructions, two thirds of what its admission by the limiter costs.

The proxy writes its own headers with lowercase names, so a plain dict holds them (Sanic
itself only tests and sets lowercase names on a response). The head is encoded in one piece:
every ``name: value`` line joined, checked once to be ASCII without control characters,
encoded once, and handed to Sanic's formatter as a single (name, rest) pair whose rest runs
on over the following lines, so the bytes on the wire are exactly Sanic's. Anything else
(an upper-case name, a value that is not ASCII or holds control characters) takes Sanic's
own path, which sanitises it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, cast

from sanic import HTTPResponse
from sanic.compat import Header

# Bytes that must not appear inside a header line (Sanic's own table drops NUL, CR and LF;
# the rest go to its path too, which keeps them exactly as it always did).
_CONTROL: Final = bytes(range(32)) + b"\x7f"


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
            # "".join(names).islower(): one pass in C; False for any upper-case letter
            self.headers = cast(Header, own) if "".join(own).islower() else Header(own)
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
                data = head.encode("ascii")
                # Only the CR LF between the lines may be control characters.
                if len(data.translate(None, _CONTROL)) == len(data) - 2 * (len(lines) - 1):
                    name, _, rest = data.partition(b": ")
                    return iter(((name, rest),))
        return iter([_encoded(name, value) for name, value in headers.items()])


def _encoded(name: str, value: Any) -> tuple[bytes, bytes]:
    text = value if isinstance(value, str) else f"{value}"
    if name.isprintable() and text.isprintable():
        return name.encode("ascii"), text.encode(errors="surrogateescape")
    sanitize = HTTPResponse._sanitize_header_value
    return sanitize(name).encode("ascii"), sanitize(text).encode(errors="surrogateescape")
