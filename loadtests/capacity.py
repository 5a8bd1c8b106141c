"""The capacity report's arithmetic: load steps, crossings, the autoscaler verdict. Pure.

bench/capacity.py measures one replica at a series of offered rates and hands the steps
here. What operators need from them (issue 8): the load at which CPU crosses the HPA's
share of the pod's CPU request, the latency the proxy adds at the HPA's request-rate
target, the memory at peak, and whether the HPA's four targets fire in the intended
order: the request rate first (it is the cheapest to reason about), CPU and in-flight
later, memory never in normal operation.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def plan_rates(
    start: float, stop: float, factor: float, include: Sequence[float] = ()
) -> list[float]:
    """Offered rates from ``start`` multiplied by ``factor`` up to ``stop``, plus ``include``.

    Rounded to whole req/s, sorted, without duplicates; ``include`` (e.g. the HPA's rate
    target) is always measured, so nothing at that rate is interpolated.
    """
    if start <= 0 or stop < start or factor <= 1:
        raise ValueError("rates: need 0 < start <= stop and factor > 1")
    rates = set(round(r) for r in include if 0 < r <= stop)
    rate = start
    while rate <= stop * 1.0001:
        rates.add(round(rate))
        rate *= factor
    rates.add(round(stop))
    return sorted(float(r) for r in rates)


@dataclass(frozen=True, slots=True)
class Step:
    """One offered rate against one replica, and what was measured there."""

    offered_rps: float
    achieved_rps: float
    cpu_millicores: float
    rss_mb: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    direct_p50_ms: float
    direct_p95_ms: float
    direct_p99_ms: float
    error_rate: float
    in_flight_mean: float
    in_flight_max: float
    queue_depth_mean: float
    queue_depth_max: float
    # CPU other processes took on the proxy's core meanwhile (a shared machine's noise)
    other_millicores: float = 0.0

    @property
    def added_ms(self) -> tuple[float, float, float]:
        """p50/p95/p99 the proxy adds: proxy minus direct at the same rate, same run."""
        return (
            self.p50_ms - self.direct_p50_ms,
            self.p95_ms - self.direct_p95_ms,
            self.p99_ms - self.direct_p99_ms,
        )

    def saturated(self, tolerance: float = 0.9, max_errors: float = 0.01) -> bool:
        """Missed the offered rate by more than 10% or failed more than 1% of requests."""
        return self.achieved_rps < tolerance * self.offered_rps or self.error_rate > max_errors


@dataclass(frozen=True, slots=True)
class Targets:
    """The deploy/ settings the measurements are checked against."""

    cpu_request_millicores: float
    memory_request_mib: float
    memory_limit_mib: float
    cpu_utilization: float  # HPA averageUtilization, percent of the request
    memory_utilization: float
    requests_per_second: float  # per pod
    load_metric: str  # the fourth target: llm_proxy_queue_depth or llm_proxy_requests_in_flight
    load_value: float  # per pod


def quantity(text: str | float) -> float:
    """A Kubernetes CPU quantity in millicores ("1", "500m"), or memory in MiB ("512Mi")."""
    value = str(text)
    units = {"m": 1.0, "Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for suffix, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value) * 1000  # whole cores


def targets_from(deployment: dict[str, Any], hpa: dict[str, Any]) -> Targets:
    """The proxy container's resources and the HPA's four targets, from their manifests."""
    container = next(
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "llm-proxy"
    )
    resources = container["resources"]
    found: dict[str, float] = {}
    load = ("none", 0.0)
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Resource":
            found[metric["resource"]["name"]] = metric["resource"]["target"]["averageUtilization"]
        else:
            name = metric["pods"]["metric"]["name"]
            found[name] = float(metric["pods"]["target"]["averageValue"])
            if name != "llm_proxy_requests_per_second":
                load = (name, found[name])
    return Targets(
        cpu_request_millicores=quantity(resources["requests"]["cpu"]),
        memory_request_mib=quantity(resources["requests"]["memory"]),
        memory_limit_mib=quantity(resources["limits"]["memory"]),
        cpu_utilization=found["cpu"],
        memory_utilization=found["memory"],
        requests_per_second=found["llm_proxy_requests_per_second"],
        load_metric=load[0],
        load_value=load[1],
    )


def crossing(xs: Sequence[float], ys: Sequence[float], level: float) -> float | None:
    """The x at which y first reaches ``level``, by linear interpolation between points.

    None when y stays below it. Points are taken in order of x.
    """
    points = sorted(zip(xs, ys, strict=True))
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if y0 >= level:
            return x0
        if y1 >= level:
            return x0 + (x1 - x0) * (level - y0) / (y1 - y0)
    if points and points[-1][1] >= level:
        return points[-1][0]
    return None


def value_at(xs: Sequence[float], ys: Sequence[float], x: float) -> float | None:
    """y at ``x`` by linear interpolation; None outside the measured range."""
    points = sorted(zip(xs, ys, strict=True))
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if points and points[-1][0] == x:
        return points[-1][1]
    return None


def cpu_per_request(steps: Sequence[Step]) -> float:
    """Millicores per req/s (= CPU ms per request), least squares through the unsaturated steps.

    The intercept is the idle cost (event-loop timers, metrics, the usage writer).
    """
    usable = [s for s in steps if not s.saturated() and s.achieved_rps > 0]
    if len(usable) < 2:
        raise ValueError("need two unsaturated steps to fit CPU against load")
    xs, ys = [s.achieved_rps for s in usable], [s.cpu_millicores for s in usable]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


IN_FLIGHT = "llm_proxy_requests_in_flight"
QUEUE_DEPTH = "llm_proxy_queue_depth"


@dataclass(frozen=True, slots=True)
class Findings:
    cpu_target_millicores: float
    cpu_target_rps: float | None  # achieved req/s where CPU crosses the HPA's share
    cpu_target_extrapolated: bool
    cpu_ms_per_request: float
    max_rps: float  # highest achieved rate of an unsaturated step
    added_ms_at_rate_target: tuple[float, float, float] | None
    in_flight_at_rate_target: float | None  # with the run's upstream latency
    load_target_rps: float | None  # where the fourth target fired in the run
    in_flight_at_rate_llm: float  # at the rate target, with a typical LLM request duration
    peak_rss_mb: float
    memory_target_mb: float
    order: list[tuple[str, float | None]]  # targets by the req/s at which each fires
    verdict: str
    agrees: bool


def analyse(steps: Sequence[Step], targets: Targets, llm_request_s: float = 2.0) -> Findings:
    """Where each HPA target fires, and whether the order is the intended one.

    ``llm_request_s`` is a typical duration of a real LLM request (the run's upstream is
    faster, to reach CPU saturation with few connections); with it Little's law gives the
    requests in flight at the rate target for real traffic.
    """
    rps = [s.achieved_rps for s in steps]
    cpu_level = targets.cpu_request_millicores * targets.cpu_utilization / 100
    cpu_rps = crossing(rps, [s.cpu_millicores for s in steps], cpu_level)
    slope = cpu_per_request(steps)
    extrapolated = cpu_rps is None
    if cpu_rps is None and slope > 0:
        # Never reached in the run: extend the fitted line from the last unsaturated step.
        last = max((s for s in steps if not s.saturated()), key=lambda s: s.achieved_rps)
        cpu_rps = last.achieved_rps + (cpu_level - last.cpu_millicores) / slope
    rate = targets.requests_per_second
    added = [s.added_ms for s in steps]
    a50, a95, a99 = (value_at(rps, [a[i] for a in added], rate) for i in range(3))
    in_flight = [s.in_flight_mean for s in steps]
    series = in_flight if targets.load_metric == IN_FLIGHT else [s.queue_depth_mean for s in steps]
    load_rps = crossing(rps, series, targets.load_value)
    in_flight_llm = rate * llm_request_s
    if targets.load_metric == IN_FLIGHT:
        # Real requests last seconds: the in-flight target fires at target / duration req/s.
        load_rps = min(load_rps or float("inf"), targets.load_value / llm_request_s)
    peak = max(s.rss_mb for s in steps)
    memory_level = targets.memory_request_mib * targets.memory_utilization / 100
    order: list[tuple[str, float | None]] = [
        (f"requests/s {rate:g}", rate),
        (f"CPU {targets.cpu_utilization:g}%", cpu_rps),
        (f"{targets.load_metric} {targets.load_value:g}", load_rps),
        (f"memory {targets.memory_utilization:g}%", None if peak < memory_level else 0.0),
    ]
    order.sort(key=lambda item: float("inf") if item[1] is None else item[1])
    problems = _problems(
        targets,
        cpu_rps=cpu_rps,
        load_rps=load_rps,
        peak=peak,
        memory_level=memory_level,
        llm_request_s=llm_request_s,
    )
    if problems:
        agrees, verdict = False, "DISAGREE: " + "; ".join(problems)
    else:
        assert cpu_rps is not None
        how = "extrapolated, " if extrapolated else ""
        agrees, verdict = (
            True,
            (
                f"OK: CPU {targets.cpu_utilization:g}% target reached at {cpu_rps:,.0f} req/s "
                f"({how}{cpu_rps / rate:.0f}x the {rate:g} req/s rate target): the rate target "
                f"leads, as intended; peak memory {peak:,.0f} MB stays under the memory target "
                f"({memory_level:,.0f} MiB)"
            ),
        )
    return Findings(
        cpu_target_millicores=cpu_level,
        cpu_target_rps=cpu_rps,
        cpu_target_extrapolated=extrapolated,
        cpu_ms_per_request=slope,
        max_rps=max((s.achieved_rps for s in steps if not s.saturated()), default=0.0),
        added_ms_at_rate_target=None
        if a50 is None or a95 is None or a99 is None
        else (a50, a95, a99),
        in_flight_at_rate_target=value_at(rps, in_flight, rate),
        load_target_rps=load_rps,
        in_flight_at_rate_llm=in_flight_llm,
        peak_rss_mb=peak,
        memory_target_mb=memory_level,
        order=order,
        verdict=verdict,
        agrees=agrees,
    )


def _problems(
    targets: Targets,
    *,
    cpu_rps: float | None,
    load_rps: float | None,
    peak: float,
    memory_level: float,
    llm_request_s: float,
) -> list[str]:
    rate = targets.requests_per_second
    problems = []
    if cpu_rps is None:
        problems.append("CPU never rises with load: the measurement is broken")
    elif cpu_rps <= rate:
        problems.append(
            f"CPU {targets.cpu_utilization:g}% is reached at {cpu_rps:,.0f} req/s, before the "
            f"{rate:g} req/s rate target: lower the rate target below {cpu_rps:,.0f}"
        )
    if load_rps is not None and load_rps < rate:
        why = (
            f" (requests of {llm_request_s:g} s: in flight = rate x duration)"
            if targets.load_metric == IN_FLIGHT
            else ""
        )
        problems.append(
            f"{targets.load_metric} {targets.load_value:g} fires at {load_rps:,.0f} req/s{why}, "
            f"before the rate target, with the CPU {100 * load_rps / (cpu_rps or 1):.0f}% of "
            f"the way to its target: scale on {QUEUE_DEPTH} instead"
        )
    if peak >= memory_level:
        problems.append(
            f"peak memory {peak:,.0f} MB is over {targets.memory_utilization:g}% of the "
            f"{targets.memory_request_mib:g} MiB request: raise the memory request"
        )
    if peak >= targets.memory_limit_mib:
        problems.append(f"peak memory {peak:,.0f} MB reaches the limit: raise the memory limit")
    return problems


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def steps_table(steps: Sequence[Step]) -> str:
    lines = [
        "| offered req/s | achieved req/s | CPU m | RSS MB | added p50/p95/p99 ms "
        "| direct p50 ms | errors | in flight mean/max | queue mean/max | other m |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in steps:
        a50, a95, a99 = s.added_ms
        lines.append(
            f"| {s.offered_rps:,.0f} | {s.achieved_rps:,.0f} | {s.cpu_millicores:,.0f} "
            f"| {s.rss_mb:,.0f} | {a50:+.2f}/{a95:+.2f}/{a99:+.2f} | {s.direct_p50_ms:.2f} "
            f"| {s.error_rate:.2%} | {s.in_flight_mean:.1f}/{s.in_flight_max:.0f} "
            f"| {s.queue_depth_mean:.1f}/{s.queue_depth_max:.0f} | {s.other_millicores:,.0f} |"
        )
    return "\n".join(lines)


def findings_text(f: Findings, targets: Targets) -> str:
    added = f.added_ms_at_rate_target
    at_rate = "—" if added is None else "/".join(f"{a:+.2f}" for a in added)
    order = ", then ".join(
        f"{name} ({'never' if rps is None else f'{rps:,.0f} req/s'})" for name, rps in f.order
    )
    cpu_note = " (extrapolated)" if f.cpu_target_extrapolated else ""
    return "\n".join(
        [
            f"- CPU {targets.cpu_utilization:g}% of the {targets.cpu_request_millicores:g}m "
            f"request ({f.cpu_target_millicores:,.0f}m) at {_fmt(f.cpu_target_rps)} req/s"
            f"{cpu_note}; {f.cpu_ms_per_request:.3f} CPU ms per request",
            f"- highest rate carried without saturating: {f.max_rps:,.0f} req/s",
            f"- added latency p50/p95/p99 at {targets.requests_per_second:g} req/s: {at_rate} ms",
            f"- in flight at {targets.requests_per_second:g} req/s: "
            f"{_fmt(f.in_flight_at_rate_target, '.1f')} in this run, "
            f"{f.in_flight_at_rate_llm:,.0f} with LLM requests (rate x duration); "
            f"{targets.load_metric} {targets.load_value:g} fires at "
            f"{_fmt(f.load_target_rps)} req/s",
            f"- peak RSS {f.peak_rss_mb:,.0f} MB; memory target {f.memory_target_mb:,.0f} MiB "
            f"({targets.memory_utilization:g}% of {targets.memory_request_mib:g} MiB)",
            f"- order in which the HPA targets fire: {order}",
            f"- verdict: {f.verdict}",
        ]
    )


def to_json(
    steps: Sequence[Step], targets: Targets, f: Findings, run: dict[str, Any]
) -> dict[str, Any]:
    """The machine-readable figures tests/deploy compares with the manifests."""
    return {
        "run": run,
        "targets": asdict(targets),
        "findings": {
            "cpu_target_rps": None if f.cpu_target_rps is None else round(f.cpu_target_rps),
            "cpu_target_extrapolated": f.cpu_target_extrapolated,
            "cpu_ms_per_request": round(f.cpu_ms_per_request, 4),
            "max_rps": round(f.max_rps),
            "added_ms_at_rate_target": None
            if f.added_ms_at_rate_target is None
            else [round(a, 3) for a in f.added_ms_at_rate_target],
            "in_flight_at_rate_target": f.in_flight_at_rate_target,
            "load_target_rps": f.load_target_rps,
            "peak_rss_mb": round(f.peak_rss_mb, 1),
            "order": [name for name, _ in f.order],
            "agrees": f.agrees,
            "verdict": f.verdict,
        },
        "steps": [asdict(s) for s in steps],
    }
