"""Every Prometheus metric, defined once, and the ``Recorder`` the request path calls.

With several worker processes, ``server.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before any worker imports this module; prometheus-client then keeps each value in
a per-process memory-mapped file and ``render()`` sums them, so a scrape of any worker sees
the whole pod. Gauges say how to combine workers (``livesum``: only live workers count).

Labels are bounded: route, configured model alias (``other`` for names the proxy does not
serve), deployment id and provider (both from the config), HTTP status code (requests) or
class (upstream: ``2xx``, ``4xx``, ``5xx``, ``none`` when nothing was answered), and
``error_type`` (a ``ProxyError`` class name in snake case, see ``error_type_of``). Never keys,
users or anything a client can choose freely.

Requests by provider are the upstream calls (``llm_proxy_upstream_requests_total``), not a
fourth label on ``llm_proxy_requests_total``: one request may reach no provider (a 404) and
the HPA's series keeps its labels. Total tokens are ``sum without (kind)
(llm_proxy_tokens_total)``, not a series of their own.

Adding a metric for a new feature (cache, limits, routing health, Redis, Postgres): define it
here beside the others, with the feature's own bounded labels, add a ``Recorder`` method that
caches its labelled children and returns at once when disabled, and call that method from the
feature; never from inside a custom collector, which multiprocess mode does not aggregate (a
component that keeps plain counters, such as the usage writer, adds their growth to a Counter
from its own periodic task). Then add its panel to deploy/monitoring/grafana-dashboard.json
and, if it deserves a page, its alert to deploy/monitoring/alerts.yaml; the tests check that
every name they use is exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.errors import ProxyError

log = logging.getLogger("llm_proxy")

# From a 5 ms cache hit to a 5 minute generation.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
# What the proxy adds to a request: 50 µs (a lean hop) to 100 ms (something is wrong).
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
# Output tokens per second of one generation, from a stalled model to a small fast one.
RATE_BUCKETS = (1.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LOOP_LAG_INTERVAL = 0.5  # seconds between two probes of a worker's event loop

# -- traffic ------------------------------------------------------------------------------
REQUESTS = Counter(
    "llm_proxy_requests",
    "Requests answered, by route, model alias and HTTP status.",
    ["route", "model", "status"],
)
UPSTREAM_REQUESTS = Counter(
    "llm_proxy_upstream_requests",
    "Calls to upstream deployments, by provider, deployment and status class of the answer.",
    ["provider", "deployment", "status"],
)
ERRORS = Counter(
    "llm_proxy_errors",
    "Failed requests, by route, the provider that failed (none: before any upstream call) "
    "and error type.",
    ["route", "provider", "error_type"],
)
TOKENS = Counter(
    "llm_proxy_tokens",
    "Tokens processed, by model alias and kind (prompt or completion).",
    ["model", "kind"],
)
COST = Counter(
    "llm_proxy_cost_usd",
    "Upstream cost in US dollars, by model alias.",
    ["model"],
)
# -- latency ------------------------------------------------------------------------------
REQUEST_DURATION = Histogram(
    "llm_proxy_request_duration_seconds",
    "Time from receiving a request to sending the end of its response.",
    ["route", "model"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_DURATION = Histogram(
    "llm_proxy_upstream_duration_seconds",
    "Time from sending a request upstream to its last byte (a stream's last chunk).",
    ["provider", "deployment"],
    buckets=LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "llm_proxy_overhead_seconds",
    "The proxy's own time per request: total duration minus the upstream call.",
    ["route"],
    buckets=OVERHEAD_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "llm_proxy_time_to_first_token_seconds",
    "Streams: time from receiving the request to sending the first content chunk.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
OUTPUT_RATE = Histogram(
    "llm_proxy_output_tokens_per_second",
    "Streams: completion tokens per second between the first chunk and the last.",
    ["model"],
    buckets=RATE_BUCKETS,
)
LOOP_LAG = Histogram(
    "llm_proxy_event_loop_lag_seconds",
    "How late a worker's event loop ran a callback scheduled every 0.5 s.",
    buckets=LOOP_LAG_BUCKETS,
)
# From a sub-millisecond Redis round trip to a database write that waits on a lock.
DEPENDENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
DEPENDENCY_DURATION = Histogram(
    "llm_proxy_dependency_duration_seconds",
    "Calls to Redis and the database, by dependency (redis, database) and operation "
    "(limiter, cache, usage_write).",
    ["dependency", "operation"],
    buckets=DEPENDENCY_BUCKETS,
)
DEPENDENCY_ERRORS = Counter(
    "llm_proxy_dependency_errors",
    "Calls to Redis and the database that failed or timed out, by dependency and operation.",
    ["dependency", "operation"],
)
# -- saturation ---------------------------------------------------------------------------
IN_FLIGHT = Gauge(
    "llm_proxy_requests_in_flight",
    "Requests being served right now (streams included).",
    multiprocess_mode="livesum",
)
STREAMS_OPEN = Gauge(
    "llm_proxy_streams_open",
    "Streamed responses being relayed right now.",
    multiprocess_mode="livesum",
)
# Counted by Sanic's http.lifecycle.begin/complete signals (app.py): once per connection.
CONNECTIONS_OPEN = Gauge(
    "llm_proxy_connections_open",
    "Client connections open right now (kept-alive idle ones included).",
    multiprocess_mode="livesum",
)
# -- response cache -----------------------------------------------------------------------
CACHE_REQUESTS = Counter(
    "llm_proxy_cache_requests",
    "Requests to cached routes, by route and result: hit (answered from the cache), miss "
    "(asked upstream; embeddings: any item missing) or bypass (the cache store, Redis, was "
    "slow or unreachable: asked upstream, no error).",
    ["route", "result"],
)
# -- routing health -----------------------------------------------------------------------
RETRIES = Counter(
    "llm_proxy_upstream_retries",
    "Upstream calls retried (on another deployment where one exists), by model alias.",
    ["model"],
)
FALLBACKS = Counter(
    "llm_proxy_fallbacks",
    "Requests sent on to a fallback alias after their own alias failed, by the alias asked "
    "for, the fallback and whether the fallback answered (ok) or failed too (failed).",
    ["model", "fallback", "result"],
)
COOLDOWNS = Counter(
    "llm_proxy_deployment_cooldowns",
    "Times a deployment was taken out of rotation (circuit opened) after failures or a 429.",
    ["deployment"],
)
CIRCUIT_OPEN = Gauge(
    "llm_proxy_deployment_circuit_open",
    "1 while a deployment is cooling down (its circuit is open), else 0.",
    ["deployment"],
    multiprocess_mode="livemax",
)
QUEUE_DEPTH = Gauge(
    "llm_proxy_queue_depth",
    "Requests waiting for a deployment: a concurrency slot (max_parallel_requests) or an "
    "upstream connection of its pool.",
    multiprocess_mode="livesum",
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
_STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def render() -> bytes:
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if TOP_KEYS.keys:
            registry.register(TOP_KEYS)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


# -- opt-in: the keys that spent most -----------------------------------------------------
class _KeyRecord(Protocol):
    @property
    def token_hash(self) -> str: ...
    @property
    def key_alias(self) -> str | None: ...
    @property
    def spend(self) -> float: ...
    @property
    def max_budget(self) -> float | None: ...


class _KeyLister(Protocol):
    async def list_keys(
        self, *, user_id: str | None, team_id: str | None, limit: int, offset: int
    ) -> Sequence[_KeyRecord]: ...


class TopKeys(Collector):
    """Spend and remaining budget of the N keys that spent most (``server.metrics_top_keys``).

    Off by default: one series per key is the cardinality the rest of the metrics avoid. A
    worker refreshes its snapshot from the database every minute; each scrape reports the
    snapshot of the worker that answers it, so a key that leaves the top N leaves the scrape
    too (a multiprocess gauge would keep its last value). Labelled by the key's alias, or the
    first 12 hex digits of its hash when it has none; never the key.
    """

    def __init__(self) -> None:
        self.keys: list[tuple[str, float, float | None]] = []  # (label, spend, remaining)

    def collect(self) -> Iterator[Metric]:
        spend = GaugeMetricFamily(
            "llm_proxy_key_spend_usd",
            "Opt-in: spend in US dollars of the keys that spent most, by key alias.",
            labels=["key"],
        )
        remaining = GaugeMetricFamily(
            "llm_proxy_key_budget_remaining_usd",
            "Opt-in: budget left in US dollars of the keys that spent most, by key alias.",
            labels=["key"],
        )
        for label, usd, left in self.keys:
            spend.add_metric([label], usd)
            if left is not None:
                remaining.add_metric([label], left)
        yield spend
        yield remaining

    async def refresh(self, keys: _KeyLister, top: int) -> None:
        records: list[_KeyRecord] = []
        while page := await keys.list_keys(
            user_id=None, team_id=None, limit=500, offset=len(records)
        ):
            records += page
        self.keys = [
            (
                r.key_alias or r.token_hash[:12],
                r.spend,
                None if r.max_budget is None else max(0.0, r.max_budget - r.spend),
            )
            for r in heapq.nlargest(top, records, key=lambda r: r.spend)
        ]


TOP_KEYS = TopKeys()


async def _watch_top_keys(keys: _KeyLister, top: int, interval: float) -> None:
    while True:
        try:
            await TOP_KEYS.refresh(keys, top)
        except Exception as exc:  # the database away: keep the last snapshot
            log.warning("top keys metric: could not read the keys: %s", exc)
        await asyncio.sleep(interval)


def start_top_keys_export(keys: _KeyLister, top: int, interval: float = 60.0) -> asyncio.Task[None]:
    """Export the ``top`` keys by spend (see ``TopKeys``); without multiprocess mode too."""
    if not multiprocess_enabled():
        with contextlib.suppress(ValueError):  # registered already (a second start)
            REGISTRY.register(TOP_KEYS)
    task = _watch_top_keys(keys, top, interval)
    return asyncio.get_running_loop().create_task(task, name="llm-proxy-top-keys")


def process_exited(pid: int) -> None:
    """Drop a finished worker's live gauges from the pod's sums."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def status_class(status: int) -> str:
    """``2xx`` for 200..299 and so on; ``none`` for 0 (no answer) or a nonsense code."""
    index = status // 100
    return _STATUS_CLASSES[index] if 0 < index < len(_STATUS_CLASSES) else "none"


