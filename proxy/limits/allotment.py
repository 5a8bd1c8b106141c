"""``Allotment``: quota one process took from Redis at once and hands out without a round trip.

While a subject is far from every limit, one admission script call (scripts.py) can grant
room for up to n requests like the one asking: n RPM slots, n times its token estimate and
n times its cost estimate, all counted in Redis at once. The process then admits requests
from it here, each taking one slot and its own estimates, until the allotment runs out or
its time is up. Nothing is over-admitted: every request admitted here was counted in Redis
before it arrived, and the allotment's entry in the sliding window is dated at the last
moment it may admit (so it leaves the window no earlier than any request it admitted).

Settles and releases are counted here; when the allotment is closed and its last request
has finished, one FINISH gives Redis the total: the requests handed out (the rest of the
slots leave the window), the actual tokens and the actual spend (the rest of the
reservations go back).
"""

from __future__ import annotations

from proxy.limits.model import Admission, Limits


class Allotment:
    __slots__ = (
        "closed",
        "cost",
        "deadline",
        "inflight",
        "low",
        "record",
        "renewing",
        "requests",
        "tokens",
    )

    def __init__(self, record: Admission, deadline: float) -> None:
        self.record = record  # its own admission in Redis: id, limits, window, reservations
        self.deadline = deadline  # time.monotonic() from which it admits nothing more
        self.requests = record.requests  # slots not handed out yet
        self.tokens = record.tokens  # token reservation not taken (settles give back)
        self.cost = record.cost_nano  # budget reservation not taken, nano-USD
        self.inflight = 0
        self.closed = False  # admits nothing more; finished once nothing is in flight
        # Slots left at which the next one is asked for. Half: the answer comes back only
        # after the event loop has been round, which at full load can take the turns of as
        # many requests as there are connections (at a quarter, with 64 connections, ~27
        # requests waited for each ask ahead; at half, ~2).
        self.low = record.requests // 2
        self.renewing = False  # the next one has been asked for

    def take(
        self, request_id: str, limits: Limits, tokens: int, cost: int, now: float
    ) -> Admission | None:
        """One request's admission from what is left, or None when it does not fit (closed,
        past its time, out of slots or reservation, or the subject's limits have changed)."""
        record = self.record
        if (
            self.closed
            or now >= self.deadline
            or self.requests <= 0
            or tokens > self.tokens
            or cost > self.cost
            or (limits is not record.limits and limits != record.limits)
        ):
            return None
        self.requests -= 1
        self.tokens -= tokens
        self.cost -= cost
        self.inflight += 1
        return Admission(
            record.subject,
            request_id,
            record.limits,
            "allotment",
            tokens=tokens,
            cost_nano=cost,
            budget_window=record.budget_window,
            # Redis counted the whole allotment: what it still holds is left for this process.
            remaining_requests=record.remaining_requests + self.requests,
            remaining_tokens=record.remaining_tokens + self.tokens,
            reset_requests=record.reset_requests,
            reset_tokens=record.reset_tokens,
            committed_nano=record.committed_nano - self.cost,
            allotment=self,
        )

    def settle(self, admission: Admission, tokens: int, cost: int) -> bool:
        """Swap one admission's reservations for its actual use (zeros: a release, whose
        slot stays used). True when that was the last thing a closed allotment waited for."""
        limits = self.record.limits
        if limits.tpm_limit is not None:
            self.tokens += admission.tokens - tokens
        if limits.max_budget is not None:
            self.cost += admission.cost_nano - cost
        self.inflight -= 1
        return self.closed and self.inflight == 0

    def used(self) -> tuple[int, int, int]:
        """(requests, tokens, nano-USD) it has used: actual use of the settled requests plus
        the reservations of those still in flight."""
        record = self.record
        return (
            record.requests - self.requests,
            record.tokens - self.tokens,
            record.cost_nano - self.cost,
        )
