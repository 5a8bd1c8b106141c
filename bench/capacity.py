"""Capacity of one replica: how much traffic one proxy worker on one core carries.

    make capacity                        # .venv/bin/python bench/capacity.py
    .venv/bin/python bench/capacity.py --help

One replica as in the container (``llm-proxy serve``, one worker, a master key, a virtual
key with rate limits, keys and usage in a fresh Postgres schema, limits in Redis) pinned
to ``--proxy-core`` with taskset; the fake provider (fixed ``--upstream-ms`` latency) and
wrk (bench/capacity.lua, a constant offered rate) share ``--client-core``. For each
offered rate, rising: wrk straight to the provider (the "direct" latency), then wrk
through the proxy while its CPU, RSS and /metrics (in flight, queue depth) are sampled.
Stops after the first saturated step (rate missed by 10% or over 1% errors).

Writes ``bench/results/capacity-<time>/`` (steps.json, capacity.md, capacity.png) and,
unless ``--no-write``, bench/capacity.json: the figures tests/deploy checks the HPA and
the resources in deploy/k8s/base against. Prints the verdict; exit 1 when the manifests
disagree with the measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

from loadtests import capacity, stack
from loadtests.capacity import Step, Targets

BENCH = Path(__file__).resolve().parent
LUA = BENCH / "capacity.lua"
CAPACITY_JSON = BENCH / "capacity.json"
BASE = stack.REPO / "deploy" / "k8s" / "base"
CHAT = "/v1/chat/completions"


def deploy_targets(base: Path = BASE) -> Targets:
    """The pod's resources and the HPA's targets, read from deploy/k8s/base."""
    deployment = yaml.safe_load((base / "deployment.yaml").read_text())
    hpa = yaml.safe_load((base / "hpa.yaml").read_text())
    return capacity.targets_from(deployment, hpa)


def wrk(opts: argparse.Namespace, port: int, key: str, rate: float, seconds: int) -> dict[str, Any]:
    # Room for the latency to grow several-fold before wrk runs out of connections.
    conns = min(2000, max(32, int(rate * (opts.upstream_ms / 1000 + 0.005) * 4) + 16))
    argv = ["taskset", "-c", opts.client_core, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s"]
    argv += ["--timeout", "10s", "-s", str(LUA), f"http://{stack.HOST}:{port}{CHAT}"]
    env = os.environ | {"CAP_KEY": key, "CAP_RATE": str(rate)}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=120)
    line = next(x for x in out.stdout.splitlines() if x.startswith('{"capacity"'))
    result: dict[str, Any] = json.loads(line)
    return result


class Watch:
    """Samples the proxy's /metrics gauges and RSS while a step runs."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self.in_flight: list[float] = []
        self.queue: list[float] = []
        self.rss: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        names = ("llm_proxy_requests_in_flight", "llm_proxy_queue_depth")
        while not self._stop.wait(0.25):
            with suppress(OSError):
                values = stack.scrape(self.url, names)
                self.in_flight.append(values[names[0]])
                self.queue.append(values[names[1]])
            self.rss.append(stack.tree_rss_mb(self.pid))


def measure(
    opts: argparse.Namespace, rate: float, provider_port: int, proxy: stack.Proxy, key: str
) -> Step:
    direct = wrk(opts, provider_port, key, rate, opts.direct_seconds)
    time.sleep(0.5)
    pid = proxy.process.pid
    core0 = core_busy_seconds(int(opts.proxy_core))
    cpu0, t0 = stack.tree_cpu_seconds(pid), time.monotonic()
    with Watch(proxy.url, pid) as watch:
        res = wrk(opts, proxy.port, key, rate, opts.step_seconds)
    wall = time.monotonic() - t0
    millicores = (stack.tree_cpu_seconds(pid) - cpu0) / wall * 1000
    core_mc = (core_busy_seconds(int(opts.proxy_core)) - core0) / wall * 1000
    errors = (res["socket_errors"] + res["non2xx"]) / max(1, res["requests"])
    return Step(
        offered_rps=rate,
        achieved_rps=res["rps"],
        cpu_millicores=millicores,
        rss_mb=max(watch.rss, default=stack.tree_rss_mb(pid)),
        p50_ms=res["p50_ms"],
        p95_ms=res["p95_ms"],
        p99_ms=res["p99_ms"],
        direct_p50_ms=direct["p50_ms"],
        direct_p95_ms=direct["p95_ms"],
        direct_p99_ms=direct["p99_ms"],
        error_rate=errors,
        in_flight_mean=sum(watch.in_flight) / max(1, len(watch.in_flight)),
        in_flight_max=max(watch.in_flight, default=0.0),
        queue_depth_mean=sum(watch.queue) / max(1, len(watch.queue)),
        queue_depth_max=max(watch.queue, default=0.0),
        other_millicores=max(0.0, core_mc - millicores),
    )


