"""Backends for the cache integration tests: memory, and Redis under a key prefix of its own.

``redis_url`` and ``redis_key_prefix`` come from tests/integration/conftest.py (skip when Redis
is missing, fail under CI=true). ``cache_prefix`` is unique per test; its keys are deleted
when the test ends. ``StalledServer`` stands in for a Redis that accepts connections and
never answers, and counts what clients attempt.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Self

import pytest
from redis.asyncio import Redis

from proxy.cache import CacheBackend, MemoryCache, RedisCache

# Functional tests must not flake on a busy machine; the fault tests use the 50 ms default.
RELAXED_TIMEOUT = 2.0


@pytest.fixture
async def cache_prefix(redis_url: str, redis_key_prefix: str) -> AsyncIterator[str]:
    """A key prefix no other test, run or process shares; its keys are deleted afterwards."""
    prefix = f"{redis_key_prefix}cache:{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client to look at what the cache wrote."""
    client = Redis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_cache(redis_url: str, cache_prefix: str) -> AsyncIterator[RedisCache]:
    """A RedisCache on the test Redis with a relaxed deadline."""
    cache = RedisCache(redis_url, key_prefix=cache_prefix, timeout=RELAXED_TIMEOUT)
    yield cache
    await cache.aclose()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> CacheBackend:
    """Each backend in turn (the Redis one skipped when no Redis is reachable)."""
    if request.param == "memory":
        return MemoryCache()
    cache: RedisCache = request.getfixturevalue("redis_cache")
    return cache


class StalledServer:
    """A TCP server that accepts connections and never answers: a hung Redis."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0  # connections clients opened
        self.bytes_in = 0  # bytes clients sent
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            await asyncio.sleep(0)  # let the handlers see their sockets go

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while data := await reader.read(64 * 1024):
                self.bytes_in += len(data)
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


@pytest.fixture
async def stalled_server() -> AsyncIterator[StalledServer]:
    """A hung 'Redis' that counts connection attempts and bytes."""
    async with StalledServer() as server:
        yield server
