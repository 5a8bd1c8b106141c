"""Fallbacks, time-to-first-token failover, sticky routing and the fair queue (issue 4),
end to end: a real proxy process in front of the scripted fake upstream."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import UPSTREAM_KEY
from tests.support.processes import FakeUpstream
from tests.support.proxy_server import ProxyServer, run_proxy

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
TAG = uuid.uuid4().hex[:6]


def _dep(fake: FakeUpstream, alias: str, upstream: str, **params: Any) -> dict[str, Any]:
    return {
        "model_name": alias,
        "params": {
            "model": f"openai/{upstream}-{TAG}",
            "api_base": fake.base_url,
            "api_key": UPSTREAM_KEY,
            **params,
        },
    }


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream) -> Iterator[ProxyServer]:
    config = {
        "model_list": [
            _dep(fake, "primary", "error-503-primary"),
            _dep(fake, "backup", "gpt-4o-mini-backup"),
            _dep(fake, "also-broken", "error-500-also"),
            _dep(fake, "refusing", "error-400-refusing"),
            _dep(fake, "small", "context-overflow"),
            _dep(fake, "large", "gpt-4o-mini-large"),
            _dep(fake, "strict", "content-policy"),
            _dep(fake, "lenient", "gpt-4o-mini-lenient"),
            _dep(fake, "slowstart", "slowfirst-3000", ttft_timeout=0.3, weight=1000),
            _dep(fake, "slowstart", "gpt-4o-mini-quick", weight=1),
            *(_dep(fake, "sticky", f"gpt-4o-mini-sticky{i}") for i in range(4)),
            _dep(fake, "narrow", "slow-400", max_parallel_requests=1),
        ],
        "router_settings": {
            "num_retries": 1,
            "retry_after": 0.01,
            "fallbacks": [{"primary": ["also-broken", "backup"]}, {"small": ["backup"]}],
            "context_window_fallbacks": [{"small": ["large"]}],
            "content_policy_fallbacks": [{"strict": ["lenient"]}],
        },
        "router": {"sticky_aliases": ["sticky"], "queue_max_wait_seconds": 5},
    }
    with run_proxy(config) as server:
        yield server


def post(proxy: ProxyServer, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": USER, **extra}
    return httpx.post(f"{proxy.base_url}/chat/completions", json=body, timeout=30)


def calls(fake: FakeUpstream, upstream: str) -> int:
    count: int = fake.stats()["by_model"].get(f"{upstream}-{TAG}", 0)
    return count


def test_configured_fallback_answers_after_the_alias_fails(
    proxy: ProxyServer, fake: FakeUpstream
) -> None:
    """primary (503) -> also-broken (500) -> backup: the client gets backup's answer."""
    r = post(proxy, "primary")
    assert r.status_code == 200
    assert r.headers["x-llm-proxy-fallback"] == "backup"
    assert r.headers["x-llm-proxy-deployment"].startswith("backup/")
    assert int(r.headers["x-llm-proxy-attempts"]) == 2 + 2 + 1  # one retry on each failure
    assert r.json()["choices"][0]["message"]["content"]
    assert calls(fake, "gpt-4o-mini-backup") >= 1


def test_client_fallbacks_in_the_body(proxy: ProxyServer, fake: FakeUpstream) -> None:
    """The SDK's extra_body fallbacks are honoured and never forwarded upstream."""
    client = openai.OpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="also-broken", messages=USER, extra_body={"fallbacks": ["large"]}
    )
    assert raw.headers["x-llm-proxy-fallback"] == "large"
    assert "fallbacks" not in fake.stats()["last_body"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="backup", messages=USER, extra_body={"fallbacks": "large"}
        )
    assert bad.value.body["param"] == "fallbacks"  # type: ignore[index]


def test_every_fallback_failing_returns_the_original_error(proxy: ProxyServer) -> None:
    alone = post(proxy, "also-broken")
    r = post(proxy, "also-broken", fallbacks=["primary"])
    assert (r.status_code, r.json()) == (alone.status_code, alone.json())  # not primary's 503
    assert "500" in r.json()["error"]["message"]
    assert "x-llm-proxy-fallback" not in r.headers


def test_a_refused_request_does_not_fall_back(proxy: ProxyServer, fake: FakeUpstream) -> None:
    before = calls(fake, "gpt-4o-mini-backup")
    r = post(proxy, "refusing", fallbacks=["backup"])
    assert r.status_code == 400
    assert calls(fake, "gpt-4o-mini-backup") == before


def test_context_window_and_content_policy_fallbacks(
    proxy: ProxyServer, fake: FakeUpstream
) -> None:
    """A prompt too long goes to the context-window list, not the general one."""
    before = calls(fake, "gpt-4o-mini-backup")
    long = post(proxy, "small")
    assert long.status_code == 200
    assert long.headers["x-llm-proxy-fallback"] == "large"
    assert calls(fake, "gpt-4o-mini-backup") == before
    refused = post(proxy, "strict")
    assert refused.status_code == 200
    assert refused.headers["x-llm-proxy-fallback"] == "lenient"


def test_slow_first_token_fails_over_to_another_deployment(proxy: ProxyServer) -> None:
    """ttft_timeout 0.3 s on a deployment whose first byte takes 3 s: the stream is served
    by the other deployment of the alias, long before the slow one would have answered."""
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{proxy.base_url}/chat/completions",
        json={"model": "slowstart", "messages": USER, "stream": True},
        timeout=30,
    ) as r:
        body = b"".join(r.iter_bytes())
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    assert r.headers["x-llm-proxy-deployment"].startswith("slowstart/openai/gpt-4o-mini-quick")
    assert body.rstrip().endswith(b"data: [DONE]")
    assert elapsed < 2.5


def test_sticky_alias_keeps_a_user_on_one_deployment(proxy: ProxyServer) -> None:
    def where(user: str) -> str:
        r = post(proxy, "sticky", user=user)
        assert r.status_code == 200
        return r.headers["x-llm-proxy-deployment"]

    for user in ("alice", "bob", "carol"):
        assert len({where(user) for _ in range(6)}) == 1
    assert len({where(f"user-{i}") for i in range(24)}) > 1  # users spread out


async def test_fair_queue_waits_instead_of_failing(proxy: ProxyServer) -> None:
    """max_parallel_requests 1, each answer 0.4 s: four at once all succeed, one by one."""
    async with httpx.AsyncClient(base_url=proxy.base_url, timeout=30) as client:
        body = {"model": "narrow", "messages": USER}
        started = time.monotonic()
        answers = await asyncio.gather(
            *(client.post("/chat/completions", json=body) for _ in range(4))
        )
        elapsed = time.monotonic() - started
    assert [a.status_code for a in answers] == [200] * 4
    assert elapsed >= 4 * 0.4 * 0.9  # served in turn, not all at once


def test_routing_metrics(proxy: ProxyServer) -> None:
    text = proxy.get("/metrics")[1].decode()

    def total(name: str, *labels: str) -> float:
        found = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(label in line for label in labels):
                found += float(line.split()[-1])
        return found

    assert total("llm_proxy_upstream_retries_total", 'model="primary"') >= 1
    assert total("llm_proxy_fallbacks_total", 'fallback="backup"', 'result="ok"') >= 1
    assert total("llm_proxy_fallbacks_total", 'fallback="also-broken"', 'result="failed"') >= 1
