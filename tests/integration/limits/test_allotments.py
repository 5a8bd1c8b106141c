"""Allotments: quota a process takes from Redis at once and hands out without a round trip.

Against the real Redis: what Redis holds while an allotment is open and after its FINISH,
that nothing is ever over-admitted (one process or two sharing a subject), that requests
near a limit are still counted one by one, and what happens on cancel, limit change,
renewal and an outage.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy.errors import BudgetExceededError, RateLimitedError
from proxy.limits import NANO_PER_USD, Admission, Limits, LimitsSettings, RateLimiter
from tests.integration.limits.fault_proxy import FaultProxy
from tests.integration.limits.polling import eventually

MakeLimiter = Callable[..., RateLimiter]
_ids = itertools.count()


@pytest.fixture
async def make_limiter(redis_url: str, redis_prefix: str) -> AsyncIterator[MakeLimiter]:
    made: list[RateLimiter] = []

    def make(url: str = redis_url, window_seconds: float = 60.0, **options: Any) -> RateLimiter:
        limiter = RateLimiter(
            LimitsSettings(redis_url=url, key_prefix=redis_prefix, **options),
            window_seconds=window_seconds,
        )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


@pytest.fixture
async def inspect(redis_url: str, redis_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """``await inspect(kind, name)``: one of the subject's structures, as Redis holds it."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)

    async def read(kind: str, name: str, subject: str = "subject") -> Any:
        key = f"{redis_prefix}{{{subject}}}:{name}"
        if kind == "zcard":
            return await client.zcard(key)
        if kind == "hash":
            return await client.hgetall(key)
        return int(await client.get(key) or 0)

    yield read
    await client.aclose()


async def admit(
    limiter: RateLimiter,
    limits: Limits,
    tokens: int = 0,
    cost: float = 0.0,
    subject: str = "subject",
) -> Admission:
    return await limiter.admit(
        subject, limits, estimated_tokens=tokens, estimated_cost=cost, request_id=f"r{next(_ids)}"
    )


async def test_far_from_the_limit_one_call_admits_many(
    make_limiter: MakeLimiter, inspect: Callable[..., Any]
) -> None:
    """The first admission takes room for 100; Redis holds one entry weighing 100, and
    the FINISH leaves exactly the requests handed out and their actual tokens."""
    limiter = make_limiter(allotment_seconds=0.3)
    limits = Limits(rpm_limit=100_000, tpm_limit=10_000_000)
    admissions = [await admit(limiter, limits, tokens=50) for _ in range(30)]
    assert [a.backend for a in admissions] == ["allotment"] * 30
    assert await inspect("zcard", "req") == 1
    assert await inspect("int", "weights") == 99  # its own entry plus 99
    assert await inspect("int", "tpm") == 100 * 50
    # Headers: Redis counted the whole allotment; what is left in it is left for us.
    assert admissions[-1].remaining_requests == 100_000 - 30
    assert admissions[-1].remaining_tokens == 10_000_000 - 30 * 50
    for a in admissions[:20]:
        limiter.settle(a, actual_tokens=10, actual_cost=0.0)
    for a in admissions[20:]:
        limiter.release(a)  # a failed call: no tokens, the slot stays used
    await asyncio.sleep(0.4)  # past allotment_seconds: closed, and nothing in flight
    await limiter.settled()
    assert await inspect("zcard", "req") == 1
    assert await inspect("int", "weights") == 29
    assert await inspect("int", "tpm") == 20 * 10
    # A fresh limiter (another process) sees exactly what was used.
    other = make_limiter(allotment_size=0)
    assert (await admit(other, limits, tokens=1)).remaining_requests == 100_000 - 31


async def test_concurrent_requests_share_one_ask(
    make_limiter: MakeLimiter, inspect: Callable[..., Any]
) -> None:
    """64 requests arriving at once ask Redis once: the rest wait for that answer."""
    limiter = make_limiter()
    limits = Limits(rpm_limit=1_000_000)
    admissions = await asyncio.gather(*(admit(limiter, limits) for _ in range(64)))
    assert all(a.backend == "allotment" for a in admissions)
    assert await inspect("zcard", "req") == 1


