"""A clock the test moves by hand (TTL, s-maxage and breaker tests never sleep)."""

from __future__ import annotations


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
