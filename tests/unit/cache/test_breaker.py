"""CircuitBreaker: opens after failures in a row, probes in the background, closes on success."""

from __future__ import annotations

import asyncio

import pytest

from proxy.cache.breaker import CircuitBreaker
from tests.unit.cache.clock import Clock


class Probe:
    """A probe that fails while ``down`` and counts its calls."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self) -> None:
        self.calls += 1
        await self.release.wait()
        if self.down:
            raise ConnectionRefusedError("down")


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.fixture
def probe() -> Probe:
    """A probe for a store that starts out down."""
    return Probe()


@pytest.fixture
def breaker(probe: Probe, clock: Clock) -> CircuitBreaker:
    """A breaker opening after 3 failures and probing every 5 s of the test clock."""
    return CircuitBreaker(probe, name="test", threshold=3, retry_interval=5, clock=clock)


async def test_opens_after_threshold_failures_in_a_row(breaker: CircuitBreaker) -> None:
    """Failures open it only when consecutive; a success in between resets the count."""
    breaker.failed("x")
    breaker.failed("x")
    breaker.succeeded()
    breaker.failed("x")
    breaker.failed("x")
    assert breaker.allow() and not breaker.is_open
    breaker.failed("x")
    assert breaker.is_open and not breaker.allow()
    assert breaker.opened_total == 1


async def test_no_probe_before_the_interval(
    breaker: CircuitBreaker, probe: Probe, clock: Clock
) -> None:
    """While open and within the interval, calls are refused and nothing is attempted."""
    for _ in range(3):
        breaker.failed("x")
    clock.now += 4.9
    assert not any(breaker.allow() for _ in range(100))
    await settle()
    assert probe.calls == 0


async def test_one_probe_after_the_interval_closes_it(
    breaker: CircuitBreaker, probe: Probe, clock: Clock
) -> None:
    """After the interval a single background probe runs; its success closes the breaker."""
    for _ in range(3):
        breaker.failed("x")
    clock.now += 5
    probe.down = False
    assert not any(breaker.allow() for _ in range(10))  # callers never wait for the probe
    await settle()
    assert probe.calls == 1
    assert breaker.allow() and not breaker.is_open and breaker.failures == 0


async def test_failed_probe_reopens_for_another_interval(
    breaker: CircuitBreaker, probe: Probe, clock: Clock
) -> None:
    """A failed probe keeps it open for a further interval, then probes again."""
    for _ in range(3):
        breaker.failed("x")
    clock.now += 5
    breaker.allow()
    await settle()
    assert probe.calls == 1 and breaker.is_open
    clock.now += 4
    breaker.allow()
    await settle()
    assert probe.calls == 1
    clock.now += 1
    breaker.allow()
    await settle()
    assert probe.calls == 2


async def test_aclose_cancels_a_running_probe(
    breaker: CircuitBreaker, probe: Probe, clock: Clock
) -> None:
    """Closing while a probe hangs cancels it, leaving no task behind."""
    probe.release.clear()
    for _ in range(3):
        breaker.failed("x")
    clock.now += 5
    breaker.allow()
    await settle()
    assert probe.calls == 1
    await breaker.aclose()
    assert breaker.is_open


def test_bad_parameters_are_rejected(probe: Probe) -> None:
    """A threshold below one or a non-positive interval is a programming error."""
    with pytest.raises(ValueError, match="threshold"):
        CircuitBreaker(probe, name="t", threshold=0)
    with pytest.raises(ValueError, match="retry_interval"):
        CircuitBreaker(probe, name="t", retry_interval=0)
