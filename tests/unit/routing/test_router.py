"""The Router: aliases, single-deployment lookup, weighted choice."""

from __future__ import annotations

import random
from collections import Counter

import msgspec
import pytest

from proxy.errors import NoDeploymentAvailableError
from proxy.routing import Router
from proxy.settings import DeploymentParams, ModelEntry, RouterSettings, Settings


def _settings(*entries: tuple[str, str, float | None, int | None]) -> Settings:
    return Settings(
        model_list=tuple(
            ModelEntry(alias, DeploymentParams(model=model, weight=weight, rpm=rpm))
            for alias, model, weight, rpm in entries
        )
    )


def test_unknown_alias_has_no_deployment() -> None:
    """An alias nobody configured picks nothing."""
    router = Router(_settings(("a", "mock/x", None, None)))
    assert router.pick("b") is None
    assert router.aliases == ["a"]


def test_weights_shape_the_choice() -> None:
    """A deployment with weight 3 is picked about three times as often as one with 1."""
    router = Router(
        _settings(("a", "mock/x", 3.0, None), ("a", "mock/y", 1.0, None)), rng=random.Random(7)
    )
    picks = Counter(router.pick("a").params.model for _ in range(4000))  # type: ignore[union-attr]
    assert 2.5 < picks["mock/x"] / picks["mock/y"] < 3.6


def test_rpm_is_the_weight_when_no_weight_is_given() -> None:
    """Without weights, deployments share traffic by their rpm."""
    router = Router(_settings(("a", "mock/x", None, 900), ("a", "mock/y", None, 100)))
    assert [d.weight for d in router.deployments] == [900.0, 100.0]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _two(clock: _Clock) -> Router:
    settings = _settings(("a", "mock/x", None, None), ("a", "mock/y", None, None))
    settings = msgspec.structs.replace(
        settings, router=RouterSettings(cooldown_seconds=10, allowed_fails=1)
    )
    return Router(settings, rng=random.Random(1), clock=clock)


def test_failures_beyond_allowed_cool_a_deployment_until_it_expires() -> None:
    """Two failures within a minute (allowed_fails 1) skip x for cooldown_seconds."""
    clock = _Clock()
    router = _two(clock)
    x, y = router.deployments
    router.failed(x, rate_limited=False, retry_after=None)
    assert not router.cooling(x.id)
    router.failed(x, rate_limited=False, retry_after=None)
    assert {router.pick("a").id for _ in range(50)} == {y.id}  # type: ignore[union-attr]
    clock.now = 10.5
    assert {router.pick("a").id for _ in range(200)} == {x.id, y.id}  # type: ignore[union-attr]


def test_rate_limit_cools_at_once_for_retry_after() -> None:
    """An upstream 429 cools the deployment at once, for its retry-after if longer."""
    clock = _Clock()
    router = _two(clock)
    x, y = router.deployments
    router.failed(x, rate_limited=True, retry_after=30)
    router.failed(y, rate_limited=True, retry_after=None)
    with pytest.raises(NoDeploymentAvailableError) as info:
        router.pick("a")
    assert info.value.status == 429
    assert info.value.retry_after == 10  # y is back first
    clock.now = 11
    assert router.pick("a") is y


def test_exclusion_prefers_untried_deployments() -> None:
    """A retry goes to a deployment not tried yet while one is left."""
    router = _two(_Clock())
    x, y = router.deployments
    assert {router.pick("a", exclude=[x.id]).id for _ in range(50)} == {y.id}  # type: ignore[union-attr]
    assert router.pick("a", exclude=[x.id, y.id]) in (x, y)


def test_a_lone_deployment_never_cools() -> None:
    """With nothing to fail over to, cooling down would only turn errors into 429s."""
    router = Router(_settings(("a", "mock/x", None, None)))
    (x,) = router.deployments
    for _ in range(10):
        router.failed(x, rate_limited=True, retry_after=60)
    assert router.pick("a") is x


def test_cooling_is_announced_to_listeners() -> None:
    """A cooldown this router starts reaches every listener, with its length."""
    router = _two(_Clock())
    x, _ = router.deployments
    heard: list[tuple[str, float]] = []
    router.on_cooldown(lambda dep, seconds: heard.append((dep, seconds)))
    router.failed(x, rate_limited=False, retry_after=None)
    assert heard == []
    router.failed(x, rate_limited=False, retry_after=None)
    router.failed(x, rate_limited=True, retry_after=45)
    assert heard == [(x.id, 10), (x.id, 45)]


def test_a_broken_listener_does_not_break_routing(caplog: pytest.LogCaptureFixture) -> None:
    """A listener that raises is logged; the deployment still cools and others are told."""
    router = _two(_Clock())
    x, y = router.deployments
    heard: list[str] = []

    def broken(dep: str, seconds: float) -> None:
        raise RuntimeError("boom")

    router.on_cooldown(broken)
    router.on_cooldown(lambda dep, seconds: heard.append(dep))
    router.failed(x, rate_limited=True, retry_after=None)
    assert heard == [x.id]
    assert router.pick("a") is y
    assert "cooldown listener failed" in caplog.text


def test_remote_cooldowns_apply_without_echo() -> None:
    """apply_cooldown skips the deployment here too and is not announced again."""
    clock = _Clock()
    router = _two(clock)
    x, y = router.deployments
    heard: list[str] = []
    router.on_cooldown(lambda dep, seconds: heard.append(dep))
    assert router.apply_cooldown(x.id, 5.0)
    assert heard == []
    assert {router.pick("a").id for _ in range(20)} == {y.id}  # type: ignore[union-attr]
    assert router.apply_cooldown(x.id, 1.0)  # a shorter one does not cut it short
    clock.now = 4.0
    assert router.cooling(x.id)
    clock.now = 5.0
    assert not router.cooling(x.id)


def test_remote_cooldowns_of_unknown_or_lone_deployments_are_ignored() -> None:
    """Another replica's config may differ: unknown ids and lone deployments are skipped."""
    router = Router(_settings(("a", "mock/x", None, None)))
    (x,) = router.deployments
    assert not router.apply_cooldown("no-such-deployment", 5.0)
    assert not router.apply_cooldown(x.id, 5.0)
    assert router.pick("a") is x


def test_cooldown_state_lists_every_deployment() -> None:
    """cooldown_state maps each deployment id to whether its circuit is open."""
    clock = _Clock()
    router = _two(clock)
    x, y = router.deployments
    router.failed(x, rate_limited=True, retry_after=None)
    assert router.cooldown_state() == {x.id: True, y.id: False}
    clock.now = 10.0
    assert router.cooldown_state() == {x.id: False, y.id: False}


def test_a_lone_deployment_is_a_lookup_whatever_the_options() -> None:
    """With one deployment, exclusions, affinity and strategy do not change the answer."""
    settings = msgspec.structs.replace(
        _settings(("a", "mock/x", None, None)),
        router=RouterSettings(strategy="least-busy", sticky_aliases=("a",)),
    )
    router = Router(settings)
    (x,) = router.deployments
    assert not router.sticky("a")
    assert router.pick("a", exclude=[x.id], affinity="u:1", stream=True) is x
