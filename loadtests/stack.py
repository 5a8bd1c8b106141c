"""The system under load, started and torn down in one place: fake provider, proxy, keys.

Shared by ``loadtests/run.py`` (``make loadtest``), ``bench/capacity.py`` and
``bench/streams.py``. The proxy runs as in the container (``llm-proxy serve``, one worker
per requested core) with Postgres and Redis when asked: a fresh schema and a unique Redis
key prefix per run, dropped and deleted afterwards. Process CPU and memory are read with
psutil (the whole tree: a Sanic manager and its workers).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import redis
import yaml

from tests.support.processes import (
    ManagedProcess,
    find_free_port,
    python_module_argv,
    start_process,
    stop_process,
    wait_for_line,
)

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
POSTGRES_URL = os.environ.get("LOADTEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LOADTEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def pinned(argv: Sequence[str], cores: str | None) -> list[str]:
    return ["taskset", "-c", cores, *argv] if cores else list(argv)


@contextmanager
def fake_provider(*args: str, cores: str | None = None) -> Iterator[tuple[ManagedProcess, int]]:
    """``python -m loadtests.fake_provider --port 0 *args``; yields the process and port."""
    argv = python_module_argv("loadtests.fake_provider", "--host", HOST, "--port", "0", *args)
    proc = start_process(pinned(argv, cores))
    try:
        yield proc, int(wait_for_line(proc, "LISTENING ", 15.0))
    finally:
        stop_process(proc)


@dataclass(frozen=True, slots=True)
class Backends:
    """Where keys, usage, limits and the cache live for one run (None: embedded)."""

    postgres_schema: str | None = None
    redis_prefix: str | None = None

    @classmethod
    def fresh(cls, postgres: bool, redis_on: bool) -> Backends:
        tag = f"{time.strftime('%Y%m%d%H%M%S')}_{secrets.token_hex(3)}"
        return cls(
            f"loadtest_{tag}" if postgres else None,
            f"llm-proxy-loadtest:{tag}:" if redis_on else None,
        )

    def cleanup(self) -> None:
        """Drop the run's schema and delete its Redis keys; never fails the run."""
        if self.postgres_schema:
            with suppress(OSError, asyncpg.PostgresError):
                asyncio.run(_drop_schema(self.postgres_schema))
        if self.redis_prefix:
            with suppress(redis.RedisError):
                client = redis.Redis.from_url(REDIS_URL)
                keys = list(client.scan_iter(match=self.redis_prefix + "*", count=1000))
                for start in range(0, len(keys), 500):
                    client.delete(*keys[start : start + 500])
                client.close()


async def _drop_schema(name: str) -> None:
    con = await asyncpg.connect(POSTGRES_URL, timeout=5)
    try:
        await con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await con.close()


def proxy_config(
    provider_port: int,
    *,
    backends: Backends,
    master_key: str | None,
    cache: bool = True,
    max_connections: int = 256,
    workers: int = 1,
) -> dict[str, Any]:
    """A production-like config: chat and embeddings deployments on the fake provider."""
    base = f"http://{HOST}:{provider_port}/v1"
    params = {"api_base": base, "api_key": "sk-fake", "max_connections": max_connections}
    config: dict[str, Any] = {
        "model_list": [
            {"model_name": CHAT_MODEL, "params": {"model": f"openai/{CHAT_MODEL}", **params}},
            {
                "model_name": EMBEDDING_MODEL,
                "params": {"model": f"openai/{EMBEDDING_MODEL}", **params},
            },
        ],
        "server": {"workers": workers, "graceful_shutdown_seconds": 5},
    }
    if master_key:
        config["master_key"] = master_key
    if backends.postgres_schema:
        config["database"] = {"url": POSTGRES_URL, "schema": backends.postgres_schema}
    if backends.redis_prefix:
        config["limits"] = {"redis_url": REDIS_URL, "key_prefix": backends.redis_prefix}
        if cache:
            config["cache"] = {
                "type": "redis",
                "redis_url": REDIS_URL,
                "key_prefix": backends.redis_prefix + "cache:",
            }
    elif cache:
        config["cache"] = {"type": "memory"}
    return config


@dataclass
class Proxy:
    process: ManagedProcess
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@contextmanager
def proxy(
    config: dict[str, Any], workdir: Path, *, cores: str | None = None, ready_timeout: float = 60
) -> Iterator[Proxy]:
    """``llm-proxy serve`` with ``config``; up once ``/ready`` answers 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "proxy-config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = find_free_port()
    argv = [str(Path(sys.executable).parent / "llm-proxy"), "serve", "--config", str(path)]
    argv += ["--host", HOST, "--port", str(port), "--workers", str(config["server"]["workers"])]
    env = {
        "LLM_PROXY_LOG_LEVEL": "warning",
        "LLM_PROXY_MASTER_KEY": "",
        "LLM_PROXY_SQLITE_PATH": str(workdir / "proxy.db"),
        "LLM_PROXY_SPILL_DIR": str(workdir / "spill"),
    }
    proc = start_process(pinned(argv, cores), env=env)
    running = Proxy(proc, port, workdir)
    try:
        _wait_ready(running, ready_timeout)
        yield running
    finally:
        stop_process(proc, grace=15.0)
        (workdir / "proxy.log").write_text(proc.stdout_text() + "\n" + proc.stderr_text())


def _wait_ready(running: Proxy, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.returncode is not None:
            raise RuntimeError(running.process.describe("the proxy exited during start-up"))
        with suppress(OSError), _OPENER.open(running.url + "/ready", timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(running.process.describe(f"the proxy was not ready in {timeout} s"))


def create_keys(
    url: str, master_key: str, n: int, prefix: str = "loadtest", **fields: Any
) -> list[str]:
    """``n`` virtual keys through the admin API; ``fields`` go into each request (limits)."""
    keys = []
    for i in range(n):
        body = json.dumps({"key_alias": f"{prefix}-{i}", "metadata": {"loadtest": True}, **fields})
        request = urllib.request.Request(
            url + "/key/generate",
            data=body.encode(),
            headers={"Authorization": f"Bearer {master_key}", "Content-Type": "application/json"},
            method="POST",
        )
        with _OPENER.open(request, timeout=10) as response:
            keys.append(json.loads(response.read())["key"])
    return keys


def scrape(url: str, names: Sequence[str]) -> dict[str, float]:
    """Sum of each named sample (all label sets) in a Prometheus text exposition."""
    with _OPENER.open(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return parse_samples(text, names)


def parse_samples(text: str, names: Sequence[str]) -> dict[str, float]:
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            with suppress(ValueError):
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in tree(pid):
        with suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def tree_rss_mb(pid: int) -> float:
    total = 0
    for proc in tree(pid):
        with suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / 2**20


@dataclass
class Sampler:
    """Samples a process tree's CPU (millicores) and RSS every ``interval`` s in a thread."""

    pid: int
    interval: float = 1.0
    # (Unix time, millicores over the last interval, RSS MB)
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        last_t = time.monotonic()
        last_cpu = tree_cpu_seconds(self.pid)
        while not self._stop.wait(self.interval):
            now, cpu = time.monotonic(), tree_cpu_seconds(self.pid)
            millicores = (cpu - last_cpu) / (now - last_t) * 1000
            self.samples.append((time.time(), millicores, tree_rss_mb(self.pid)))
            last_t, last_cpu = now, cpu
