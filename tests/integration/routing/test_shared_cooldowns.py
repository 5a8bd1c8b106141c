"""Cooldowns shared between replicas through the real Redis, and without it."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import urlsplit

import pytest
import redis.asyncio

from proxy.routing import Router
from proxy.routing.shared_cooldowns import SharedCooldowns
from proxy.settings import DeploymentParams, ModelEntry, RouterSettings, Settings
from tests.integration.limits.fault_proxy import FaultProxy
from tests.integration.limits.polling import eventually

SETTINGS = Settings(
    model_list=tuple(
        ModelEntry("a", DeploymentParams(model="mock/m"), {"id": dep}) for dep in ("x", "y")
    ),
    router=RouterSettings(cooldown_seconds=30, allowed_fails=0),
)

Replica = Callable[..., AbstractAsyncContextManager[tuple[Router, SharedCooldowns]]]


@pytest.fixture
def replica(redis_url: str, cooldown_prefix: str) -> Replica:
    """Start a "replica": its own Router, sharing cooldowns through the test's prefix."""

    @asynccontextmanager
    async def start(url: str = redis_url) -> AsyncIterator[tuple[Router, SharedCooldowns]]:
        router = Router(SETTINGS)
        shared = SharedCooldowns(
            router, url, key_prefix=cooldown_prefix, retry_interval=0.05, idle_ping_interval=0.5
        )
        async with shared:
            yield router, shared

    return start


async def test_a_cooldown_on_one_replica_is_skipped_by_the_other(replica: Replica) -> None:
    """Replica one cools x after a failure; replica two stops picking x without failing."""
    async with replica() as (one, shared_one), replica() as (two, shared_two):
        await eventually(lambda: shared_one.subscribed and shared_two.subscribed)
        (x,) = [d for d in one.deployments if d.id == "x"]
        one.failed(x, rate_limited=False, retry_after=None)
        await eventually(lambda: two.cooling("x"))
        assert {two.pick("a").id for _ in range(20)} == {"y"}  # type: ignore[union-attr]
        assert two.cooldown_state() == {"x": True, "y": False}


async def test_the_cooldown_is_stored_with_its_ttl(
    replica: Replica, redis_url: str, cooldown_prefix: str
) -> None:
    """The cooldown is a Redis key that expires when the cooldown does."""
    async with replica() as (router, shared):
        (x,) = [d for d in router.deployments if d.id == "x"]
        router.failed(x, rate_limited=True, retry_after=120)
        await shared.drain()
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            ttl = await client.pttl(f"{cooldown_prefix}cooldown:x")
        finally:
            await client.aclose()
        assert 100_000 < ttl <= 120_000


async def test_a_replica_starting_later_loads_cooldowns_in_force(replica: Replica) -> None:
    """A replica that starts after the cooldown skips x from its first request."""
    async with replica() as (_, shared_one):
        assert await shared_one.publish("x", 30.0)
        async with replica() as (late, _):
            assert late.cooling("x")
            assert late.pick("a").id == "y"  # type: ignore[union-attr]


async def test_missed_announcements_are_read_back_after_a_reconnection(
    replica: Replica, redis_url: str
) -> None:
    """A replica cut off from Redis while x cooled learns of it once it reconnects."""
    async with replica() as (one, _):
        with FaultProxy(*_host_port(redis_url)) as proxy:
            async with replica(proxy.url_for(redis_url)) as (two, shared_two):
                await eventually(lambda: shared_two.subscribed)
                proxy.cut()
                await eventually(lambda: not shared_two.subscribed)
                (x,) = [d for d in one.deployments if d.id == "x"]
                one.failed(x, rate_limited=True, retry_after=None)
                assert not two.cooling("x")
                proxy.heal()
                await eventually(lambda: two.cooling("x"))


async def test_malformed_announcements_are_ignored(
    replica: Replica, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage on the channel is logged and skipped; the next cooldown still applies."""
    async with replica() as (router, shared):
        await eventually(lambda: shared.subscribed)
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await client.publish(shared.channel, b"not json")
            await client.publish(shared.channel, b'["x", 5000]')
        finally:
            await client.aclose()
        await eventually(lambda: router.cooling("x"))
        assert "malformed message" in caplog.text


async def test_without_redis_cooldowns_stay_local_and_it_is_logged_once(
    caplog: pytest.LogCaptureFixture, cooldown_prefix: str
) -> None:
    """Redis unreachable: picks work, cooldowns apply here, one warning for the outage."""
    router = Router(SETTINGS)
    shared = SharedCooldowns(
        router, f"redis://127.0.0.1:{_free_port()}/0", key_prefix=cooldown_prefix,
        retry_interval=0.01,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="llm_proxy"):
        async with shared:
            assert not shared.healthy
            (x,) = [d for d in router.deployments if d.id == "x"]
            router.failed(x, rate_limited=True, retry_after=None)
            assert router.pick("a").id == "y"  # type: ignore[union-attr]
            assert not await shared.publish("x", 1.0)
            await shared.drain()
    warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 1


def _free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379
