"""The Router maps a model alias to its deployments and picks one per request.

With one deployment the pick is a dictionary lookup; with several, a weighted random choice
(weights from ``weight``, or ``rpm`` when no weight was set) among those not excluded (already
tried for this request) and not cooling down. A deployment cools down after an upstream 429
(for its retry-after, at least ``cooldown``) or after ``allowed_fails`` failures within a
minute; a group's only deployment never cools (there would be nothing left to serve).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from itertools import accumulate

from proxy.errors import NoDeploymentAvailableError
from proxy.providers import adapter_for
from proxy.providers.base import Operation, ProviderAdapter
from proxy.settings import DeploymentParams, ModelEntry, Settings
from proxy.usage.prices import Price

_FAIL_WINDOW = 60.0  # seconds over which allowed_fails counts


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
    def __init__(
        self,
        settings: Settings,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        groups: dict[str, list[Deployment]] = {}
        for entry in settings.model_list:
            groups.setdefault(entry.model_name, []).append(Deployment.from_entry(entry))
        self._groups = {alias: _Group(deps) for alias, deps in groups.items()}
        self._alias_of = {d.id: alias for alias, g in self._groups.items() for d in g.deployments}
        self._rng = rng or random.Random()
        self._clock = clock
        self._cooldown = settings.router.cooldown_seconds
        self._allowed_fails = settings.router.allowed_fails
        self._cooling: dict[str, float] = {}  # deployment id -> until (clock)
        self._fails: dict[str, list[float]] = {}

    def failed(
        self, deployment: Deployment, *, rate_limited: bool, retry_after: float | None
    ) -> None:
        """Note an upstream failure; cool the deployment when it has failed too often."""
        if len(self._groups[self._alias_of[deployment.id]].deployments) == 1:
            return
        now = self._clock()
        if rate_limited:
            self._cooling[deployment.id] = now + max(self._cooldown, retry_after or 0.0)
            return
        recent = [t for t in self._fails.get(deployment.id, []) if now - t < _FAIL_WINDOW]
        recent.append(now)
        self._fails[deployment.id] = recent
        if len(recent) > self._allowed_fails:
            self._cooling[deployment.id] = now + self._cooldown
            self._fails[deployment.id] = []

    def cooling(self, deployment_id: str) -> bool:
        until = self._cooling.get(deployment_id)
        if until is None:
            return False
        if self._clock() >= until:
            del self._cooling[deployment_id]
            return False
        return True

    def cooldown_left(self, alias: str) -> float:
        """Seconds until the first of an alias's cooling deployments is back."""
        now = self._clock()
        group = self._groups.get(alias)
        lefts = [self._cooling.get(d.id, now) - now for d in group.deployments] if group else []
        return max(0.0, min(lefts, default=0.0))

    @property
    def aliases(self) -> list[str]:
        return list(self._groups)

    @property
    def deployments(self) -> list[Deployment]:
        return [d for g in self._groups.values() for d in g.deployments]

    def pick(self, alias: str, exclude: Collection[str] = ()) -> Deployment | None:
        """A deployment for ``alias``, or None for an unknown alias.

        Raises ``NoDeploymentAvailableError`` (429 with retry-after) when every deployment
        of the alias is cooling down. Excluded deployments are used again only when nothing
        else is left.
        """
        group = self._groups.get(alias)
        if group is None:
            return None
        deps = group.deployments
        if len(deps) == 1:
            return deps[0]
        if exclude or self._cooling:
            live = [d for d in deps if not self.cooling(d.id)]
            if not live:
                raise NoDeploymentAvailableError(
                    f"Every deployment of '{alias}' is cooling down after upstream failures.",
                    retry_after=self.cooldown_left(alias) or 1.0,
                )
            fresh = [d for d in live if d.id not in exclude] or live
            if len(fresh) != len(deps):
                return self._weighted(fresh, list(accumulate(d.weight for d in fresh)))
        return self._weighted(deps, group.cumulative)

    def _weighted(self, deps: list[Deployment], cumulative: list[float]) -> Deployment:
        total = cumulative[-1]
        if total <= 0:
            return self._rng.choice(deps)
        point = self._rng.random() * total
        for dep, edge in zip(deps, cumulative, strict=True):
            if point < edge:
                return dep
        return deps[-1]