async def test_near_the_limit_every_request_is_counted_in_redis(
    make_limiter: MakeLimiter,
) -> None:
    """No allotment while 2 requests would take over 1/10 of what is left; a parallel
    limit (per-request leases) never gets one."""
    limiter = make_limiter()
    small = Limits(rpm_limit=19)
    assert {(await admit(limiter, small)).backend for _ in range(19)} == {"redis"}
    with pytest.raises(RateLimitedError):
        await admit(limiter, small)
    parallel = Limits(rpm_limit=1_000_000, max_parallel_requests=1000)
    assert (await admit(limiter, parallel, subject="p")).backend == "redis"
    tokens = Limits(tpm_limit=1_000)
    assert (await admit(limiter, tokens, tokens=60, subject="t")).backend == "redis"
    budget = Limits(max_budget=1.0)
    assert (await admit(limiter, budget, cost=0.06, subject="b")).backend == "redis"


async def test_allotments_shrink_to_what_is_left(make_limiter: MakeLimiter) -> None:
    """Two processes, 800 requests at once against rpm 500: never more than 500 are
    admitted, and once the allotments have given back what they did not hand out, the
    window admits exactly up to the limit."""
    # A generous timeout: 800 calls at once must not trip the breaker into local_share.
    first, second = (make_limiter(allotment_seconds=0.2, timeout_ms=10_000) for _ in range(2))
    limits = Limits(rpm_limit=500)
    backends: set[str] = set()

    async def one(limiter: RateLimiter) -> bool:
        try:
            admission = await admit(limiter, limits)
        except RateLimitedError:
            return False
        backends.add(admission.backend)
        limiter.settle(admission, actual_tokens=0, actual_cost=0.0)
        return True

    results = await asyncio.gather(*(one((first, second)[i % 2]) for i in range(800)))
    assert sum(results) <= 500
    assert backends == {"allotment", "redis"}  # no fallback: Redis answered every call
    await asyncio.sleep(0.3)
    await first.settled()
    await second.settled()
    more = await asyncio.gather(*(one((first, second)[i % 2]) for i in range(800)))
    assert sum(results) + sum(more) == 500


