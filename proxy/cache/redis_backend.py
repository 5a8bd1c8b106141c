"""``RedisCache``: entries in Redis, shared by every worker and replica; never an error.

Each value is ``encode_entry``'s compact bytes (msgpack, zlib above ``compress_above``) under
``key_prefix + key``, with its TTL set by ``SET PX``. Every operation runs under a short
deadline (default 50 ms): a slow or absent Redis turns the operation into a bypass (``get``
returns None, ``set`` is dropped, ``bypasses`` counts it) and never into an error or a long
wait. A ``CircuitBreaker`` stops even the attempts after a few failures in a row, until a
background PING answers.

redis-py's errors stay here: everything it raises is a bypass. Its own retries are off, as a
retry would multiply the time a dead Redis costs.

``set_redis_url`` (secret rotation) switches to a client with the new URL for the next
operation; operations under way finish on the old one, closed once they are past their
deadline (proxy/redis_handle.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.cache.breaker import CircuitBreaker
from proxy.cache.entry import CachedEntry, CorruptEntryError, decode_entry, encode_entry
from proxy.redis_handle import RedisHandle

DEFAULT_KEY_PREFIX: Final = "llm-proxy:cache:"
DEFAULT_TIMEOUT: Final = 0.05
DEFAULT_COMPRESS_ABOVE: Final = 2048

log = logging.getLogger("llm_proxy")
T = TypeVar("T")


class RedisCache:
    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        compress_above: int = DEFAULT_COMPRESS_ABOVE,
        failure_threshold: int = 3,
        retry_interval: float = 1.0,
    ) -> None:
        self.key_prefix = key_prefix
        self.compress_above = compress_above
        self.bypasses = 0
        # Told each Redis call's time and whether it succeeded (the latency metric), if set.
        self.observe: Callable[[float, bool], None] | None = None
        self.corrupt = 0  # values that were not entries: read as misses
        self._timeout = timeout
        # Every operation reads ``_redis.client`` when it starts: a rotated URL applies next.
        self._redis = RedisHandle(
            url,
            grace=2 * timeout,  # past every operation's deadline (``timeout``)
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.breaker = CircuitBreaker(
            self._ping,
            name="cache Redis",
            threshold=failure_threshold,
            retry_interval=retry_interval,
        )

    def set_redis_url(self, url: str) -> None:
        """Connect with ``url`` from the next operation on; ValueError if it is unusable."""
        self._redis.replace(url)

    async def get(self, key: str) -> CachedEntry | None:
        found = await self._call(lambda: self._redis.client.get(self.key_prefix + key))
        return self._decode(found)

    async def set(self, key: str, entry: CachedEntry, ttl: float) -> None:
        if not self.breaker.allow():
            self.bypasses += 1
            return
        value = encode_entry(entry, compress_above=self.compress_above)
        await self._call(lambda: self._redis.client.set(self.key_prefix + key, value, px=_ms(ttl)))

    async def get_many(self, keys: Sequence[str]) -> list[CachedEntry | None]:
        if not keys:
            return []
        names = [self.key_prefix + key for key in keys]
        found = await self._call(lambda: self._redis.client.mget(names))
        if found is None:
            return [None] * len(keys)
        return [self._decode(value) for value in found]

    async def set_many(self, items: Sequence[tuple[str, CachedEntry]], ttl: float) -> None:
        if not items:
            return
        if not self.breaker.allow():
            self.bypasses += 1
            return
        pipe = self._redis.client.pipeline(transaction=False)
        for key, entry in items:
            value = encode_entry(entry, compress_above=self.compress_above)
            pipe.set(self.key_prefix + key, value, px=_ms(ttl))
        await self._call(pipe.execute)

    async def aclose(self) -> None:
        await self.breaker.aclose()
        await self._redis.aclose()

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T | None:
        """``operation()`` within the deadline; None if the breaker is open or it fails."""
        if not self.breaker.allow():
            self.bypasses += 1
            return None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                result = await operation()
        except (RedisError, OSError, TimeoutError) as exc:
            self.bypasses += 1
            self.breaker.failed(exc.__class__.__name__)
            if self.observe is not None:
                self.observe(time.perf_counter() - started, False)
            return None
        self.breaker.succeeded()
        if self.observe is not None:
            self.observe(time.perf_counter() - started, True)
        return result

    async def _ping(self) -> None:
        async with asyncio.timeout(self._timeout):
            await self._redis.client.ping()

    def _decode(self, value: object) -> CachedEntry | None:
        if not isinstance(value, bytes):
            return None
        try:
            return decode_entry(value)
        except CorruptEntryError as exc:
            self.corrupt += 1
            log.debug("cache value is not an entry (%s); treated as a miss", exc)
            return None


def _ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))
