"""Run the real proxy as a separate process for end-to-end tests and benchmarks."""

from __future__ import annotations

import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import (
    ManagedProcess,
    ProcessError,
    find_free_port,
    python_module_argv,
    start_process,
    stop_process,
)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class ProxyServer:
    process: ManagedProcess
    port: int

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with _OPENER.open(self.root_url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise ProcessError(self.process.describe("the proxy exited during start-up"))
            try:
                if self.get("/ready", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise ProcessError(self.process.describe(f"the proxy was not ready in {timeout}s"))


@contextmanager
def run_proxy(
    config: Mapping[str, Any],
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    ready_timeout: float | None = 30.0,
) -> Iterator[ProxyServer]:
    """Start ``python -m proxy serve`` with ``config`` on a free port; stop it afterwards.

    ``ready_timeout=None`` yields at once, without waiting for ``/ready``.
    """
    with tempfile.TemporaryDirectory(prefix="llm-proxy-test-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(dict(config)))
        port = find_free_port()
        argv = python_module_argv(
            "proxy",
            "serve",
            "--config",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        )
        child_env = {
            "LLM_PROXY_LOG_LEVEL": "warning",
            "LLM_PROXY_MASTER_KEY": "",
            "LLM_PROXY_SQLITE_PATH": str(Path(tmp) / "proxy.db"),
            "LLM_PROXY_SPILL_DIR": str(Path(tmp) / "spill"),
            **(env or {}),
        }
        proc = start_process(argv, env=child_env)
        server = ProxyServer(proc, port)
        try:
            if ready_timeout is not None:
                server.wait_ready(ready_timeout)
            yield server
        finally:
            stop_process(proc, grace=10.0)