async def test_budget_spend_is_the_actual_cost(
    make_limiter: MakeLimiter, inspect: Callable[..., Any]
) -> None:
    """Reserved at the estimate while open; at the FINISH the spend is the sum of the
    actual costs and nothing stays reserved."""
    limiter = make_limiter(allotment_seconds=0.2)
    limits = Limits(max_budget=100.0)
    admissions = [await admit(limiter, limits, cost=0.01) for _ in range(10)]
    assert {a.backend for a in admissions} == {"allotment"}
    # 100 / (10 x 0.01) = 1000 requests would fit in a tenth: the size caps it at 100.
    window = "budget:0"
    assert (await inspect("hash", window)) == {"r": str(100 * NANO_PER_USD // 100)}
    for a in admissions:
        limiter.settle(a, actual_tokens=0, actual_cost=0.004)
    await asyncio.sleep(0.3)
    await limiter.settled()
    assert (await inspect("hash", window)) == {"r": "0", "s": str(10 * 4_000_000)}
    assert await inspect("hash", "res") == {}


async def test_budget_near_its_end_is_counted_one_by_one(make_limiter: MakeLimiter) -> None:
    """A budget for 50 requests admits exactly 50 with their estimates, allotments or not."""
    limiter = make_limiter()
    limits = Limits(max_budget=0.5)
    admitted = 0
    for _ in range(60):
        try:
            admission = await admit(limiter, limits, cost=0.01)
        except BudgetExceededError:
            continue
        admitted += 1
        limiter.settle(admission, actual_tokens=0, actual_cost=0.01)
    assert admitted == 50


async def test_a_cancelled_asker_leaves_the_allotment_usable(
    make_limiter: MakeLimiter, inspect: Callable[..., Any]
) -> None:
    """The request that asked is cancelled while Redis answers: the allotment is kept for
    the next requests, and the cancelled request's reservation is given back."""
    limiter = make_limiter(allotment_seconds=0.3)
    limits = Limits(rpm_limit=1_000_000, tpm_limit=100_000_000)
    asking = asyncio.ensure_future(admit(limiter, limits, tokens=100))
    await asyncio.sleep(0)  # the ask is on its way
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    after = await admit(limiter, limits, tokens=100)
    assert after.backend == "allotment"
    limiter.settle(after, actual_tokens=7, actual_cost=0.0)
    await asyncio.sleep(0.4)
    await limiter.settled()
    assert await inspect("zcard", "req") == 1
    assert await inspect("int", "weights") == 1  # both requests used a slot
    assert await inspect("int", "tpm") == 7  # the cancelled one's tokens went back


async def test_changed_limits_close_the_allotment(
    make_limiter: MakeLimiter, inspect: Callable[..., Any]
) -> None:
    """A key updated to new limits stops taking from the old allotment at once."""
    limiter = make_limiter()
    before = await admit(limiter, Limits(rpm_limit=1_000_000))
    after = await admit(limiter, Limits(rpm_limit=2_000_000))
    assert before.allotment is not None and after.allotment is not None
    assert before.allotment is not after.allotment and before.allotment.closed
    limiter.settle(before, actual_tokens=0, actual_cost=0.0)
    await limiter.settled()
    assert await inspect("int", "weights") == 99  # the old one finished at 1 request


async def test_requests_leave_the_window_with_their_allotment(make_limiter: MakeLimiter) -> None:
    """An allotment's requests count until one window after the last moment it could
    admit (allotment_seconds after it was granted), then leave the window together."""
    limiter = make_limiter(window_seconds=1.0, allotment_seconds=0.5)
    limits = Limits(rpm_limit=1_000)
    for _ in range(40):  # at t = 0, from one allotment dated t = 0.5 (too few to ask ahead)
        limiter.settle(await admit(limiter, limits), actual_tokens=0, actual_cost=0.0)
    await asyncio.sleep(0.6)  # t = 0.6: closed and finished with 40 requests
    await limiter.settled()
    other = make_limiter(window_seconds=1.0, allotment_size=0)
    assert (await admit(other, limits)).remaining_requests == 1_000 - 41
    await asyncio.sleep(0.55)  # t = 1.15: one window after t = 0, still counted
    assert (await admit(other, limits)).remaining_requests == 1_000 - 42
    await asyncio.sleep(0.55)  # t = 1.7: past 0.5 + 1 (and the one at 0.6 is gone too)
    assert (await admit(other, limits)).remaining_requests == 1_000 - 2


async def test_renew_extends_the_allotments_lease(
    make_limiter: MakeLimiter, inspect: Callable[..., Any]
) -> None:
    """A long stream admitted from an allotment renews the allotment's budget lease."""
    limiter = make_limiter(lease_ttl_seconds=0.5)
    limits = Limits(max_budget=1_000.0)
    admission = await admit(limiter, limits, cost=0.01)
    assert admission.backend == "allotment"
    for _ in range(4):
        await asyncio.sleep(0.2)
        assert await limiter.renew(admission)
    assert await inspect("zcard", "lease") == 1  # still held after 0.8 s > its TTL
    limiter.settle(admission, actual_tokens=0, actual_cost=0.01)
    assert not await limiter.renew(admission)


async def test_an_open_allotment_admits_through_an_outage_and_finishes_after(
    make_limiter: MakeLimiter, inspect: Callable[..., Any], fault_proxy: FaultProxy, redis_url: str
) -> None:
    """Redis cut while an allotment is open: it keeps admitting what Redis already counted;
    its FINISH waits for Redis to come back and is then applied."""
    limiter = make_limiter(
        url=fault_proxy.url_for(redis_url),
        timeout_ms=100,
        probe_interval_seconds=0.1,
        allotment_seconds=0.5,
    )
    limits = Limits(rpm_limit=1_000_000, tpm_limit=100_000_000)
    first = await admit(limiter, limits, tokens=10)
    fault_proxy.cut()
    during = [await admit(limiter, limits, tokens=10) for _ in range(5)]
    assert {a.backend for a in during} == {"allotment"}
    for a in [first, *during]:
        limiter.settle(a, actual_tokens=3, actual_cost=0.0)
    await asyncio.sleep(0.6)  # closed while Redis is away: its FINISH is kept
    assert limiter.degraded
    fault_proxy.heal()
    await eventually(lambda: not limiter.degraded)
    assert await inspect("int", "weights") == 5
    assert await inspect("int", "tpm") == 6 * 3


async def test_a_finish_after_the_weights_expired_leaves_nothing_behind(
    make_limiter: MakeLimiter, redis_url: str, redis_prefix: str
) -> None:
    """An allotment whose weight Redis already expired finishes without recreating it (a
    key without expiry would stay forever)."""
    limiter = make_limiter(allotment_seconds=0.2)
    admissions = [await admit(limiter, Limits(rpm_limit=1_000_000)) for _ in range(2)]
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.delete(
            f"{redis_prefix}{{subject}}:weight", f"{redis_prefix}{{subject}}:weights"
        )
        for admission in admissions:
            limiter.settle(admission, actual_tokens=0, actual_cost=0.0)
        await asyncio.sleep(0.3)
        await limiter.settled()
        assert not await client.exists(f"{redis_prefix}{{subject}}:weights")
    finally:
        await client.aclose()


async def test_the_next_allotment_is_asked_for_before_this_one_runs_out(
    make_limiter: MakeLimiter, inspect: Callable[..., Any]
) -> None:
    """With half left, the next allotment is asked for; it replaces the first, whose
    unused slots go back, so Redis ends up counting exactly the requests admitted."""
    limiter = make_limiter(allotment_seconds=0.3)
    limits = Limits(rpm_limit=1_000_000)
    admissions = [await admit(limiter, limits) for _ in range(50)]  # the 50th asks
    await asyncio.sleep(0.05)  # the ask is answered
    admissions += [await admit(limiter, limits) for _ in range(4)]
    assert admissions[0].allotment is admissions[49].allotment
    assert admissions[0].allotment is not admissions[-1].allotment
    assert await inspect("zcard", "req") == 2
    for a in admissions:
        limiter.settle(a, actual_tokens=0, actual_cost=0.0)
    await asyncio.sleep(0.4)
    await limiter.settled()
    other = make_limiter(allotment_size=0)
    assert (await admit(other, limits)).remaining_requests == 1_000_000 - 55


async def test_an_ask_ahead_without_room_takes_nothing(make_limiter: MakeLimiter) -> None:
    """Asked for ahead of need while another process has used the room up, the next
    allotment is refused and nothing is taken; requests then go one by one."""
    # Long enough for the 885 admissions below on a loaded machine (~0.3 s unloaded): the
    # allotment must still be open when they are done.
    limiter = make_limiter(allotment_seconds=2.0)
    other = make_limiter(allotment_size=0)
    limits = Limits(rpm_limit=1_000)
    first = await admit(limiter, limits)  # an allotment of 100: Redis counts 100
    assert first.backend == "allotment"
    for _ in range(885):
        await admit(other, limits)  # 985 counted: 2 more would be over a tenth of the rest
    mine = [first, *[await admit(limiter, limits) for _ in range(49)]]  # 50 left: asks
    await asyncio.sleep(0.05)
    assert (await admit(other, limits)).remaining_requests == 1_000 - 986  # nothing taken
    assert {a.backend for a in mine} == {"allotment"}
    for a in mine:
        limiter.settle(a, actual_tokens=0, actual_cost=0.0)
    await asyncio.sleep(2.1)
    await limiter.settled()
    assert (await admit(other, limits)).remaining_requests == 1_000 - 885 - 2 - 50
