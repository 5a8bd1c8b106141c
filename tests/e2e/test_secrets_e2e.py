"""Secrets end to end: file-backed secrets never leak, and rotate without a restart."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import REPO_ROOT, FakeUpstream, run_fake_upstream
from tests.support.proxy_server import ProxyServer, run_proxy

MASTER_SENTINEL = "sk-master-sentinel-0d9e41c7"
UPSTREAM_SENTINEL = "sk-upstream-sentinel-5be2f8a0"
SENTINELS = (MASTER_SENTINEL, UPSTREAM_SENTINEL)
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def recording_fake() -> Iterator[FakeUpstream]:
    """A fake upstream that takes any key and records the headers it was sent."""
    with run_fake_upstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def strict_fake() -> Iterator[FakeUpstream]:
    """A fake upstream that demands a key the proxy does not have (every call is a 401)."""
    with run_fake_upstream("--require-key", "sk-the-upstream-wants-this") as upstream:
        yield upstream


def _write(path: Path, text: str) -> Path:
    """Replace a secret file the way an operator would: write aside, then rename."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    return path


def _chat(server: ProxyServer, key: str, model: str = "gpt") -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/chat/completions",
        json={"model": model, "messages": USER},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


def _models(server: ProxyServer, key: str) -> int:
    r = httpx.get(f"{server.base_url}/models", headers={"authorization": f"Bearer {key}"})
    return r.status_code


