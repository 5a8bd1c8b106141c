"""Medians across rounds and the Markdown tables printed at the end of a run.

Ratios and added latency are computed within a round (proxy against the direct run of the
same round and mode) and then medianed, so slow drift of a noisy machine cancels out.
"""

from __future__ import annotations

from statistics import median
from typing import Any

Run = dict[str, Any]
Row = dict[str, Any]

HEADER = (
    "| mode | target | req/s c={conc} | ratio vs direct | p50/p99 ms at rate "
    "| added p50/p99 ms | CPU µs/req | RSS MB start/peak |"
)
CPU_HEADER = (
    "| mode | target | req/s min-max | proxy % | upstream % | wrk % "
    "| other % client/proxy core | upstream µs/req | errors |"
)


def errors_of(result: dict[str, Any]) -> int:
    e = result["errors"]
    return int(e["connect"] + e["read"] + e["write"] + e["timeout"] + e["non2xx"] + e["bad_body"])


def _med(values: list[float]) -> float | None:
    return median(values) if values else None


def summarize(runs: list[Run], modes: list[str], targets: list[str]) -> list[Row]:
    rows: list[Row] = []
    for mode in modes:
        direct = {r["round"]: r for r in runs if r["mode"] == mode and r["target"] == "direct"}
        for target in targets:
            mine = [r for r in runs if r["mode"] == mode and r["target"] == target]
            if not mine:
                continue
            pairs = [(r, direct[r["round"]]) for r in mine if r["round"] in direct]
            rps = [r["throughput"]["rps"] for r in mine]
            lat = [r["latency"]["latency_ms"] for r in mine]
            cpu = [r["throughput"]["cpu"] for r in mine]
            mem = [r["memory"] for r in mine if r.get("memory")]
            rows.append(
                {
                    "mode": mode,
                    "target": target,
                    "rounds": len(mine),
                    "rps": _med(rps),
                    "rps_min": min(rps),
                    "rps_max": max(rps),
                    "ratio_vs_direct": _med(
                        [r["throughput"]["rps"] / d["throughput"]["rps"] for r, d in pairs]
                    ),
                    "rate": mine[0]["latency"]["rate_target"],
                    "rate_achieved": _med([r["latency"]["rps"] for r in mine]),
                    "p50_ms": _med([x["p50"] for x in lat]),
                    "p99_ms": _med([x["p99"] for x in lat]),
                    "added_p50_ms": _med(
                        [
                            r["latency"]["latency_ms"]["p50"] - d["latency"]["latency_ms"]["p50"]
                            for r, d in pairs
                        ]
                    ),
                    "added_p99_ms": _med(
                        [
                            r["latency"]["latency_ms"]["p99"] - d["latency"]["latency_ms"]["p99"]
                            for r, d in pairs
                        ]
                    ),
                    "proxy_us_per_req": _med(
                        [c["proxy_us_per_req"] for c in cpu if c["proxy_us_per_req"] is not None]
                    ),
                    "proxy_pct": _med([c["proxy_pct"] for c in cpu if c["proxy_pct"] is not None]),
                    "upstream_us_per_req": _med([c["upstream_us_per_req"] for c in cpu]),
                    "upstream_pct": _med([c["upstream_pct"] for c in cpu]),
                    "wrk_pct": _med([c["wrk_pct"] for c in cpu]),
                    **{
                        f"{role}_core_{k}": _med([r["throughput"]["cores"][role][k] for r in mine])
                        for role in ("client", "proxy")
                        for k in ("busy_pct", "steal_pct", "other_pct")
                    },
                    "rss_start_mb": _med([m["rss_start_mb"] for m in mem]),
                    "rss_peak_mb": _med([m["peak_mb"] for m in mem]),
                    "errors": sum(
                        errors_of(r["throughput"]) + errors_of(r["latency"]) for r in mine
                    ),
                }
            )
    return rows


def _num(value: float | None, fmt: str = "{:.2f}", dash: str = "—") -> str:
    return dash if value is None else fmt.format(value)


def _pair(a: float | None, b: float | None, fmt: str) -> str:
    if a is None or b is None:
        return "—"
    return f"{fmt.format(a)}/{fmt.format(b)}"


def markdown(rows: list[Row], conc: int) -> str:
    lines = [HEADER.format(conc=conc), "|" + " --- |" * 8]
    for r in rows:
        direct = r["target"] == "direct"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["mode"],
                    r["target"],
                    _num(r["rps"], "{:,.0f}"),
                    _num(r["ratio_vs_direct"]),
                    f"{_pair(r['p50_ms'], r['p99_ms'], '{:.2f}')} @{r['rate']:g}/s",
                    "—" if direct else _pair(r["added_p50_ms"], r["added_p99_ms"], "{:+.2f}"),
                    "—" if direct else _num(r["proxy_us_per_req"], "{:.0f}"),
                    "—" if direct else _pair(r["rss_start_mb"], r["rss_peak_mb"], "{:.0f}"),
                ]
            )
            + " |"
        )
    lines += ["", CPU_HEADER, "|" + " --- |" * 9]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["mode"],
                    r["target"],
                    f"{r['rps_min']:,.0f}-{r['rps_max']:,.0f}",
                    _num(r["proxy_pct"], "{:.0f}"),
                    _num(r["upstream_pct"], "{:.0f}"),
                    _num(r["wrk_pct"], "{:.0f}"),
                    f"{r['client_core_other_pct']:.0f}/{r['proxy_core_other_pct']:.0f}",
                    _num(r["upstream_us_per_req"], "{:.1f}"),
                    str(r["errors"]),
                ]
            )
            + " |"
        )
    return "\n".join(lines)
