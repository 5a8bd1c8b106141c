"""Every Prometheus metric, defined once.

With several worker processes, ``server.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before any worker imports this module; prometheus-client then keeps each value in
a per-process memory-mapped file and ``render()`` sums them, so a scrape of any worker sees
the whole pod. Labels are bounded: route, configured model alias (``other`` for names the
proxy does not serve), status code. Never keys or users.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# From a 5 ms cache hit to a 5 minute generation.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

REQUESTS = Counter(
    "llm_proxy_requests",
    "Requests answered, by route, model alias and HTTP status.",
    ["route", "model", "status"],
)
REQUEST_DURATION = Histogram(
    "llm_proxy_request_duration_seconds",
    "Time from receiving a request to sending the end of its response.",
    ["route", "model"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "llm_proxy_requests_in_flight",
    "Requests being served right now (streams included).",
    multiprocess_mode="livesum",
)
TOKENS = Counter(
    "llm_proxy_tokens",
    "Tokens processed, by model alias and kind (prompt or completion).",
    ["model", "kind"],
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def render() -> bytes:
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def process_exited(pid: int) -> None:
    """Drop a finished worker's live gauges from the pod's sums."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class Recorder:
    """What the pipeline calls; caches labelled children so a request costs two dict hits."""

    __slots__ = ("_counts", "_durations", "_known", "_tokens", "enabled")

    def __init__(self, aliases: list[str], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._known = frozenset(aliases)
        self._counts: dict[tuple[str, str, int], Counter] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}
        self._tokens: dict[tuple[str, str], Counter] = {}

    def model_label(self, model: str | None) -> str:
        return model if model in self._known else "other"

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
        hist = self._durations.get(hkey)
        if hist is None:
            hist = self._durations[hkey] = REQUEST_DURATION.labels(route, model)
        hist.observe(seconds)

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        if not self.enabled:
            return
        for kind, n in (("prompt", prompt), ("completion", completion)):
            if n:
                child = self._tokens.get((model, kind))
                if child is None:
                    child = self._tokens[(model, kind)] = TOKENS.labels(model, kind)
                child.inc(n)
