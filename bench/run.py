"""Overhead benchmark: wrk -> llm-proxy -> fast fake upstream, against wrk -> upstream.

Placement on a 2-core machine: the fake upstream and wrk share core 0, the proxy (one
worker) has core 1 to itself. Per mode (nonstream, stream) and round, each target runs
in turn (order rotated per round): "direct" is wrk straight to the upstream, every proxy
target is a freshly started proxy in front of it. Per target: a warm-up, a closed-loop
throughput run (CPU of each process tree sampled from /proc), then a paced latency run
at a moderate fixed rate with every response body checked. Raw results go to
bench/results/<timestamp>.json; the Markdown tables go to stdout.

Exit status: 0 ok, 1 harness or setup error, 2 a proxy failed the functional checks,
3 some measured requests failed (non-2xx, socket errors or wrong bodies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import checks
import procstat
import report
from launch import (
    HOST,
    MARKER,
    MODEL,
    REPO,
    RESULTS,
    BenchError,
    CheckFailedError,
    Children,
    Run,
    Target,
    running_proxy,
    start_upstream,
    wrk_env_of,
)

LUA = Path(__file__).resolve().parent / "chat.lua"
CHAT_PATH = "/v1/chat/completions"
DEFAULT_PROXY_CMD = (
    "{repo}/.venv/bin/llm-proxy serve --config {config} --host {host} --port {port} --workers 1"
)


def run_wrk(
    opts: argparse.Namespace, port: int, mode: str, *, conc: int, duration: int, rate: float = 0
) -> dict[str, Any]:
    """One wrk run pinned to the client core; its result JSON plus its own CPU time."""
    env = (
        os.environ
        | {
            "BENCH_STREAM": "1" if mode == "stream" else "0",
            "BENCH_RATE": str(rate),
            "BENCH_CHECK": "1" if rate > 0 else "0",
            "BENCH_KEY": opts.api_key,
            "BENCH_MODEL": MODEL,
            "BENCH_MARKER": MARKER,
        }
        | getattr(opts, "wrk_env", {})
    )
    argv = ["taskset", "-c", str(opts.client_core), "wrk", "-t1", f"-c{conc}"]
    argv += [f"-d{duration}s", "--timeout", "10s", "-s", str(LUA)]
    argv.append(f"http://{HOST}:{port}{CHAT_PATH}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # subprocess.run kills wrk itself if we are interrupted.
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=duration + 30, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith('{"bench":"chat"')]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["wrk_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


def throughput(opts: argparse.Namespace, port: int, mode: str, proxy_pid: int | None) -> Run:
    """Closed-loop wrk run with the CPU of proxy, upstream and wrk over the same window."""
    up0 = procstat.tree_cpu_seconds(opts.upstream_pid)
    px0 = procstat.tree_cpu_seconds(proxy_pid) if proxy_pid else 0.0
    cores0 = procstat.core_times()
    t0 = time.monotonic()
    result = run_wrk(opts, port, mode, conc=opts.conc, duration=opts.duration)
    wall = time.monotonic() - t0
    cores1 = procstat.core_times()
    up = procstat.tree_cpu_seconds(opts.upstream_pid) - up0
    px = procstat.tree_cpu_seconds(proxy_pid) - px0 if proxy_pid else None
    # Whole-core load shows other work on the machine (and hypervisor steal) in the window.
    result["cores"] = {
        role: procstat.core_load(cores0[core], cores1[core])
        for role, core in (("client", opts.client_core), ("proxy", opts.proxy_core))
    }
    n = max(result["requests"], 1)
    ours = {"client": 100 * (up + result["wrk_cpu_s"]) / wall, "proxy": 100 * (px or 0.0) / wall}
    for role, load in result["cores"].items():
        load["other_pct"] = max(0.0, load["busy_pct"] - ours[role])
    result["cpu"] = {
        "wall_s": wall,
        "proxy_s": px,
        "upstream_s": up,
        "wrk_s": result["wrk_cpu_s"],
        "proxy_pct": None if px is None else 100 * px / wall,
        "upstream_pct": 100 * up / wall,
        "wrk_pct": 100 * result["wrk_cpu_s"] / wall,
        "proxy_us_per_req": None if px is None else 1e6 * px / n,
        "upstream_us_per_req": 1e6 * up / n,
    }
    return result


def measure(
    opts: argparse.Namespace, port: int, mode: str, proxy_pid: int | None, run: Run
) -> None:
    roots = [opts.upstream_pid] + ([proxy_pid] if proxy_pid else [])
    rate = opts.rate_stream if mode == "stream" else opts.rate_nonstream
    run["warmup"] = {"rps": run_wrk(opts, port, mode, conc=opts.conc, duration=opts.warmup)["rps"]}
    run["idle_wait_s"] = [procstat.wait_idle(roots)]
    run["throughput"] = throughput(opts, port, mode, proxy_pid)
    run["idle_wait_s"].append(procstat.wait_idle(roots))
    run["latency"] = run_wrk(
        opts, port, mode, conc=opts.lat_conc, duration=opts.lat_duration, rate=rate
    )
    if proxy_pid:
        memory = procstat.tree_memory(proxy_pid)
        run["memory"] |= {"peak_mb": memory.hwm_mb, "rss_end_mb": memory.rss_mb}
        run["memory"]["end"] = memory.processes


def measure_target(
    children: Children, opts: argparse.Namespace, target: Target, mode: str, run: Run
) -> None:
    opts.wrk_env = wrk_env_of(target)
    if target.direct:
        measure(opts, opts.upstream_port, mode, None, run)
        return
    with running_proxy(children, opts, target, opts.upstream_port, run) as (proc, port):
        measure(opts, port, mode, proc.pid, run)


def find_py_spy() -> str | None:
    local = REPO / ".venv" / "bin" / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile(children: Children, opts: argparse.Namespace, target: Target, mode: str) -> str:
    """A throughput run with py-spy attached (not counted in the results)."""
    py_spy = find_py_spy()
    assert py_spy is not None
    out = RESULTS / f"profile-{mode}.svg"
    run: Run = {}
    with running_proxy(children, opts, target, opts.upstream_port, run) as (proc, port):
        run_wrk(opts, port, mode, conc=opts.conc, duration=opts.warmup)
        argv = ["taskset", "-c", str(opts.client_core), py_spy, "record", "--nonblocking"]
        argv += ["--subprocesses", "-o", str(out), "--pid", str(proc.pid)]
        argv += ["--duration", str(int(opts.profile_duration))]
        spy = children.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # let py-spy attach before the load starts
        run_wrk(opts, port, mode, conc=opts.conc, duration=opts.profile_duration)
        try:
            output, _ = spy.communicate(timeout=opts.profile_duration + 30)
        finally:
            children.stop(spy)
    if spy.returncode != 0 or not out.exists():
        return f"py-spy failed ({spy.returncode}): {output.decode(errors='replace')[-1000:]}"
    return str(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="llm-proxy overhead benchmark",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are taken across them")
    p.add_argument("--duration", type=int, default=10, help="throughput run, seconds")
    p.add_argument("--warmup", type=int, default=3, help="warm-up run, seconds")
    p.add_argument("--modes", default="nonstream,stream", help="comma list: nonstream,stream")
    p.add_argument("--conc", type=int, default=64, help="connections, throughput run")
    p.add_argument("--rate-nonstream", type=float, default=200.0, help="latency run, req/s")
    p.add_argument("--rate-stream", type=float, default=100.0, help="latency run, req/s")
    p.add_argument("--lat-duration", type=int, default=10, help="latency run, seconds")
    p.add_argument("--lat-conc", type=int, default=8, help="connections, latency run")
    p.add_argument(
        "--proxy-cmd",
        default=DEFAULT_PROXY_CMD,
        help="proxy command; {repo} {config} {host} {port} are filled in",
    )
    p.add_argument(
        "--proxy-env", action="append", default=[], metavar="NAME=VALUE", help="proxy env var"
    )
    p.add_argument("--label", default="proxy", help="name of the proxy target")
    p.add_argument("--extra-config", type=Path, help="YAML merged into the generated config")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=EXTRA_CONFIG",
        help="another proxy target with this extra config, measured in the same rounds",
    )
    p.add_argument("--api-key", default="sk-bench-client", help="bearer token clients send")
    p.add_argument("--chunks", type=int, default=20, help="upstream content chunks per stream")
    p.add_argument("--latency-ms", type=float, default=0.0, help="upstream delay per reply")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="upstream delay per event")
    p.add_argument("--client-core", type=int, default=0, help="core of upstream and wrk")
    p.add_argument("--proxy-core", type=int, default=1, help="core of the proxy")
    p.add_argument(
        "--health-timeout", type=float, default=30.0, help="seconds for GET /health to be 200"
    )
    p.add_argument("--profile", action="store_true", help="py-spy flame graph per mode")
    p.add_argument("--profile-duration", type=int, default=10, help="seconds")
    opts = p.parse_args(argv)
    opts.modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    if not opts.modes or set(opts.modes) - {"nonstream", "stream"}:
        p.error("--modes takes nonstream and/or stream")
    if opts.rounds < 1:
        p.error("--rounds must be at least 1")
    # wrk takes whole seconds only.
    if min(opts.duration, opts.warmup, opts.lat_duration, opts.profile_duration) < 1:
        p.error("durations are whole seconds, at least 1")
    opts.proxy_env = [tuple(kv.split("=", 1)) for kv in opts.proxy_env]
    if any(len(kv) != 2 for kv in opts.proxy_env):
        p.error("--proxy-env takes NAME=VALUE")
    targets = [Target("direct", direct=True), Target(opts.label, opts.extra_config)]
    for pair in opts.compare:
        label, sep, path = pair.partition("=")
        if not sep or not label or not path:
            p.error(f"--compare takes LABEL=EXTRA_CONFIG, got {pair!r}")
        targets.append(Target(label, Path(path)))
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        p.error(f"target labels must be unique: {names}")
    for t in targets:
        if t.extra_config is not None and not t.extra_config.is_file():
            p.error(f"{t.name}: no such extra config {t.extra_config}")
    opts.targets = targets
    return opts


def host_info() -> dict[str, Any]:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, check=False)
    wrk_out = (wrk.stdout + wrk.stderr).decode().strip()
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        None,
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_out.splitlines()[0] if wrk_out else None,
    }


def bench(children: Children, opts: argparse.Namespace) -> int:
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found on PATH")
    cores = os.sched_getaffinity(0)
    if not {opts.client_core, opts.proxy_core} <= cores:
        raise BenchError(f"cores {opts.client_core},{opts.proxy_core} not all in {cores}")
    if opts.profile and find_py_spy() is None:
        print(
            "NOTE: --profile needs py-spy (not found in .venv/bin or on PATH); "
            "install it with `.venv/bin/pip install py-spy`. Continuing without profiles.",
            file=sys.stderr,
        )
        opts.profile = False

    upstream, opts.upstream_port = start_upstream(children, opts)
    upstream_argv = [str(a) for a in upstream.args]
    opts.upstream_pid = upstream.pid
    direct = checks.check_chat(
        HOST, opts.upstream_port, key=opts.api_key, model=MODEL, marker=MARKER, expected=None
    )
    if not direct.ok:
        raise BenchError("fast_upstream failed its own checks: " + "; ".join(direct.problems))
    opts.expected_text = direct.content

    record: dict[str, Any] = {
        "meta": {
            "timestamp": opts.stamp,
            "label": opts.label,
            "argv": sys.argv,
            "proxy_cmd": opts.proxy_cmd,
            "targets": [
                {"name": t.name, "extra_config": str(t.extra_config) if t.extra_config else None}
                for t in opts.targets
            ],
            "options": {k: v for k, v in vars(opts).items() if k not in {"targets", "workdir"}},
            "host": host_info(),
            "upstream": {"argv": upstream_argv, "port": opts.upstream_port},
            "placement": {"upstream+wrk core": opts.client_core, "proxy core": opts.proxy_core},
        },
        "runs": [],
    }
    out = RESULTS / f"{opts.stamp}.json"
    status = 0
    # Every proxy target must pass the functional checks before anything is measured.
    for target in opts.targets[1:]:
        preflight: Run = {}
        with running_proxy(children, opts, target, opts.upstream_port, preflight):
            print(
                f"{target.name}: functional checks passed "
                f"(healthy after {preflight['startup_s']:.1f} s)",
                flush=True,
            )
    try:
        for rnd in range(opts.rounds):
            for mode in opts.modes:
                k = rnd % len(opts.targets)
                for target in opts.targets[k:] + opts.targets[:k]:
                    run: Run = {"round": rnd, "mode": mode, "target": target.name}
                    print(f"round {rnd + 1}/{opts.rounds} {mode:9} {target.name} ...", flush=True)
                    measure_target(children, opts, target, mode, run)
                    record["runs"].append(run)
                    t, lat = run["throughput"], run["latency"]
                    print(
                        f"  {t['rps']:,.0f} req/s, p50/p99 {lat['latency_ms']['p50']:.2f}/"
                        f"{lat['latency_ms']['p99']:.2f} ms at {lat['rps']:.0f}/s, "
                        f"errors {report.errors_of(t) + report.errors_of(lat)}",
                        flush=True,
                    )
        if opts.profile:
            record["profiles"] = {
                mode: profile(children, opts, opts.targets[1], mode) for mode in opts.modes
            }
    finally:
        # Whatever was measured is kept, also when a later step failed.
        names = [t.name for t in opts.targets]
        record["summary"] = report.summarize(record["runs"], opts.modes, names)
        out.write_text(json.dumps(record, indent=2, default=str))
    table = report.markdown(record["summary"], opts.conc)
    print()
    print(table)
    print(f"\nraw results: {out.relative_to(REPO)}")
    for mode, where in record.get("profiles", {}).items():
        print(f"profile {mode}: {where}")
    # A direct run only uses the client core; a proxy run uses both.
    noisy = [
        r
        for r in record["runs"]
        if any(
            load["other_pct"] > 10 and (role == "client" or r["target"] != "direct")
            for role, load in r["throughput"]["cores"].items()
        )
    ]
    if noisy:
        print(
            f"NOTE: {len(noisy)} of {len(record['runs'])} throughput runs had more than 10% of a "
            "core they used taken by other processes; the numbers are noisy (see 'other %')."
        )
    if any(row["errors"] for row in record["summary"]):
        print("WARNING: some requests failed; see errors column and the raw JSON.")
        status = 3
    return status


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop every child.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="llm-proxy-bench-") as workdir:
            opts.workdir = Path(workdir)
            return bench(children, opts)
    except CheckFailedError as exc:
        print(f"FAILED functional check: {exc}", file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        children.stop_all()


if __name__ == "__main__":
    sys.exit(main())
