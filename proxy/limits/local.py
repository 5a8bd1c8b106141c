"""``LocalLimiter``: the limiter's semantics with in-process counters.

Used alone when no Redis is configured (one process enforces the whole limit) and by
``RateLimiter`` as the ``local_share`` fallback (each replica enforces its share). The same
algorithm as the Redis scripts (see scripts.py): an exact sliding window of admission times
for RPM and TPM, leases with an expiry for parallel requests and budget reservations, and
budget windows keyed by their start. Nothing here awaits, so each call is atomic on the loop.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import msgspec

from proxy.limits.model import (
    NANO_PER_USD,
    Admission,
    Limits,
    check_request,
    counted_tokens,
    denial,
)
from proxy.limits.settings import TokenCounting


class _Lease(msgspec.Struct, gc=False):
    """A parallel-request slot and its budget reservation until ``expires``; a Struct's
    constructor runs in C (one per keyed request)."""

    expires: float
    cost: int
    window: int


class _Subject:
    __slots__ = ("admitted", "budgets", "leases", "next_expiry", "token_sum", "tokens", "window")

    def __init__(self) -> None:
        # The sliding window, oldest first: when each request was admitted, and its id. Two
        # deques, not one of pairs: a float and a str are no work for the garbage collector,
        # where a pair held for the window's minute is one more object every young
        # collection has to walk (and makes those collections come sooner).
        self.window: deque[float] = deque()
        self.admitted: deque[str] = deque()
        self.tokens: dict[str, int] = {}  # request id -> tokens charged while in the window
        self.token_sum = 0
        self.leases: dict[str, _Lease] = {}
        # No lease expires before this (a lower bound: renewals only push expiries later),
        # so pruning need not walk every lease on every admission.
        self.next_expiry = float("inf")
        self.budgets: dict[int, list[int]] = {}  # window start -> [spend, reserved] (nano-USD)


class LocalLimiter:
    """In-process ``Limiter``; ``clock`` is injectable so tests can roll windows over."""

    def __init__(
        self,
        *,
        lease_ttl_seconds: float = 600.0,
        token_rate_limit_type: TokenCounting = "total",
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lease_ttl = lease_ttl_seconds
        self._token_kind: TokenCounting = token_rate_limit_type
        self._window = window_seconds
        self._clock = clock
        self._subjects: dict[str, _Subject] = {}

    @property
    def degraded(self) -> bool:
        return False

    def counted_tokens(self, input_tokens: int, output_tokens: int) -> int:
        return counted_tokens(self._token_kind, input_tokens, output_tokens)

    async def admit(
        self,
        subject: str,
        limits: Limits,
        *,
        estimated_tokens: int,
        estimated_cost: float,
        request_id: str,
    ) -> Admission:
        return self.admit_now(
            subject,
            limits,
            estimated_tokens=estimated_tokens,
            estimated_cost=estimated_cost,
            request_id=request_id,
        )

    def admit_now(
        self,
        subject: str,
        limits: Limits,
        *,
        estimated_tokens: int,
        estimated_cost: float,
        request_id: str,
    ) -> Admission:
        """``admit`` without the coroutine, for callers already holding the loop.

        Every request with a key comes through here, so it reads each value once and calls
        out only when there is something to prune (``bench/README.md``, "Keys: instructions
        per request").
        """
        if estimated_tokens < 0 or estimated_cost < 0 or not request_id:
            check_request(estimated_tokens, estimated_cost, request_id)  # raises
        now = self._clock()
        state = self._subjects.get(subject)
        if state is None:
            state = self._subjects[subject] = _Subject()
        window = state.window
        if (
            (window and window[0] <= now - self._window)
            or state.next_expiry <= now
            or len(state.budgets) > 1
        ):
            self._prune(state, now, limits)
        rpm_limit = limits.rpm_limit
        tpm_limit = limits.tpm_limit
        max_budget = limits.max_budget
        cost = round(estimated_cost * NANO_PER_USD)
        tokens = estimated_tokens if tpm_limit is not None else 0
        if limits.budget_duration is None:
            start, end = 0, None
        else:
            start, end = limits.budget_window(now)
        budget = state.budgets.get(start)
        if budget is None:
            budget = state.budgets[start] = [0, 0]

        # Check everything first; take nothing unless all pass.
        count = len(window)
        if rpm_limit is not None and count + 1 > rpm_limit:
            index = count - rpm_limit
            frees = window[index] + self._window - now if index < count else self._window
            raise denial("requests", limits, frees)
        if tpm_limit is not None and state.token_sum + tokens > tpm_limit:
            raise denial("tokens", limits, self._tokens_free_in(state, tokens, limits, now))
        parallel = limits.max_parallel_requests
        if parallel is not None and len(state.leases) >= parallel:
            raise denial("parallel_requests", limits, 1.0)
        if max_budget is not None and budget[0] + budget[1] + cost > round(
            max_budget * NANO_PER_USD
        ):
            raise denial("budget", limits, None if end is None else end / 1000 - now)

        if rpm_limit is not None or tpm_limit is not None:  # the sliding window is kept
            window.append(now)
            state.admitted.append(request_id)
            if tokens:
                state.tokens[request_id] = tokens
                state.token_sum += tokens
        if parallel is not None or max_budget is not None:  # limits.leased, inlined
            expires = now + self._lease_ttl
            state.leases[request_id] = _Lease(expires, cost, start)
            if expires < state.next_expiry:  # noqa: PLR1730 (min() parses keywords per call)
                state.next_expiry = expires
            budget[1] += cost
        oldest_reset = window[0] + self._window - now if window else 0.0
        return Admission(
            subject,
            request_id,
            limits,
            "local",
            tokens=tokens,
            cost_nano=cost if max_budget is not None else 0,
            budget_window=start,
            remaining_requests=(rpm_limit or 0) - len(window),
            remaining_tokens=(tpm_limit or 0) - state.token_sum,
            reset_requests=oldest_reset,
            reset_tokens=oldest_reset,
            committed_nano=budget[0] + budget[1] if max_budget is not None else 0,
        )

    def settle(self, admission: Admission, *, actual_tokens: int, actual_cost: float) -> None:
        self.finish(admission, actual_tokens, round(actual_cost * NANO_PER_USD))  # to_nano

    def release(self, admission: Admission) -> None:
        self.finish(admission, 0, 0)

    async def settled(self) -> None:
        """Settles here are done when ``settle`` returns; nothing to wait for."""

    def finish(self, admission: Admission, tokens: int, cost: int) -> None:
        """Swap the reservations for actual use (zero for a release) and free the lease."""
        if admission.done:
            return
        admission.done = True
        state = self._subjects.get(admission.subject)
        if state is None:
            return
        limits = admission.limits
        request_id = admission.request_id
        if limits.tpm_limit is not None:
            charged = state.tokens.get(request_id)
            if charged is not None:  # still in the window: the actual tokens replace it
                state.token_sum += tokens - charged
                state.tokens[request_id] = tokens
        lease = state.leases.pop(request_id, None)
        if limits.max_budget is not None:
            budget = state.budgets.get(admission.budget_window)
            if budget is None:
                budget = state.budgets[admission.budget_window] = [0, 0]
            if lease is not None:
                budget[1] -= lease.cost
            budget[0] += cost

    async def renew(self, admission: Admission) -> bool:
        if not admission.limits.leased:
            return not admission.done  # nothing expires
        state = self._subjects.get(admission.subject)
        lease = None if state is None else state.leases.get(admission.request_id)
        if lease is None or admission.done:
            return False
        lease.expires = self._clock() + self._lease_ttl
        return True

    async def aclose(self) -> None:
        self._subjects.clear()

    def _prune(self, state: _Subject, now: float, limits: Limits) -> None:
        cutoff = now - self._window
        window = state.window
        while window and window[0] <= cutoff:
            window.popleft()
            state.token_sum -= state.tokens.pop(state.admitted.popleft(), 0)
        if state.next_expiry <= now:
            state.next_expiry = float("inf")
            for request_id, lease in list(state.leases.items()):
                if lease.expires <= now:
                    del state.leases[request_id]
                    if lease.window in state.budgets:
                        state.budgets[lease.window][1] -= lease.cost
                else:
                    state.next_expiry = min(state.next_expiry, lease.expires)
        if len(state.budgets) > 1:  # windows past are closed; only the current one counts
            current, _ = limits.budget_window(now)
            state.budgets = {k: v for k, v in state.budgets.items() if k >= current}

    def _tokens_free_in(self, state: _Subject, tokens: int, limits: Limits, now: float) -> float:
        """Seconds until enough tokens leave the window for ``tokens`` more to fit."""
        excess = state.token_sum + tokens - (limits.tpm_limit or 0)
        for admitted, request_id in zip(state.window, state.admitted, strict=True):
            excess -= state.tokens.get(request_id, 0)
            if excess <= 0:
                return admitted + self._window - now
        return self._window  # larger than the limit itself: never fits
