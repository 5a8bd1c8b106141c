"""Key-cache invalidation across replicas: ``KeyEvents`` over Redis pub/sub.

``publish(token_hash)`` after a key changes; every replica's ``subscribe`` callback drops it
from its key cache. Pub/sub is fire-and-forget, so messages sent while a subscriber was
disconnected are lost: after each reconnection ``on_resync`` tells it to drop everything.
The subscriber reconnects in the background for as long as it runs (Redis restarts, network
cuts) and pings an idle connection to notice a silent one. ``LocalKeyEvents`` is the
in-process variant for a single process without Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.tls import redis_from_url

log = logging.getLogger("llm_proxy")

OnKey = Callable[[str], None]
OnResync = Callable[[], None]


class KeyEventBus(Protocol):
    async def publish(self, token_hash: str) -> bool: ...

    def subscribe(self, callback: OnKey, *, on_resync: OnResync | None = None) -> None: ...

    async def aclose(self) -> None: ...


class _Subscribers:
    def __init__(self) -> None:
        self.on_key: list[OnKey] = []
        self.on_resync: list[OnResync] = []

    def add(self, callback: OnKey, on_resync: OnResync | None) -> None:
        self.on_key.append(callback)
        if on_resync is not None:
            self.on_resync.append(on_resync)

    def key(self, token_hash: str) -> None:
        for callback in self.on_key:
            _call(callback, token_hash)

    def resync(self) -> None:
        for callback in self.on_resync:
            _call(callback)


def _call(callback: Callable[..., None], *args: str) -> None:
    try:
        callback(*args)
    except Exception:  # one broken subscriber must not stop invalidation for the others
        log.exception("key event callback failed")


class LocalKeyEvents:
    """One process, no Redis: publish calls this process's subscribers directly."""

    def __init__(self) -> None:
        self._subscribers = _Subscribers()

    async def publish(self, token_hash: str) -> bool:
        self._subscribers.key(token_hash)
        return True

    def subscribe(self, callback: OnKey, *, on_resync: OnResync | None = None) -> None:
        self._subscribers.add(callback, on_resync)

    async def aclose(self) -> None:
        self._subscribers = _Subscribers()


class KeyEvents:
    """Redis pub/sub on ``<prefix>keys``; a background task keeps the subscription alive."""

    def __init__(
        self,
        redis_url: str,
        *,
        key_prefix: str,
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        idle_ping_interval: float = 5.0,
    ) -> None:
        self.channel = f"{key_prefix}keys"
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._idle_ping = idle_ping_interval
        # No socket timeout: a subscriber waits for messages; silence is checked by pings.
        self._client: Redis = redis_from_url(
            redis_url, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self._subscribers = _Subscribers()
        self._task: asyncio.Task[None] | None = None
        self.subscribed = False

    async def publish(self, token_hash: str) -> bool:
        """Announce that a key changed; False when Redis could not be told (caches expire)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.publish(self.channel, token_hash)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("key event not published: %s: %s", type(exc).__name__, exc)
            return False
        return True

    def subscribe(self, callback: OnKey, *, on_resync: OnResync | None = None) -> None:
        self._subscribers.add(callback, on_resync)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="limits-key-events"
            )

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.aclose()

    async def _run(self) -> None:
        missed = False
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe(self.channel)
                self.subscribed = True
                if missed:
                    self._subscribers.resync()
                await self._listen(pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                if self.subscribed:  # log the loss once, not every failed reconnection
                    log.warning("key events: %s: %s; reconnecting", type(exc).__name__, exc)
            finally:
                self.subscribed = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            missed = True
            await asyncio.sleep(self._retry_interval)

    async def _listen(self, pubsub: PubSub) -> None:
        waiting_for_pong = False
        while True:
            message = await pubsub.get_message(timeout=self._idle_ping)
            if message is None:
                if waiting_for_pong:
                    raise TimeoutError("no answer to a ping on the key events connection")
                await pubsub.ping()
                waiting_for_pong = True
                continue
            waiting_for_pong = False
            if message["type"] == "message":
                data = message["data"]
                self._subscribers.key(data.decode() if isinstance(data, bytes) else str(data))
