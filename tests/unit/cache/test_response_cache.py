"""ResponseCache over a MemoryCache: per-request controls, namespaces, modes, embeddings."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.cache import (
    NO_CONTROLS,
    CacheControls,
    CachedEntry,
    CacheSettings,
    MemoryCache,
    RedisCache,
    ResponseCache,
    missing_input_body,
)
from proxy.providers import mock
from proxy.providers.base import Operation
from tests.unit.cache.clock import Clock

BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def cache(clock: Clock) -> ResponseCache:
    """A ResponseCache whose memory backend and s-maxage checks share the test clock."""
    return ResponseCache(MemoryCache(clock=clock), ttl=100, clock=clock)


def entry_at(now: float, text: bytes = b'{"answer":1}') -> CachedEntry:
    return CachedEntry(now, text, 1, 2)


async def test_store_then_lookup_hits(cache: ResponseCache, clock: Clock) -> None:
    """A stored answer is found for the same request, whatever its stream flag."""
    await cache.store("gpt", BODY, NO_CONTROLS, entry_at(clock.now))
    found = await cache.lookup("gpt", {**BODY, "stream": True}, NO_CONTROLS)
    assert found == entry_at(clock.now)
    assert await cache.lookup("other-alias", BODY, NO_CONTROLS) is None


async def test_no_cache_skips_the_read_but_stores(cache: ResponseCache, clock: Clock) -> None:
    """no-cache forces a fresh answer, which is still stored for later requests."""
    await cache.store("gpt", BODY, NO_CONTROLS, entry_at(clock.now))
    no_cache = CacheControls(no_cache=True)
    assert await cache.lookup("gpt", BODY, no_cache) is None
    await cache.store("gpt", BODY, no_cache, entry_at(clock.now, b"fresh"))
    found = await cache.lookup("gpt", BODY, NO_CONTROLS)
    assert found is not None and found.body == b"fresh"


async def test_no_store_skips_the_write(cache: ResponseCache, clock: Clock) -> None:
    """no-store answers are never written."""
    await cache.store("gpt", BODY, CacheControls(no_store=True), entry_at(clock.now))
    assert await cache.lookup("gpt", BODY, NO_CONTROLS) is None


async def test_ttl_control_overrides_the_default(cache: ResponseCache, clock: Clock) -> None:
    """A request's ttl replaces the configured one for its entry."""
    await cache.store("gpt", BODY, CacheControls(ttl=10), entry_at(clock.now))
    clock.now += 11
    assert await cache.lookup("gpt", BODY, NO_CONTROLS) is None
    await cache.store("gpt", BODY, NO_CONTROLS, entry_at(clock.now))
    clock.now += 99
    assert await cache.lookup("gpt", BODY, NO_CONTROLS) is not None


async def test_s_maxage_rejects_older_entries(cache: ResponseCache, clock: Clock) -> None:
    """An entry older than s-maxage is not served; a younger one is."""
    await cache.store("gpt", BODY, NO_CONTROLS, entry_at(clock.now))
    clock.now += 30
    assert await cache.lookup("gpt", BODY, CacheControls(s_maxage=29)) is None
    assert await cache.lookup("gpt", BODY, CacheControls(s_maxage=30)) is not None


async def test_namespaces_are_isolated(clock: Clock) -> None:
    """A per-request namespace replaces the configured one; the two never share entries."""
    cache = ResponseCache(MemoryCache(clock=clock), namespace="prod", clock=clock)
    team = CacheControls(namespace="team-a")
    await cache.store("gpt", BODY, team, entry_at(clock.now))
    assert await cache.lookup("gpt", BODY, NO_CONTROLS) is None
    assert await cache.lookup("gpt", BODY, team) is not None
    assert cache.key("gpt", BODY, team).startswith("team-a:")
    assert cache.key("gpt", BODY, NO_CONTROLS).startswith("prod:")


async def test_default_off_needs_use_cache(clock: Clock) -> None:
    """In default_off mode only requests with use-cache: true read and write."""
    cache = ResponseCache(MemoryCache(clock=clock), default_on=False, clock=clock)
    await cache.store("gpt", BODY, NO_CONTROLS, entry_at(clock.now))
    opted_in = CacheControls(use_cache=True)
    assert await cache.lookup("gpt", BODY, opted_in) is None
    await cache.store("gpt", BODY, opted_in, entry_at(clock.now))
    assert await cache.lookup("gpt", BODY, opted_in) is not None
    assert await cache.lookup("gpt", BODY, NO_CONTROLS) is None


