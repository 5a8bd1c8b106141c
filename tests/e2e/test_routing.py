"""Retries to another deployment, cooldowns and what the response headers say (issue 4)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import UPSTREAM_KEY
from tests.support.processes import FakeUpstream
from tests.support.proxy_server import ProxyServer, run_proxy

USER = [{"role": "user", "content": "hi"}]


def _dep(fake: FakeUpstream, alias: str, upstream: str, **params: Any) -> dict[str, Any]:
    return {
        "model_name": alias,
        "params": {
            "model": f"openai/{upstream}",
            "api_base": fake.base_url,
            "api_key": UPSTREAM_KEY,
            **params,
        },
    }


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream) -> Iterator[ProxyServer]:
    """Aliases whose deployments fail in scripted ways, next to healthy ones."""
    config = {
        "model_list": [
            _dep(fake, "flaky", "error-503-flaky", weight=1000),
            _dep(fake, "flaky", "gpt-4o-mini-flaky", weight=1),
            _dep(fake, "flaky-stream", "error-502-stream", weight=1000),
            _dep(fake, "flaky-stream", "gpt-4o-mini-stream", weight=1),
            _dep(fake, "broken", "error-500-broken"),
            _dep(fake, "bad-request", "error-400-routing"),
            _dep(fake, "all-limited", "error-429-a"),
            _dep(fake, "all-limited", "error-429-b"),
        ],
        "router": {
            "num_retries": 2,
            "retry_backoff_seconds": 0.01,
            "max_backoff_seconds": 0.05,
            "cooldown_seconds": 3,
            "allowed_fails": 1,
        },
    }
    with run_proxy(config) as server:
        yield server


def chat(proxy: ProxyServer, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": USER, **extra}
    return httpx.post(f"{proxy.base_url}/chat/completions", json=body, timeout=30)


def calls(fake: FakeUpstream, model: str) -> int:
    count: int = fake.stats()["by_model"].get(model, 0)
    return count


def test_failover_to_a_healthy_deployment_then_cooldown(
    proxy: ProxyServer, fake: FakeUpstream
) -> None:
    """A 503 goes to the other deployment; after too many failures the bad one is skipped."""
    first = chat(proxy, "flaky")
    assert first.status_code == 200
    assert first.headers["x-llm-proxy-deployment"] == "flaky/openai/gpt-4o-mini-flaky"
    if first.headers["x-llm-proxy-attempts"] != "1":  # the failing one was picked first (~always)
        assert first.headers["x-llm-proxy-attempts"] == "2"
    for _ in range(4):
        assert chat(proxy, "flaky").status_code == 200
    failed_before = calls(fake, "error-503-flaky")
    for _ in range(10):
        r = chat(proxy, "flaky")
        assert r.status_code == 200
        assert r.headers["x-llm-proxy-attempts"] == "1"  # answered at the first try
        assert r.headers["x-llm-proxy-deployment"] == "flaky/openai/gpt-4o-mini-flaky"
        assert float(r.headers["x-llm-proxy-overhead-ms"]) >= 0
    assert calls(fake, "error-503-flaky") == failed_before  # cooling: not tried at all


def test_stream_fails_over_before_the_first_byte(proxy: ProxyServer) -> None:
    """A stream whose first deployment answers 502 is served by the other one, intact."""
    with httpx.stream(
        "POST",
        f"{proxy.base_url}/chat/completions",
        json={"model": "flaky-stream", "messages": USER, "stream": True},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_retries_then_the_original_error(proxy: ProxyServer, fake: FakeUpstream) -> None:
    """A lone failing deployment is tried 1 + num_retries times; the client gets its error."""
    before = calls(fake, "error-500-broken")
    r = chat(proxy, "broken")
    assert r.status_code == 502
    assert "500" in r.json()["error"]["message"]
    assert calls(fake, "error-500-broken") == before + 3


def test_client_errors_are_not_retried(proxy: ProxyServer, fake: FakeUpstream) -> None:
    """A 400 would fail again: one upstream call, the upstream's error passed through."""
    before = calls(fake, "error-400-routing")
    r = chat(proxy, "bad-request")
    assert r.status_code == 400
    assert calls(fake, "error-400-routing") == before + 1


def test_all_deployments_cooling_is_a_429(proxy: ProxyServer) -> None:
    """Upstream 429s cool both deployments; the next request gets 429 with retry-after."""
    assert chat(proxy, "all-limited").status_code == 429
    r = chat(proxy, "all-limited")
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "no_deployment_available"
    assert 1 <= int(r.headers["retry-after"]) <= 3