_error_types: dict[type[BaseException], str] = {}


def error_type_of(exc: BaseException) -> str:
    """A bounded label for a failure: ``UpstreamTimeoutError`` -> ``upstream_timeout``.

    Anything outside the ``ProxyError`` tree is ``internal`` (a bug of ours); a cancelled
    request (the client went away) is ``client_closed``.
    """
    cls = type(exc)
    found = _error_types.get(cls)
    if found is None:
        if issubclass(cls, ProxyError):
            name = cls.__name__.removesuffix("Error") or "Proxy"
            found = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
        elif issubclass(cls, asyncio.CancelledError | GeneratorExit):
            found = "client_closed"
        else:
            found = "internal"
        _error_types[cls] = found
    return found


async def _watch_loop_lag(loop: asyncio.AbstractEventLoop, interval: float) -> None:
    observe = LOOP_LAG.observe
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - due))


LIMITER_DEGRADED = Gauge(
    "llm_proxy_limiter_degraded",
    "1 while the rate limiter cannot reach Redis and its failure policy is in force.",
    multiprocess_mode="livemax",
)
USAGE_QUEUE_DEPTH = Gauge(
    "llm_proxy_usage_queue_depth",
    "Usage records waiting in memory for the database.",
    multiprocess_mode="livesum",
)
USAGE_SPILLED = Counter(
    "llm_proxy_usage_spilled_records",
    "Usage records written to the local spill file because the database was away.",
)
USAGE_WRITE_ERRORS = Counter(
    "llm_proxy_usage_write_errors",
    "Failed attempts to write a batch of usage records to the database.",
)


