"""Key-cache invalidation over Redis pub/sub, across a connection cut, and in-process."""

from __future__ import annotations

from proxy.limits import KeyEvents, LocalKeyEvents
from tests.integration.limits.fault_proxy import FaultProxy
from tests.integration.limits.polling import eventually


async def test_published_key_reaches_every_subscriber(redis_url: str, redis_prefix: str) -> None:
    """A publish on one connection reaches subscribers of other KeyEvents (other replicas)."""
    publisher = KeyEvents(redis_url, key_prefix=redis_prefix)
    replicas = [KeyEvents(redis_url, key_prefix=redis_prefix) for _ in range(2)]
    seen: list[list[str]] = [[], []]
    try:
        for events, got in zip(replicas, seen, strict=True):
            events.subscribe(got.append)
        await eventually(lambda: all(r.subscribed for r in replicas))
        assert await publisher.publish("abc123")
        await eventually(lambda: all(seen))
        assert seen == [["abc123"], ["abc123"]]
        assert publisher.channel == f"{redis_prefix}keys"
    finally:
        for events in (publisher, *replicas):
            await events.aclose()


async def test_subscriber_reconnects_and_resyncs_after_a_cut(
    redis_url: str, fault_proxy: FaultProxy, redis_prefix: str
) -> None:
    """After the connection drops, the subscriber comes back by itself and asks for a resync."""
    url = fault_proxy.url_for(redis_url)
    subscriber = KeyEvents(url, key_prefix=redis_prefix, retry_interval=0.05)
    publisher = KeyEvents(redis_url, key_prefix=redis_prefix)
    keys: list[str] = []
    resyncs: list[bool] = []
    try:
        subscriber.subscribe(keys.append, on_resync=lambda: resyncs.append(True))
        await eventually(lambda: subscriber.subscribed)
        fault_proxy.cut()
        await eventually(lambda: not subscriber.subscribed)
        fault_proxy.heal()
        await eventually(lambda: subscriber.subscribed)
        assert resyncs == [True]
        await publisher.publish("after-the-cut")
        await eventually(lambda: keys == ["after-the-cut"])
    finally:
        await subscriber.aclose()
        await publisher.aclose()


async def test_silent_connection_is_noticed_by_idle_pings(
    redis_url: str, fault_proxy: FaultProxy, redis_prefix: str
) -> None:
    """A subscription whose connection stops answering is re-established, not left deaf."""
    url = fault_proxy.url_for(redis_url)
    subscriber = KeyEvents(
        url, key_prefix=redis_prefix, retry_interval=0.05, idle_ping_interval=0.1, timeout=0.2
    )
    try:
        subscriber.subscribe(lambda _: None)
        await eventually(lambda: subscriber.subscribed)
        fault_proxy.stall()
        await eventually(lambda: not subscriber.subscribed)
        fault_proxy.heal()
        await eventually(lambda: subscriber.subscribed)
    finally:
        await subscriber.aclose()


async def test_publish_reports_failure_when_redis_is_away(
    redis_url: str, fault_proxy: FaultProxy, redis_prefix: str
) -> None:
    """publish returns False instead of raising when Redis cannot be reached."""
    url = fault_proxy.url_for(redis_url)
    events = KeyEvents(url, key_prefix=redis_prefix, timeout=0.1)
    try:
        fault_proxy.cut()
        assert not await events.publish("abc")
    finally:
        await events.aclose()


async def test_local_key_events_deliver_in_process() -> None:
    """Without Redis, publish calls this process's subscribers; a failing one is skipped."""
    events = LocalKeyEvents()
    seen: list[str] = []

    def broken(_: str) -> None:
        raise RuntimeError("subscriber bug")

    events.subscribe(broken)
    events.subscribe(seen.append)
    assert await events.publish("k1")
    assert seen == ["k1"]
    await events.aclose()
