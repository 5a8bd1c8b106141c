"""LocalLimiter with an injected clock: windows, leases and budgets roll over without sleeping."""

from __future__ import annotations

import pytest

from proxy.errors import BudgetExceededError, RateLimitedError
from proxy.limits import Admission, Limits, LocalLimiter


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A clock the test moves by hand."""
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> LocalLimiter:
    """A LocalLimiter on the test clock with a 10-minute lease."""
    return LocalLimiter(clock=clock)


def admit(
    limiter: LocalLimiter, limits: Limits, rid: str, tokens: int = 0, cost: float = 0.0
) -> Admission:
    return limiter.admit_now(
        "s", limits, estimated_tokens=tokens, estimated_cost=cost, request_id=rid
    )


def test_rpm_window_slides_with_each_request(limiter: LocalLimiter, clock: Clock) -> None:
    """Each request frees its slot exactly one window after it was admitted."""
    limits = Limits(rpm_limit=2)
    admit(limiter, limits, "a")
    clock.now += 30
    admit(limiter, limits, "b")
    with pytest.raises(RateLimitedError) as denied:
        admit(limiter, limits, "c")
    assert denied.value.retry_after == 30
    clock.now += 30  # "a" is exactly one window old: out
    admit(limiter, limits, "c")
    with pytest.raises(RateLimitedError):
        admit(limiter, limits, "d")


def test_tpm_retry_after_waits_for_enough_tokens(limiter: LocalLimiter, clock: Clock) -> None:
    """A TPM denial's retry-after is when enough old tokens leave for this request to fit."""
    limits = Limits(tpm_limit=100)
    admit(limiter, limits, "a", tokens=40)
    clock.now += 10
    admit(limiter, limits, "b", tokens=40)
    clock.now += 10
    with pytest.raises(RateLimitedError) as denied:
        admit(limiter, limits, "c", tokens=70)  # needs both a and b gone
    assert denied.value.retry_after == 50


def test_settle_after_the_window_left_charges_nothing_more(
    limiter: LocalLimiter, clock: Clock
) -> None:
    """Tokens belong to the admission instant: a late settle does not re-enter the window."""
    limits = Limits(tpm_limit=100)
    late = admit(limiter, limits, "a", tokens=10)
    clock.now += 61
    limiter.finish(late, 90, 0)
    assert admit(limiter, limits, "b", tokens=100).remaining_tokens == 0


def test_budget_resets_at_the_window_boundary(limiter: LocalLimiter, clock: Clock) -> None:
    """Spend of one daily window does not count in the next one."""
    limits = Limits(max_budget=1.0, budget_duration=86400)
    clock.now = 86400 * 20 + 100
    spent = admit(limiter, limits, "a", cost=1.0)
    limiter.finish(spent, 0, 1_000_000_000)
    with pytest.raises(BudgetExceededError) as denied:
        admit(limiter, limits, "b", cost=0.01)
    assert denied.value.retry_after == 86400 - 100
    clock.now = 86400 * 21
    admit(limiter, limits, "b", cost=1.0)


def test_lifetime_budget_denial_has_no_retry_after(limiter: LocalLimiter) -> None:
    """Without budget_duration the budget never resets, so no retry-after is promised."""
    with pytest.raises(BudgetExceededError) as denied:
        admit(limiter, Limits(max_budget=0.5), "a", cost=1.0)
    assert denied.value.retry_after is None
    assert denied.value.headers() == {"x-should-retry": "false"}


def test_lease_expires_and_settle_afterwards_still_records_spend(
    limiter: LocalLimiter, clock: Clock
) -> None:
    """An expired lease frees its slot and reservation; its late settle still adds the spend."""
    limits = Limits(max_parallel_requests=1, max_budget=1.0)
    slow = admit(limiter, limits, "a", cost=0.6)
    clock.now += 601
    fresh = admit(limiter, limits, "b", cost=0.4)
    limiter.finish(slow, 0, 600_000_000)  # spend 0.6 + reserved 0.4 = the budget
    limiter.finish(fresh, 0, 0)
    admit(limiter, limits, "c", cost=0.4)
    with pytest.raises(BudgetExceededError):
        admit(limiter, Limits(max_budget=1.0), "d", cost=0.01)


async def test_renew_moves_the_lease_expiry(limiter: LocalLimiter, clock: Clock) -> None:
    """renew() pushes the lease expiry one TTL past now."""
    limits = Limits(max_parallel_requests=1)
    stream = admit(limiter, limits, "a")
    clock.now += 500
    assert await limiter.renew(stream)
    clock.now += 500  # 1000 s after admission, 500 after renewal
    with pytest.raises(RateLimitedError):
        admit(limiter, limits, "b")
    clock.now += 101
    admit(limiter, limits, "b")
    assert not await limiter.renew(stream)


async def test_leases_expire_each_at_its_own_time(limiter: LocalLimiter, clock: Clock) -> None:
    """Of several leases, each frees its slot at its own expiry, renewed ones later."""
    limits = Limits(max_parallel_requests=3)
    first = admit(limiter, limits, "a")
    clock.now += 100
    second = admit(limiter, limits, "b")
    clock.now += 100
    admit(limiter, limits, "c")
    assert await limiter.renew(first)  # now expires at 800 s from the start
    with pytest.raises(RateLimitedError):
        admit(limiter, limits, "d")
    clock.now += 501  # 701 s: b (700) has expired; a was renewed, c expires at 800
    admit(limiter, limits, "d")
    with pytest.raises(RateLimitedError):
        admit(limiter, limits, "e")
    clock.now += 100  # 801 s: a and c have expired
    admit(limiter, limits, "e")
    admit(limiter, limits, "f")
    with pytest.raises(RateLimitedError):
        admit(limiter, limits, "g")
    assert not await limiter.renew(second)
