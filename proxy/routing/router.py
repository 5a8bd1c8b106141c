"""The Router maps a model alias to its deployments and picks one per request.

With one deployment the pick is a dictionary lookup; with several, a weighted random choice
(weights from ``weight``, or ``rpm`` when no weight was set). Strategies, cooldowns, retries
and fallbacks build on this interface.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate

from proxy.providers import adapter_for
from proxy.providers.base import Operation, ProviderAdapter
from proxy.settings import DeploymentParams, ModelEntry, Settings
from proxy.usage.prices import Price


@dataclass(slots=True)
class Deployment:
    """One configured upstream for an alias, with everything per-request work reuses."""

    id: str
    alias: str
    params: DeploymentParams
    adapter: ProviderAdapter
    headers: Mapping[str, str]
    urls: Mapping[Operation, str]
    weight: float
    price: Price | None  # the deployment's own price, overriding the bundled table

    @property
    def provider(self) -> str:
        return self.params.provider

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> Deployment:
        params = entry.params
        adapter = adapter_for(params.provider)
        weight = params.weight if params.weight is not None else float(params.rpm or 1)
        return cls(
            id=entry.deployment_id,
            alias=entry.model_name,
            params=params,
            adapter=adapter,
            headers=adapter.prepare(params),
            urls={op: adapter.url(op, params) for op in Operation},
            weight=weight,
            price=_price(params),
        )


def _price(params: DeploymentParams) -> Price | None:
    if params.input_cost_per_token is None and params.output_cost_per_token is None:
        return None
    per_million = 1_000_000
    return Price(
        input=(params.input_cost_per_token or 0.0) * per_million,
        output=(params.output_cost_per_token or 0.0) * per_million,
    )


@dataclass(slots=True)
class _Group:
    deployments: list[Deployment]
    cumulative: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cumulative = list(accumulate(d.weight for d in self.deployments))


class Router:
    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        groups: dict[str, list[Deployment]] = {}
        for entry in settings.model_list:
            groups.setdefault(entry.model_name, []).append(Deployment.from_entry(entry))
        self._groups = {alias: _Group(deps) for alias, deps in groups.items()}
        self._rng = rng or random.Random()

    @property
    def aliases(self) -> list[str]:
        return list(self._groups)

    @property
    def deployments(self) -> list[Deployment]:
        return [d for g in self._groups.values() for d in g.deployments]

    def has(self, alias: str) -> bool:
        return alias in self._groups

    def pick(self, alias: str) -> Deployment | None:
        group = self._groups.get(alias)
        if group is None:
            return None
        deps = group.deployments
        if len(deps) == 1:
            return deps[0]
        total = group.cumulative[-1]
        if total <= 0:
            return self._rng.choice(deps)
        point = self._rng.random() * total
        for dep, edge in zip(deps, group.cumulative, strict=True):
            if point < edge:
                return dep
        return deps[-1]
