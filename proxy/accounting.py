"""The Ledger: a request's limits before the call and its usage record after it.

Before the upstream call, a virtual key's limits are admitted in one limiter round trip:
an RPM slot, a TPM reservation of the estimated tokens (prompt counted with tiktoken plus
``max_tokens`` or a default) and a budget reservation of the estimated cost. After the
call, ``close`` settles the reservation with the real usage (or releases it when the call
failed or was cancelled) and hands exactly one ``UsageRecord`` to the spend writer. Both
happen off the client's critical path: the settle runs as a background task and the
record goes into the writer's in-memory queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from proxy.errors import RateLimitedError
from proxy.limits import NANO_PER_USD, Admission, Limiter, Limits, LocalLimiter
from proxy.routing import Deployment
from proxy.store import KeyRecord, UsageRecord
from proxy.usage.budget import parse_duration
from proxy.usage.prices import Price, PriceTable
from proxy.usage.writer import SpendWriter
from proxy.wire.openai import Usage

log = logging.getLogger("llm_proxy")
_MONTH_SECONDS = 30 * 86_400  # the limiter's budget windows are fixed lengths
_MAX_KEY_LIMITS = 100_000  # keys' Limits remembered; past this the memo starts again
_MAX_ROOM = 100_000  # subjects' last seen headroom remembered; past this it starts again
# The prompt's token ceiling stands in for its exact count while every subject charged had,
# at its last admission, at least this many times the estimate left (tokens and budget).
ROOM_FACTOR = 100


@dataclass(slots=True)
class Entry:
    """One request's open account."""

    request_id: str
    alias: str
    record: KeyRecord | None
    deployment: str | None = None
    provider: str | None = None
    model: str | None = None  # the upstream model, for pricing
    price: Price | None = None
    admission: Admission | None = None
    deployment_limits: Limits | None = None  # the deployment's rpm/tpm from the config
    deployment_admission: Admission | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None
    attempts: int = 0  # upstream tries, retries and fallbacks included
    fallback: str | None = None  # the fallback alias that answered, when one did
    upstream: Deployment | None = None  # whose call is under way (routing load, queue slot)
    slot: bool = False  # whether that call holds a queue slot of the deployment
    closed: bool = False

    def headers(self) -> dict[str, str]:
        return self.admission.headers() if self.admission is not None else {}

    def admissions(self) -> list[Admission]:
        return [a for a in (self.admission, self.deployment_admission) if a is not None]


def limits_of(record: KeyRecord) -> Limits | None:
    if (
        record.rpm_limit is None
        and record.tpm_limit is None
        and record.max_parallel_requests is None
        and record.max_budget is None
    ):
        return None
    duration = None
    if record.budget_duration:
        span = parse_duration(record.budget_duration)
        duration = float(span.months * _MONTH_SECONDS + span.seconds)
    anchor = record.created_at.timestamp() if record.created_at else 0.0
    return Limits(
        rpm_limit=record.rpm_limit,
        tpm_limit=record.tpm_limit,
        max_parallel_requests=record.max_parallel_requests,
        max_budget=record.max_budget,
        budget_duration=duration,
        budget_anchor=anchor,
    )


def _charges(limits: Limits | None) -> bool:
    """Whether admitting under ``limits`` needs the token and cost estimate."""
    return limits is not None and (limits.tpm_limit is not None or limits.max_budget is not None)


class _Estimate:
    """What one admission reserves: tokens and USD for the prompt plus the output allowed;
    ``bounded`` while the prompt's figure is its ceiling rather than its count."""

    __slots__ = ("_count", "_entry", "_ledger", "_output", "bounded", "cost", "tokens")

    def __init__(self, entry: Entry, ledger: Ledger, count: Callable[[], int], output: int):
        self._entry = entry
        self._ledger = ledger
        self._count = count
        self._output = output
        self.tokens = 0.0
        self.cost = 0.0
        self.bounded = False

    def take(self, prompt: int, *, bounded: bool) -> None:
        self.tokens = prompt + self._output
        self.cost = self._ledger._cost(self._entry, prompt, self._output, 0)
        self.bounded = bounded

    def count(self) -> None:
        self.take(self._count(), bounded=False)


