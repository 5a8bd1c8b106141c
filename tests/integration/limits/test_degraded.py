"""When Redis is away: each failure policy, the circuit breaker, and recovery without restart."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy.errors import RateLimitedError, ServiceUnavailableError
from proxy.limits import Admission, Limits, LimitsSettings, RateLimiter
from tests.integration.limits.fault_proxy import FaultProxy
from tests.integration.limits.polling import eventually


def settings(url: str, key_prefix: str, **options: Any) -> LimitsSettings:
    """Limiter settings for fault tests: 100 ms timeout, probe every 100 ms, each request
    counted in Redis on its own (test_allotments.py has the allotments' outages)."""
    fast: dict[str, Any] = {"timeout_ms": 100, "probe_interval_seconds": 0.1, "allotment_size": 0}
    return LimitsSettings(redis_url=url, key_prefix=key_prefix, **(fast | options))


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def admit(limiter: RateLimiter, limits: Limits, rid: str, **kw: Any) -> Admission:
    kw = {"estimated_tokens": 0, "estimated_cost": 0.0, **kw}
    return await limiter.admit("subject", limits, request_id=rid, **kw)


async def test_fail_open_admits_when_redis_is_unreachable(key_prefix: str) -> None:
    """With nothing listening, fail_open admits every request and reports degraded."""
    url = f"redis://127.0.0.1:{unused_port()}/0"
    limiter = RateLimiter(settings(url, key_prefix, failure_policy="fail_open"))
    try:
        for i in range(10):
            admission = await admit(limiter, Limits(rpm_limit=1), f"r{i}")
            assert admission.backend == "open" and admission.headers() == {}
            limiter.settle(admission, actual_tokens=5, actual_cost=0.1)
            await limiter.settled()
        assert limiter.degraded
    finally:
        await limiter.aclose()


async def test_fail_closed_rejects_with_503(key_prefix: str) -> None:
    """With nothing listening, fail_closed answers 503 (retryable) instead of guessing."""
    url = f"redis://127.0.0.1:{unused_port()}/0"
    limiter = RateLimiter(settings(url, key_prefix, failure_policy="fail_closed"))
    try:
        for i in range(3):
            with pytest.raises(ServiceUnavailableError) as failed:
                await admit(limiter, Limits(rpm_limit=100), f"r{i}")
            assert failed.value.status == 503 and "x-should-retry" not in failed.value.headers()
        assert limiter.degraded
    finally:
        await limiter.aclose()


async def test_local_share_enforces_the_limit_divided_by_replicas(key_prefix: str) -> None:
    """local_share lets each replica admit its share: rpm 20 over 4 replicas -> 5 here."""
    url = f"redis://127.0.0.1:{unused_port()}/0"
    limiter = RateLimiter(settings(url, key_prefix, replicas=4))
    admitted = 0
    try:
        for i in range(20):
            try:
                admission = await admit(limiter, Limits(rpm_limit=20), f"r{i}")
            except RateLimitedError:
                continue
            assert admission.backend == "local"
            admitted += 1
        assert admitted == 5
        assert limiter.degraded
    finally:
        await limiter.aclose()


async def test_local_share_budget_starts_from_the_spend_seen_in_redis(
    redis_url: str, fault_proxy: FaultProxy, redis_prefix: str
) -> None:
    """A budget 80% spent in Redis leaves each of 2 replicas 10% when Redis goes away."""
    limiter = RateLimiter(settings(fault_proxy.url_for(redis_url), redis_prefix, replicas=2))
    limits = Limits(max_budget=1.0)
    try:
        spent = await admit(limiter, limits, "r0", estimated_cost=0.8)
        limiter.settle(spent, actual_tokens=0, actual_cost=0.8)
        await limiter.settled()
        await admit(limiter, limits, "r1", estimated_cost=0.0)  # sees 0.8 committed
        fault_proxy.cut()
        assert (await admit(limiter, limits, "r2", estimated_cost=0.1)).backend == "local"
        with pytest.raises(RateLimitedError):
            await admit(limiter, limits, "r3", estimated_cost=0.1)
    finally:
        await limiter.aclose()


async def test_degraded_flips_back_when_redis_returns(
    redis_url: str, fault_proxy: FaultProxy, redis_prefix: str
) -> None:
    """A cut trips the breaker; the background probe restores Redis use without a restart."""
    limiter = RateLimiter(settings(fault_proxy.url_for(redis_url), redis_prefix))
    try:
        assert (await admit(limiter, Limits(rpm_limit=100), "r0")).backend == "redis"
        fault_proxy.cut()
        assert (await admit(limiter, Limits(rpm_limit=100), "r1")).backend == "local"
        assert limiter.degraded
        fault_proxy.heal()
        await eventually(lambda: not limiter.degraded)
        assert (await admit(limiter, Limits(rpm_limit=100), "r2")).backend == "redis"
    finally:
        await limiter.aclose()


async def test_stalled_redis_costs_one_timeout_then_nothing(
    redis_url: str, fault_proxy: FaultProxy, redis_prefix: str
) -> None:
    """A Redis that stops answering trips the breaker; later requests send it no bytes."""
    limiter = RateLimiter(
        settings(
            fault_proxy.url_for(redis_url),
            redis_prefix,
            probe_interval_seconds=60,  # no probe during the test: every byte would be a request's
        )
    )
    try:
        await admit(limiter, Limits(rpm_limit=10_000), "warm")
        fault_proxy.stall()
        assert (await admit(limiter, Limits(rpm_limit=10_000), "slow")).backend == "local"
        sent, accepted = fault_proxy.bytes_in, fault_proxy.accepted
        for i in range(1000):
            await admit(limiter, Limits(rpm_limit=10_000), f"r{i}")
        assert (fault_proxy.bytes_in, fault_proxy.accepted) == (sent, accepted)
    finally:
        await limiter.aclose()


async def test_refused_connections_are_not_retried_per_request(
    redis_url: str, fault_proxy: FaultProxy, redis_prefix: str
) -> None:
    """While the breaker is open, requests make no connection attempts (only the probe does)."""
    limiter = RateLimiter(
        settings(
            fault_proxy.url_for(redis_url),
            redis_prefix,
            probe_interval_seconds=60,
        )
    )
    try:
        fault_proxy.cut()
        await admit(limiter, Limits(rpm_limit=10_000), "first")
        accepted = fault_proxy.accepted
        for i in range(1000):
            await admit(limiter, Limits(rpm_limit=10_000), f"r{i}")
        assert fault_proxy.accepted == accepted <= 1
    finally:
        await limiter.aclose()


async def test_settles_made_while_down_are_replayed_on_recovery(
    redis_url: str, fault_proxy: FaultProxy, redis_prefix: str
) -> None:
    """A settle that cannot reach Redis is applied when it returns: spend is not lost."""
    limiter = RateLimiter(settings(fault_proxy.url_for(redis_url), redis_prefix))
    limits = Limits(max_budget=10.0, max_parallel_requests=1)
    client = aioredis.Redis.from_url(redis_url)
    try:
        admission = await admit(limiter, limits, "r0", estimated_cost=2.0)
        fault_proxy.cut()
        limiter.settle(admission, actual_tokens=0, actual_cost=1.5)
        await limiter.settled()
        assert limiter.degraded
        fault_proxy.heal()
        await eventually(lambda: not limiter.degraded)
        budget = await client.hgetall(f"{redis_prefix}{{subject}}:budget:0")
        assert (int(budget[b"s"]), int(budget[b"r"])) == (1_500_000_000, 0)
        assert await client.zcard(f"{redis_prefix}{{subject}}:lease") == 0
    finally:
        await client.aclose()
        await limiter.aclose()


async def test_cached_denial_rejects_without_a_round_trip(
    redis_url: str, fault_proxy: FaultProxy, redis_prefix: str
) -> None:
    """After an RPM denial the subject is rejected locally until its window frees."""
    limiter = RateLimiter(settings(fault_proxy.url_for(redis_url), redis_prefix))
    try:
        await admit(limiter, Limits(rpm_limit=1), "r0")
        with pytest.raises(RateLimitedError):
            await admit(limiter, Limits(rpm_limit=1), "r1")
        fault_proxy.stall()
        sent = fault_proxy.bytes_in
        with pytest.raises(RateLimitedError) as denied:
            await admit(limiter, Limits(rpm_limit=1), "r2")
        assert fault_proxy.bytes_in == sent and not limiter.degraded
        assert denied.value.retry_after is not None and denied.value.retry_after > 59
        # Other limits (a raised rpm_limit) are not covered by the cached denial.
        assert (await admit(limiter, Limits(rpm_limit=5), "r3")).backend == "local"
    finally:
        await limiter.aclose()


def test_redis_client_uses_the_hiredis_parser() -> None:
    """redis-py picks the hiredis (C) reply parser by default, so hiredis is installed."""
    from redis.asyncio.connection import DefaultParser

    assert DefaultParser.__name__ == "_AsyncHiredisParser"


async def test_a_settle_after_redis_lost_its_scripts_still_lands(
    redis_url: str, redis_prefix: str
) -> None:
    """NOSCRIPT on a settle (Redis restarted or SCRIPT FLUSH): the script is loaded again and
    the settle applied; the limiter does not count as degraded."""
    limiter = RateLimiter(settings(redis_url, redis_prefix))
    limits = Limits(max_budget=10.0, max_parallel_requests=1)
    client = aioredis.Redis.from_url(redis_url)
    try:
        admission = await admit(limiter, limits, "r0", estimated_cost=2.0)
        await client.script_flush()
        limiter.settle(admission, actual_tokens=0, actual_cost=1.5)
        await limiter.settled()
        assert not limiter.degraded
        budget = await client.hgetall(f"{redis_prefix}{{subject}}:budget:0")
        assert (int(budget[b"s"]), int(budget[b"r"])) == (1_500_000_000, 0)
        assert await client.zcard(f"{redis_prefix}{{subject}}:lease") == 0
    finally:
        await client.aclose()
        await limiter.aclose()
