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
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import checks
import procstat
import report
import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
LUA = BENCH / "chat.lua"
HOST = "127.0.0.1"
MODEL = "gpt-4o-mini"
MARKER = "FASTUPSTREAM"
CHAT_PATH = "/v1/chat/completions"
DEFAULT_PROXY_CMD = (
    "{repo}/.venv/bin/llm-proxy serve --config {config} --host {host} --port {port} --workers 1"
)


Run = dict[str, Any]


class BenchError(Exception):
    """Setup or harness failure: exit 1."""


class CheckFailedError(Exception):
    """The proxy answered the functional checks wrongly: exit 2."""


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    extra_config: Path | None = None
    direct: bool = False


class Children:
    """Every process this run starts, each in its own process group, stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
        # The group id is the child's pid (start_new_session); it covers its workers too.
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs[:]):
            self.stop(proc, grace_s=5.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """One line of proc's stdout, or BenchError when none comes in time."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise BenchError(f"no output from {proc.args!r} within {timeout_s:.0f} s")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise BenchError(f"{proc.args!r} exited with status {proc.wait()}")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def start_upstream(children: Children, opts: argparse.Namespace) -> tuple[Any, int]:
    argv = ["taskset", "-c", str(opts.client_core), sys.executable]
    argv += [str(BENCH / "fast_upstream.py"), "--host", HOST, "--port", "0"]
    argv += ["--chunks", str(opts.chunks), "--latency-ms", str(opts.latency_ms)]
    argv += ["--chunk-delay-ms", str(opts.chunk_delay_ms)]
    proc = children.start(argv, stdout=subprocess.PIPE)
    line = read_line(proc, 15.0)
    if not line.startswith("LISTENING "):
        raise BenchError(f"fast_upstream printed {line!r}, want 'LISTENING <port>'")
    return proc, int(line.split()[1])


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """extra over base: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def proxy_config(upstream_port: int, extra: Path | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_list": [
            {
                "model_name": MODEL,
                "params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"http://{HOST}:{upstream_port}/v1",
                    "api_key": "sk-bench-upstream",
                },
            }
        ]
    }
    if extra is not None:
        loaded = yaml.safe_load(extra.read_text()) or {}
        if not isinstance(loaded, dict):
            raise BenchError(f"{extra}: extra config must be a YAML mapping")
        config = deep_merge(config, loaded)
    return config


def wait_health(proc: subprocess.Popen[bytes], port: int, log: Path, timeout_s: float) -> float:
    """Poll GET /health until 200; return seconds taken."""
    start = time.monotonic()
    url = f"http://{HOST}:{port}/health"
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise BenchError(f"proxy exited with status {proc.returncode}; log tail:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:]
    raise BenchError(f"proxy /health not 200 within {timeout_s:.0f} s; log tail:\n{tail}")


@contextmanager
def running_proxy(
    children: Children, opts: argparse.Namespace, target: Target, upstream_port: int, run: Run
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    config = opts.workdir / f"{target.name}.yaml"
    config.write_text(yaml.safe_dump(proxy_config(upstream_port, target.extra_config)))
    port = free_port()
    fields = {"repo": REPO, "config": config, "host": HOST, "port": port}
    argv = [tok.format(**fields) for tok in shlex.split(opts.proxy_cmd)]
    env = os.environ | {"LLM_PROXY_LOG_LEVEL": "warning"} | dict(opts.proxy_env)
    log = RESULTS / f"{opts.stamp}-{target.name}.log"
    with log.open("ab") as log_file:
        log_file.write(f"\n=== {' '.join(argv)}\n".encode())
        log_file.flush()
        proc = children.start(
            ["taskset", "-c", str(opts.proxy_core), *argv],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        run["startup_s"] = wait_health(proc, port, log, opts.health_timeout)
        run.setdefault("memory", {})["rss_start_mb"] = procstat.tree_memory(proc.pid).rss_mb
        result = checks.check_chat(
            HOST, port, key=opts.api_key, model=MODEL, marker=MARKER, expected=opts.expected_text
        )
        for warning in result.warnings:
            print(f"  WARNING {target.name}: {warning}", file=sys.stderr)
        if not result.ok:
            raise CheckFailedError(f"{target.name}: " + "; ".join(result.problems))
        yield proc, port
    finally:
        children.stop(proc)


def run_wrk(
    opts: argparse.Namespace, port: int, mode: str, *, conc: int, duration: float, rate: float = 0
) -> dict[str, Any]:
    """One wrk run pinned to the client core; its result JSON plus its own CPU time."""
    env = os.environ | {
        "BENCH_STREAM": "1" if mode == "stream" else "0",
        "BENCH_RATE": str(rate),
        "BENCH_CHECK": "1" if rate > 0 else "0",
        "BENCH_KEY": opts.api_key,
        "BENCH_MODEL": MODEL,
        "BENCH_MARKER": MARKER,
    }
    argv = ["taskset", "-c", str(opts.client_core), "wrk", "-t1", f"-c{conc}"]
    argv += [f"-d{duration:g}s", "--timeout", "10s", "-s", str(LUA)]
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
        run["memory"]["peak_mb"] = procstat.tree_memory(proxy_pid).hwm_mb
        run["memory"]["rss_end_mb"] = procstat.tree_memory(proxy_pid).rss_mb


def measure_target(
    children: Children, opts: argparse.Namespace, target: Target, mode: str, run: Run
) -> None:
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
        description="llm-proxy overhead benchmark", formatter_class=argparse.HelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="throughput run, seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up run, seconds")
    p.add_argument("--modes", default="nonstream,stream", help="comma list: nonstream,stream")
    p.add_argument("--conc", type=int, default=64, help="connections, throughput run")
    p.add_argument("--rate-nonstream", type=float, default=200.0, help="latency run, req/s")
    p.add_argument("--rate-stream", type=float, default=100.0, help="latency run, req/s")
    p.add_argument("--lat-duration", type=float, default=10.0, help="latency run, seconds")
    p.add_argument("--lat-conc", type=int, default=8, help="connections, latency run")
    p.add_argument(
        "--proxy-cmd",
        default=DEFAULT_PROXY_CMD,
        help="proxy command; {repo} {config} {host} {port} are filled in",
    )
    p.add_argument("--proxy-env", action="append", default=[], metavar="NAME=VALUE")
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
    p.add_argument("--health-timeout", type=float, default=30.0)
    p.add_argument("--profile", action="store_true", help="py-spy flame graph per mode")
    p.add_argument("--profile-duration", type=float, default=10.0)
    opts = p.parse_args(argv)
    opts.modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    if not opts.modes or set(opts.modes) - {"nonstream", "stream"}:
        p.error("--modes takes nonstream and/or stream")
    if opts.rounds < 1:
        p.error("--rounds must be at least 1")
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
