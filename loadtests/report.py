"""Turn a run's locust CSVs and the proxy's CPU samples into a chart and a summary.

Reads ``<prefix>_stats_history.csv`` (a row per request name and second) and
``<prefix>_stats.csv`` (totals per request name), written by ``locust --csv <prefix>
--csv-full-history``.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


@dataclass(frozen=True, slots=True)
class HistoryRow:
    t: float  # Unix time of the row (locust writes whole seconds)
    name: str
    rps: float
    failures_per_s: float
    p50: float | None
    p95: float | None


REPEAT = " (repeat)"
# Extra entries the locustfile reports beside the requests themselves.
AUXILIARY = ("TTFT", "stream (headers)")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # locust writes "N/A" before the first response


def read_history(path: Path) -> list[HistoryRow]:
    """Every row of a full history (one per request name and second, plus Aggregated)."""
    rows: list[HistoryRow] = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append(
                HistoryRow(
                    t=float(row["Timestamp"]),
                    name=row["Name"],
                    rps=_number(row["Requests/s"]) or 0.0,
                    failures_per_s=_number(row["Failures/s"]) or 0.0,
                    p50=_number(row["50%"]),
                    p95=_number(row["95%"]),
                )
            )
    return rows


def base_name(name: str) -> str:
    return name.removesuffix(REPEAT)


def request_rates(history: Sequence[HistoryRow]) -> dict[str, list[tuple[float, float]]]:
    """Requests/s over time per kind (repeats included), leaving out the auxiliary entries."""
    per_second: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for row in history:
        kind = base_name(row.name)
        if row.name == "Aggregated" or kind in AUXILIARY:
            continue
        per_second[kind][row.t] += row.rps
    return {kind: sorted(points.items()) for kind, points in sorted(per_second.items())}


def failure_rate(history: Sequence[HistoryRow]) -> list[tuple[float, float]]:
    """Failures/s over time over all requests (the auxiliary entries never fail alone)."""
    totals: dict[float, float] = defaultdict(float)
    for row in history:
        if row.name != "Aggregated" and base_name(row.name) not in AUXILIARY:
            totals[row.t] += row.failures_per_s
    return sorted(totals.items())


@dataclass(frozen=True, slots=True)
class StatsRow:
    kind: str
    name: str
    requests: int
    failures: int
    median_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    rps: float


def read_stats(path: Path) -> list[StatsRow]:
    with path.open(newline="") as handle:
        return [
            StatsRow(
                kind=row["Type"],
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                median_ms=_number(row["50%"]),
                p95_ms=_number(row["95%"]),
                p99_ms=_number(row["99%"]),
                rps=_number(row["Requests/s"]) or 0.0,
            )
            for row in csv.DictReader(handle)
        ]


def request_totals(rows: Sequence[StatsRow]) -> tuple[int, int, float]:
    """Requests, failures and requests/s over the real requests (no auxiliary entries)."""
    real = [r for r in rows if r.name != "Aggregated" and base_name(r.name) not in AUXILIARY]
    return (
        sum(r.requests for r in real),
        sum(r.failures for r in real),
        sum(r.rps for r in real),
    )


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def stats_table(rows: Sequence[StatsRow]) -> str:
    lines = [
        "| type | name | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.kind} | {r.name} | {r.requests:,} | {r.failures:,} | {r.rps:,.1f} "
            f"| {_ms(r.median_ms)} | {_ms(r.p95_ms)} | {_ms(r.p99_ms)} |"
        )
    return "\n".join(lines)


def chart(
    history: Sequence[HistoryRow],
    cpu: Sequence[tuple[float, float, float]],
    out: Path,
    title: str,
) -> None:
    """Three panels over time: req/s per kind, p50/p95 per kind, proxy CPU and RSS.

    ``cpu`` holds (Unix time, millicores, RSS MB) samples; the x axis starts at the earliest
    of both series.
    """
    t0 = min([r.t for r in history[:1]] + [s[0] for s in cpu[:1]], default=0.0)
    history = [replace(r, t=r.t - t0) for r in history]
    cpu = [(s[0] - t0, s[1], s[2]) for s in cpu]
    fig, (ax_rate, ax_lat, ax_cpu) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for kind, points in request_rates(history).items():
        ax_rate.plot([p[0] for p in points], [p[1] for p in points], label=kind)
    failures = failure_rate(history)
    ax_rate.plot([p[0] for p in failures], [p[1] for p in failures], "r--", label="failures")
    ax_rate.set_ylabel("requests/s")
    ax_rate.legend(loc="upper left", fontsize="small")
    for name in ("chat", "TTFT", "embeddings"):
        rows = [r for r in history if r.name == name]
        for pct, style in (("p50", "-"), ("p95", ":")):
            points = [(r.t, getattr(r, pct)) for r in rows if getattr(r, pct)]
            if points:
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                ax_lat.plot(xs, ys, style, label=f"{name} {pct}")
    ax_lat.set_ylabel("latency ms (fresh prompts)")
    ax_lat.set_yscale("log")
    ax_lat.legend(loc="upper left", fontsize="small", ncol=3)
    ax_cpu.plot([s[0] for s in cpu], [s[1] for s in cpu], label="proxy CPU (millicores)")
    ax_cpu.set_ylabel("millicores")
    ax_cpu.set_xlabel("seconds")
    ax_mem = ax_cpu.twinx()
    ax_mem.plot([s[0] for s in cpu], [s[2] for s in cpu], color="tab:purple", label="RSS MB")
    ax_mem.set_ylabel("RSS MB")
    ax_cpu.legend(loc="upper left")
    ax_mem.legend(loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
