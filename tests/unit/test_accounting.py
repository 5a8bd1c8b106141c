"""The Ledger's admission: a deployment at its rpm waits for its window in the fair queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
import pytest

from proxy.accounting import Entry, Ledger
from proxy.errors import NoDeploymentAvailableError, RateLimitedError
from proxy.limits import Limits, LocalLimiter
from proxy.routing import FairQueue
from proxy.store import KeyRecord, UsageRecord
from proxy.usage.prices import Price, PriceTable
from proxy.wire.openai import PromptTokensDetails, Usage

WINDOW = 0.3  # seconds: the limiter's sliding window, short for the test


def _entry(request_id: str, limits: Limits) -> Entry:
    entry = Entry(request_id=request_id, alias="m", record=None)
    entry.deployment = "m/openai/x"
    entry.deployment_limits = limits
    return entry


def _waiter(queue: FairQueue, deployment: str) -> Callable[[float], Awaitable[None]]:
    async def wait(seconds: float) -> None:
        await queue.wait_until(deployment, "", asyncio.get_running_loop().time() + seconds)

    return wait


async def test_a_deployment_at_its_rpm_waits_for_the_window() -> None:
    ledger = Ledger(LocalLimiter(window_seconds=WINDOW), None, PriceTable({}))
    queue = FairQueue((), max_wait=5, max_depth=10)
    limits = Limits(rpm_limit=1)
    first = _entry("a", limits)
    await ledger.admit(first, prompt_tokens=lambda: 0, max_tokens=0, wait=_waiter(queue, "d"))
    started = time.monotonic()
    second = _entry("b", limits)
    await ledger.admit(second, prompt_tokens=lambda: 0, max_tokens=0, wait=_waiter(queue, "d"))
    assert time.monotonic() - started >= WINDOW * 0.8
    assert second.deployment_admission is not None


async def test_without_a_wait_or_past_the_queue_wait_it_is_a_429() -> None:
    ledger = Ledger(LocalLimiter(window_seconds=60), None, PriceTable({}))
    limits = Limits(rpm_limit=1)
    await ledger.admit(_entry("a", limits), prompt_tokens=lambda: 0, max_tokens=0)
    with pytest.raises(RateLimitedError):
        await ledger.admit(_entry("b", limits), prompt_tokens=lambda: 0, max_tokens=0)
    queue = FairQueue((), max_wait=1, max_depth=10)
    with pytest.raises(NoDeploymentAvailableError) as too_long:
        await ledger.admit(
            _entry("c", limits),
            prompt_tokens=lambda: 0,
            max_tokens=0,
            wait=_waiter(queue, "d"),
        )
    assert too_long.value.status == 429
    assert (too_long.value.retry_after or 0) > 1


def test_a_keys_limits_are_made_once_per_record() -> None:
    """The same cached record reuses its Limits; an updated record (a new object) gets new
    ones at once (a key update must never keep enforcing the old limits)."""
    ledger = Ledger(LocalLimiter(), None, PriceTable({}))
    record = msgspec.convert({"token_hash": "h" * 64, "rpm_limit": 5}, KeyRecord)
    first = ledger._limits_of(record)
    assert first is not None and first.rpm_limit == 5
    assert ledger._limits_of(record) is first
    updated = msgspec.structs.replace(record, rpm_limit=9)
    again = ledger._limits_of(updated)
    assert again is not None and again.rpm_limit == 9
    unlimited = msgspec.structs.replace(record, rpm_limit=None)
    assert ledger._limits_of(unlimited) is None


# -- the prompt's token ceiling in place of its exact count --------------------------------

PRICE = Price(input=1.0, output=2.0)  # USD per million tokens


def _keyed(request_id: str, record: KeyRecord) -> Entry:
    entry = Entry(request_id=request_id, alias="m", record=record)
    entry.model = "m"
    entry.price = PRICE
    return entry


def _record(**limits: object) -> KeyRecord:
    return msgspec.convert({"token_hash": "k" * 64, **limits}, KeyRecord)


class _Counter:
    """The exact count, remembering how often it was asked for."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.tokens


async def _admit(ledger: Ledger, entry: Entry, count: _Counter, ceiling: int | None) -> None:
    await ledger.admit(entry, prompt_tokens=count, max_tokens=10, prompt_ceiling=lambda: ceiling)


async def test_the_ceiling_stands_in_for_the_count_only_once_a_key_is_known_roomy() -> None:
    ledger = Ledger(LocalLimiter(), None, PriceTable({}))
    record = _record(tpm_limit=1_000_000, max_budget=100.0)
    count = _Counter(40)
    first = _keyed("a", record)
    await _admit(ledger, first, count, ceiling=300)
    assert count.calls == 1  # nothing known about the key yet: counted
    assert first.admission is not None and first.admission.tokens == 50
    second = _keyed("b", record)
    await _admit(ledger, second, count, ceiling=300)
    assert count.calls == 1  # far from both limits: the ceiling was reserved
    assert second.admission is not None and second.admission.tokens == 310
    assert second.admission.cost_nano == round((300 * 1.0 + 10 * 2.0) * 1000)


async def test_near_the_token_limit_the_prompt_is_counted() -> None:
    ledger = Ledger(LocalLimiter(), None, PriceTable({}))
    record = _record(tpm_limit=20_000)  # 100 x 310 does not fit in what is left
    count = _Counter(40)
    for request_id in "abc":
        entry = _keyed(request_id, record)
        await _admit(ledger, entry, count, ceiling=300)
        assert entry.admission is not None and entry.admission.tokens == 50
    assert count.calls == 3


