"""Virtual keys end to end: the admin API, denials, limits, usage and spend (issue 3)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import MASTER_KEY, proxy_config
from tests.integration.conftest import RUN_ID
from tests.support.processes import FakeUpstream
from tests.support.proxy_server import ProxyServer, run_proxy

USER = [{"role": "user", "content": "hi"}]
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}


def admin(proxy: ProxyServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, proxy.root_url + path, headers=ADMIN, timeout=10, **kwargs)


def new_key(proxy: ProxyServer, **fields: Any) -> str:
    r = admin(proxy, "POST", "/key/generate", json=fields)
    assert r.status_code == 200, r.text
    key: str = r.json()["key"]
    return key


def chat(proxy: ProxyServer, key: str, model: str = "gpt-4o-mini", **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": model, "messages": USER, **extra},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream) -> Iterator[ProxyServer]:
    """A proxy with a master key and its embedded SQLite store."""
    config = proxy_config(fake, master_key=MASTER_KEY)
    # $1 per thousand tokens, so that a handful of small requests spends a budget.
    pricey = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.001}
    config["model_list"].append(
        {"model_name": "pricey", "params": {**config["model_list"][0]["params"], **pricey}}
    )
    config["model_list"].append(
        {"model_name": "two-rpm", "params": {**config["model_list"][0]["params"], "rpm": 2}}
    )
    with run_proxy(config) as server:
        yield server


def test_generated_key_works_and_is_shown_once(proxy: ProxyServer) -> None:
    """A generated key is sk- + 43 url-safe characters; info shows its hash, never the key."""
    key = new_key(proxy, key_alias="alpha", metadata={"team": "a"})
    assert key.startswith("sk-") and len(key) == 46
    assert chat(proxy, key).status_code == 200
    info = admin(proxy, "GET", "/key/info", params={"key": key}).json()
    assert info["info"]["key_alias"] == "alpha"
    assert key not in str(info)
    assert info["info"]["key_name"] == "sk-..." + key[-4:]


def test_denials_are_openai_shaped(proxy: ProxyServer) -> None:
    """Unknown, blocked, expired keys get 401; a model outside the key's list gets 403."""
    assert chat(proxy, "sk-unknown-key-0000000000").status_code == 401
    limited = new_key(proxy, models=["mock-gpt"])
    r = chat(proxy, limited)
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert chat(proxy, limited, model="mock-gpt").status_code == 200
    models = httpx.get(f"{proxy.base_url}/models", headers={"authorization": f"Bearer {limited}"})
    assert [m["id"] for m in models.json()["data"]] == ["mock-gpt"]
    blocked = new_key(proxy)
    assert admin(proxy, "POST", "/key/block", json={"key": blocked}).json()["blocked"] is True
    r = chat(proxy, blocked)
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_blocked"
    admin(proxy, "POST", "/key/unblock", json={"key": blocked})
    assert chat(proxy, blocked).status_code == 200
    expiring = new_key(proxy, duration="1s")
    time.sleep(1.2)
    r = chat(proxy, expiring)
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_expired"


def test_rpm_limit_with_headers(proxy: ProxyServer) -> None:
    """The third request of a 2 rpm key is a 429 with retry-after; successes carry x-ratelimit-*."""
    key = new_key(proxy, rpm_limit=2)
    first = chat(proxy, key)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert chat(proxy, key).status_code == 200
    denied = chat(proxy, key)
    assert denied.status_code == 429
    assert denied.json()["error"]["type"] == "rate_limit_exceeded"
    assert int(denied.headers["retry-after"]) >= 1


def test_budget_exceeded(proxy: ProxyServer) -> None:
    """A key whose budget is spent gets 429 budget_exceeded, not retried by the SDK."""
    # Each request costs ~$0.009 (9 tokens) and reserves ~$0.018 (prompt + max_tokens 10):
    # two fit in $0.03, the third would overshoot, so it is refused before it runs.
    key = new_key(proxy, max_budget=0.03)
    statuses = [chat(proxy, key, model="pricey", max_tokens=10).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    with (
        openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=3) as client,
        pytest.raises(openai.RateLimitError) as info,
    ):
        client.chat.completions.create(model="pricey", messages=USER, max_tokens=10)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.body["type"] == "budget_exceeded"  # type: ignore[index]
    spent = admin(proxy, "GET", "/key/info", params={"key": key}).json()["info"]
    assert spent["max_budget"] == 0.03