class _Limiter(Protocol):
    @property
    def degraded(self) -> bool: ...


class _Router(Protocol):
    def cooldown_state(self) -> dict[str, bool]: ...


class _Writer(Protocol):
    @property
    def queue_depth(self) -> int: ...

    spilled_records_total: int
    write_errors_total: int


async def _watch_services(
    limiter: _Limiter | None, writer: _Writer | None, router: _Router | None, interval: float
) -> None:
    spilled = errors = 0
    while True:
        if router is not None:
            for deployment, cooling in router.cooldown_state().items():
                CIRCUIT_OPEN.labels(deployment).set(1 if cooling else 0)
        if limiter is not None:
            LIMITER_DEGRADED.set(1 if limiter.degraded else 0)
        if writer is not None:
            USAGE_QUEUE_DEPTH.set(writer.queue_depth)
            USAGE_SPILLED.inc(writer.spilled_records_total - spilled)
            USAGE_WRITE_ERRORS.inc(writer.write_errors_total - errors)
            spilled, errors = writer.spilled_records_total, writer.write_errors_total
        await asyncio.sleep(interval)


def start_service_monitor(
    limiter: _Limiter | None,
    writer: _Writer | None,
    router: _Router | None = None,
    interval: float = 1.0,
) -> asyncio.Task[None]:
    """Copy the limiter's, the usage writer's and the router's state into gauges every
    ``interval`` s."""
    task = _watch_services(limiter, writer, router, interval)
    return asyncio.get_running_loop().create_task(task, name="llm-proxy-service-metrics")


