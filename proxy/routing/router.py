"""The Router maps a model alias to its deployments and picks one per request.

With one deployment the pick is a dictionary lookup and nothing else. With several, the
choice is among those not excluded (already tried for this request) and not cooling down:
by rendezvous hash of the request's affinity key for sticky aliases, else by the configured
strategy (strategies.py), which reads what the pipeline reports through ``begin`` / ``end``
(in flight), ``observe`` (latency) and ``record_usage`` (tokens).

A deployment cools down (its circuit opens) after an upstream 429, for its retry-after but
at least ``cooldown_seconds``, or after more than ``allowed_fails`` failures within a minute;
a group's only deployment never cools (there would be nothing left to serve). Cooldowns
started here are announced to ``on_cooldown`` listeners, and other replicas' cooldowns come
in through ``apply_cooldown`` (shared_cooldowns.py carries them over Redis).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from itertools import accumulate

from proxy.errors import NoDeploymentAvailableError
from proxy.providers import adapter_for
from proxy.providers.base import Operation, ProviderAdapter
from proxy.routing.affinity import rendezvous
from proxy.routing.strategies import STRATEGIES, Load
from proxy.settings import DeploymentParams, ModelEntry, Settings
from proxy.usage.prices import Price

log = logging.getLogger("llm_proxy")

OnCooldown = Callable[[str, float], None]  # (deployment id, seconds)

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
    # params.provider / params.upstream_model, split from params.model once, not per request
    provider: str
    upstream_model: str

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
            provider=params.provider,
            upstream_model=params.upstream_model,
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
    sticky: bool = False
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
        sticky = set(settings.router.sticky_aliases)
        self._groups = {alias: _Group(deps, alias in sticky) for alias, deps in groups.items()}
        # The hot path: an alias with one deployment is answered by this lookup alone.
        self._single = {
            a: g.deployments[0] for a, g in self._groups.items() if len(g.deployments) == 1
        }
        self._alias_of = {d.id: alias for alias, g in self._groups.items() for d in g.deployments}
        self._rng = rng or random.Random()
        self._clock = clock
        self._cooldown = settings.router.cooldown_seconds
        self._allowed_fails = settings.router.allowed_fails
        self._cooling: dict[str, float] = {}  # deployment id -> until (clock)
        self._fails: dict[str, list[float]] = {}
        self._loads = {d.id: Load() for d in self.deployments}
        self._strategy = STRATEGIES[settings.router.strategy](self._loads, self._rng, clock)
        self._counts_usage = settings.router.strategy == "usage-based-routing"
        self._listeners: list[OnCooldown] = []

    # -- what the pipeline reports -------------------------------------------------------

    def begin(self, deployment: Deployment) -> None:
        """A request to ``deployment`` is about to be sent (pair with ``end``)."""
        load = self._loads[deployment.id]
        load.in_flight += 1
        if self._counts_usage:
            load.roll(int(self._clock() // 60))
            load.requests += 1

    def end(self, deployment: Deployment) -> None:
        """The request ``begin`` announced is over, however it ended."""
        load = self._loads[deployment.id]
        load.in_flight = max(0, load.in_flight - 1)

    def observe(self, deployment: Deployment, seconds: float, *, ttft: bool) -> None:
        """A successful call's latency: total for non-streams, to the first chunk for streams."""
        self._loads[deployment.id].observe(seconds, ttft=ttft)

    def record_usage(self, deployment: Deployment, tokens: int) -> None:
        """Tokens a call to ``deployment`` used, for usage-based routing's tpm headroom."""
        if not self._counts_usage:
            return
        load = self._loads[deployment.id]
        load.roll(int(self._clock() // 60))
        load.tokens += tokens

    def failed(
        self, deployment: Deployment, *, rate_limited: bool, retry_after: float | None
    ) -> None:
        """Note an upstream failure; cool the deployment when it has failed too often."""
        if deployment.alias in self._single:
            return
        now = self._clock()
        if rate_limited:
            self._cool(deployment.id, max(self._cooldown, retry_after or 0.0), now)
            return
        recent = [t for t in self._fails.get(deployment.id, []) if now - t < _FAIL_WINDOW]
        recent.append(now)
        self._fails[deployment.id] = recent
        if len(recent) > self._allowed_fails:
            self._fails[deployment.id] = []
            self._cool(deployment.id, self._cooldown, now)

    # -- cooldowns -----------------------------------------------------------------------

    def on_cooldown(self, listener: OnCooldown) -> None:
        """Call ``listener(deployment_id, seconds)`` whenever this router cools a deployment."""
        self._listeners.append(listener)

    def apply_cooldown(self, deployment_id: str, seconds: float) -> bool:
        """Cool a deployment because another replica did; False for one we cannot cool.

        Listeners are not told: the cooldown came from elsewhere and is known there.
        """
        alias = self._alias_of.get(deployment_id)
        if alias is None or alias in self._single or seconds <= 0:
            return False
        until = self._clock() + seconds
        if until > self._cooling.get(deployment_id, 0.0):
            self._cooling[deployment_id] = until
        return True

    def _cool(self, deployment_id: str, seconds: float, now: float) -> None:
        self._cooling[deployment_id] = now + seconds
        for listener in self._listeners:
            try:
                listener(deployment_id, seconds)
            except Exception:  # a broken listener must not turn into a client error
                log.exception("cooldown listener failed")

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

    def cooldown_state(self) -> dict[str, bool]:
        """Deployment id -> whether it is cooling down (its circuit is open), for metrics."""
        return {d.id: self.cooling(d.id) for d in self.deployments}

    # -- choosing ------------------------------------------------------------------------

    @property
    def aliases(self) -> list[str]:
        return list(self._groups)

    @property
    def deployments(self) -> list[Deployment]:
        return [d for g in self._groups.values() for d in g.deployments]

    def sticky(self, alias: str) -> bool:
        """Whether ``alias`` routes by affinity key (worth computing one for its requests)."""
        group = self._groups.get(alias)
        return group is not None and group.sticky and alias not in self._single

    def in_flight(self, deployment: Deployment) -> int:
        return self._loads[deployment.id].in_flight

    def pick(
        self,
        alias: str,
        exclude: Collection[str] = (),
        *,
        affinity: str | None = None,
        stream: bool = False,
    ) -> Deployment | None:
        """A deployment for ``alias``, or None for an unknown alias.

        Raises ``NoDeploymentAvailableError`` (429 with retry-after) when every deployment
        of the alias is cooling down. Excluded deployments are used again only when nothing
        else is left. ``affinity`` (see ``affinity_key``) pins sticky aliases; ``stream``
        tells latency-based routing to compare time to first token.
        """
        single = self._single.get(alias)
        if single is not None:
            return single
        group = self._groups.get(alias)
        if group is None:
            return None
        deps = group.deployments
        cumulative: list[float] | None = group.cumulative
        if exclude or self._cooling:
            live = [d for d in deps if not self.cooling(d.id)]
            if not live:
                raise NoDeploymentAvailableError(
                    f"Every deployment of '{alias}' is cooling down after upstream failures.",
                    retry_after=self.cooldown_left(alias) or 1.0,
                )
            fresh = [d for d in live if d.id not in exclude] or live
            if len(fresh) != len(deps):
                deps, cumulative = fresh, None
        if affinity is not None and group.sticky:
            return rendezvous(affinity, deps)
        return self._strategy.choose(deps, cumulative, stream)
