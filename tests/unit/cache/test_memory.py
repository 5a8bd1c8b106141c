"""MemoryCache: LRU bounded in bytes, TTL per entry, on an injected clock."""

from __future__ import annotations

import pytest

from proxy.cache.entry import CachedEntry
from proxy.cache.memory import MemoryCache
from tests.unit.cache.clock import Clock


def entry(size: int, tag: bytes = b"x") -> CachedEntry:
    """An entry whose byte cost is ``size`` plus the fixed overhead."""
    return CachedEntry(0.0, tag * size)


def cost(key: str, size: int) -> int:
    return entry(size).size + len(key)


async def test_byte_bound_evicts_the_least_recently_used(clock: Clock) -> None:
    """Storing past the byte bound evicts the oldest untouched entries first."""
    cache = MemoryCache(max_bytes=3 * cost("k0", 1000), clock=clock)
    for i in range(3):
        await cache.set(f"k{i}", entry(1000), ttl=60)
    assert await cache.get("k0") is not None  # k0 is now the most recently used
    await cache.set("k3", entry(1000), ttl=60)
    assert await cache.get("k1") is None
    assert [await cache.get(k) is not None for k in ("k0", "k2", "k3")] == [True, True, True]
    assert cache.bytes_used <= cache.max_bytes
    assert cache.evictions == 1


async def test_one_large_entry_evicts_several_small(clock: Clock) -> None:
    """The bound is in bytes, not entries: a big entry pushes out as many as it needs."""
    cache = MemoryCache(max_bytes=10_000, clock=clock)
    for i in range(8):
        await cache.set(f"small{i}", entry(1000), ttl=60)
    await cache.set("big", entry(6000), ttl=60)
    assert await cache.get("big") is not None
    assert len(cache) < 5
    assert cache.bytes_used <= 10_000


async def test_entry_larger_than_the_bound_is_not_stored(clock: Clock) -> None:
    """An entry that cannot fit is dropped without evicting anything."""
    cache = MemoryCache(max_bytes=5000, clock=clock)
    await cache.set("a", entry(100), ttl=60)
    await cache.set("huge", entry(10_000), ttl=60)
    assert await cache.get("huge") is None
    assert await cache.get("a") is not None


async def test_ttl_expires_entries(clock: Clock) -> None:
    """An entry is served until its TTL is over, then gone and its bytes released."""
    cache = MemoryCache(clock=clock)
    await cache.set("a", entry(10), ttl=30)
    clock.now += 29.9
    assert await cache.get("a") is not None
    clock.now += 0.2
    assert await cache.get("a") is None
    assert cache.bytes_used == 0 and len(cache) == 0


async def test_ttl_is_per_entry(clock: Clock) -> None:
    """Each entry keeps the TTL it was stored with."""
    cache = MemoryCache(clock=clock)
    await cache.set("short", entry(10), ttl=5)
    await cache.set("long", entry(10), ttl=500)
    clock.now += 10
    assert await cache.get("short") is None
    assert await cache.get("long") is not None


async def test_overwrite_replaces_bytes_and_ttl(clock: Clock) -> None:
    """Storing a key again replaces its value, size accounting and expiry."""
    cache = MemoryCache(clock=clock)
    await cache.set("a", entry(5000), ttl=5)
    await cache.set("a", entry(10, b"y"), ttl=100)
    assert cache.bytes_used == cost("a", 10)
    clock.now += 50
    found = await cache.get("a")
    assert found is not None and found.body == b"y" * 10


async def test_many_operations_keep_order(clock: Clock) -> None:
    """get_many answers in key order with None for misses; set_many stores each pair."""
    cache = MemoryCache(clock=clock)
    await cache.set_many([("a", entry(1, b"a")), ("c", entry(1, b"c"))], ttl=10)
    found = await cache.get_many(["a", "b", "c"])
    assert [e.body if e else None for e in found] == [b"a", None, b"c"]


async def test_aclose_empties_the_cache(clock: Clock) -> None:
    """Closing releases every entry."""
    cache = MemoryCache(clock=clock)
    await cache.set("a", entry(10), ttl=10)
    await cache.aclose()
    assert len(cache) == 0 and cache.bytes_used == 0 and cache.bypasses == 0


def test_max_bytes_must_be_positive() -> None:
    """A zero or negative bound is a programming error."""
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryCache(max_bytes=0)
