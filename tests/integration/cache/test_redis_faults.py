"""Redis away, hung or back: the cache bypasses without an error and stops trying meanwhile.

The deadline here is the production default (50 ms). Elapsed-time bounds are ten times that
and more, so they hold on a loaded machine while still proving nothing waited on a socket.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar
from urllib.parse import urlsplit

import pytest

from proxy.cache import NO_CONTROLS, CachedEntry, RedisCache, ResponseCache
from tests.integration.cache.conftest import StalledServer
from tests.support.fault_proxy import FaultProxy

ENTRY = CachedEntry(1.0, b'{"answer": 42}', 1, 1)
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
T = TypeVar("T")
NOWHERE = "llm-proxy-test:unreachable:"  # for caches whose Redis never answers
QUICK = 0.5  # seconds: far above the 50 ms deadline, far below any socket default


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the test Redis."""
    target = urlsplit(redis_url)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as fault_proxy:
        yield fault_proxy


@pytest.fixture
async def proxied_cache(
    redis_url: str, proxy: FaultProxy, cache_prefix: str
) -> AsyncIterator[RedisCache]:
    """A RedisCache reaching Redis through the fault proxy, probing every 100 ms when open."""
    url = urlsplit(redis_url)._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    cache = RedisCache(url, key_prefix=cache_prefix, retry_interval=0.1)
    yield cache
    await cache.aclose()


async def timed(operation: Awaitable[T]) -> tuple[T, float]:
    """The operation's result and the seconds it took."""
    started = time.perf_counter()
    result = await operation
    return result, time.perf_counter() - started


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_cut_redis_is_bypassed_without_error(
    proxied_cache: RedisCache, proxy: FaultProxy
) -> None:
    """With the connection cut, get answers None and set is dropped, quickly and silently."""
    await proxied_cache.set("k", ENTRY, ttl=60)
    assert await proxied_cache.get("k") == ENTRY
    await proxy.cut()
    for _ in range(5):
        found, elapsed = await timed(proxied_cache.get("k"))
        assert found is None and elapsed < QUICK
        _, elapsed = await timed(proxied_cache.set("k", ENTRY, ttl=60))
        assert elapsed < QUICK
        assert await proxied_cache.get_many(["k", "j"]) == [None, None]
        await proxied_cache.set_many([("k", ENTRY)], ttl=60)
    assert proxied_cache.bypasses == 20
    assert proxied_cache.breaker.is_open


async def test_cache_comes_back_after_restore(proxied_cache: RedisCache, proxy: FaultProxy) -> None:
    """Once Redis is reachable again a background probe closes the breaker and hits resume."""
    await proxied_cache.set("k", ENTRY, ttl=60)
    await proxy.cut()
    for _ in range(3):
        assert await proxied_cache.get("k") is None
    assert proxied_cache.breaker.is_open
    await proxy.restore()
    deadline = time.monotonic() + 5
    while proxied_cache.breaker.is_open and time.monotonic() < deadline:
        await proxied_cache.get("k")  # starts the probe once the interval is up
        await asyncio.sleep(0.02)
    assert not proxied_cache.breaker.is_open
    assert await proxied_cache.get("k") == ENTRY


async def test_hung_redis_costs_one_deadline_then_nothing(stalled_server: StalledServer) -> None:
    """Against a Redis that never answers, each try ends at the deadline; once the breaker
    opens, operations make no connection and send no byte."""
    cache = RedisCache(stalled_server.url, key_prefix=NOWHERE, retry_interval=60)
    try:
        for _ in range(cache.breaker.threshold):
            found, elapsed = await timed(cache.get("k"))
            assert found is None and elapsed < QUICK
        assert cache.breaker.is_open
        connections, sent = stalled_server.connections, stalled_server.bytes_in
        assert connections >= 1
        started = time.perf_counter()
        for _ in range(1000):
            assert await cache.get("k") is None
            await cache.set("k", ENTRY, ttl=60)
        assert time.perf_counter() - started < QUICK
        await asyncio.sleep(0.1)
        assert (stalled_server.connections, stalled_server.bytes_in) == (connections, sent)
        assert cache.bypasses == cache.breaker.threshold + 2000
    finally:
        await cache.aclose()


async def test_closed_port_is_bypassed() -> None:
    """Nothing listening at all: every operation is a quiet, quick bypass."""
    cache = RedisCache(f"redis://127.0.0.1:{closed_port()}/0", key_prefix=NOWHERE)
    try:
        for _ in range(10):
            found, elapsed = await timed(cache.get("k"))
            assert found is None and elapsed < QUICK
            await cache.set("k", ENTRY, ttl=60)
        assert cache.bypasses == 20
        assert cache.breaker.opened_total == 1
    finally:
        await cache.aclose()


async def test_response_cache_over_dead_redis_just_misses(stalled_server: StalledServer) -> None:
    """The facade's lookups, stores and embedding calls all degrade to misses without error."""
    cache = ResponseCache(RedisCache(stalled_server.url, key_prefix=NOWHERE))
    try:
        for _ in range(5):
            assert await cache.lookup("m", BODY, NO_CONTROLS) is None
            await cache.store("m", BODY, NO_CONTROLS, ENTRY)
            found = await cache.lookup_embeddings("e", {"input": ["a", "b"]}, NO_CONTROLS)
            assert found.missing == [0, 1]
        assert cache.bypasses >= 15
    finally:
        await cache.aclose()
