"""Rotated Redis credentials take effect without a restart, on the real Redis.

Each test makes two ACL users of its own (limited to its key prefix), points a client at
the first, rotates it to the second, then disables the first and kills its connections:
calls, admissions, cache entries and pub/sub messages keep flowing through the second. The
users are deleted afterwards; the default user and everything global stay untouched.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio

from proxy.cache.entry import CachedEntry
from proxy.cache.redis_backend import RedisCache
from proxy.limits import KeyEvents, Limits, LimitsSettings, RateLimiter
from proxy.limits.resp import RespClient
from proxy.routing import Router
from proxy.routing.shared_cooldowns import SharedCooldowns
from proxy.settings import DeploymentParams, ModelEntry, RouterSettings, Settings
from tests.integration.limits.polling import eventually

Admin = redis.asyncio.Redis


class AclUsers:
    """Makes Redis ACL users for one test, each allowed only the test's keys and channels."""

    def __init__(self, admin: Admin, redis_url: str, prefix: str) -> None:
        self.admin = admin
        self._url = urlsplit(redis_url)
        self._prefix = prefix
        self.names: list[str] = []

    async def create(self) -> str:
        """A new user with a random password; its URL (same host, port and database)."""
        name = f"llm-proxy-test-{uuid.uuid4().hex[:12]}"
        password = uuid.uuid4().hex
        self.names.append(name)
        await self.admin.acl_setuser(
            name,
            enabled=True,
            passwords=[f"+{password}"],
            keys=[f"{self._prefix}*"],
            channels=[f"{self._prefix}*"],
            categories=["+@all"],
        )
        host = f"{name}:{password}@{self._url.hostname}:{self._url.port or 6379}"
        return urlunsplit(self._url._replace(netloc=host))

    async def revoke(self, url: str) -> None:
        """Disable the user of ``url`` and cut every connection it has (a leaked password)."""
        name = urlsplit(url).username
        assert name is not None
        await self.admin.acl_setuser(name, enabled=False)
        await self.admin.client_kill_filter(user=name)

    async def connections(self, url: str) -> list[dict[str, str]]:
        """The connections Redis has open for the user of ``url`` (CLIENT LIST)."""
        name = urlsplit(url).username
        return [c for c in await self.admin.client_list() if c.get("user") == name]


@pytest.fixture
async def users(redis_url: str, redis_prefix: str) -> AsyncIterator[AclUsers]:
    """ACL users for this test; deleted (and their connections cut) when it ends."""
    admin = redis.asyncio.Redis.from_url(redis_url, socket_timeout=5)
    made = AclUsers(admin, redis_url, redis_prefix)
    try:
        yield made
    finally:
        for name in made.names:
            await admin.acl_deluser(name)
        await admin.aclose()


async def test_calls_in_flight_finish_and_later_calls_use_the_new_user(
    users: AclUsers, redis_prefix: str
) -> None:
    """Calls sent before the rotation all get replies; later ones go through the new user."""
    old, new = await users.create(), await users.create()
    client = RespClient(old, timeout=2)
    key = f"{redis_prefix}counter"
    try:
        assert await client.call("INCR", key) == 1
        in_flight = [asyncio.ensure_future(client.call("INCR", key)) for _ in range(100)]
        await asyncio.sleep(0)  # they are written to the old connection
        client.set_redis_url(new)
        after = [asyncio.ensure_future(client.call("INCR", key)) for _ in range(100)]
        replies = await asyncio.gather(*in_flight, *after)
        assert sorted(replies) == list(range(2, 202))
        # The old connection closed once its replies were in, before the user was revoked.
        await _until(lambda: _none_of(users, old))
        await users.revoke(old)
        assert await client.call("INCR", key) == 202
        assert len(await users.connections(new)) == 1
    finally:
        await client.aclose()


async def _none_of(users: AclUsers, url: str) -> bool:
    return not await users.connections(url)


