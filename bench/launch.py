"""Start and stop the processes of a run: the fake upstream and proxies under test.

Each child gets its own session (process group), so stopping it also stops any workers it
forked, and Ctrl-C in the terminal reaches only this script, which then stops them all.
A proxy is started from a command template, fed a generated YAML config, and counts as up
when GET /health answers 200; it must then pass the functional checks in checks.py.
"""

from __future__ import annotations

import argparse
import os
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import checks
import procstat
import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
MODEL = "gpt-4o-mini"
MARKER = "FASTUPSTREAM"

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
        # Workers orphaned by a leader that died keep its group id (Linux does not reuse
        # a pid still in use as a group id), so this reaches only what we started.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
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


def start_upstream(
    children: Children, opts: argparse.Namespace
) -> tuple[subprocess.Popen[bytes], int]:
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
        # Lists replace rather than merge, so per-deployment settings (e.g. the upstream
        # client) come under their own key and apply to every deployment.
        params = loaded.pop("bench_deployment_params", None) or {}
        loaded.pop("bench_wrk_env", None)  # for the load generator, see wrk_env_of
        config = deep_merge(config, loaded)
        for entry in config["model_list"]:
            entry["params"] = {**entry["params"], **params}
    return config


def wrk_env_of(target: Target) -> dict[str, str]:
    """Environment for chat.lua from the extra config's ``bench_wrk_env`` (e.g. BENCH_VARY)."""
    if target.extra_config is None:
        return {}
    loaded = yaml.safe_load(target.extra_config.read_text()) or {}
    env = loaded.get("bench_wrk_env") or {}
    if not isinstance(env, dict):
        raise BenchError(f"{target.extra_config}: bench_wrk_env must be a mapping")
    return {str(k): str(v) for k, v in env.items()}


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
        memory = procstat.tree_memory(proc.pid)
        run["memory"] = {"rss_start_mb": memory.rss_mb, "start": memory.processes}
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
