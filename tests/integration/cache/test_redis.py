"""RedisCache's stored form: prefixed keys, flag byte, compression, TTL, foreign values."""

from __future__ import annotations

import orjson
import pytest
from redis.asyncio import Redis

from proxy.cache import CachedEntry, RedisCache
from proxy.cache.entry import RAW, ZLIB

SMALL = CachedEntry(1.0, b'{"a":1}', 1, 1)
LARGE = CachedEntry(1.0, orjson.dumps({"content": "the same words again " * 500}), 1, 1)


async def test_values_carry_the_compression_flag(
    redis_cache: RedisCache, raw_redis: Redis, cache_prefix: str
) -> None:
    """A small entry is stored raw (flag 0), a large one zlib-compressed (flag 1) and smaller."""
    await redis_cache.set("small", SMALL, ttl=60)
    await redis_cache.set("large", LARGE, ttl=60)
    small = await raw_redis.get(cache_prefix + "small")
    large = await raw_redis.get(cache_prefix + "large")
    assert small is not None and small[0] == RAW and len(small) < 30
    assert large is not None and large[0] == ZLIB and len(large) < len(LARGE.body) // 10


@pytest.mark.parametrize("threshold", [0, 1 << 20])
async def test_threshold_decides_compression(
    redis_url: str, raw_redis: Redis, cache_prefix: str, threshold: int
) -> None:
    """compress_above picks which values are compressed."""
    cache = RedisCache(redis_url, key_prefix=cache_prefix, timeout=2, compress_above=threshold)
    try:
        await cache.set("k", LARGE, ttl=60)
        stored = await raw_redis.get(cache_prefix + "k")
        assert stored is not None and stored[0] == (ZLIB if threshold == 0 else RAW)
        assert await cache.get("k") == LARGE
    finally:
        await cache.aclose()


async def test_ttl_is_set_in_milliseconds(
    redis_cache: RedisCache, raw_redis: Redis, cache_prefix: str
) -> None:
    """The key expires by Redis's own TTL (SET PX), to the millisecond."""
    await redis_cache.set("k", SMALL, ttl=12.5)
    pttl = await raw_redis.pttl(cache_prefix + "k")
    assert 11_000 < pttl <= 12_500


async def test_foreign_value_is_a_miss(
    redis_cache: RedisCache, raw_redis: Redis, cache_prefix: str
) -> None:
    """A value that is not an entry reads as a miss and is counted, not raised."""
    await raw_redis.set(cache_prefix + "k", b"\x01garbage")
    await raw_redis.set(cache_prefix + "j", b"")
    assert await redis_cache.get("k") is None
    assert await redis_cache.get_many(["j", "k"]) == [None, None]
    assert redis_cache.corrupt == 3
    assert redis_cache.bypasses == 0


async def test_keys_live_under_the_prefix(
    redis_cache: RedisCache, raw_redis: Redis, cache_prefix: str
) -> None:
    """Every key the cache writes starts with its prefix."""
    await redis_cache.set_many([("a", SMALL), ("b", SMALL)], ttl=60)
    keys = sorted([k async for k in raw_redis.scan_iter(match=f"{cache_prefix}*")])
    assert keys == [f"{cache_prefix}a".encode(), f"{cache_prefix}b".encode()]
