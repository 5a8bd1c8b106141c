"""The audit log end to end: admin actions on a real proxy, listed at GET /audit and logged
as JSON lines, with who, what, when and from where, and never a raw key (issue 9)."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import MASTER_KEY, proxy_config
from tests.support.processes import REPO_ROOT, FakeUpstream
from tests.support.proxy_server import ProxyServer, run_proxy

SENTINEL = "sk-audit-sentinel-0123456789abcdef"
FORWARDED = "203.0.113.7, 10.1.2.3"
ACTOR = "master-key:" + hashlib.sha256(MASTER_KEY.encode()).hexdigest()[:12]
ACTIONS = [
    "key.generated",
    "key.updated",
    "key.blocked",
    "key.unblocked",
    "key.regenerated",
    "key.deleted",
]


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SQLite file the proxy and the CLI share."""
    return tmp_path_factory.mktemp("audit") / "proxy.db"


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, database: Path) -> Iterator[ProxyServer]:
    """A proxy with a master key, JSON logs and a known SQLite file."""
    env = {"LLM_PROXY_LOG_FORMAT": "json", "LLM_PROXY_SQLITE_PATH": str(database)}
    with run_proxy(proxy_config(fake, master_key=MASTER_KEY), env=env) as server:
        yield server


def admin(
    proxy: ProxyServer, method: str, path: str, rid: str = "", **kwargs: Any
) -> httpx.Response:
    headers = {"authorization": f"Bearer {MASTER_KEY}", "x-forwarded-for": FORWARDED}
    if rid:
        headers["x-request-id"] = rid
    return httpx.request(method, proxy.root_url + path, headers=headers, timeout=10, **kwargs)


def audit_lines(proxy: ProxyServer) -> list[dict[str, Any]]:
    lines = [
        json.loads(line) for line in proxy.process.stderr_text().splitlines() if line[:1] == "{"
    ]
    return [line for line in lines if line.get("logger") == "llm_proxy.audit"]


def test_every_admin_action_is_listed_and_logged(proxy: ProxyServer) -> None:
    """Six key actions give six audit rows, newest first, and six JSON log lines; no raw key."""
    r = admin(
        proxy,
        "POST",
        "/key/generate",
        "rid-gen",
        json={"key": SENTINEL, "key_alias": "audited", "models": ["gpt-4o-mini"]},
    )
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    steps = [
        ("/key/update", {"key": SENTINEL, "rpm_limit": 7, "metadata": {"owner": SENTINEL}}),
        ("/key/block", {"key": SENTINEL}),
        ("/key/unblock", {"key": SENTINEL}),
        ("/key/regenerate", {"key": SENTINEL}),
    ]
    for i, (path, body) in enumerate(steps):
        r = admin(proxy, "POST", path, f"rid-{i}", json=body)
        assert r.status_code == 200, r.text
    new_raw, new_token = r.json()["key"], r.json()["token"]
    r = admin(proxy, "POST", "/key/delete", "rid-del", json={"keys": [new_token]})
    assert r.json()["deleted_keys"] == [new_token]

    listed = admin(proxy, "GET", "/audit", params={"key": "audited"})
    assert listed.status_code == 200, listed.text
    rows = listed.json()["data"]
    assert [row["action"] for row in rows] == ACTIONS[::-1]
    assert {row["actor"] for row in rows} == {ACTOR}
    assert {row["client_ip"] for row in rows} == {"127.0.0.1"}
    assert {row["forwarded_for"] for row in rows} == {FORWARDED}
    assert [row["request_id"] for row in rows] == [
        "rid-del",
        "rid-3",
        "rid-2",
        "rid-1",
        "rid-0",
        "rid-gen",
    ]
    by_action = {row["action"]: row for row in rows}
    assert by_action["key.generated"]["target_hash"] == token
    assert by_action["key.generated"]["changes"] == {
        "key_alias": "audited",
        "models": ["gpt-4o-mini"],
    }
    assert by_action["key.updated"]["changes"] == {"rpm_limit": 7, "metadata": ["owner"]}
    assert by_action["key.blocked"]["changes"] == {"blocked": True}
    assert by_action["key.regenerated"]["changes"] == {"token_hash": new_token}
    assert by_action["key.deleted"]["target_hash"] == new_token
    assert all(row["target_alias"] == "audited" for row in rows)

    logged = [line for line in audit_lines(proxy) if line["target_alias"] == "audited"]
    assert [line["action"] for line in logged] == ACTIONS
    assert {line["actor"] for line in logged} == {ACTOR}
    for secret in (SENTINEL, new_raw, MASTER_KEY):
        assert secret not in listed.text
        assert secret not in proxy.process.stderr_text()


def test_audit_filters_and_pages(proxy: ProxyServer) -> None:
    """Filters narrow the list, and cursor pages walk it without repeats."""
    for alias in ("page-a", "page-b", "page-c"):
        assert admin(proxy, "POST", "/key/generate", json={"key_alias": alias}).status_code == 200
    blocked = admin(proxy, "GET", "/audit", params={"action": "key.blocked"}).json()["data"]
    assert [row["target_alias"] for row in blocked] == ["audited"]
    assert admin(proxy, "GET", "/audit", params={"actor": "cli:nobody"}).json()["data"] == []
    everything = [row["id"] for row in admin(proxy, "GET", "/audit").json()["data"]]
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = admin(proxy, "GET", "/audit", params=params).json()
        seen += [row["id"] for row in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        params["cursor"] = page["next_cursor"]
    assert seen == everything and len(seen) >= 9
    offset = admin(proxy, "GET", "/audit", params={"limit": 3, "offset": 2}).json()["data"]
    assert [row["id"] for row in offset] == everything[2:5]
    future = admin(proxy, "GET", "/audit", params={"from": "2999-01-01"}).json()["data"]
    assert future == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"action": "key.stolen"}, "action"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"cursor": "abc"}, "cursor"),
        ({"offset": "-1"}, "offset"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
    ],
)
def test_bad_filters_get_openai_shaped_400(
    proxy: ProxyServer, params: dict[str, str], param: str
) -> None:
    """Each bad filter is a 400 naming the parameter, not a 500."""
    r = admin(proxy, "GET", "/audit", params=params)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_audit_needs_the_master_key(proxy: ProxyServer) -> None:
    """Without the master key GET /audit is a 401."""
    r = httpx.get(proxy.root_url + "/audit", headers={"authorization": "Bearer sk-nope-000000"})
    assert r.status_code == 401


def test_cli_key_commands_are_audited(proxy: ProxyServer, database: Path) -> None:
    """`llm-proxy keys create|delete` write audit rows as cli:<os user>."""
    env = {**os.environ, "LLM_PROXY_SQLITE_PATH": str(database), "LLM_PROXY_CONFIG": ""}

    def cli(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "keys", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    created = cli("create", "--alias", "from-cli")
    cli("delete", created["token"])
    rows = admin(proxy, "GET", "/audit", params={"key": "from-cli"}).json()["data"]
    assert [(row["action"], row["actor"]) for row in rows] == [
        ("key.deleted", f"cli:{getpass.getuser()}"),
        ("key.generated", f"cli:{getpass.getuser()}"),
    ]
    assert created["key"] not in str(rows)