class Ledger:
    def __init__(
        self,
        limiter: Limiter | None,
        writer: SpendWriter | None,
        prices: PriceTable,
        *,
        default_output_tokens: int = 1024,
    ) -> None:
        self._limiter = limiter
        # The in-process limiter answers at once: called without its coroutine.
        self._admit_now = limiter.admit_now if isinstance(limiter, LocalLimiter) else None
        self._writer = writer
        self._prices = prices
        self._default_output = default_output_tokens
        self._deployment_limits: dict[str, Limits | None] = {}
        # token hash -> (the record they were made from, its Limits): a record is the same
        # object for every request until the key cache replaces it.
        self._key_limits: dict[str, tuple[KeyRecord, Limits | None]] = {}
        # subject -> (tokens, USD) it had left after its last admission here.
        self._room: dict[str, tuple[float, float]] = {}

    def _limits_of(self, record: KeyRecord) -> Limits | None:
        made = self._key_limits.get(record.token_hash)
        if made is not None and made[0] is record:
            return made[1]
        if len(self._key_limits) >= _MAX_KEY_LIMITS:
            self._key_limits.clear()
        limits = limits_of(record)
        self._key_limits[record.token_hash] = (record, limits)
        return limits

    def deployment_limits(self, deployment: Deployment) -> Limits | None:
        """The deployment's rpm/tpm from the config, shared by every key that uses it."""
        try:
            return self._deployment_limits[deployment.id]
        except KeyError:
            p = deployment.params
            limits = None
            if p.rpm is not None or p.tpm is not None:
                limits = Limits(rpm_limit=p.rpm, tpm_limit=p.tpm)
            self._deployment_limits[deployment.id] = limits
            return limits

    async def admit(
        self,
        entry: Entry,
        *,
        prompt_tokens: Callable[[], int],
        max_tokens: int | None,
        wait: Callable[[float], Awaitable[None]] | None = None,
        prompt_ceiling: Callable[[], int | None] | None = None,
    ) -> None:
        """Take the key's and the deployment's limits; 429 (or 503) when it may not run now.

        The key goes first: a key over its limit must not use up the deployment's capacity.
        A deployment over its rpm/tpm makes the request ``wait(seconds)`` and try again,
        when ``wait`` is given; a key over its own limits is answered 429 at once.

        The estimate reserved is the prompt's exact count (``prompt_tokens``, tiktoken) plus
        the output allowed. While every subject charged is far from its limits
        (``ROOM_FACTOR``), ``prompt_ceiling`` (a proven upper bound, no tokenising) stands in
        for the count: reserving more than the exact estimate can only admit less, the
        settle replaces it with the real usage, and a subject that turns the ceiling down
        is asked again with the exact count before any 429 or wait, so the ceiling never
        refuses or delays a request by itself.
        """
        if self._limiter is None or (entry.record is None and entry.deployment_limits is None):
            return  # the common case without keys: nothing to build per request
        key_limits = self._limits_of(entry.record) if entry.record is not None else None
        deployment_limits = entry.deployment_limits
        if key_limits is None and deployment_limits is None:
            return
        deployment = "" if deployment_limits is None else f"deployment:{entry.deployment}"
        output = self._default_output if max_tokens is None else max_tokens
        estimate = _Estimate(entry, self, prompt_tokens, output)
        if _charges(key_limits) or _charges(deployment_limits):
            ceiling = prompt_ceiling() if prompt_ceiling is not None else None
            if ceiling is not None:
                estimate.take(ceiling, bounded=True)
                roomy = (
                    key_limits is None
                    or entry.record is None
                    or self._roomy(entry.record.token_hash, key_limits, estimate)
                ) and (
                    deployment_limits is None
                    or self._roomy(deployment, deployment_limits, estimate)
                )
                if not roomy:
                    estimate.count()
            else:
                estimate.count()
        if key_limits is not None and entry.record is not None:
            subject = entry.record.token_hash
            entry.admission = await self._admit(entry, subject, key_limits, estimate, wait=None)
            self._note_room(subject, key_limits, entry.admission)
        if deployment_limits is not None:
            entry.deployment_admission = await self._admit(
                entry, deployment, deployment_limits, estimate, wait=wait
            )
            self._note_room(deployment, deployment_limits, entry.deployment_admission)

    async def _admit(
        self,
        entry: Entry,
        subject: str,
        limits: Limits,
        estimate: _Estimate,
        *,
        wait: Callable[[float], Awaitable[None]] | None,
    ) -> Admission:
        assert self._limiter is not None
        while True:
            try:
                if self._admit_now is not None:
                    return self._admit_now(
                        subject,
                        limits,
                        estimated_tokens=int(estimate.tokens),
                        estimated_cost=estimate.cost,
                        request_id=entry.request_id,
                    )
                return await self._limiter.admit(
                    subject,
                    limits,
                    estimated_tokens=int(estimate.tokens),
                    estimated_cost=estimate.cost,
                    request_id=entry.request_id,
                )
            except RateLimitedError as exc:
                self._room.pop(subject, None)
                if estimate.bounded:
                    estimate.count()  # the ceiling may be what did not fit
                    continue
                # A deployment at its rpm/tpm: wait for its window in the fair queue
                # (which raises a 429 itself when the wait would be too long).
                if wait is None or exc.retry_after is None:
                    raise
                await wait(exc.retry_after)

    def _roomy(self, subject: str, limits: Limits, estimate: _Estimate) -> bool:
        """Whether ``subject`` had ``ROOM_FACTOR`` times this estimate left when last seen."""
        if not _charges(limits):
            return True
        room = self._room.get(subject)
        if room is None:
            return False
        tokens_left, usd_left = room
        if limits.tpm_limit is not None and estimate.tokens * ROOM_FACTOR > tokens_left:
            return False
        return limits.max_budget is None or estimate.cost * ROOM_FACTOR <= usd_left

    def _note_room(self, subject: str, limits: Limits, admission: Admission) -> None:
        if not _charges(limits):
            return
        if len(self._room) >= _MAX_ROOM:
            self._room.clear()
        usd_left = 0.0
        if limits.max_budget is not None:
            usd_left = limits.max_budget - admission.committed_nano / NANO_PER_USD
        self._room[subject] = (float(admission.remaining_tokens), usd_left)

    def close(
        self,
        entry: Entry,
        *,
        status: int,
        usage: Usage | None,
        error_type: str | None = None,
        cache_hit: bool = False,
    ) -> float:
        """Settle or release the reservation and record the request, exactly once; the
        request's cost in US dollars (0 after the first call)."""
        if entry.closed:
            return 0.0
        entry.closed = True
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        cached = (
            usage.prompt_tokens_details.cached_tokens or 0
            if usage and usage.prompt_tokens_details
            else 0
        )
        cost = 0.0 if cache_hit else self._cost(entry, prompt, completion, cached)
        if self._limiter is not None:
            for admission in entry.admissions():
                try:
                    if usage is not None:
                        self._limiter.settle(
                            admission, actual_tokens=prompt + completion, actual_cost=cost
                        )
                    else:
                        self._limiter.release(admission)
                except Exception:  # a bug there must not cost the usage record
                    log.exception("settling a rate-limit reservation failed")
        if self._writer is None:
            return cost
        now = time.perf_counter()
        self._writer.submit(
            UsageRecord(
                request_id=entry.request_id,
                started_at=entry.started_at,
                ended_at=datetime.now(UTC),
                model=entry.alias,
                token_hash=entry.record.token_hash if entry.record else None,
                key_alias=entry.record.key_alias if entry.record else None,
                user_id=entry.record.user_id if entry.record else None,
                team_id=entry.record.team_id if entry.record else None,
                deployment=entry.deployment,
                provider=entry.provider,
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                cached_tokens=cached,
                cost_usd=cost,
                latency_ms=(now - entry.started) * 1000,
                ttft_ms=(entry.first_byte - entry.started) * 1000 if entry.first_byte else None,
                status=status,
                error_type=error_type,
                cache_hit=cache_hit,
            )
        )
        return cost

    def _cost(self, entry: Entry, prompt: int, completion: int, cached: int) -> float:
        if entry.model is None:
            return 0.0
        return self._prices.cost_usd(entry.model, prompt, completion, cached, entry.price)

    async def aclose(self) -> None:
        """Wait until the settles made so far have landed (or wait for replay)."""
        if self._limiter is not None:
            await self._limiter.settled()