def start_loop_lag_monitor(
    loop: asyncio.AbstractEventLoop, interval: float = LOOP_LAG_INTERVAL
) -> asyncio.Task[None]:
    """Probe this worker's loop every ``interval`` s; cancel the task at shutdown."""
    return loop.create_task(_watch_loop_lag(loop, interval), name="llm-proxy-loop-lag")


_M = TypeVar("_M", Counter, Histogram)


def _child(cache: dict[Hashable, _M], metric: _M, key: tuple[str, ...]) -> _M:
    """Create, cache and return the child of ``metric`` for ``key`` (its label values)."""
    child = cache[key] = metric.labels(*key)
    return child


class Recorder:
    """What the request path calls. Each method caches its labelled children, so a call
    costs a dictionary hit and the update; with ``enabled=False`` every method returns at
    once. Methods take label values, never label dicts."""

    __slots__ = (
        "_bypasses",
        "_cache",
        "_cost",
        "_counts",
        "_dependencies",
        "_durations",
        "_errors",
        "_known",
        "_overheads",
        "_rates",
        "_tokens",
        "_ttfts",
        "_upstream_counts",
        "_upstream_durations",
        "enabled",
    )

    def __init__(self, aliases: list[str], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._known = frozenset(aliases)
        self._counts: dict[Hashable, Counter] = {}
        self._durations: dict[Hashable, Histogram] = {}
        self._tokens: dict[Hashable, Counter] = {}
        self._cost: dict[Hashable, Counter] = {}
        self._errors: dict[Hashable, Counter] = {}
        self._upstream_counts: dict[Hashable, Counter] = {}
        self._upstream_durations: dict[Hashable, Histogram] = {}
        self._overheads: dict[Hashable, Histogram] = {}
        self._ttfts: dict[Hashable, Histogram] = {}
        self._rates: dict[Hashable, Histogram] = {}
        self._cache: dict[Hashable, Counter] = {}
        self._dependencies: dict[Hashable, Histogram] = {}
        self._bypasses = 0  # the cache backend's bypass count already exported

    def model_label(self, model: str | None) -> str:
        return model if model in self._known else "other"

    # -- one per request ----------------------------------------------------------------
    def started(self) -> None:
        if self.enabled:
            IN_FLIGHT.inc()

    def finished(self, route: str, model: str, status: int, seconds: float) -> None:
        if not self.enabled:
            return
        IN_FLIGHT.dec()
        key = (route, model, status)
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts[key] = REQUESTS.labels(route, model, str(status))
        counter.inc()
        hkey = (route, model)
        hist = self._durations.get(hkey) or _child(self._durations, REQUEST_DURATION, hkey)
        hist.observe(seconds)

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        if not self.enabled:
            return
        for kind, n in (("prompt", prompt), ("completion", completion)):
            if n:
                key = (model, kind)
                (self._tokens.get(key) or _child(self._tokens, TOKENS, key)).inc(n)

    def cost(self, model: str, usd: float) -> None:
        if self.enabled and usd > 0:
            key = (model,)
            (self._cost.get(key) or _child(self._cost, COST, key)).inc(usd)

    def error(self, route: str, provider: str, error_type: str) -> None:
        """``provider`` is ``none`` when the request failed before any upstream call."""
        if self.enabled:
            key = (route, provider, error_type)
            (self._errors.get(key) or _child(self._errors, ERRORS, key)).inc()

    def upstream(self, provider: str, deployment: str, status: int, seconds: float) -> None:
        """One upstream call: its HTTP status (0: no answer) and time to its last byte."""
        if not self.enabled:
            return
        key = (provider, deployment, status)
        counter = self._upstream_counts.get(key)
        if counter is None:
            label = status_class(status)
            counter = self._upstream_counts[key] = UPSTREAM_REQUESTS.labels(
                provider, deployment, label
            )
        counter.inc()
        hkey = (provider, deployment)
        hist = self._upstream_durations.get(hkey) or _child(
            self._upstream_durations, UPSTREAM_DURATION, hkey
        )
        hist.observe(seconds)

    def overhead(self, route: str, seconds: float) -> None:
        if self.enabled:
            key = (route,)
            hist = self._overheads.get(key) or _child(self._overheads, OVERHEAD, key)
            hist.observe(max(0.0, seconds))

    # -- streams ------------------------------------------------------------------------
    def stream_opened(self) -> None:
        if self.enabled:
            STREAMS_OPEN.inc()

    def stream_closed(self) -> None:
        if self.enabled:
            STREAMS_OPEN.dec()

    def first_token(self, model: str, seconds: float) -> None:
        if self.enabled:
            key = (model,)
            (self._ttfts.get(key) or _child(self._ttfts, TIME_TO_FIRST_TOKEN, key)).observe(seconds)

    def output_rate(self, model: str, tokens: int, seconds: float) -> None:
        """Completion tokens over the time between first and last chunk; skipped when
        either is zero (a one-chunk answer has no rate)."""
        if self.enabled and tokens > 0 and seconds > 0:
            key = (model,)
            hist = self._rates.get(key) or _child(self._rates, OUTPUT_RATE, key)
            hist.observe(tokens / seconds)

    # -- response cache -----------------------------------------------------------------
    def cache_lookup(self, route: str, *, hit: bool, bypasses: int) -> None:
        """One lookup; ``bypasses`` is the backend's running count of operations it could
        not serve: when it grew, this lookup (a miss) was a bypass."""
        if not self.enabled:
            return
        result = "hit" if hit else "miss"
        if bypasses > self._bypasses:
            self._bypasses = bypasses
            if not hit:
                result = "bypass"
        key = (route, result)
        counter = self._cache.get(key)
        if counter is None:
            counter = self._cache[key] = CACHE_REQUESTS.labels(route, result)
        counter.inc()

    # -- start-up -------------------------------------------------------------------------
    def initialise(
        self,
        *,
        deployments: Iterable[str],
        fallbacks: Iterable[tuple[str, Iterable[str]]] = (),
        cached_routes: Iterable[str] = (),
        dependencies: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Create the series whose labels the configuration already knows, at zero: a
        counter that has never moved is then a 0 on dashboards, not "no data", and its
        first increase is seen by rate() (Prometheus' own advice)."""
        if not self.enabled:
            return
        for deployment in deployments:
            COOLDOWNS.labels(deployment)
            CIRCUIT_OPEN.labels(deployment).set(0)
        for alias in self._known:
            RETRIES.labels(alias)
        for alias, chain in fallbacks:
            for fallback in chain:
                for result in ("ok", "failed"):
                    FALLBACKS.labels(self.model_label(alias), self.model_label(fallback), result)
        for route in cached_routes:
            for result in ("hit", "miss", "bypass"):
                CACHE_REQUESTS.labels(route, result)
        for dependency, operation in dependencies:
            DEPENDENCY_DURATION.labels(dependency, operation)
            DEPENDENCY_ERRORS.labels(dependency, operation)

    # -- dependencies ---------------------------------------------------------------------
    def dependency(self, dependency: str, operation: str, seconds: float, ok: bool) -> None:
        """One call to Redis or the database: its time, and whether it failed."""
        if not self.enabled:
            return
        key = (dependency, operation)
        hist = self._dependencies.get(key) or _child(self._dependencies, DEPENDENCY_DURATION, key)
        hist.observe(seconds)
        if not ok:
            DEPENDENCY_ERRORS.labels(dependency, operation).inc()

    def timer(self, dependency: str, operation: str) -> Callable[[float, bool], None]:
        """``dependency`` bound to one dependency and operation, for an edge to call."""
        return lambda seconds, ok: self.dependency(dependency, operation, seconds, ok)

    # -- routing --------------------------------------------------------------------------
    def retry(self, model: str) -> None:
        if self.enabled:
            RETRIES.labels(model).inc()

    def fallback(self, model: str, fallback: str, *, ok: bool) -> None:
        if self.enabled:
            FALLBACKS.labels(model, fallback, "ok" if ok else "failed").inc()

    def cooldown(self, deployment: str) -> None:
        if self.enabled:
            COOLDOWNS.labels(deployment).inc()

    # -- saturation ---------------------------------------------------------------------
    def queue(self, delta: int) -> None:
        """+1 when a request starts waiting for an upstream slot, -1 when it stops."""
        if self.enabled:
            QUEUE_DEPTH.inc(delta)
