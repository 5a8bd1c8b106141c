"""Key-cache invalidation across replicas: ``KeyEvents`` over Redis pub/sub.

``publish(token_hash)`` after a key changes; every replica's ``subscribe`` callback drops it
from its key cache. Pub/sub is fire-and-forget, so messages sent while a subscriber was
disconnected are lost: after each reconnection ``on_resync`` tells it to drop everything.
The subscriber reconnects in the background for as long as it runs (Redis restarts, network
cuts) and pings an idle connection to notice a silent one. ``LocalKeyEvents`` is the
in-process variant for a single process without Redis.

``set_redis_url`` (secret rotation): publishes from then on use a client with the new URL,
and a second subscription is made through it while the first still listens. Once it is in
place the first one unsubscribes, delivering what Redis sent it before, and ends: no message
is missed while either credential works (one may arrive twice, which is harmless: dropping
a key is idempotent). Had the first subscription lapsed by then, subscribers are told to
resync, as after any reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.redis_handle import RedisHandle, cancel_was_swallowed, messages

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
        self._redis = RedisHandle(
            redis_url,
            grace=2 * timeout,  # past a publish's deadline
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._subscribers = _Subscribers()
        self._task: asyncio.Task[None] | None = None  # the newest subscription's
        self._runs: set[asyncio.Task[None]] = set()  # it and any it is taking over from
        self._listening: dict[asyncio.Task[None] | None, PubSub] = {}  # run -> subscription
        self.subscribed = False

    async def publish(self, token_hash: str) -> bool:
        """Announce that a key changed; False when Redis could not be told (caches expire)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.client.publish(self.channel, token_hash)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("key event not published: %s: %s", type(exc).__name__, exc)
            return False
        return True

    def subscribe(self, callback: OnKey, *, on_resync: OnResync | None = None) -> None:
        self._subscribers.add(callback, on_resync)
        if self._task is None:
            self._start()

    def set_redis_url(self, url: str) -> None:
        """Publish and subscribe with ``url`` from now on; ValueError if it is unusable."""
        self._redis.replace(url)
        if self._task is not None:
            self._start()  # takes over from the current subscription once subscribed

    async def aclose(self) -> None:
        runs = list(self._runs)
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        self._task = None
        await self._redis.aclose()

    def _start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._run(), name="limits-key-events")
        self._task = task
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _take_over(self) -> bool:
        """Stop the subscriptions this one replaces; True if messages may have been missed."""
        me = asyncio.current_task()
        if me is not self._task:
            return False  # replaced itself: the newer one will stop it
        others = [task for task in self._runs if task is not me]
        if not others:
            return False
        lapsed = not self.subscribed  # the old subscription was down: messages may be lost
        for task in others:
            if not await self._unsubscribe(self._listening.get(task)):
                task.cancel()
        _, stuck = await asyncio.wait(others, timeout=self._timeout)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        return lapsed or bool(stuck)

    async def _unsubscribe(self, pubsub: PubSub | None) -> bool:
        """Ask an old subscription to end; Redis confirms after the messages it sent it
        before, which its run delivers first (_listen). False if it cannot be asked."""
        if pubsub is None:
            return False
        try:
            async with asyncio.timeout(self._timeout):
                await pubsub.unsubscribe()
        except (RedisError, OSError, TimeoutError):
            return False
        return True

    async def _run(self) -> None:
        me = asyncio.current_task()
        missed = False
        while True:
            pubsub = self._redis.client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe(self.channel)
                missed |= await self._take_over()
                self.subscribed = True
                if missed:
                    self._subscribers.resync()
                self._listening[me] = pubsub
                await self._listen(pubsub)
                return  # unsubscribed: a newer subscription took over
            except (RedisError, OSError, TimeoutError) as exc:
                if self.subscribed:  # log the loss once, not every failed reconnection
                    log.warning("key events: %s: %s; reconnecting", type(exc).__name__, exc)
            finally:
                self._listening.pop(me, None)
                self.subscribed = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
            missed = True
            if cancel_was_swallowed():
                return
            await asyncio.sleep(self._retry_interval)

    async def _listen(self, pubsub: PubSub) -> None:
        # Ends at the unsubscribe a newer subscription asked for (_take_over).
        received = messages(
            pubsub, idle_ping=self._idle_ping, what="key events", until_unsubscribed=True
        )
        async with contextlib.aclosing(received):
            async for data in received:
                self._subscribers.key(data.decode() if isinstance(data, bytes) else str(data))