def test_update_regenerate_delete(proxy: ProxyServer) -> None:
    """Updates apply at once on this replica; a regenerated key replaces the old; delete revokes."""
    key = new_key(proxy, key_alias="beta")
    assert chat(proxy, key).status_code == 200
    updated = admin(proxy, "POST", "/key/update", json={"key": key, "models": ["mock-gpt"]})
    assert updated.json()["models"] == ["mock-gpt"]
    assert chat(proxy, key).status_code == 403
    fresh = admin(proxy, "POST", "/key/regenerate", json={"key": key}).json()["key"]
    assert chat(proxy, key, model="mock-gpt").status_code == 401
    assert chat(proxy, fresh, model="mock-gpt").status_code == 200
    deleted = admin(proxy, "POST", "/key/delete", json={"keys": [fresh]}).json()["deleted_keys"]
    assert len(deleted) == 1
    assert chat(proxy, fresh, model="mock-gpt").status_code == 401
    listed = admin(proxy, "GET", "/key/list").json()["keys"]
    assert deleted[0] not in listed


def test_usage_and_spend(proxy: ProxyServer) -> None:
    """Each request leaves one usage record; spend shows in /key/info and /usage."""
    key = new_key(proxy, key_alias="gamma")
    for _ in range(3):
        assert chat(proxy, key).status_code == 200
    assert chat(proxy, key, model="no-such-model").status_code == 404
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = admin(proxy, "GET", "/usage", params={"key": key, "group_by": "key"}).json()["data"]
        if rows and rows[0]["requests"] == 4:
            break
        time.sleep(0.2)
    assert rows[0]["key_alias"] == "gamma"
    assert rows[0]["requests"] == 4
    info = admin(proxy, "GET", "/key/info", params={"key": key}).json()["info"]
    assert info["spend"] > 0
    by_model = admin(proxy, "GET", "/usage", params={"key": key, "group_by": "model"}).json()
    assert {row["model"] for row in by_model["data"]} == {"gpt-4o-mini", "no-such-model"}
    # Without 'from' the window is the last 30 days; a window that ends before today is empty.
    window_start = datetime.fromisoformat(by_model["from"])
    assert abs((datetime.now(UTC) - window_start) - timedelta(days=30)) < timedelta(minutes=5)
    past = admin(proxy, "GET", "/usage", params={"key": key, "to": "2020-01-01"}).json()
    assert past["data"] == [] and past["from"].startswith("2019-12-02")


def test_admin_needs_the_master_key(proxy: ProxyServer) -> None:
    """The admin API refuses virtual keys and bad input with OpenAI-shaped errors."""
    key = new_key(proxy)
    r = httpx.post(
        f"{proxy.root_url}/key/generate", json={}, headers={"authorization": f"Bearer {key}"}
    )
    assert r.status_code == 401
    assert admin(proxy, "POST", "/key/generate", json={"rpm_limit": "lots"}).status_code == 400
    assert (
        admin(proxy, "POST", "/key/generate", json={"budget_duration": "soon"}).status_code == 400
    )
    assert admin(proxy, "GET", "/key/info", params={"key": "sk-nope-nope-nope"}).status_code == 404
    assert admin(proxy, "GET", "/usage", params={"group_by": "colour"}).status_code == 400


def test_admin_on_postgres(fake: FakeUpstream, postgres_url: str, pg_schema: str) -> None:
    """The same flow on Postgres: keys, limits and usage land in the configured schema."""
    config = proxy_config(fake, master_key=MASTER_KEY, database={"schema": pg_schema})
    with run_proxy(config, env={"DATABASE_URL": postgres_url}) as server:
        key = new_key(server, key_alias=f"pg-{RUN_ID}", rpm_limit=1)
        assert chat(server, key).status_code == 200
        assert chat(server, key).status_code == 429
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = admin(server, "GET", "/usage", params={"key": key, "group_by": "key"}).json()
            if rows["data"] and rows["data"][0]["requests"] == 2:
                break
            time.sleep(0.2)
        assert rows["data"][0]["requests"] == 2


def test_deployment_rpm_from_config(proxy: ProxyServer) -> None:
    """A deployment's own rpm holds for every caller, the master key included."""
    statuses = [chat(proxy, MASTER_KEY, model="two-rpm").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_a_repeated_request_id_is_still_two_requests(proxy: ProxyServer) -> None:
    """A client sending the same x-request-id twice gets each request counted: the rpm
    slot, the usage record and the spend are per request, not per id (a reused id once
    merged them: a limit and budget bypass)."""
    key = new_key(proxy, rpm_limit=1, key_alias="same-id")
    same = {"authorization": f"Bearer {key}", "x-request-id": "client-id-7"}
    body = {"model": "gpt-4o-mini", "messages": USER}
    first = httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers=same, timeout=10)
    second = httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers=same, timeout=10)
    assert first.status_code == 200 and first.headers["x-request-id"] == "client-id-7"
    assert second.status_code == 429 and second.headers["x-request-id"] == "client-id-7"
    deadline = time.monotonic() + 10
    while True:
        rows = admin(proxy, "GET", "/usage", params={"key": key, "group_by": "key"}).json()["data"]
        if (rows and rows[0]["requests"] == 2) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows[0]["requests"] == 2  # the 429 too: one record per admitted-or-refused request
