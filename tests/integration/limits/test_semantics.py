"""The limiter's contract, run against Redis (``RateLimiter``) and in-process (``LocalLimiter``)."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from proxy.errors import BudgetExceededError, RateLimitedError
from proxy.limits import Limiter, Limits, LimitsSettings, LocalLimiter, RateLimiter

MakeLimiter = Callable[..., Limiter]
_ids = iter(range(10**9))


@pytest.fixture(params=["redis", "local"])
async def make_limiter(
    request: pytest.FixtureRequest, key_prefix: str
) -> AsyncIterator[MakeLimiter]:
    """Build limiters of the parametrised backend; closed (and their keys deleted) after."""
    url, prefix = None, key_prefix
    if request.param == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    made: list[Limiter] = []

    def make(*, window_seconds: float = 60.0, **options: Any) -> Limiter:
        settings = LimitsSettings(redis_url=url, key_prefix=prefix, **options)
        limiter: Limiter
        if url:
            limiter = RateLimiter(settings, window_seconds=window_seconds)
        else:
            limiter = LocalLimiter(
                lease_ttl_seconds=settings.lease_ttl_seconds,
                token_rate_limit_type=settings.token_rate_limit_type,
                window_seconds=window_seconds,
            )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


async def admit(limiter: Limiter, limits: Limits, tokens: int = 0, cost: float = 0.0) -> Any:
    return await limiter.admit(
        "subject", limits, estimated_tokens=tokens, estimated_cost=cost, request_id=f"r{next(_ids)}"
    )


async def test_tpm_reservation_is_replaced_by_actual_tokens(make_limiter: MakeLimiter) -> None:
    """Settling swaps the token estimate for the actual count: undershoot frees, overshoot adds."""
    limiter = make_limiter()
    limits = Limits(tpm_limit=1000)
    first = await admit(limiter, limits, tokens=600)
    assert first.remaining_tokens == 400
    with pytest.raises(RateLimitedError) as denied:
        await admit(limiter, limits, tokens=500)
    assert denied.value.code == "tokens_limit_exceeded"
    limiter.settle(first, actual_tokens=200, actual_cost=0.0)  # 400 given back
    await limiter.settled()
    second = await admit(limiter, limits, tokens=500)
    assert second.remaining_tokens == 300
    limiter.settle(second, actual_tokens=790, actual_cost=0.0)  # 290 more than reserved
    await limiter.settled()
    third = await admit(limiter, limits, tokens=10)
    assert third.remaining_tokens == 0
    with pytest.raises(RateLimitedError):
        await admit(limiter, limits, tokens=1)


async def test_release_returns_reservations_but_not_the_request_slot(
    make_limiter: MakeLimiter,
) -> None:
    """A failed call gives back its tokens, budget and lease; the RPM slot stays used."""
    limiter = make_limiter()
    limits = Limits(rpm_limit=2, tpm_limit=100, max_parallel_requests=1, max_budget=1.0)
    first = await admit(limiter, limits, tokens=100, cost=1.0)
    limiter.release(first)
    await limiter.settled()
    second = await admit(limiter, limits, tokens=100, cost=1.0)
    assert second.remaining_requests == 0 and second.remaining_tokens == 0
    limiter.release(second)
    await limiter.settled()
    with pytest.raises(RateLimitedError) as denied:
        await admit(limiter, limits, tokens=1, cost=0.1)
    assert denied.value.code == "requests_limit_exceeded"


async def test_settling_twice_counts_once(make_limiter: MakeLimiter) -> None:
    """A second settle or release of the same admission changes nothing."""
    limiter = make_limiter()
    limits = Limits(tpm_limit=100, max_budget=1.0)
    first = await admit(limiter, limits, tokens=50, cost=0.5)
    limiter.settle(first, actual_tokens=50, actual_cost=0.5)
    await limiter.settled()
    limiter.settle(first, actual_tokens=50, actual_cost=0.5)
    await limiter.settled()
    limiter.release(first)
    await limiter.settled()
    assert (await admit(limiter, limits, tokens=50, cost=0.5)).remaining_tokens == 0


async def test_lease_expiry_frees_a_parallel_slot_without_release(
    make_limiter: MakeLimiter,
) -> None:
    """A lease nobody releases (a crashed replica) stops counting after its TTL."""
    limiter = make_limiter(lease_ttl_seconds=0.3)
    limits = Limits(max_parallel_requests=1)
    await admit(limiter, limits)
    with pytest.raises(RateLimitedError):
        await admit(limiter, limits)
    await asyncio.sleep(0.4)
    await admit(limiter, limits)


async def test_expired_lease_returns_its_budget_reservation(make_limiter: MakeLimiter) -> None:
    """A budget reservation that is never settled is given back when its lease expires."""
    limiter = make_limiter(lease_ttl_seconds=0.3)
    limits = Limits(max_budget=1.0)
    await admit(limiter, limits, cost=1.0)
    with pytest.raises(BudgetExceededError):
        await admit(limiter, limits, cost=0.5)
    await asyncio.sleep(0.4)
    await admit(limiter, limits, cost=1.0)


async def test_renew_keeps_a_long_stream_s_lease(make_limiter: MakeLimiter) -> None:
    """Renewing before expiry keeps the slot taken; renewing after release reports loss."""
    limiter = make_limiter(lease_ttl_seconds=1.0)
    limits = Limits(max_parallel_requests=1)
    stream = await admit(limiter, limits)
    await asyncio.sleep(0.6)
    assert await limiter.renew(stream)
    await asyncio.sleep(0.6)  # past the first expiry (1.0 s), within the renewed one (1.6 s)
    with pytest.raises(RateLimitedError):
        await admit(limiter, limits)
    limiter.release(stream)
    await limiter.settled()
    assert not await limiter.renew(stream)
    await admit(limiter, limits)


async def test_sliding_window_frees_requests_as_they_age(make_limiter: MakeLimiter) -> None:
    """Requests leave the RPM window one window-length after admission, not at a minute mark."""
    limiter = make_limiter(window_seconds=0.5)
    limits = Limits(rpm_limit=2)
    await admit(limiter, limits)
    await admit(limiter, limits)
    with pytest.raises(RateLimitedError) as denied:
        await admit(limiter, limits)
    assert denied.value.retry_after is not None and 0 < denied.value.retry_after <= 0.5
    await asyncio.sleep(0.55)
    await admit(limiter, limits)


async def test_budget_window_resets_on_time(make_limiter: MakeLimiter) -> None:
    """Spend counts per budget window; the next window starts from zero without a reset job."""
    limiter = make_limiter()
    limits = Limits(max_budget=1.0, budget_duration=1.0)
    await asyncio.sleep(math.ceil(time.time()) - time.time() + 0.01)  # at a window's start
    first = await admit(limiter, limits, cost=0.6)
    limiter.settle(first, actual_cost=0.7, actual_tokens=0)
    await limiter.settled()
    with pytest.raises(BudgetExceededError) as denied:
        await admit(limiter, limits, cost=0.6)
    error = denied.value
    assert error.status == 429 and error.type == "budget_exceeded"
    assert error.retry_after is not None and 0 < error.retry_after <= 1.0
    assert error.headers()["x-should-retry"] == "false"
    await asyncio.sleep(math.ceil(time.time()) - time.time() + 0.01)
    await admit(limiter, limits, cost=0.6)


async def test_estimate_above_the_tpm_limit_is_denied_for_a_whole_window(
    make_limiter: MakeLimiter,
) -> None:
    """A request that could never fit is denied with retry-after of one window."""
    limiter = make_limiter()
    with pytest.raises(RateLimitedError) as denied:
        await admit(limiter, Limits(tpm_limit=1000), tokens=1001)
    assert denied.value.retry_after == 60


async def test_headers_report_limits_and_what_remains(make_limiter: MakeLimiter) -> None:
    """The x-ratelimit headers carry limit, remaining and reset for requests and tokens."""
    limiter = make_limiter()
    limits = Limits(rpm_limit=10, tpm_limit=1000)
    first = await admit(limiter, limits, tokens=100)
    assert first.headers() == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    await asyncio.sleep(0.02)
    second = (await admit(limiter, limits, tokens=300)).headers()
    assert second["x-ratelimit-remaining-requests"] == "8"
    assert second["x-ratelimit-remaining-tokens"] == "600"
    assert re.fullmatch(r"59\.9\d*s", second["x-ratelimit-reset-requests"])
    assert (await admit(limiter, Limits(max_parallel_requests=5))).headers() == {}


async def test_rpm_denial_retry_after_is_when_a_slot_frees(make_limiter: MakeLimiter) -> None:
    """A request over the RPM limit is told to come back when the oldest request ages out."""
    limiter = make_limiter()
    await admit(limiter, Limits(rpm_limit=1))
    with pytest.raises(RateLimitedError) as denied:
        await admit(limiter, Limits(rpm_limit=1))
    assert denied.value.retry_after is not None and 59 < denied.value.retry_after <= 60
    assert denied.value.headers() == {"retry-after": "60"}


async def test_subjects_are_limited_independently(make_limiter: MakeLimiter) -> None:
    """One key's exhausted limit does not touch another key's."""
    limiter = make_limiter()
    limits = Limits(rpm_limit=1)
    await limiter.admit("a", limits, estimated_tokens=0, estimated_cost=0, request_id="x1")
    with pytest.raises(RateLimitedError):
        await limiter.admit("a", limits, estimated_tokens=0, estimated_cost=0, request_id="x2")
    await limiter.admit("b", limits, estimated_tokens=0, estimated_cost=0, request_id="x3")


async def test_all_or_nothing_when_one_limit_denies(make_limiter: MakeLimiter) -> None:
    """A denial by the budget takes no RPM slot, tokens or lease."""
    limiter = make_limiter()
    limits = Limits(rpm_limit=2, tpm_limit=100, max_parallel_requests=1, max_budget=1.0)
    with pytest.raises(BudgetExceededError):
        await admit(limiter, limits, tokens=100, cost=2.0)
    taken = await admit(limiter, limits, tokens=100, cost=1.0)
    assert taken.remaining_requests == 1 and taken.remaining_tokens == 0


async def test_renew_without_a_lease_is_a_no_op(make_limiter: MakeLimiter) -> None:
    """An admission holding no lease (RPM/TPM only) has nothing to lose: renew says held."""
    limiter = make_limiter()
    admission = await admit(limiter, Limits(rpm_limit=5))
    assert await limiter.renew(admission)


@pytest.mark.parametrize(
    ("tokens", "cost", "request_id"), [(-1, 0.0, "r"), (0, -0.1, "r"), (0, 0.0, "")]
)
async def test_impossible_requests_are_programming_errors(
    make_limiter: MakeLimiter, tokens: int, cost: float, request_id: str
) -> None:
    """Negative estimates or an empty request id raise ValueError, not a 429."""
    limiter = make_limiter()
    with pytest.raises(ValueError, match="must not"):
        await limiter.admit(
            "s", Limits(), estimated_tokens=tokens, estimated_cost=cost, request_id=request_id
        )
