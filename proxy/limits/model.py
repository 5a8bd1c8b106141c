"""The limiter's value objects and its seam: ``Limits``, ``Admission``, the ``Limiter`` protocol.

Money is counted in integer nano-USD inside the limiter (Redis ``HINCRBY``, exact sums), so a
budget of N x the estimate admits exactly N requests; USD floats only cross the interface.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final, Literal, Protocol

import msgspec

from proxy.errors import BudgetExceededError, RateLimitedError
from proxy.limits.settings import TokenCounting

if TYPE_CHECKING:
    from proxy.limits.allotment import Allotment

NANO_PER_USD = 1_000_000_000
Backend = Literal["redis", "local", "open", "allotment"]
LimitKind = Literal["requests", "tokens", "parallel_requests", "budget"]


def to_nano(usd: float) -> int:
    return round(usd * NANO_PER_USD)


def check_request(estimated_tokens: int, estimated_cost: float, request_id: str) -> None:
    """A programming error, not a client's: estimates are never negative, ids never empty."""
    if estimated_tokens < 0 or estimated_cost < 0 or not request_id:
        raise ValueError("estimates must not be negative and request_id must not be empty")


def counted_tokens(kind: TokenCounting, input_tokens: int, output_tokens: int) -> int:
    """The tokens a TPM limit counts, per ``token_rate_limit_type``."""
    if kind == "input":
        return input_tokens
    if kind == "output":
        return output_tokens
    return input_tokens + output_tokens


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one subject (a virtual key, a deployment) may use; ``None`` means unlimited."""

    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    max_budget: float | None = None  # USD per budget window
    budget_duration: float | None = None  # seconds; None: one window for the subject's life
    budget_anchor: float = 0.0  # epoch seconds the windows are counted from

    @property
    def leased(self) -> bool:
        """Whether in-flight requests hold leases (for the parallel limit or the budget)."""
        return self.max_parallel_requests is not None or self.max_budget is not None

    def budget_window(self, now: float) -> tuple[int, int | None]:
        """(start, end) of the budget window holding ``now``, in epoch milliseconds."""
        if self.budget_duration is None:
            return 0, None
        index = math.floor((now - self.budget_anchor) / self.budget_duration)
        start = self.budget_anchor + index * self.budget_duration
        return round(start * 1000), round((start + self.budget_duration) * 1000)

    def share(self, replicas: int) -> Limits:
        """This replica's part when each of ``replicas`` enforces the limits on its own."""
        if replicas <= 1:
            return self

        def part(limit: int | None) -> int | None:
            if not limit:
                return limit  # None (unlimited) and 0 (nothing) stay as they are
            return max(1, limit // replicas)

        budget = None if self.max_budget is None else self.max_budget / replicas
        return msgspec.structs.replace(
            self,
            rpm_limit=part(self.rpm_limit),
            tpm_limit=part(self.tpm_limit),
            max_parallel_requests=part(self.max_parallel_requests),
            max_budget=budget,
        )


class Admission(msgspec.Struct, eq=False):
    """One admitted request: what it holds, and what the rate-limit headers report.

    A msgspec Struct rather than a dataclass: every keyed request makes one, and a Struct's
    constructor runs in C (~1,000 instructions where the dataclass's ``__init__`` took
    ~7,400, counted with callgrind). Mutable; compared by identity.
    """

    subject: str
    request_id: str
    limits: Limits
    backend: Backend
    tokens: int = 0  # TPM reservation
    cost_nano: int = 0  # budget reservation
    budget_window: int = 0  # start of the budget window charged, epoch ms
    remaining_requests: int = 0
    remaining_tokens: int = 0
    reset_requests: float = 0.0  # seconds until the oldest request leaves the window
    reset_tokens: float = 0.0
    committed_nano: int = 0  # budget window's spend + reservations after this admission
    done: bool = False  # settled or released: a second call does nothing
    # An allotment's own admission (backend "redis"): the requests it stands for; at its
    # finish, the requests handed out from it. 0 for one request.
    requests: int = 0
    allotment: Allotment | None = None  # backend "allotment": the allotment it came from

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the limits this subject has."""
        rpm_limit = self.limits.rpm_limit
        tpm_limit = self.limits.tpm_limit
        if rpm_limit is not None:
            remaining = self.remaining_requests
            reset = format_reset(self.reset_requests)
            out = {
                "x-ratelimit-limit-requests": str(rpm_limit),
                "x-ratelimit-remaining-requests": str(remaining) if remaining > 0 else "0",
                "x-ratelimit-reset-requests": reset,
            }
            if tpm_limit is None:
                return out
            if self.reset_tokens != self.reset_requests:  # one window for both with Redis
                reset = format_reset(self.reset_tokens)
        elif tpm_limit is None:
            return {}
        else:
            out = {}
            reset = format_reset(self.reset_tokens)
        remaining = self.remaining_tokens
        out["x-ratelimit-limit-tokens"] = str(tpm_limit)
        out["x-ratelimit-remaining-tokens"] = str(remaining) if remaining > 0 else "0"
        out["x-ratelimit-reset-tokens"] = reset
        return out


# The fraction of a second for each millisecond, as ``:g`` spells it: "", ".001", ".5".
_FRACTIONS: Final = tuple(f"{i / 1000:g}".removeprefix("0") for i in range(1000))


def format_reset(seconds: float) -> str:
    """OpenAI's duration spelling: ``20ms``, ``1.5s``, ``6m0s``.

    Below a minute, whole milliseconds and a table: ``f"{round(seconds, 3):g}s"`` spells the
    same but turns the float into decimal digits twice (~6,000 instructions a header
    against ~2,000, counted with callgrind).
    """
    if seconds < 1:
        ms = math.ceil(seconds * 1000)
        return f"{ms}ms" if ms > 0 else "0ms"
    if seconds < 60:
        ms = round(seconds * 1000)
        return f"{ms // 1000}{_FRACTIONS[ms % 1000]}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


_WHAT = {
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "parallel_requests": "parallel requests",
}


def denial(kind: LimitKind, limits: Limits, retry_after: float | None) -> RateLimitedError:
    """The 429 for a denied admission; retry-after is when the blocking window frees."""
    if kind == "budget":
        return BudgetExceededError(
            f"Budget exceeded: max budget {limits.max_budget} USD"
            + (f" per {limits.budget_duration:g} s" if limits.budget_duration else ""),
            code="budget_exceeded",
            retry_after=retry_after,
        )
    limit = {
        "requests": limits.rpm_limit,
        "tokens": limits.tpm_limit,
        "parallel_requests": limits.max_parallel_requests,
    }[kind]
    return RateLimitedError(
        f"Rate limit exceeded: {_WHAT[kind]} (limit {limit})",
        code=f"{kind}_limit_exceeded",
        retry_after=retry_after,
    )


class Limiter(Protocol):
    """The seam the pipeline talks to; ``RateLimiter`` (Redis) and ``LocalLimiter`` implement it."""

    @property
    def degraded(self) -> bool: ...

    def counted_tokens(self, input_tokens: int, output_tokens: int) -> int: ...

    async def admit(
        self,
        subject: str,
        limits: Limits,
        *,
        estimated_tokens: int,
        estimated_cost: float,
        request_id: str,
    ) -> Admission: ...

    def admit_now(
        self,
        subject: str,
        limits: Limits,
        *,
        estimated_tokens: int,
        estimated_cost: float,
        request_id: str,
    ) -> Admission | None:
        """``admit``'s answer when it can give it without waiting (an admission, or a raised
        denial); None when only ``admit`` can answer."""

    def settle(self, admission: Admission, *, actual_tokens: int, actual_cost: float) -> None:
        """Swap the reservations for the actual use; never waits, never raises."""

    def release(self, admission: Admission) -> None:
        """Give the reservations and the lease back (a failed or cancelled call)."""

    async def settled(self) -> None:
        """Wait until the settles and releases made so far have landed (or wait for replay)."""

    async def renew(self, admission: Admission) -> bool: ...

    async def aclose(self) -> None: ...
