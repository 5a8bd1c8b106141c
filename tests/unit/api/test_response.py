"""``Response`` writes the same header bytes as Sanic's HTTPResponse, just cheaper."""

from __future__ import annotations

import pytest
from sanic import HTTPResponse
from sanic.headers import format_http1_response

from proxy.api.response import Response


def _head(cls: type[HTTPResponse], status: int, headers: dict[str, object]) -> bytes:
    # Callers pass numbers too (retry-after): Sanic formats them; the typing says str only.
    resp = cls(b"{}", status=status, headers=headers, content_type="application/json")  # type: ignore[arg-type]
    return format_http1_response(status, resp.processed_headers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-request-id": "abc", "x-ratelimit-remaining-requests": "49"},
        {"retry-after": 3, "x-llm-proxy-attempts": 2},  # non-str values
        {"x-note": "caf\u00e9 \u2013 ok"},  # printable, not ASCII
        {"x-evil": "a\r\nset-cookie: x=1"},  # a header injection attempt
        {"x-tab": "a\tb", "x-nul": "a\x00b"},
    ],
)
@pytest.mark.parametrize("status", [200, 204, 429])
def test_same_bytes_as_sanic(headers: dict[str, object], status: int) -> None:
    assert _head(Response, status, headers) == _head(HTTPResponse, status, headers)


def test_control_characters_never_reach_the_wire() -> None:
    head = _head(Response, 200, {"x-evil": "a\r\nset-cookie: x=1"})
    assert b"\r\nset-cookie" not in head
