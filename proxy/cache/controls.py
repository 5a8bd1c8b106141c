"""Per-request cache controls: the body's ``cache`` object and the ``Cache-Control`` header.

The body spelling is LiteLLM's (``extra_body={"cache": {"no-cache": True}}`` in the OpenAI
SDK)::

    no-cache: true      skip the read; the fresh answer is still stored
    no-store: true      do not store this answer
    ttl: 600            store this answer for 600 s instead of the configured TTL
    s-maxage: 60        accept only an entry at most 60 s old (also spelled s-max-age)
    namespace: "team-a" partition the cache (replaces the configured namespace)
    use-cache: true     opt in (or out) when the cache is configured default_off

The request header ``Cache-Control`` may say ``no-cache``, ``no-store`` and ``max-age=N``
(read as s-maxage when the body does not set one); unknown header directives are ignored, as
HTTP asks. A bad value in the body is a 400 naming it (``cache.ttl``); so is an unknown
control, because a misspelt ``no_store`` that silently stores is worse than an error.

The ``cache`` field must not reach the upstream (OpenAI rejects unknown parameters), so
``strip_cache_field`` removes it from the forwarded bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import msgspec
import orjson

from proxy.errors import InvalidRequestError

MAX_NAMESPACE_LENGTH: Final = 128


class CacheControls(msgspec.Struct, frozen=True):
    no_cache: bool = False
    no_store: bool = False
    ttl: float | None = None  # seconds; None: the configured TTL
    s_maxage: float | None = None  # seconds; None: any unexpired entry
    namespace: str | None = None  # None: the configured namespace
    use_cache: bool | None = None  # None: the configured mode decides


NO_CONTROLS: Final = CacheControls()
_BOOLEANS: Final = {"no-cache": "no_cache", "no-store": "no_store", "use-cache": "use_cache"}
_KNOWN: Final = (*_BOOLEANS, "ttl", "s-maxage", "s-max-age", "namespace")


def parse_controls(
    body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> CacheControls:
    """The controls of one request; ``NO_CONTROLS`` (shared) when it sets none."""
    raw = body.get("cache")
    header = headers.get("cache-control") if headers is not None else None
    if raw is None and not header:
        return NO_CONTROLS
    fields = _from_body(raw) if raw is not None else {}
    if header:
        _merge_header(fields, header)
    return CacheControls(**fields)


def strip_cache_field(body: bytes, parsed: Mapping[str, Any] | None = None) -> bytes:
    """``body`` without its top-level ``cache`` field; the same object when there is none.

    ``parsed`` is the already decoded body, if the caller has it (saves a decode).
    """
    if parsed is None:
        if b'"cache"' not in body:
            return body
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            return body
    if "cache" not in parsed:
        return body
    return orjson.dumps({k: v for k, v in parsed.items() if k != "cache"})


def _from_body(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequestError(
            "Invalid value for 'cache': expected an object such as {\"no-cache\": true}.",
            param="cache",
        )
    fields: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _BOOLEANS:
            if not isinstance(value, bool):
                raise _invalid(name, "expected true or false")
            fields[_BOOLEANS[name]] = value
        elif name == "ttl":
            fields["ttl"] = _seconds(name, value, allow_zero=False)
        elif name in ("s-maxage", "s-max-age"):
            fields["s_maxage"] = _seconds(name, value, allow_zero=True)
        elif name == "namespace":
            fields["namespace"] = _namespace(value)
        else:
            known = ", ".join(_KNOWN)
            raise _invalid(name, f"unknown cache control; expected one of {known}")
    return fields


def _merge_header(fields: dict[str, Any], header: str) -> None:
    for directive in header.lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name == "no-cache":
            fields.setdefault("no_cache", True)
        elif name == "no-store":
            fields.setdefault("no_store", True)
        elif name == "max-age" and "s_maxage" not in fields:
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                continue
            if math.isfinite(seconds) and seconds >= 0:
                fields["s_maxage"] = seconds


def _seconds(name: str, value: Any, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(name, "expected a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise _invalid(name, f"expected {bound} seconds")
    return seconds


def _namespace(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NAMESPACE_LENGTH
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        raise _invalid(
            "namespace", f"expected 1 to {MAX_NAMESPACE_LENGTH} printable characters, no spaces"
        )
    return value


def _invalid(name: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid value for 'cache.{name}': {why}.", param=f"cache.{name}")
