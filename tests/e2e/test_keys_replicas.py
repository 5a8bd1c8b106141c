"""Two proxy processes sharing Redis and Postgres: limits hold globally, revocation is
immediate everywhere (issue 3's proofs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import MASTER_KEY, proxy_config
from tests.e2e.test_keys import admin, chat, new_key
from tests.support.processes import FakeUpstream
from tests.support.proxy_server import ProxyServer, run_proxy

PRICEY = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.001}


@pytest.fixture
def replicas(
    fake: FakeUpstream, postgres_url: str, pg_schema: str, redis_url: str, redis_key_prefix: str
) -> Iterator[tuple[ProxyServer, ProxyServer]]:
    """Two proxies, one database schema, one Redis key space."""
    config = proxy_config(
        fake,
        master_key=MASTER_KEY,
        database={"schema": pg_schema},
        limits={"key_prefix": f"{redis_key_prefix}{pg_schema}:", "replicas": 2},
        keys={"cache_ttl_seconds": 300},  # revocation must not wait for the cache to expire
    )
    base = config["model_list"][0]["params"]
    config["model_list"].append({"model_name": "pricey", "params": {**base, **PRICEY}})
    env = {"DATABASE_URL": postgres_url, "REDIS_URL": redis_url}
    with ExitStack() as stack:
        first = stack.enter_context(run_proxy(config, env=env))
        second = stack.enter_context(run_proxy(config, env=env))
        yield first, second


async def _burst(servers: tuple[ProxyServer, ...], key: str, n: int, **body: Any) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> int:
            server = servers[i % len(servers)]
            r = await client.post(
                f"{server.base_url}/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "x"}],
                    **body,
                },
                headers={"authorization": f"Bearer {key}"},
            )
            return r.status_code

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_rpm_limit_is_global_across_replicas(replicas: tuple[ProxyServer, ProxyServer]) -> None:
    """200 concurrent requests through two processes at rpm_limit 50: exactly 50 succeed."""
    key = new_key(replicas[0], rpm_limit=50)
    statuses = asyncio.run(_burst(replicas, key, 200))
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150


def test_budget_holds_under_concurrency(replicas: tuple[ProxyServer, ProxyServer]) -> None:
    """Concurrent spending never ends above the budget by more than one request's estimate."""
    key = new_key(replicas[0], max_budget=0.1)
    statuses = asyncio.run(_burst(replicas, key, 60, model="pricey", max_tokens=10))
    assert statuses.count(200) >= 1
    assert set(statuses) <= {200, 429}
    deadline = time.monotonic() + 10
    spend = 0.0
    while time.monotonic() < deadline:
        rows = admin(replicas[0], "GET", "/usage", params={"key": key, "group_by": "key"}).json()
        if rows["data"] and rows["data"][0]["requests"] == 60:
            spend = rows["data"][0]["cost_usd"]
            break
        time.sleep(0.2)
    estimate = 0.02  # ~10 prompt + 10 max_tokens at $0.001
    assert 0 < spend <= 0.1 + estimate


def test_block_is_immediate_on_every_replica(replicas: tuple[ProxyServer, ProxyServer]) -> None:
    """A key blocked through one replica is refused by the other at once (pub/sub)."""
    first, second = replicas
    key = new_key(first)
    assert chat(second, key).status_code == 200  # now cached on the second replica
    admin(first, "POST", "/key/block", json={"key": key})
    deadline = time.monotonic() + 2
    while chat(second, key).status_code == 200:
        assert time.monotonic() < deadline, "the second replica kept serving a blocked key"
        time.sleep(0.05)
    assert chat(second, key).status_code == 401
    admin(first, "POST", "/key/delete", json={"keys": [key]})
