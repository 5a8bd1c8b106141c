"""Instructions per request: each target's proxy under valgrind's callgrind, one run each.

Throughput on this machine moves by tens of percent from round to round; the count of
instructions a proxy executes for the same requests does not (the same config twice agrees
within ~2%, whatever else the machine is doing). That makes it the measure to compare two
versions of the code by, or the keyed targets with the core: the ratio of instructions per
request is what the throughput ratio tends to on a quiet machine.

For each target: the fake upstream (natively, on the client core), the proxy under
``valgrind --tool=callgrind --instr-atstart=no`` on the proxy core, a warm-up of
``--warmup`` requests, then counting switched on for exactly ``--requests`` requests sent by
``--conc`` aiohttp connections (the body of chat.lua, its user message numbered), and off
after ``--settle`` seconds more (the usage writer's batches land in that time).

    .venv/bin/python bench/instructions.py --label core --extra-config bench/configs/core.yaml \
        --compare keys-local=bench/configs/keys_local.yaml

Needs valgrind (Debian package ``valgrind``); about a minute per target.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from launch import (
    HOST,
    MODEL,
    REPO,
    BenchError,
    Children,
    free_port,
    proxy_config,
    start_upstream,
    wait_health,
)

_HEAD = (
    '{"model": "' + MODEL + '", "messages": [{"role": "system", "content": "You are a concise '
    'assistant. Answer in one short paragraph."}, {"role": "user", "content": "Summarise the '
    "trade-offs between pooling HTTP connections and opening a new connection for every "
    "request"
)
_TAIL = '."}], "max_tokens": 128, "temperature": 0.2}'


async def send(url: str, key: str, requests: int, conc: int) -> int:
    """``requests`` chat completions over ``conc`` connections; the number not answered 200."""
    numbers = itertools.count(int(time.time() * 100_000))
    left = requests
    failed = 0
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_connection() -> None:
            nonlocal left, failed
            while left > 0:
                left -= 1
                body = f"{_HEAD} (request {next(numbers)}){_TAIL}".encode()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    failed += resp.status != 200

        await asyncio.gather(*(one_connection() for _ in range(conc)))
    return failed


def _callgrind(pid: int, counting: str) -> None:
    subprocess.run(
        ["callgrind_control", "-i", counting, str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def measure(opts: argparse.Namespace, name: str, extra: Path | None, upstream_port: int) -> float:
    """Instructions per request of one target."""
    children = Children()
    work = Path(tempfile.mkdtemp(prefix=f"llm-proxy-instr-{name}-"))
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(proxy_config(upstream_port, extra)))
    out = work / "callgrind.out"
    log = work / "proxy.log"
    port = free_port()
    argv = ["taskset", "-c", str(opts.proxy_core), "valgrind", "--tool=callgrind"]
    argv += ["--instr-atstart=no", f"--callgrind-out-file={out}", sys.executable, "-m", "proxy"]
    argv += ["serve", "--config", str(config), "--host", HOST, "--port", str(port)]
    argv += ["--workers", "1"]
    env = os.environ | {"LLM_PROXY_LOG_LEVEL": "warning"}
    url = f"http://{HOST}:{port}/v1/chat/completions"
    try:
        with log.open("wb") as log_file:
            proxy = children.start(
                argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )
        wait_health(proxy, port, log, opts.health_timeout)
        if asyncio.run(send(url, opts.api_key, opts.warmup, opts.conc)):
            raise BenchError(f"{name}: warm-up requests failed; see {log}")
        time.sleep(opts.settle)
        _callgrind(proxy.pid, "on")
        failed = asyncio.run(send(url, opts.api_key, opts.requests, opts.conc))
        time.sleep(opts.settle)
        _callgrind(proxy.pid, "off")
        if failed:
            raise BenchError(f"{name}: {failed} of {opts.requests} requests failed; see {log}")
    finally:
        children.stop_all()
    totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        raise BenchError(f"{name}: no totals in {out}")
    requests: int = opts.requests
    return int(totals.group(1)) / requests


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", default="proxy", help="name of the first target")
    p.add_argument("--extra-config", type=Path, help="YAML merged over the first target's")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=YAML")
    p.add_argument("--requests", type=int, default=3000, help="counted requests per target")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--conc", type=int, default=64, help="connections")
    p.add_argument("--settle", type=float, default=3.0, help="seconds before and after counting")
    p.add_argument("--api-key", default="sk-bench-client")
    p.add_argument("--client-core", type=int, default=0)
    p.add_argument("--proxy-core", type=int, default=1)
    p.add_argument("--health-timeout", type=float, default=300.0)
    # start_upstream's settings: an upstream that answers at once
    p.set_defaults(chunks=20, latency_ms=0.0, chunk_delay_ms=0.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    missing = [tool for tool in ("valgrind", "callgrind_control") if not shutil.which(tool)]
    if missing:
        print(f"error: {', '.join(missing)} not found: apt-get install valgrind", file=sys.stderr)
        return 1
    targets: list[tuple[str, Path | None]] = [(opts.label, opts.extra_config)]
    for spec in opts.compare:
        name, _, path = spec.partition("=")
        targets.append((name, Path(path)))
    children = Children()
    try:
        _, upstream_port = start_upstream(children, opts)
        results = [(name, measure(opts, name, extra, upstream_port)) for name, extra in targets]
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
    first = results[0][1]
    print(f"{'target':<16} {'instructions/request':>22} {'ratio to ' + opts.label:>16}")
    for name, per_request in results:
        print(f"{name:<16} {per_request:>22,.0f} {first / per_request:>16.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
