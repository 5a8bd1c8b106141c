"""The Router: aliases, single-deployment lookup, weighted choice."""

from __future__ import annotations

import random
from collections import Counter

from proxy.routing import Router
from proxy.settings import DeploymentParams, ModelEntry, Settings


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
