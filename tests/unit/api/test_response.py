"""``Response`` writes the same header bytes as Sanic's HTTPResponse, just cheaper."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sanic import HTTPResponse
from sanic.compat import Header
from sanic.headers import format_http1_response

from proxy.api.response import Response


def _head(cls: type[HTTPResponse], status: int, headers: dict[str, object]) -> bytes:
    # Callers pass numbers too (retry-after): Sanic formats them; the typing says str only.
    resp = cls(b"{}", status=status, headers=headers, content_type="application/json")  # type: ignore[arg-type]
    # What Sanic's http1_response_header sets before it formats the head.
    resp.headers["content-length"] = 2
    resp.headers["connection"] = "keep-alive"
    resp.headers["alt-svc"] = ""
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


_NAMES = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1)
_VALUES = st.one_of(st.text(), st.integers(), st.text(alphabet=st.characters(max_codepoint=127)))


@given(headers=st.dictionaries(_NAMES.map(str.lower) | _NAMES, _VALUES, max_size=12))
def test_any_headers_same_bytes_as_sanic(headers: dict[str, object]) -> None:
    try:
        expected = _head(HTTPResponse, 200, headers)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            _head(Response, 200, headers)
        return
    assert _head(Response, 200, headers) == expected


def test_lowercase_names_are_held_in_a_plain_dict_and_encoded_as_one_block() -> None:
    resp = Response(b"{}", headers={"x-request-id": "abc", "retry-after": 3})
    assert not isinstance(resp.headers, Header)
    assert len(list(resp.processed_headers)) == 1


def test_an_upper_case_name_keeps_sanics_case_insensitive_headers() -> None:
    resp = Response(b"{}", headers={"X-Request-Id": "abc"})
    assert resp.headers["x-request-id"] == "abc"
    assert _head(Response, 200, {"Content-Length": "2"}).lower().count(b"content-length") == 1
