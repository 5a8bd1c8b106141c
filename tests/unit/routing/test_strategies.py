"""Routing strategies through the Router: shuffle, least-busy, lowest latency, usage-based."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import NoDeploymentAvailableError
from proxy.routing import Router
from proxy.routing.strategies import EWMA_ALPHA, Load
from proxy.settings import DeploymentParams, ModelEntry, RouterSettings, RoutingStrategy, Settings


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _router(
    strategy: RoutingStrategy,
    *params: DeploymentParams,
    clock: _Clock | None = None,
    seed: int = 3,
) -> Router:
    settings = Settings(
        model_list=tuple(ModelEntry("a", p, {"id": f"d{i}"}) for i, p in enumerate(params)),
        router=RouterSettings(strategy=strategy),
    )
    return Router(settings, rng=random.Random(seed), clock=clock or _Clock())


def _picks(router: Router, n: int, *, stream: bool = False) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        dep = router.pick("a", stream=stream)
        assert dep is not None
        out[dep.id] += 1
    return out


def _p(
    weight: float | None = None, rpm: int | None = None, tpm: int | None = None
) -> DeploymentParams:
    return DeploymentParams(model="mock/m", weight=weight, rpm=rpm, tpm=tpm)


def test_simple_shuffle_follows_rpm_when_no_weight_is_set() -> None:
    """The default strategy shares traffic by rpm: 300 vs 100 is about 3 to 1."""
    router = _router("simple-shuffle", _p(rpm=300), _p(rpm=100))
    picks = _picks(router, 4000)
    assert 2.5 < picks["d0"] / picks["d1"] < 3.6


def test_least_busy_picks_the_deployment_with_fewest_in_flight() -> None:
    """With d0 holding two requests and d1 one, d2 (idle) gets the next one every time."""
    router = _router("least-busy", _p(), _p(), _p())
    d0, d1, d2 = router.deployments
    router.begin(d0)
    router.begin(d0)
    router.begin(d1)
    assert set(_picks(router, 50)) == {"d2"}
    router.begin(d2)
    router.begin(d2)
    assert set(_picks(router, 50)) == {"d1"}
    router.end(d0)
    router.end(d0)
    assert set(_picks(router, 50)) == {"d0"}
    assert router.in_flight(d0) == 0


def test_least_busy_balances_a_burst_of_concurrent_requests() -> None:
    """Requests picked and begun one after another spread evenly over the deployments."""
    router = _router("least-busy", _p(), _p(), _p())
    for _ in range(30):
        dep = router.pick("a")
        assert dep is not None
        router.begin(dep)
    assert [router.in_flight(d) for d in router.deployments] == [10, 10, 10]


def test_least_busy_breaks_ties_by_weight() -> None:
    """Among equally busy deployments the weights still shape the choice."""
    router = _router("least-busy", _p(weight=3), _p(weight=1))
    picks = _picks(router, 4000)
    assert 2.5 < picks["d0"] / picks["d1"] < 3.6


def test_end_never_drives_in_flight_below_zero() -> None:
    """An unmatched end (a pipeline bug) cannot make a deployment look extra idle."""
    router = _router("least-busy", _p(), _p())
    d0, _ = router.deployments
    router.end(d0)
    assert router.in_flight(d0) == 0


def test_latency_tries_every_unmeasured_deployment_first() -> None:
    """A deployment with no latency sample yet is chosen before any measured one."""
    router = _router("latency-based-routing", _p(), _p(), _p())
    d0, d1, _ = router.deployments
    router.observe(d0, 0.1, ttft=False)
    router.observe(d1, 0.1, ttft=False)
    assert set(_picks(router, 20)) == {"d2"}


def test_latency_explores_an_unknown_deployment_one_request_at_a_time() -> None:
    """While an untried deployment has a request in flight, other untried ones go next."""
    router = _router("latency-based-routing", _p(), _p())
    d0, _ = router.deployments
    router.begin(d0)
    assert set(_picks(router, 20)) == {"d1"}


def test_latency_prefers_the_fastest_moving_average() -> None:
    """Once measured, the lowest average wins; a slow one that speeds up wins it back."""
    router = _router("latency-based-routing", _p(), _p())
    d0, d1 = router.deployments
    router.observe(d0, 1.0, ttft=False)
    router.observe(d1, 0.2, ttft=False)
    assert set(_picks(router, 20)) == {"d1"}
    for _ in range(20):
        router.observe(d0, 0.05, ttft=False)
    assert set(_picks(router, 20)) == {"d0"}


def test_latency_within_the_buffer_shares_traffic() -> None:
    """Deployments within 10% of the fastest average all get traffic."""
    router = _router("latency-based-routing", _p(), _p(), _p())
    d0, d1, d2 = router.deployments
    router.observe(d0, 0.100, ttft=False)
    router.observe(d1, 0.105, ttft=False)
    router.observe(d2, 0.5, ttft=False)
    assert set(_picks(router, 200)) == {"d0", "d1"}


def test_streams_are_routed_by_time_to_first_token() -> None:
    """Streams compare time to first token, non-streams total latency, kept apart."""
    router = _router("latency-based-routing", _p(), _p())
    d0, d1 = router.deployments
    router.observe(d0, 0.1, ttft=True)  # quick to start streaming
    router.observe(d1, 0.9, ttft=True)
    router.observe(d0, 5.0, ttft=False)  # but slow for whole answers
    router.observe(d1, 1.0, ttft=False)
    assert set(_picks(router, 20, stream=True)) == {"d0"}
    assert set(_picks(router, 20, stream=False)) == {"d1"}


def test_moving_average_weighs_the_newest_sample_by_alpha() -> None:
    """The average moves EWMA_ALPHA of the way towards each new sample."""
    load = Load()
    load.observe(1.0, ttft=False)
    load.observe(2.0, ttft=False)
    assert load.latency == pytest.approx(1.0 + EWMA_ALPHA)
    assert load.ttft is None


def test_usage_based_spreads_requests_by_rpm_headroom() -> None:
    """Requests this minute fill deployments in proportion to their rpm."""
    router = _router("usage-based-routing", _p(rpm=300), _p(rpm=100))
    picks: Counter[str] = Counter()
    for _ in range(200):
        dep = router.pick("a")
        assert dep is not None
        router.begin(dep)
        router.end(dep)
        picks[dep.id] += 1
    assert picks == {"d0": 150, "d1": 50}


def test_usage_based_avoids_a_deployment_out_of_tokens() -> None:
    """A deployment that used its tpm this minute gets nothing until the minute turns."""
    clock = _Clock()
    router = _router("usage-based-routing", _p(tpm=1000), _p(tpm=1000), clock=clock)
    d0, _ = router.deployments
    router.record_usage(d0, 1000)
    assert set(_picks(router, 20)) == {"d1"}
    clock.now = 60.0
    assert set(_picks(router, 200)) == {"d0", "d1"}


def test_usage_based_counts_a_deployment_without_limits_as_always_free() -> None:
    """With no rpm or tpm a deployment has full headroom, however busy it was."""
    router = _router("usage-based-routing", _p(), _p(rpm=100))
    d0, d1 = router.deployments
    router.begin(d1)
    for _ in range(50):
        router.begin(d0)
    assert set(_picks(router, 20)) == {"d0"}


def test_the_strategy_only_sees_live_deployments() -> None:
    """A cooling deployment is skipped whatever the strategy thinks of it."""
    settings = Settings(
        model_list=tuple(ModelEntry("a", _p(), {"id": f"d{i}"}) for i in range(2)),
        router=RouterSettings(strategy="latency-based-routing", cooldown_seconds=10),
    )
    router = Router(settings, rng=random.Random(1), clock=_Clock())
    d0, d1 = router.deployments
    router.observe(d0, 0.01, ttft=False)
    router.observe(d1, 9.0, ttft=False)
    router.failed(d0, rate_limited=True, retry_after=None)
    assert set(_picks(router, 20)) == {"d1"}


@given(
    st.sampled_from(
        ["simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing"]
    ),
    st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["fail", "begin", "observe", "use"]))),
    st.sets(st.integers(0, 3)),
    st.booleans(),
)
def test_every_strategy_picks_a_live_untried_deployment_when_there_is_one(
    strategy: RoutingStrategy,
    events: list[tuple[int, str]],
    tried: set[int],
    stream: bool,
) -> None:
    """Whatever happened before, the pick is live, and untried when any live one is."""
    clock = _Clock()
    router = _router(strategy, _p(rpm=10), _p(tpm=100), _p(weight=2), _p(), clock=clock)
    deps = router.deployments
    for index, event in events:
        dep = deps[index]
        if event == "fail":
            router.failed(dep, rate_limited=True, retry_after=None)
        elif event == "begin":
            router.begin(dep)
        elif event == "observe":
            router.observe(dep, 0.1 * (index + 1), ttft=stream)
        else:
            router.record_usage(dep, 60)
    live = {d.id for d in deps if not router.cooling(d.id)}
    exclude = [f"d{i}" for i in tried]
    if not live:
        with pytest.raises(NoDeploymentAvailableError):
            router.pick("a", exclude, stream=stream)
        return
    picked = router.pick("a", exclude, stream=stream)
    assert picked is not None and picked.id in live
    if live - set(exclude):
        assert picked.id not in exclude
