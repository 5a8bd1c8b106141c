"""Per-request cache controls: the body's cache object, the Cache-Control header, stripping."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.cache.controls import NO_CONTROLS, CacheControls, parse_controls, strip_cache_field
from proxy.errors import InvalidRequestError


def test_no_controls_is_the_shared_default() -> None:
    """A request without cache object or header gets the shared default controls."""
    assert parse_controls({"model": "m"}, {"authorization": "Bearer k"}) is NO_CONTROLS
    assert parse_controls({"model": "m"}) is NO_CONTROLS


@pytest.mark.parametrize("spelling", ["s-maxage", "s-max-age"])
def test_every_body_control_is_parsed(spelling: str) -> None:
    """no-cache, no-store, ttl, s-maxage (both spellings), namespace and use-cache are read."""
    body = {
        "cache": {
            "no-cache": True,
            "no-store": False,
            "ttl": 600,
            spelling: 30,
            "namespace": "team-a",
            "use-cache": True,
        }
    }
    assert parse_controls(body) == CacheControls(
        no_cache=True, no_store=False, ttl=600.0, s_maxage=30.0, namespace="team-a", use_cache=True
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("no-cache", CacheControls(no_cache=True)),
        ("No-Store", CacheControls(no_store=True)),
        ("no-cache, no-store", CacheControls(no_cache=True, no_store=True)),
        ("max-age=5", CacheControls(s_maxage=5.0)),
        ("max-age=bogus, private", CacheControls()),
    ],
)
def test_cache_control_header_is_read(header: str, expected: CacheControls) -> None:
    """The request header's no-cache, no-store and max-age apply; other directives do not."""
    assert parse_controls({}, {"cache-control": header}) == expected


def test_body_wins_over_header() -> None:
    """An explicit body control is not overridden by the header."""
    body = {"cache": {"no-cache": False, "s-maxage": 60}}
    controls = parse_controls(body, {"cache-control": "no-cache, max-age=0"})
    assert controls.no_cache is False and controls.s_maxage == 60.0


@pytest.mark.parametrize(
    ("cache", "param"),
    [
        ({"ttl": "600"}, "cache.ttl"),
        ({"ttl": 0}, "cache.ttl"),
        ({"ttl": -1}, "cache.ttl"),
        ({"ttl": True}, "cache.ttl"),
        ({"s-maxage": -1}, "cache.s-maxage"),
        ({"s-max-age": "1"}, "cache.s-max-age"),
        ({"no-cache": "yes"}, "cache.no-cache"),
        ({"no-store": 1}, "cache.no-store"),
        ({"use-cache": None}, "cache.use-cache"),
        ({"namespace": ""}, "cache.namespace"),
        ({"namespace": "a b"}, "cache.namespace"),
        ({"namespace": 7}, "cache.namespace"),
        ({"namespace": "x" * 129}, "cache.namespace"),
        ({"no_cache": True}, "cache.no_cache"),
        ("no-cache", "cache"),
        ([], "cache"),
    ],
)
def test_invalid_controls_are_a_400_naming_the_param(cache: Any, param: str) -> None:
    """A bad value or an unknown control is an InvalidRequestError naming it."""
    with pytest.raises(InvalidRequestError) as caught:
        parse_controls({"cache": cache})
    assert caught.value.param == param
    assert caught.value.status == 400
    assert param in caught.value.message


def test_zero_s_maxage_is_allowed() -> None:
    """s-maxage 0 means only an entry stored this very instant, which is valid."""
    assert parse_controls({"cache": {"s-maxage": 0}}).s_maxage == 0.0


def test_strip_returns_the_same_bytes_without_cache_field() -> None:
    """A body without a top-level cache field is forwarded untouched, not re-encoded."""
    body = b'{"model": "m", "messages": [{"role": "user", "content": "a \\"cache\\" word"}]}'
    assert strip_cache_field(body) is body
    assert strip_cache_field(body, orjson.loads(body)) is body


def test_strip_removes_only_the_cache_field() -> None:
    """With a cache field, new bytes carry every other field unchanged."""
    fields = {"model": "m", "cache": {"no-cache": True}, "temperature": 0.5, "stream": True}
    body = orjson.dumps(fields)
    for stripped in (strip_cache_field(body), strip_cache_field(body, fields)):
        assert orjson.loads(stripped) == {"model": "m", "temperature": 0.5, "stream": True}


def test_strip_leaves_non_objects_alone() -> None:
    """A body that is not a JSON object is left for validation to reject."""
    body = b'["cache"]'
    assert strip_cache_field(body) is body
