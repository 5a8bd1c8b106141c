"""Rate limits and budgets per subject (a virtual key hash, a deployment id).

::

    limiter = create_limiter(settings)            # RateLimiter (Redis) or LocalLimiter
    admission = await limiter.admit(key_hash, limits, estimated_tokens=..., estimated_cost=...,
                                    request_id=...)   # 429 RateLimitedError / BudgetExceededError
    response.headers.update(admission.headers())
    ...
    limiter.settle(admission, actual_tokens=..., actual_cost=...)  # or release(); never waits

Errors raised: ``RateLimitedError`` and ``BudgetExceededError`` (429) for denials,
``ServiceUnavailableError`` (503) under ``fail_closed`` while Redis is down. redis-py's own
errors never leave this package.
"""

from __future__ import annotations

from proxy.limits.events import KeyEventBus, KeyEvents, LocalKeyEvents
from proxy.limits.local import LocalLimiter
from proxy.limits.model import NANO_PER_USD, Admission, Limiter, Limits, counted_tokens
from proxy.limits.rate_limiter import RateLimiter
from proxy.limits.settings import FailurePolicy, LimitsSettings, TokenCounting

__all__ = [
    "NANO_PER_USD",
    "Admission",
    "FailurePolicy",
    "KeyEventBus",
    "KeyEvents",
    "Limiter",
    "Limits",
    "LimitsSettings",
    "LocalKeyEvents",
    "LocalLimiter",
    "RateLimiter",
    "TokenCounting",
    "counted_tokens",
    "create_key_events",
    "create_limiter",
]


def create_limiter(settings: LimitsSettings) -> Limiter:
    """The shared Redis limiter when ``redis_url`` is set, else in-process counters."""
    if settings.redis_url:
        return RateLimiter(settings)
    settings.check()
    return LocalLimiter(
        lease_ttl_seconds=settings.lease_ttl_seconds,
        token_rate_limit_type=settings.token_rate_limit_type,
    )


def create_key_events(settings: LimitsSettings) -> KeyEventBus:
    if settings.redis_url:
        return KeyEvents(settings.redis_url, key_prefix=settings.key_prefix)
    return LocalKeyEvents()