async def test_precomputed_key_is_used(cache: ResponseCache, clock: Clock) -> None:
    """A key derived once can be passed to lookup and store."""
    key = cache.key("gpt", BODY, NO_CONTROLS)
    await cache.store("gpt", BODY, NO_CONTROLS, entry_at(clock.now), key=key)
    assert await cache.lookup("gpt", BODY, NO_CONTROLS, key=key) is not None
    assert await cache.backend.get(key) is not None


async def test_embeddings_partial_hit_flow(cache: ResponseCache) -> None:
    """Cached items are reused, only the rest go upstream, the answer is in input order."""
    first = {"model": "e", "input": ["a", "b"]}
    answer = mock.build_response(Operation.EMBEDDING, "e", first, "")
    found = await cache.lookup_embeddings("e", first, NO_CONTROLS)
    assert found.missing == [0, 1]
    await cache.store_embeddings("e", first, NO_CONTROLS, answer, found.missing, keys=found.keys)

    second: dict[str, Any] = {"model": "e", "input": ["b", "c", "a"]}
    found = await cache.lookup_embeddings("e", second, NO_CONTROLS)
    assert found.missing == [1]
    upstream = orjson.loads(missing_input_body(second, found.missing))
    fresh = mock.build_response(Operation.EMBEDDING, "e", upstream, "")
    await cache.store_embeddings("e", second, NO_CONTROLS, fresh, found.missing)
    merged = orjson.loads(cache.merge_embeddings(found.hits, fresh, found.missing))
    whole = orjson.loads(mock.build_response(Operation.EMBEDDING, "e", second, ""))
    assert [d["embedding"] for d in merged["data"]] == [d["embedding"] for d in whole["data"]]
    assert merged["usage"] == orjson.loads(fresh)["usage"]
    assert (await cache.lookup_embeddings("e", second, NO_CONTROLS)).missing == []


async def test_embeddings_honour_no_cache_and_no_store(cache: ResponseCache) -> None:
    """no-store writes no vectors; no-cache reads none."""
    body = {"model": "e", "input": ["a"]}
    answer = mock.build_response(Operation.EMBEDDING, "e", body, "")
    await cache.store_embeddings("e", body, CacheControls(no_store=True), answer)
    assert (await cache.lookup_embeddings("e", body, NO_CONTROLS)).missing == [0]
    await cache.store_embeddings("e", body, NO_CONTROLS, answer)
    assert (await cache.lookup_embeddings("e", body, CacheControls(no_cache=True))).missing == [0]
    assert (await cache.lookup_embeddings("e", body, NO_CONTROLS)).missing == []


async def test_mismatched_embedding_answer_is_not_stored(cache: ResponseCache) -> None:
    """An answer with a different number of vectors than asked for is dropped, not misfiled."""
    body = {"model": "e", "input": ["a", "b", "c"]}
    answer = mock.build_response(Operation.EMBEDDING, "e", {"input": ["a"]}, "")
    await cache.store_embeddings("e", body, NO_CONTROLS, answer, [0, 1])
    assert (await cache.lookup_embeddings("e", body, NO_CONTROLS)).missing == [0, 1, 2]


async def test_from_settings_builds_the_configured_backend() -> None:
    """type memory builds a MemoryCache, type redis a RedisCache, with the settings applied."""
    memory = ResponseCache.from_settings(CacheSettings(max_bytes=1000, ttl=5, routes=("chat",)))
    assert isinstance(memory.backend, MemoryCache) and memory.backend.max_bytes == 1000
    assert memory.ttl == 5 and memory.caches("chat") and not memory.caches("embeddings")
    redis = ResponseCache.from_settings(
        CacheSettings(type="redis", redis_url="redis://127.0.0.1:1/0", key_prefix="p:")
    )
    assert isinstance(redis.backend, RedisCache) and redis.backend.key_prefix == "p:"
    assert redis.bypasses == 0
    await redis.aclose()
    await memory.aclose()