def core_busy_seconds(core: int) -> float:
    """Time one core spent on anything but idling, from /proc/stat (via psutil)."""
    t = psutil.cpu_times(percpu=True)[core]
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def chart(steps: list[Step], targets: Targets, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rps = [s.achieved_rps for s in steps]
    fig, (ax_cpu, ax_lat, ax_fl) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    ax_cpu.plot(rps, [s.cpu_millicores for s in steps], "o-", label="proxy CPU (m)")
    level = targets.cpu_request_millicores * targets.cpu_utilization / 100
    ax_cpu.axhline(level, color="tab:red", ls="--", label=f"HPA CPU target ({level:.0f}m)")
    ax_cpu.axvline(targets.requests_per_second, color="tab:green", ls=":", label="rate target")
    ax_cpu.set_ylabel("millicores")
    ax_mem = ax_cpu.twinx()
    ax_mem.plot(rps, [s.rss_mb for s in steps], "s-", color="tab:purple", label="RSS MB")
    ax_mem.set_ylabel("RSS MB")
    ax_cpu.legend(loc="upper left", fontsize="small")
    for i, name in enumerate(("p50", "p95", "p99")):
        ax_lat.plot(rps, [s.added_ms[i] for s in steps], "o-", label=f"added {name}")
    ax_lat.set_yscale("symlog", linthresh=1.0)  # a few ms and seconds on one axis
    ax_lat.set_ylabel("latency added by the proxy, ms")
    ax_lat.legend(loc="upper left", fontsize="small")
    ax_fl.plot(rps, [s.in_flight_mean for s in steps], "o-", label="in flight (mean)")
    ax_fl.plot(rps, [s.queue_depth_mean for s in steps], "x-", label="queue depth (mean)")
    ax_fl.set_ylabel("requests")
    ax_fl.set_xlabel("achieved requests/s (one worker, one core)")
    ax_fl.legend(loc="upper left", fontsize="small")
    fig.suptitle("llm-proxy: one replica, stepped offered load")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=float, default=50.0, help="first offered req/s")
    parser.add_argument("--stop", type=float, default=6000.0, help="last offered req/s")
    parser.add_argument("--factor", type=float, default=1.6, help="step multiplier")
    parser.add_argument("--step-seconds", type=int, default=8)
    parser.add_argument("--direct-seconds", type=int, default=3)
    parser.add_argument("--upstream-ms", type=float, default=50.0, help="provider latency")
    parser.add_argument(
        "--llm-request-s", type=float, default=2.0, help="typical real request, for in flight"
    )
    parser.add_argument("--proxy-core", default="1")
    parser.add_argument("--client-core", default="0")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--no-write", action="store_true", help=f"leave {CAPACITY_JSON} alone")
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (bench/README.md, 'Capacity')")
    targets = deploy_targets()
    rates = capacity.plan_rates(
        opts.start, opts.stop, opts.factor, include=[targets.requests_per_second]
    )
    out = BENCH / "results" / f"capacity-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    backends = stack.Backends.fresh(postgres=not opts.no_postgres, redis_on=not opts.no_redis)
    master = "sk-master-" + secrets.token_hex(8)
    provider_args = ["--ttft-ms", str(opts.upstream_ms), "--tokens-per-s", "1e9"]
    provider_args += ["--output-tokens", "16"]
    steps: list[Step] = []
    try:
        with stack.fake_provider(*provider_args, cores=opts.client_core) as (_, provider_port):
            config = stack.proxy_config(
                provider_port, backends=backends, master_key=master, cache=False
            )
            with stack.proxy(config, out, cores=opts.proxy_core) as proxy:
                (key,) = stack.create_keys(
                    proxy.url, master, 1, "capacity", rpm_limit=10**9, tpm_limit=10**12
                )
                wrk(opts, proxy.port, key, 200, 3)  # warm-up: pools, caches, first records
                print(
                    "offered  achieved  CPU m  RSS MB  added p50/p95/p99 ms  in flight  errors"
                    "  other m"
                )
                for rate in rates:
                    step = measure(opts, rate, provider_port, proxy, key)
                    steps.append(step)
                    a = step.added_ms
                    print(
                        f"{rate:7.0f}  {step.achieved_rps:8.0f}  {step.cpu_millicores:5.0f}  "
                        f"{step.rss_mb:6.0f}  {a[0]:+.2f}/{a[1]:+.2f}/{a[2]:+.2f}  "
                        f"{step.in_flight_mean:9.1f}  {step.error_rate:6.2%}  "
                        f"{step.other_millicores:7.0f}",
                        flush=True,
                    )
                    if step.saturated():
                        break
    finally:
        backends.cleanup()
    return report(opts, steps, targets, out)


def report(opts: argparse.Namespace, steps: list[Step], targets: Targets, out: Path) -> int:
    findings = capacity.analyse(steps, targets, opts.llm_request_s)
    run = {
        "date": time.strftime("%Y-%m-%d"),
        "host": f"{platform.node()}: {os.cpu_count()} vCPU, {platform.platform()}",
        "python": platform.python_version(),
        "command": "make capacity (" + " ".join(sys.argv) + ")",
        "upstream_ms": opts.upstream_ms,
        "llm_request_s": opts.llm_request_s,
        "backends": "postgres+redis"
        if not (opts.no_postgres or opts.no_redis)
        else "partly embedded",
    }
    data = capacity.to_json(steps, targets, findings, run)
    (out / "steps.json").write_text(json.dumps(data, indent=2) + "\n")
    text = capacity.steps_table(steps) + "\n\n" + capacity.findings_text(findings, targets) + "\n"
    (out / "capacity.md").write_text(text)
    chart(steps, targets, out / "capacity.png")
    if not opts.no_write:
        CAPACITY_JSON.write_text(json.dumps(data, indent=2) + "\n")
    print("\n" + text)
    print(f"results: {out}" + ("" if opts.no_write else f"; figures: {CAPACITY_JSON}"))
    return 0 if findings.agrees else 1


if __name__ == "__main__":
    sys.exit(main())
