"""End-to-end fixtures: the fake upstream and the real proxy, each its own process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support.processes import FakeUpstream, run_fake_upstream
from tests.support.proxy_server import ProxyServer, run_proxy

MASTER_KEY = "sk-master-e2e"
UPSTREAM_KEY = "sk-upstream-e2e"


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeUpstream]:
    """One fake OpenAI upstream that demands the proxy's upstream key."""
    with run_fake_upstream("--require-key", UPSTREAM_KEY) as upstream:
        yield upstream


def proxy_config(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    """Aliases pointing at the fake's scripted behaviours (named by upstream model)."""

    def openai_dep(alias: str, upstream: str, **params: Any) -> dict[str, Any]:
        return {
            "model_name": alias,
            "params": {
                "model": f"openai/{upstream}",
                "api_base": fake.base_url,
                "api_key": UPSTREAM_KEY,
                **params,
            },
        }

    models = [
        openai_dep("gpt-4o-mini", "gpt-4o-mini"),
        openai_dep("text-embedding-3-small", "text-embedding-3-small"),
        openai_dep("echo", "echo"),
        openai_dep("err-400", "error-400"),
        openai_dep("err-404", "error-404"),
        openai_dep("err-429", "error-429"),
        openai_dep("err-500", "error-500"),
        openai_dep("err-503", "error-503"),
        openai_dep("hang", "hang", timeout=1),
        openai_dep("garbage", "garbage"),
        openai_dep("reset", "reset"),
        openai_dep("cut", "cut-3"),
        openai_dep("nousage", "nousage"),
        openai_dep("slow", "slow-150"),
        openai_dep("slowfirst", "slowfirst-2000"),
        openai_dep("wrong-key", "gpt-4o-mini", api_key="sk-wrong"),
        openai_dep("down", "gpt-4o-mini", api_base="http://127.0.0.1:9/v1", connect_timeout=1),
        {
            "model_name": "azure-gpt",
            "params": {
                "model": "azure/dep1",
                "api_base": fake.root_url,
                "api_version": "2024-10-21",
                "api_key": UPSTREAM_KEY,
            },
        },
        {"model_name": "mock-gpt", "params": {"model": "mock/mock-gpt", "mock_response": "a b c"}},
    ]
    return {"model_list": models, **extra}


@pytest.fixture(scope="session")
def proxy(fake: FakeUpstream) -> Iterator[ProxyServer]:
    """The proxy with a master key, one worker, in front of the fake upstream."""
    with run_proxy(proxy_config(fake, master_key=MASTER_KEY)) as server:
        yield server


@pytest.fixture
def client(proxy: ProxyServer) -> Iterator[openai.OpenAI]:
    """The official SDK pointed at the proxy, retries off so each error is seen once."""
    with openai.OpenAI(base_url=proxy.base_url, api_key=MASTER_KEY, max_retries=0) as c:
        yield c
