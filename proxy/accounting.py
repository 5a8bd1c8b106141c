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
from proxy.limits import NANO_PER_USD, Admission, Limiter, Limits
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
        """The key's ``x-ratelimit-*`` headers, in a new dict each call."""
        return self.admission.headers() if self.admission is not None else {}


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


def _roomy(
    room: dict[str, tuple[float, float]], limits: Limits, estimate: _Estimate, subject: str
) -> bool:
    """Whether ``subject`` had ``ROOM_FACTOR`` times this estimate left when last seen."""
    left = room.get(subject)
    if left is None:
        return False
    tokens_left, usd_left = left
    if limits.tpm_limit is not None and estimate.tokens * ROOM_FACTOR > tokens_left:
        return False
    return limits.max_budget is None or estimate.cost * ROOM_FACTOR <= usd_left


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
        record = entry.record
        deployment_limits = entry.deployment_limits
        if self._limiter is None or (record is None and deployment_limits is None):
            return  # the common case without keys: nothing to build per request
        key_limits = self._limits_of(record) if record is not None else None
        if key_limits is None and deployment_limits is None:
            return
        # Every keyed request comes through here: the checks are inlined rather than calls
        # (bench/README.md, "Keys: instructions per request").
        key_charges = key_limits is not None and (
            key_limits.tpm_limit is not None or key_limits.max_budget is not None
        )
        deployment_charges = deployment_limits is not None and (
            deployment_limits.tpm_limit is not None or deployment_limits.max_budget is not None
        )
        deployment = "" if deployment_limits is None else f"deployment:{entry.deployment}"
        output = self._default_output if max_tokens is None else max_tokens
        estimate = _Estimate(entry, self, prompt_tokens, output)
        if key_charges or deployment_charges:
            ceiling = prompt_ceiling() if prompt_ceiling is not None else None
            if ceiling is None:
                estimate.count()
            else:
                estimate.take(ceiling, bounded=True)
                room = self._room
                if (
                    key_charges
                    and key_limits is not None
                    and record is not None
                    and not _roomy(room, key_limits, estimate, record.token_hash)
                ) or (
                    deployment_charges
                    and deployment_limits is not None
                    and not _roomy(room, deployment_limits, estimate, deployment)
                ):
                    estimate.count()
        if key_limits is not None and record is not None:
            subject = record.token_hash
            admission = None
            denied = None
            try:  # most answers come at once, without a coroutine
                admission = self._limiter.admit_now(
                    subject,
                    key_limits,
                    estimated_tokens=int(estimate.tokens),
                    estimated_cost=estimate.cost,
                    request_id=entry.request_id,
                )
            except RateLimitedError as exc:
                denied = exc
            if admission is None:
                admission = await self._admit(
                    entry, subject, key_limits, estimate, wait=None, denied=denied
                )
            entry.admission = admission
            if key_charges:
                self._note_room(subject, key_limits, admission)
        if deployment_limits is not None:
            entry.deployment_admission = admission = await self._admit(
                entry, deployment, deployment_limits, estimate, wait=wait, denied=None
            )
            if deployment_charges:
                self._note_room(deployment, deployment_limits, admission)

    async def _admit(
        self,
        entry: Entry,
        subject: str,
        limits: Limits,
        estimate: _Estimate,
        *,
        wait: Callable[[float], Awaitable[None]] | None,
        denied: RateLimitedError | None,
    ) -> Admission:
        """Admit ``subject``, asking again as the estimate or the window allows; ``denied``
        is the limiter's answer to a first try already made."""
        assert self._limiter is not None
        while True:
            if denied is None:
                try:
                    return await self._limiter.admit(
                        subject,
                        limits,
                        estimated_tokens=int(estimate.tokens),
                        estimated_cost=estimate.cost,
                        request_id=entry.request_id,
                    )
                except RateLimitedError as exc:
                    denied = exc
            self._room.pop(subject, None)
            if estimate.bounded:
                estimate.count()  # the ceiling may be what did not fit
                denied = None
                continue
            # A deployment at its rpm/tpm: wait for its window in the fair queue
            # (which raises a 429 itself when the wait would be too long).
            if wait is None or denied.retry_after is None:
                raise denied
            await wait(denied.retry_after)
            denied = None

    def _note_room(self, subject: str, limits: Limits, admission: Admission) -> None:
        """Remember what ``subject`` has left after ``admission`` (limits that charge)."""
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
            for admission in (entry.admission, entry.deployment_admission):
                if admission is None:
                    continue
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
        record = entry.record
        # Positional, in the field order: with 20 keywords msgspec's constructor took
        # ~11,500 instructions, with none ~1,400 (callgrind; one record per request).
        self._writer.submit(
            UsageRecord(
                entry.request_id,
                entry.started_at,
                datetime.now(UTC),  # ended_at
                entry.alias,  # model
                None if record is None else record.token_hash,
                None if record is None else record.key_alias,
                None if record is None else record.user_id,
                None if record is None else record.team_id,
                entry.deployment,
                entry.provider,
                prompt,  # prompt_tokens
                completion,  # completion_tokens
                prompt + completion,  # total_tokens
                cached,  # cached_tokens
                cost,  # cost_usd
                (now - entry.started) * 1000,  # latency_ms
                (entry.first_byte - entry.started) * 1000 if entry.first_byte else None,  # ttft_ms
                status,
                error_type,
                cache_hit,
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