async def test_near_the_budget_the_prompt_is_counted() -> None:
    ledger = Ledger(LocalLimiter(), None, PriceTable({}))
    # 100 x the ceiling's cost (0.00032 USD) is more than the budget left.
    record = _record(max_budget=0.03)
    count = _Counter(40)
    for request_id in "ab":
        await _admit(ledger, _keyed(request_id, record), count, ceiling=300)
    assert count.calls == 2


async def test_a_ceiling_turned_down_is_asked_again_with_the_exact_count() -> None:
    """Another replica used the key up since this one last saw it: the ceiling does not
    fit, the exact estimate does, so the request is admitted, not refused."""
    limiter = LocalLimiter()
    ledger = Ledger(limiter, None, PriceTable({}))
    record = _record(tpm_limit=100_000)
    count = _Counter(40)
    await _admit(ledger, _keyed("a", record), count, ceiling=300)  # learns the room
    limits = ledger._limits_of(record)
    assert limits is not None
    left = 100_000 - 50
    # The other replica: leaves 200 tokens, less than the ceiling's 310, more than 50.
    await limiter.admit(
        record.token_hash, limits, estimated_tokens=left - 200, estimated_cost=0, request_id="x"
    )
    entry = _keyed("b", record)
    await _admit(ledger, entry, count, ceiling=300)
    assert count.calls == 2
    assert entry.admission is not None and entry.admission.tokens == 50
    # Now known to be near its limit: the next ones are counted, until the limit refuses.
    for request_id in "cde":
        await _admit(ledger, _keyed(request_id, record), count, ceiling=300)
    with pytest.raises(RateLimitedError):
        await _admit(ledger, _keyed("f", record), count, ceiling=300)
    assert count.calls == 6


async def test_without_a_ceiling_the_prompt_is_always_counted() -> None:
    """Images or tools in the body (no ceiling): the count, however roomy the key."""
    ledger = Ledger(LocalLimiter(), None, PriceTable({}))
    record = _record(tpm_limit=10_000_000)
    count = _Counter(40)
    await _admit(ledger, _keyed("a", record), count, ceiling=None)
    await _admit(ledger, _keyed("b", record), count, ceiling=None)
    assert count.calls == 2


async def test_a_deployment_that_turns_the_ceiling_down_is_asked_again_before_any_wait() -> None:
    limiter = LocalLimiter()
    ledger = Ledger(limiter, None, PriceTable({}))
    limits = Limits(tpm_limit=100_000)
    count = _Counter(40)
    waits: list[float] = []

    async def wait(seconds: float) -> None:
        waits.append(seconds)

    async def admit(request_id: str) -> Entry:
        entry = _entry(request_id, limits)
        await ledger.admit(
            entry, prompt_tokens=count, max_tokens=10, wait=wait, prompt_ceiling=lambda: 300
        )
        return entry

    await admit("a")
    second = await admit("b")
    assert count.calls == 1  # roomy: the ceiling
    assert second.deployment_admission is not None
    assert second.deployment_admission.tokens == 310
    # Elsewhere the deployment is used up to 200 tokens: the ceiling no longer fits.
    used = 100_000 - 50 - 310 - 200
    await limiter.admit(
        "deployment:m/openai/x", limits, estimated_tokens=used, estimated_cost=0, request_id="x"
    )
    third = await admit("c")
    assert count.calls == 2 and not waits
    assert third.deployment_admission is not None
    assert third.deployment_admission.tokens == 50


class _Writer:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def submit(self, record: UsageRecord) -> None:
        self.records.append(record)


async def test_close_records_every_field_of_the_request() -> None:
    """The usage record close hands the writer names each field right (it is built
    positionally, see UsageRecord)."""
    writer = _Writer()
    ledger = Ledger(LocalLimiter(), writer, PriceTable({}))  # type: ignore[arg-type]
    record = msgspec.structs.replace(
        _record(tpm_limit=1_000_000), key_alias="team-a", user_id="u1", team_id="t1"
    )
    entry = _keyed("req-1", record)
    entry.deployment, entry.provider = "m/openai/x", "openai"
    await _admit(ledger, entry, _Counter(40), ceiling=None)
    entry.first_byte = entry.started + 0.25
    details = PromptTokensDetails(cached_tokens=4)
    usage = Usage(prompt_tokens=40, completion_tokens=60, prompt_tokens_details=details)
    before = datetime.now(UTC)
    cost = ledger.close(entry, status=201, usage=usage, error_type="none", cache_hit=False)
    (stored,) = writer.records
    assert msgspec.structs.asdict(stored) == {
        "request_id": "req-1",
        "started_at": entry.started_at,
        "ended_at": stored.ended_at,
        "model": "m",
        "token_hash": "k" * 64,
        "key_alias": "team-a",
        "user_id": "u1",
        "team_id": "t1",
        "deployment": "m/openai/x",
        "provider": "openai",
        "prompt_tokens": 40,
        "completion_tokens": 60,
        "total_tokens": 100,
        "cached_tokens": 4,
        "cost_usd": cost,
        "latency_ms": stored.latency_ms,
        "ttft_ms": pytest.approx(250.0),
        "status": 201,
        "error_type": "none",
        "cache_hit": False,
    }
    assert cost > 0 and before <= stored.ended_at <= datetime.now(UTC)
    assert stored.latency_ms >= 0
