"""Process lifecycle: config errors, graceful shutdown, metrics across worker processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import proxy_config
from tests.support.processes import REPO_ROOT, FakeUpstream
from tests.support.proxy_server import run_proxy

USER = [{"role": "user", "content": "hi"}]


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_config_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    """A bad config stops start-up with exit code 2 and a message naming the field."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model_list:\n  - model_name: a\n    params: {model: mock/a}\n"
        "  - model_name: b\n    params: {model: nope}\n"
    )
    result = _run_cli("serve", "--config", str(path), "--port", "8999")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "llm-proxy: config error: model_list[1].params.model: "
        "expected \"provider/model\", got 'nope'"
    )


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    """A config path that does not exist is a config error too."""
    result = _run_cli("check-config", "--config", str(tmp_path / "none.yaml"))
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr


def test_example_config_is_valid() -> None:
    """The shipped example config validates."""
    result = _run_cli("check-config", "--config", "examples/config.yaml")
    assert result.returncode == 0, result.stderr
    assert "config ok" in result.stdout


def test_graceful_shutdown_finishes_streams(fake: FakeUpstream) -> None:
    """On SIGTERM an in-flight stream runs to [DONE], new connections are refused, exit 0."""
    with run_proxy(proxy_config(fake)) as server:
        lines: list[str] = []
        first = threading.Event()

        def read_stream() -> None:
            body = {"model": "slow", "messages": USER, "stream": True}
            with httpx.stream(
                "POST", f"{server.base_url}/chat/completions", json=body, timeout=30
            ) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                        first.set()

        reader = threading.Thread(target=read_stream)
        reader.start()
        assert first.wait(10)
        server.process.popen.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.root_url}/health", timeout=2)
        reader.join(30)
        assert lines[-1] == "data: [DONE]"
        assert server.process.popen.wait(timeout=30) == 0


def test_metrics_sum_over_workers(fake: FakeUpstream) -> None:
    """With two workers, /metrics counts every request exactly once, whichever worker served it."""
    with run_proxy(proxy_config(fake), workers=2) as server:
        with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client:
            for _ in range(30):
                client.chat.completions.create(model="mock-gpt", messages=USER)
            for _ in range(7):
                with pytest.raises(openai.NotFoundError):
                    client.chat.completions.create(model="unknown-model", messages=USER)
            for _ in range(5):
                list(
                    client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
                )
        # Several scrapes, so that both workers answer at least one of them.
        for _ in range(6):
            text = server.get("/metrics")[1].decode()
            samples = dict(
                line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("llm_proxy_")
            )
            assert (
                float(
                    samples['llm_proxy_requests_total{model="mock-gpt",route="chat",status="200"}']
                )
                == 30
            )
            assert (
                float(samples['llm_proxy_requests_total{model="other",route="chat",status="404"}'])
                == 7
            )
            assert (
                float(
                    samples[
                        'llm_proxy_requests_total{model="gpt-4o-mini",route="chat",status="200"}'
                    ]
                )
                == 5
            )
            assert (
                float(
                    samples[
                        'llm_proxy_request_duration_seconds_count{model="mock-gpt",route="chat"}'
                    ]
                )
                == 30
            )
            assert float(samples["llm_proxy_requests_in_flight"]) == 0
