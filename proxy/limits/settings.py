"""Proposed settings for the limiter (the lead moves ``LimitsSettings`` into proxy/settings.py)."""

from __future__ import annotations

from typing import Literal

import msgspec

FailurePolicy = Literal["fail_open", "fail_closed", "local_share"]
TokenCounting = Literal["input", "output", "total"]


class LimitsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the shared counters live and what happens when they cannot be reached.

    ``redis_url`` unset: one replica, in-process counters (``LocalLimiter``). Set: counters
    in Redis, global across replicas and workers (``RateLimiter``).
    """

    redis_url: str | None = None
    key_prefix: str = "llm-proxy:"
    # Per limiter call: a slow Redis costs at most this much before the policy applies.
    timeout_ms: float = 100.0
    # Redis unreachable or slow: allow, reject with 503, or enforce limit / replicas locally.
    failure_policy: FailurePolicy = "local_share"
    # Processes sharing the limits (pods x workers): each enforces 1/replicas of them locally.
    replicas: int = 1
    # A request's parallel slot and budget reservation are freed after this long even if
    # the replica that took them crashed; renew() extends it for long streams.
    lease_ttl_seconds: float = 600.0
    token_rate_limit_type: TokenCounting = "total"
    # While a subject is far from its limits (each allotment at most 1/10 of what is left),
    # each process takes room for up to this many requests from Redis in one call and admits
    # them itself for up to allotment_seconds; 0 or 1: every request is counted in Redis.
    allotment_size: int = 100
    allotment_seconds: float = 1.0
    # While degraded, how often a background task asks Redis whether it is back.
    probe_interval_seconds: float = 1.0

    def check(self) -> None:
        """Rules msgspec cannot express; raises ValueError naming the field."""
        if self.timeout_ms <= 0:
            raise ValueError("limits.timeout_ms: must be positive")
        if self.replicas < 1:
            raise ValueError("limits.replicas: must be at least 1")
        if self.lease_ttl_seconds <= 0:
            raise ValueError("limits.lease_ttl_seconds: must be positive")
        if self.allotment_size < 0:
            raise ValueError("limits.allotment_size: must not be negative")
        if not 0 < self.allotment_seconds <= 10:
            raise ValueError("limits.allotment_seconds: must be above 0 and at most 10")
        if self.probe_interval_seconds <= 0:
            raise ValueError("limits.probe_interval_seconds: must be positive")
