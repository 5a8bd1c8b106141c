"""Limits arithmetic, header formatting, token counting and the errors a denial raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import BudgetExceededError, RateLimitedError
from proxy.limits import Admission, Limits, LimitsSettings, LocalLimiter, create_limiter
from proxy.limits.model import counted_tokens, denial, format_reset, to_nano


@pytest.mark.parametrize(
    ("kind", "expected"), [("input", 10), ("output", 5), ("total", 15)], ids=str
)
def test_token_rate_limit_type_selects_the_tokens_counted(kind: str, expected: int) -> None:
    """input, output or total tokens count toward TPM as configured (total by default)."""
    assert counted_tokens(kind, 10, 5) == expected  # type: ignore[arg-type]
    assert LimitsSettings().token_rate_limit_type == "total"


def test_share_divides_every_limit_by_replicas() -> None:
    """Each of N replicas enforces 1/N of each limit, never rounding a set limit to zero."""
    limits = Limits(rpm_limit=10, tpm_limit=1000, max_parallel_requests=3, max_budget=2.0)
    shared = limits.share(4)
    assert (shared.rpm_limit, shared.tpm_limit, shared.max_parallel_requests) == (2, 250, 1)
    assert shared.max_budget == 0.5
    assert Limits(rpm_limit=0).share(4).rpm_limit == 0
    assert Limits().share(4) == Limits()
    assert limits.share(1) is limits


def test_budget_windows_are_aligned_to_the_anchor() -> None:
    """A window holds [start, start + duration) counted from the anchor; none means forever."""
    daily = Limits(max_budget=1.0, budget_duration=86400.0)
    assert daily.budget_window(86400 * 3 + 5) == (86400 * 3 * 1000, 86400 * 4 * 1000)
    anchored = Limits(max_budget=1.0, budget_duration=10.0, budget_anchor=3.0)
    assert anchored.budget_window(12.9) == (3000, 13000)
    assert anchored.budget_window(13.0) == (13000, 23000)
    assert Limits(max_budget=1.0).budget_window(12345.0) == (0, None)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.0201, "21ms"), (1.5, "1.5s"), (59.9994, "59.999s"), (360.0, "6m0s")],
)
def test_reset_durations_use_openai_spelling(seconds: float, text: str) -> None:
    """Reset headers read like OpenAI's: 20ms, 1.5s, 6m0s."""
    assert format_reset(seconds) == text


@given(st.integers(min_value=1001, max_value=59_999), st.floats(min_value=-0.49, max_value=0.49))
def test_reset_below_a_minute_is_the_milliseconds_as_g_spells_them(ms: int, off: float) -> None:
    """1 s to 1 min: the seconds rounded to the millisecond, spelled as ``:g`` does."""
    assert format_reset((ms + off) / 1000) == f"{ms / 1000:g}s"


def test_nano_usd_sums_are_exact() -> None:
    """Costs become integer nano-USD, so ten 0.1 USD requests fill a 1 USD budget exactly."""
    assert to_nano(0.1) * 10 == to_nano(1.0)


def test_budget_denial_is_a_non_retryable_429() -> None:
    """BudgetExceededError is a 429 with type budget_exceeded and x-should-retry false."""
    error = denial("budget", Limits(max_budget=5.0, budget_duration=3600), 120.0)
    assert isinstance(error, BudgetExceededError) and isinstance(error, RateLimitedError)
    assert (error.status, error.type, error.code) == (429, "budget_exceeded", "budget_exceeded")
    assert error.headers() == {"retry-after": "120", "x-should-retry": "false"}


def test_rate_denial_is_a_retryable_429_naming_the_limit() -> None:
    """A rate denial says which limit and when to retry, and lets the SDK retry."""
    error = denial("tokens", Limits(tpm_limit=1000), 12.3)
    assert (error.status, error.code) == (429, "tokens_limit_exceeded")
    assert "tokens per minute (limit 1000)" in error.message
    assert error.headers() == {"retry-after": "12"}


def test_headers_cover_only_the_limits_set() -> None:
    """An admission without RPM/TPM limits adds no x-ratelimit headers."""
    admission = Admission("s", "r", Limits(tpm_limit=50), "local", remaining_tokens=-3)
    assert admission.headers() == {
        "x-ratelimit-limit-tokens": "50",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "0ms",
    }


def test_create_limiter_without_redis_is_local() -> None:
    """No redis_url: the in-process limiter, which is never degraded."""
    limiter = create_limiter(LimitsSettings())
    assert isinstance(limiter, LocalLimiter) and not limiter.degraded


@pytest.mark.parametrize(
    "bad", [{"replicas": 0}, {"timeout_ms": 0}, {"lease_ttl_seconds": -1}], ids=str
)
def test_settings_reject_impossible_values(bad: dict[str, float]) -> None:
    """Settings that cannot work stop start-up with the field named."""
    with pytest.raises(ValueError, match=next(iter(bad))):
        LimitsSettings(**bad).check()  # type: ignore[arg-type]
