"""The Ledger's admission: a deployment at its rpm waits for its window in the fair queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from proxy.accounting import Entry, Ledger
from proxy.errors import NoDeploymentAvailableError, RateLimitedError
from proxy.limits import Limits, LocalLimiter
from proxy.routing import FairQueue
from proxy.store import KeyRecord
from proxy.usage.prices import PriceTable

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
