"""Both backends behind CacheBackend: round trips, TTLs, batches, namespaces."""

from __future__ import annotations

import asyncio

import orjson

from proxy.cache import NO_CONTROLS, CacheBackend, CacheControls, CachedEntry, ResponseCache

ANSWER = orjson.dumps({"object": "chat.completion", "choices": [], "note": "é ✓"})


def entry(body: bytes = ANSWER) -> CachedEntry:
    return CachedEntry(1_700_000_000.25, body, 12, 34)


async def test_round_trip(backend: CacheBackend) -> None:
    """An entry comes back exactly as stored: time, body bytes and token counts."""
    await backend.set("k", entry(), ttl=60)
    assert await backend.get("k") == entry()
    assert await backend.get("absent") is None


async def test_large_entry_round_trip(backend: CacheBackend) -> None:
    """A large (compressed in Redis) answer comes back byte for byte."""
    big = entry(orjson.dumps({"content": "lorem ipsum dolor " * 20_000}))
    await backend.set("big", big, ttl=60)
    assert await backend.get("big") == big


async def test_overwrite_replaces(backend: CacheBackend) -> None:
    """Storing a key again replaces the entry."""
    await backend.set("k", entry(b"old"), ttl=60)
    await backend.set("k", entry(b"new"), ttl=60)
    found = await backend.get("k")
    assert found is not None and found.body == b"new"


async def test_ttl_expires(backend: CacheBackend) -> None:
    """An entry is gone once its TTL has passed."""
    await backend.set("short", entry(), ttl=0.2)
    await backend.set("long", entry(), ttl=60)
    assert await backend.get("short") is not None
    await asyncio.sleep(0.4)
    assert await backend.get("short") is None
    assert await backend.get("long") is not None


async def test_batches_keep_order(backend: CacheBackend) -> None:
    """set_many stores every pair; get_many answers in key order with None for misses."""
    await backend.set_many([(f"k{i}", entry(str(i).encode())) for i in range(5)], ttl=60)
    found = await backend.get_many(["k4", "nope", "k0"])
    assert [e.body if e else None for e in found] == [b"4", None, b"0"]
    assert await backend.get_many([]) == []
    await backend.set_many([], ttl=60)


async def test_namespaces_isolate(backend: CacheBackend) -> None:
    """The same request under two namespaces reads and writes two separate entries."""
    cache = ResponseCache(backend)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    team_a, team_b = CacheControls(namespace="a"), CacheControls(namespace="b")
    await cache.store("m", body, team_a, entry(b"for a"))
    assert await cache.lookup("m", body, team_b) is None
    assert await cache.lookup("m", body, NO_CONTROLS) is None
    found = await cache.lookup("m", body, team_a)
    assert found is not None and found.body == b"for a"


async def test_no_bypasses_while_healthy(backend: CacheBackend) -> None:
    """A reachable store never counts a bypass."""
    await backend.set("k", entry(), ttl=60)
    await backend.get("k")
    assert backend.bypasses == 0