def _wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (the worker manager's children included)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            todo += [int(c) for c in children.read_text().split()]
    return found


def _proc_text(pid: int, name: str) -> str:
    try:
        return (
            Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""  # the process ended in between


def _assert_no_sentinel(where: str, text: str) -> None:
    for sentinel in SENTINELS:
        assert sentinel not in text, f"a secret leaked into {where}"


def test_file_secrets_never_leak(
    tmp_path: Path, recording_fake: FakeUpstream, strict_fake: FakeUpstream
) -> None:
    """Logs, /metrics, error bodies and the processes' command lines hold no secret."""
    master = _write(tmp_path / "master", MASTER_SENTINEL)
    upstream = _write(tmp_path / "upstream", UPSTREAM_SENTINEL)
    config = {
        "model_list": [
            {
                "model_name": "gpt",
                "params": {"model": "openai/gpt-4o", "api_base": recording_fake.base_url,
                           "api_key": f"file:{upstream}"},
            },
            {
                "model_name": "rejected",
                "params": {"model": "openai/gpt-4o", "api_base": strict_fake.base_url,
                           "api_key": f"file:{upstream}"},
            },
        ],
        "server": {"access_log": True},
    }  # fmt: skip
    env = {"LLM_PROXY_MASTER_KEY_FILE": str(master), "LLM_PROXY_LOG_LEVEL": "debug"}
    with run_proxy(config, workers=2, env=env) as server:
        bodies = [
            _chat(server, "sk-wrong").text,  # bad client key
            _chat(server, MASTER_SENTINEL, model="rejected").text,  # upstream 401
            _chat(server, MASTER_SENTINEL, model="no-such-model").text,
            httpx.get(f"{server.root_url}/key/list", headers={"x-api-key": "nope"}).text,
        ]
        assert _chat(server, MASTER_SENTINEL).status_code == 200
        status, metrics = server.get("/metrics")
        assert status == 200
        tree = _process_tree(server.process.pid)
        assert len(tree) > 2  # the manager, its workers and helpers
        for pid in tree:
            _assert_no_sentinel(f"/proc/{pid}/cmdline", _proc_text(pid, "cmdline"))
            _assert_no_sentinel(f"/proc/{pid}/environ", _proc_text(pid, "environ"))
        for i, body in enumerate(bodies):
            _assert_no_sentinel(f"error body {i}", body)
        _assert_no_sentinel("/metrics", metrics.decode())
        logs = server.process.stdout_text() + server.process.stderr_text()
    assert "route=chat" in logs  # the access log was on, so the test saw real log lines
    _assert_no_sentinel("the logs", logs)


def _check_config(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_PROXY_", "LITELLM_"))}
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", *args],
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_secret_config_exits_2_without_the_secret(tmp_path: Path) -> None:
    """Value plus _FILE, or an unreadable file, is a config error that shows no secret."""
    master = _write(tmp_path / "master", MASTER_SENTINEL)
    both = _check_config(
        {"LLM_PROXY_MASTER_KEY": UPSTREAM_SENTINEL, "LLM_PROXY_MASTER_KEY_FILE": str(master)}
    )
    assert both.returncode == 2
    assert "LLM_PROXY_MASTER_KEY and LLM_PROXY_MASTER_KEY_FILE are both set" in both.stderr
    missing = _check_config({"LLM_PROXY_MASTER_KEY_FILE": str(tmp_path / "absent")})
    assert missing.returncode == 2
    assert f"cannot read secret file {tmp_path / 'absent'}" in missing.stderr
    for result in (both, missing):
        _assert_no_sentinel("the CLI's output", result.stdout + result.stderr)


def test_sighup_rotates_master_and_provider_keys(
    tmp_path: Path, recording_fake: FakeUpstream
) -> None:
    """After SIGHUP to the process group every worker takes the new keys; the old are gone."""
    master = _write(tmp_path / "master", "sk-master-one")
    upstream = _write(tmp_path / "upstream", "sk-upstream-one")
    config = {
        "model_list": [
            {
                "model_name": "gpt",
                "params": {"model": "openai/gpt-4o", "api_base": recording_fake.base_url,
                           "api_key": f"file:{upstream}"},
            }
        ],
        "server": {"secrets_check_seconds": 0},  # SIGHUP only: the change below is not seen
    }  # fmt: skip
    env = {"LLM_PROXY_MASTER_KEY_FILE": str(master), "LLM_PROXY_LOG_LEVEL": "info"}
    with run_proxy(config, workers=2, env=env) as server:
        assert _chat(server, "sk-master-one").status_code == 200
        assert recording_fake.stats()["last_headers"]["authorization"] == "Bearer sk-upstream-one"
        _write(master, "sk-master-two")
        _write(upstream, "sk-upstream-two")
        os.killpg(server.process.pid, signal.SIGHUP)

        def logs() -> str:
            return server.process.stdout_text() + server.process.stderr_text()

        _wait_until(lambda: logs().count("secret LLM_PROXY_MASTER_KEY_FILE rotated") == 2)
        _wait_until(lambda: logs().count("secret model_list[0].params.api_key rotated") == 2)
        # Several requests, so that both workers answer some of them.
        for _ in range(6):
            assert _models(server, "sk-master-one") == 401
            assert _chat(server, "sk-master-two").status_code == 200
            headers = recording_fake.stats()["last_headers"]
            assert headers["authorization"] == "Bearer sk-upstream-two"
        assert server.process.returncode is None  # SIGHUP did not end any process
        status, _ = server.get("/ready")
        assert status == 200


def test_sighup_while_workers_start_is_held_not_fatal(tmp_path: Path) -> None:
    """SIGHUPs from the moment the manager runs, through the workers' imports: none ends one.

    A worker holds a SIGHUP that arrives before its handler is in place (its default action
    would end it, leaving the manager with no workers), then re-reads its secrets.
    """
    master = _write(tmp_path / "master", "sk-master-one")
    config: dict[str, Any] = {
        "model_list": [{"model_name": "m", "params": {"model": "mock/m"}}],
        "server": {"secrets_check_seconds": 0},
    }
    env = {"LLM_PROXY_MASTER_KEY_FILE": str(master), "LLM_PROXY_LOG_LEVEL": "info"}
    with run_proxy(config, workers=2, env=env, ready_timeout=None) as server:

        def logs() -> str:
            return server.process.stdout_text() + server.process.stderr_text()

        _wait_until(lambda: "llm-proxy listening" in logs())  # SIGHUP is held from here on
        _write(master, "sk-master-two")
        deadline = time.monotonic() + 30
        while logs().count("Worker ready") < 2:
            assert time.monotonic() < deadline, logs()
            os.killpg(server.process.pid, signal.SIGHUP)
            time.sleep(0.02)
        os.killpg(server.process.pid, signal.SIGHUP)
        server.wait_ready()
        assert server.process.returncode is None
        workers = {int(pid) for pid in re.findall(r"Worker ready \[(\d+)\]", logs())}
        assert len(workers) == 2
        for pid in workers:  # alive, not a zombie its manager never noticed
            assert Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z", logs()
        for _ in range(6):  # both workers answer some of them
            assert _models(server, "sk-master-two") == 200
            assert _models(server, "sk-master-one") == 401


def test_changed_file_rotates_without_a_signal(tmp_path: Path) -> None:
    """The periodic check picks up a new master key file (a Kubernetes Secret update)."""
    master = _write(tmp_path / "master", "sk-master-one")
    config: dict[str, Any] = {
        "model_list": [{"model_name": "m", "params": {"model": "mock/m"}}],
        "server": {"secrets_check_seconds": 0.2},
    }
    with run_proxy(config, env={"LLM_PROXY_MASTER_KEY_FILE": str(master)}) as server:
        assert _models(server, "sk-master-one") == 200
        _write(master, "sk-master-two")
        _wait_until(lambda: _models(server, "sk-master-two") == 200)
        assert _models(server, "sk-master-one") == 401


def test_previous_master_key_is_accepted_until_it_expires(tmp_path: Path) -> None:
    """A listed previous key works until its expiry; an expired one is refused."""
    now = datetime.now(UTC)
    config: dict[str, Any] = {
        "model_list": [{"model_name": "m", "params": {"model": "mock/m"}}],
        "master_key": f"file:{_write(tmp_path / 'master', 'sk-current')}",
        "previous_master_keys": [
            {"key": "sk-in-grace", "expires": (now + timedelta(hours=1)).isoformat()},
            {"key": "sk-expired", "expires": (now - timedelta(seconds=1)).isoformat()},
        ],
    }
    with run_proxy(config) as server:
        assert _models(server, "sk-current") == 200
        assert _models(server, "sk-in-grace") == 200
        assert _models(server, "sk-expired") == 401
        r = httpx.get(f"{server.root_url}/key/list", headers={"x-api-key": "sk-in-grace"})
        assert r.status_code == 200  # the admin API takes it too
