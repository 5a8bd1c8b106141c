"""Start, watch and stop helper processes (the fake upstream, the proxy) from tests.

Free of pytest so it can be used from fixtures, scripts and benchmarks alike::

    with run_fake_upstream("--chunks", "4") as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
        ...
        assert fake.stats()["requests"] == 1

The generic pieces (``start_process``, ``wait_for_line``, ``stop_process``) work for any child
that announces readiness with a line on stdout, e.g. the proxy::

    proc = start_process(python_module_argv("proxy", "--port", "0"))
    try:
        port = int(wait_for_line(proc, "LISTENING ", timeout=15))
        ...
    finally:
        stop_process(proc)

The child's stdout and stderr are drained continuously by background threads (so a chatty
child never blocks on a full pipe) and the most recent lines are kept for error messages.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
FAKE_UPSTREAM_MODULE: Final = "tests.support.fake_upstream"
KEPT_LINES: Final = 2000

# Talk to 127.0.0.1 directly even when the environment configures an HTTP proxy.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProcessError(RuntimeError):
    """A child process died or stayed silent before printing the expected line."""


class ManagedProcess:
    """A child process whose stdout and stderr are drained into bounded line buffers."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] = REPO_ROOT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        child_env = dict(os.environ)
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        if env is not None:
            child_env.update(env)
        self._cond = threading.Condition()
        self._stdout: deque[str] = deque(maxlen=KEPT_LINES)
        self._stderr: deque[str] = deque(maxlen=KEPT_LINES)
        self._stdout_total = 0  # lines ever read from stdout
        self._cursor = 0  # next stdout line (absolute index) wait_for_line will examine
        self._open_streams = 2
        self.popen: subprocess.Popen[str] = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            # Its own process group, so stop() can also reap workers the child forked.
            start_new_session=True,
        )
        assert self.popen.stdout is not None
        assert self.popen.stderr is not None
        self._threads = [
            threading.Thread(
                target=self._drain,
                args=(self.popen.stdout, True),
                name=f"stdout-{self.popen.pid}",
                daemon=True,
            ),
            threading.Thread(
                target=self._drain,
                args=(self.popen.stderr, False),
                name=f"stderr-{self.popen.pid}",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while the child runs."""
        return self.popen.poll()

    def _drain(self, stream: IO[str], is_stdout: bool) -> None:
        try:
            for line in stream:
                with self._cond:
                    if is_stdout:
                        self._stdout.append(line.rstrip("\r\n"))
                        self._stdout_total += 1
                    else:
                        self._stderr.append(line.rstrip("\r\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass  # the pipe was closed under us by stop()
        finally:
            with self._cond:
                self._open_streams -= 1
                self._cond.notify_all()

    def stdout_text(self) -> str:
        """The most recent stdout lines."""
        with self._cond:
            return "\n".join(self._stdout)

    def stderr_text(self) -> str:
        """The most recent stderr lines."""
        with self._cond:
            return "\n".join(self._stderr)

    def describe(self, problem: str) -> str:
        """An error message with the command, exit status and captured output."""
        stdout, stderr = self.stdout_text(), self.stderr_text()
        return (
            f"{problem}\ncommand: {' '.join(self.argv)}\nexit status: {self.returncode}\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """Wait for a stdout line starting with ``prefix``; return the rest of it, stripped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                oldest = self._stdout_total - len(self._stdout)
                self._cursor = max(self._cursor, oldest)
                while self._cursor < self._stdout_total:
                    line = self._stdout[self._cursor - oldest]
                    self._cursor += 1
                    if line.startswith(prefix):
                        return line[len(prefix) :].strip()
                if self._open_streams < 2 and self._cursor >= self._stdout_total:
                    break  # stdout hit EOF: the child is gone or closed it
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProcessError(
                        self.describe(f"no stdout line starting with {prefix!r} in {timeout}s")
                    )
                self._cond.wait(min(remaining, 0.1))
        # Give the child a moment to exit and its stderr to drain for the report.
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=2)
        self._join_threads(1.0)
        raise ProcessError(self.describe(f"process closed stdout before printing {prefix!r}"))

    def _join_threads(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _kill_group(self) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; return the exit status.

        Idempotent.  Leftover processes of the child's group (forked workers still holding
        its pipes) are killed too, so the output threads always finish.
        """
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.popen.wait()
        self._join_threads(0.5)
        if any(thread.is_alive() for thread in self._threads):
            self._kill_group()
            self._join_threads(2.0)
        if not any(thread.is_alive() for thread in self._threads):
            for stream in (self.popen.stdout, self.popen.stderr):
                if stream is not None:
                    stream.close()
        return self.popen.returncode


def python_module_argv(module: str, *args: str) -> list[str]:
    """``[sys.executable, "-m", module, *args]``."""
    return [sys.executable, "-m", module, *args]


def start_process(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] = REPO_ROOT,
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """Start ``argv`` (cwd defaults to the repository root) with drained stdout/stderr."""
    return ManagedProcess(argv, cwd=cwd, env=env)


def wait_for_line(proc: ManagedProcess, prefix: str, timeout: float = 15.0) -> str:
    """Return the rest of the first new stdout line starting with ``prefix``.

    Raises ProcessError (with the child's output) if the child exits or ``timeout`` passes.
    """
    return proc.wait_for_line(prefix, timeout)


def stop_process(proc: ManagedProcess, grace: float = 5.0) -> int:
    """Terminate the child (SIGTERM, then SIGKILL after ``grace`` s) and close its pipes."""
    return proc.stop(grace)


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (racy; prefer ``--port 0`` plus a LISTENING line)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def http_json(method: str, url: str, body: Any = None, *, timeout: float = 5.0) -> tuple[int, Any]:
    """A tiny synchronous JSON request without proxies; returns (status, parsed body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status: int = response.status
            raw: bytes = response.read()
    except urllib.error.HTTPError as error:
        with error:
            status, raw = error.code, error.read()
    return status, json.loads(raw) if raw else None


@dataclass(frozen=True)
class FakeUpstream:
    """A running fake upstream process and how to reach it."""

    process: ManagedProcess
    port: int
    host: str = "127.0.0.1"

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>``, also the Azure ``azure_endpoint``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url``: ``http://127.0.0.1:<port>/v1``."""
        return f"{self.root_url}/v1"

    def stats(self) -> dict[str, Any]:
        """The fake's ``GET /_stats`` counters."""
        status, body = http_json("GET", f"{self.root_url}/_stats")
        if status != 200 or not isinstance(body, dict):
            raise ProcessError(f"GET /_stats answered {status}: {body!r}")
        return body

    def reset(self) -> None:
        """Zero the fake's counters (``POST /_reset``)."""
        status, body = http_json("POST", f"{self.root_url}/_reset")
        if status != 200:
            raise ProcessError(f"POST /_reset answered {status}: {body!r}")

    def wait_for_stats(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Poll ``/_stats`` until ``predicate`` holds; return the matching snapshot."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() >= deadline:
                raise AssertionError(f"stats never satisfied the condition in {timeout}s: {stats}")
            time.sleep(0.02)


@contextmanager
def run_fake_upstream(*args: str, startup_timeout: float = 15.0) -> Iterator[FakeUpstream]:
    """Run ``python -m tests.support.fake_upstream --port 0 *args`` for the ``with`` block."""
    proc = start_process(python_module_argv(FAKE_UPSTREAM_MODULE, "--port", "0", *args))
    try:
        port = int(wait_for_line(proc, "LISTENING ", startup_timeout))
        yield FakeUpstream(process=proc, port=port)
    finally:
        stop_process(proc)