async def _until(condition: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll an async ``condition`` (a question to Redis) until it holds."""
    async with asyncio.timeout(within):
        # The state is in Redis (CLIENT LIST): there is no event to await.
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_connection_being_made_is_not_handed_out_after_a_rotation(
    users: AclUsers, redis_prefix: str
) -> None:
    """Calls waiting for a connection opened with the old user get one with the new user."""
    old, new = await users.create(), await users.create()
    client = RespClient(old, timeout=2)
    try:
        pending = asyncio.ensure_future(client.call("SET", f"{redis_prefix}k", "v"))
        await asyncio.sleep(0)  # the connection with the old user is under way
        client.set_redis_url(new)
        await users.revoke(old)
        assert await pending == b"OK"
        assert [c["user"] for c in await users.connections(new)]
    finally:
        await client.aclose()


async def test_an_unusable_url_changes_nothing(users: AclUsers, redis_prefix: str) -> None:
    """A rotation to a URL that is not Redis raises ValueError; the client keeps working."""
    old = await users.create()
    client = RespClient(old, timeout=2)
    try:
        assert await client.call("PING") == b"PONG"
        with pytest.raises(ValueError, match="scheme"):
            client.set_redis_url("http://127.0.0.1:6379/0")
        assert await client.call("PING") == b"PONG"
        assert len(await users.connections(old)) == 1
    finally:
        await client.aclose()


async def test_rate_limiter_keeps_counting_through_the_new_user(
    users: AclUsers, redis_prefix: str
) -> None:
    """Admissions before and after the rotation share one Redis window; nothing degrades."""
    old, new = await users.create(), await users.create()
    limiter = RateLimiter(LimitsSettings(redis_url=old, key_prefix=redis_prefix, timeout_ms=2000))
    limits = Limits(rpm_limit=10)

    async def admit(n: int) -> int:
        admission = await limiter.admit(
            "k", limits, estimated_tokens=1, estimated_cost=0.0, request_id=f"r{n}"
        )
        limiter.settle(admission, actual_tokens=1, actual_cost=0.0)
        await limiter.settled()
        return admission.remaining_requests

    try:
        assert [await admit(n) for n in range(3)] == [9, 8, 7]
        limiter.set_redis_url(new)
        await users.revoke(old)
        assert [await admit(n) for n in range(3, 6)] == [6, 5, 4]
        assert not limiter.degraded
        assert await users.connections(new)
    finally:
        await limiter.aclose()


async def test_key_events_move_the_subscription_to_the_new_user(
    users: AclUsers, redis_url: str, redis_prefix: str
) -> None:
    """After the rotation the subscription lives on the new user; messages keep arriving."""
    old, new = await users.create(), await users.create()
    subscriber = KeyEvents(old, key_prefix=redis_prefix, retry_interval=0.05)
    publisher = KeyEvents(redis_url, key_prefix=redis_prefix)
    seen: list[str] = []
    resyncs: list[bool] = []
    try:
        subscriber.subscribe(seen.append, on_resync=lambda: resyncs.append(True))
        await eventually(lambda: subscriber.subscribed)
        assert await publisher.publish("before")
        await eventually(lambda: seen == ["before"])
        subscriber.set_redis_url(new)
        assert await subscriber.publish("during")  # through the new user already
        await _until_subscribed(users, new)
        await users.revoke(old)
        assert await publisher.publish("after")
        await eventually(lambda: seen[-1:] == ["after"])
        assert set(seen) == {"before", "during", "after"}
        assert resyncs == []  # the old subscription held until the new one was in place
        assert subscriber.subscribed
    finally:
        await subscriber.aclose()
        await publisher.aclose()


async def _until_subscribed(users: AclUsers, url: str) -> None:
    """Wait until a connection of ``url``'s user holds a subscription (CLIENT LIST sub=1)."""

    async def subscribed() -> bool:
        return any(c.get("sub") == "1" for c in await users.connections(url))

    await _until(subscribed)


async def test_redis_cache_reads_and_writes_through_the_new_user(
    users: AclUsers, redis_prefix: str
) -> None:
    """Entries written before the rotation are read through the new user, and new ones set."""
    old, new = await users.create(), await users.create()
    cache = RedisCache(old, key_prefix=redis_prefix, timeout=2)
    entry = CachedEntry(created_at=1.0, body=b'{"id":"x"}', prompt_tokens=3)
    try:
        await cache.set("a", entry, ttl=60)
        cache.set_redis_url(new)
        await users.revoke(old)
        assert await cache.get("a") == entry
        await cache.set("b", entry, ttl=60)
        assert await cache.get_many(["a", "b"]) == [entry, entry]
        assert cache.bypasses == 0
    finally:
        await cache.aclose()


async def test_shared_cooldowns_follow_the_new_user(
    users: AclUsers, redis_url: str, redis_prefix: str
) -> None:
    """A cooldown announced after the rotation reaches a replica whose old user was revoked."""
    old, new = await users.create(), await users.create()
    settings = Settings(
        model_list=tuple(
            ModelEntry("a", DeploymentParams(model="mock/m"), {"id": dep}) for dep in ("x", "y")
        ),
        router=RouterSettings(cooldown_seconds=30, allowed_fails=0),
    )
    mine, theirs = Router(settings), Router(settings)
    rotated = SharedCooldowns(mine, old, key_prefix=redis_prefix, retry_interval=0.05)
    other = SharedCooldowns(theirs, redis_url, key_prefix=redis_prefix, retry_interval=0.05)
    async with rotated, other:
        await eventually(lambda: rotated.subscribed and other.subscribed)
        rotated.set_redis_url(new)
        await _until_subscribed(users, new)
        await users.revoke(old)
        assert await other.publish("x", 30)
        await eventually(lambda: mine.cooling("x"))
        assert await rotated.publish("x", 30)
        assert rotated.healthy
