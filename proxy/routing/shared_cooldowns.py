"""Cooldowns shared by replicas through Redis: ``SharedCooldowns``.

When this replica's Router cools a deployment, the cooldown is written as
``<prefix>cooldown:<deployment id>`` with a TTL (``SET PX``) and announced on
``<prefix>cooldowns`` (``PUBLISH``); every replica's subscriber applies it to its own Router,
so all of them skip the deployment. A replica that starts, or whose subscription was
broken (messages sent meanwhile are lost), reads the keys of its deployments back.

Routing never waits on Redis: ``pick`` reads the local table, and publishing runs in a
background task. Without Redis each replica keeps its own cooldowns; the outage is logged
once, and its end once.

``set_redis_url`` (secret rotation): later writes use a client with the new URL, and a new
subscription through it replaces the old one once it is in place (and has read the keys
back, so nothing announced in between is missed; proxy/redis_handle.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

import msgspec
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.redis_handle import RedisHandle, cancel_was_swallowed, messages
from proxy.routing.router import Router

log = logging.getLogger("llm_proxy")


class _Cooldown(msgspec.Struct, array_like=True):
    deployment: str
    ms: int


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Cooldown).decode


class SharedCooldowns:
    """Carries one Router's cooldowns to and from the other replicas."""

    def __init__(
        self,
        router: Router,
        redis_url: str,
        *,
        key_prefix: str,
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        idle_ping_interval: float = 5.0,
    ) -> None:
        self.channel = f"{key_prefix}cooldowns"
        self._key_prefix = f"{key_prefix}cooldown:"
        self._router = router
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._idle_ping = idle_ping_interval
        # No socket timeout: the subscriber waits for messages; silence is checked by pings.
        self._redis = RedisHandle(  # rediss:// options apply (proxy/tls.py)
            redis_url,
            grace=2 * timeout,  # past a write's deadline
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._task: asyncio.Task[None] | None = None  # the newest subscription's
        self._runs: set[asyncio.Task[None]] = set()  # it and any it is taking over from
        self._pending: set[asyncio.Task[None]] = set()
        self._down = False
        self.subscribed = False

    async def __aenter__(self) -> SharedCooldowns:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Load the cooldowns in force, then follow new ones (in a background task)."""
        await self.load()
        self._router.on_cooldown(self._publish_soon)
        self._start()

    def set_redis_url(self, url: str) -> None:
        """Read, write and subscribe with ``url`` from now on; ValueError if it is unusable."""
        self._redis.replace(url)
        if self._task is not None:
            self._start()  # takes over from the current subscription once subscribed

    async def drain(self) -> None:
        """Wait for announcements still being sent (each bounded by the timeout)."""
        while self._pending:
            await asyncio.gather(*self._pending)

    async def aclose(self) -> None:
        """Send what is pending, stop following, close the connections."""
        await self.drain()
        runs = list(self._runs)
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        self._task = None
        await self._redis.aclose()

    @property
    def healthy(self) -> bool:
        """False while Redis is unreachable (cooldowns are then local to this replica)."""
        return not self._down

    async def load(self) -> int:
        """Apply the cooldowns other replicas set for our deployments; how many there were."""
        try:
            applied = await self._load()
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            return 0
        self._back()
        return applied

    async def _load(self) -> int:
        ids = [d.id for d in self._router.deployments]
        async with asyncio.timeout(self._timeout):
            pipe = self._redis.client.pipeline(transaction=False)
            for dep in ids:
                pipe.pttl(self._key_prefix + dep)
            ttls = await pipe.execute()
        applied = 0
        for dep, ttl in zip(ids, ttls, strict=True):
            if isinstance(ttl, int) and ttl > 0 and self._router.apply_cooldown(dep, ttl / 1000):
                applied += 1
        return applied

    async def publish(self, deployment_id: str, seconds: float) -> bool:
        """Store and announce one cooldown; False when Redis could not be told."""
        ms = max(1, round(seconds * 1000))
        try:
            async with asyncio.timeout(self._timeout):
                pipe = self._redis.client.pipeline(transaction=False)
                pipe.set(self._key_prefix + deployment_id, b"1", px=ms)
                pipe.publish(self.channel, _encode(_Cooldown(deployment_id, ms)))
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            return False
        self._back()
        return True

    def _publish_soon(self, deployment_id: str, seconds: float) -> None:
        """The Router's listener: called in the request's flow, so it must not wait."""
        task = asyncio.get_running_loop().create_task(self._publish(deployment_id, seconds))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, deployment_id: str, seconds: float) -> None:
        await self.publish(deployment_id, seconds)

    def _lost(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.warning(
                "shared cooldowns: Redis unreachable (%s: %s); cooldowns stay local to "
                "this replica until it is back",
                type(exc).__name__,
                exc,
            )

    def _back(self) -> None:
        if self._down:
            self._down = False
            log.info("shared cooldowns: Redis is back; cooldowns are shared again")

    def _start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._run(), name="routing-shared-cooldowns")
        self._task = task
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _take_over(self) -> None:
        """Stop the subscriptions this one replaces (it has read the keys back since)."""
        me = asyncio.current_task()
        if me is not self._task:
            return  # replaced itself: the newer one will stop it
        others = [task for task in self._runs if task is not me]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe(self.channel)
                await self._load()  # what was announced while we were not listening
                await self._take_over()
                self.subscribed = True
                self._back()
                await self._listen(pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(exc)
            finally:
                self.subscribed = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
            if cancel_was_swallowed():
                return
            await asyncio.sleep(self._retry_interval)

    async def _listen(self, pubsub: PubSub) -> None:
        received = messages(pubsub, idle_ping=self._idle_ping, what="cooldowns")
        async with contextlib.aclosing(received):
            async for data in received:
                try:
                    cooldown = _decode(data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log.warning("shared cooldowns: ignored a malformed message on %s", self.channel)
                    continue
                self._router.apply_cooldown(cooldown.deployment, cooldown.ms / 1000)
