"""How the Router chooses among an alias's live deployments: one class per strategy.

``router.strategy`` names one of ``STRATEGIES``. Each strategy reads what the Router was told
about each deployment (a ``Load``) and never does I/O; randomness comes from the injected
``rng``, time from the injected clock, so tests are deterministic.

- simple-shuffle: weighted random (``weight``, else ``rpm``, else equal).
- least-busy: fewest requests in flight; ties by weight.
- latency-based-routing: lowest moving average of total latency (time to first token for
  streams); deployments with no sample yet are tried first, one at a time.
- usage-based-routing: most headroom left this minute against the deployment's rpm/tpm, as
  a fraction of the limit; a deployment without limits always has full headroom.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.routing.router import Deployment

EWMA_ALPHA = 0.3  # weight of the newest latency sample in the moving average
LATENCY_BUFFER = 0.1  # deployments within 10% of the fastest share its traffic

Clock = Callable[[], float]


@dataclass(slots=True)
class Load:
    """What the Router has been told about one deployment."""

    in_flight: int = 0
    latency: float | None = None  # moving average of non-stream total seconds
    ttft: float | None = None  # moving average of stream seconds to the first chunk
    minute: int = -1  # the clock minute the two counters below belong to
    requests: int = 0
    tokens: int = 0

    def observe(self, seconds: float, *, ttft: bool) -> None:
        old = self.ttft if ttft else self.latency
        new = seconds if old is None else old + EWMA_ALPHA * (seconds - old)
        if ttft:
            self.ttft = new
        else:
            self.latency = new

    def roll(self, minute: int) -> None:
        """Start counting afresh when a new clock minute began."""
        if minute != self.minute:
            self.minute, self.requests, self.tokens = minute, 0, 0


class Strategy(Protocol):
    def choose(
        self, deps: Sequence[Deployment], cumulative: Sequence[float] | None, stream: bool
    ) -> Deployment:
        """One of ``deps`` (never empty); ``cumulative`` holds their running weight sums."""
        ...


def weighted(
    deps: Sequence[Deployment], cumulative: Sequence[float] | None, rng: random.Random
) -> Deployment:
    """A random deployment, each as likely as its share of the total weight."""
    if len(deps) == 1:
        return deps[0]
    edges = cumulative if cumulative is not None else list(accumulate(d.weight for d in deps))
    total = edges[-1]
    if total <= 0:
        return rng.choice(deps)
    point = rng.random() * total
    for dep, edge in zip(deps, edges, strict=True):
        if point < edge:
            return dep
    return deps[-1]


class SimpleShuffle:
    def __init__(self, loads: Mapping[str, Load], rng: random.Random, clock: Clock) -> None:
        self._rng = rng

    def choose(
        self, deps: Sequence[Deployment], cumulative: Sequence[float] | None, stream: bool
    ) -> Deployment:
        return weighted(deps, cumulative, self._rng)


class LeastBusy:
    def __init__(self, loads: Mapping[str, Load], rng: random.Random, clock: Clock) -> None:
        self._loads = loads
        self._rng = rng

    def choose(
        self, deps: Sequence[Deployment], cumulative: Sequence[float] | None, stream: bool
    ) -> Deployment:
        fewest = min(self._loads[d.id].in_flight for d in deps)
        idle = [d for d in deps if self._loads[d.id].in_flight == fewest]
        return weighted(idle, cumulative if len(idle) == len(deps) else None, self._rng)


class LowestLatency:
    def __init__(self, loads: Mapping[str, Load], rng: random.Random, clock: Clock) -> None:
        self._loads = loads
        self._rng = rng

    def choose(
        self, deps: Sequence[Deployment], cumulative: Sequence[float] | None, stream: bool
    ) -> Deployment:
        averages: list[tuple[float, Deployment]] = []
        unknown: list[Deployment] = []
        for dep in deps:
            load = self._loads[dep.id]
            value = load.ttft if stream else load.latency
            if value is None:
                unknown.append(dep)
            else:
                averages.append((value, dep))
        if unknown:
            # Explore: a deployment never measured may be the fastest. Only one untried
            # request at a time goes to each, so a burst does not pile onto one unknown.
            quiet = [d for d in unknown if self._loads[d.id].in_flight == 0]
            return self._rng.choice(quiet or unknown)
        best = min(value for value, _ in averages)
        fast = [d for value, d in averages if value <= best * (1 + LATENCY_BUFFER)]
        return weighted(fast, None, self._rng)


class UsageBased:
    def __init__(self, loads: Mapping[str, Load], rng: random.Random, clock: Clock) -> None:
        self._loads = loads
        self._rng = rng
        self._clock = clock

    def choose(
        self, deps: Sequence[Deployment], cumulative: Sequence[float] | None, stream: bool
    ) -> Deployment:
        minute = int(self._clock() // 60)
        rooms = [(self._headroom(d, minute), d) for d in deps]
        most = max(room for room, _ in rooms)
        return weighted([d for room, d in rooms if room == most], None, self._rng)

    def _headroom(self, dep: Deployment, minute: int) -> float:
        load = self._loads[dep.id]
        load.roll(minute)
        room = 1.0
        rpm, tpm = dep.params.rpm, dep.params.tpm
        if rpm:
            room = min(room, 1.0 - load.requests / rpm)
        if tpm:
            room = min(room, 1.0 - load.tokens / tpm)
        return max(room, 0.0)


StrategyFactory = Callable[[Mapping[str, Load], random.Random, Clock], Strategy]

STRATEGIES: dict[str, StrategyFactory] = {
    "simple-shuffle": SimpleShuffle,
    "least-busy": LeastBusy,
    "latency-based-routing": LowestLatency,
    "usage-based-routing": UsageBased,
}
