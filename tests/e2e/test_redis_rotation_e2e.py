"""A rotated Redis password reaches running proxies through REDIS_URL_FILE, no restart.

Two proxies share Postgres and Redis; Redis is reached as an ACL user of this test's own.
The URL file is rewritten with a second user, the first is disabled and its connections
killed: limits, /ready and immediate key revocation (pub/sub) keep working.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.e2e.conftest import MASTER_KEY, proxy_config
from tests.e2e.test_keys import admin, chat, new_key
from tests.support.processes import FakeUpstream
from tests.support.proxy_server import ProxyServer, run_proxy


class RedisUsers:
    """ACL users limited to one key prefix (keys and channels), deleted when done."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.admin = redis.Redis.from_url(redis_url, socket_timeout=5)
        self._url = urlsplit(redis_url)
        self.prefix = prefix
        self.names: list[str] = []

    def create(self) -> str:
        name, password = f"llm-proxy-test-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
        self.names.append(name)
        self.admin.acl_setuser(
            name,
            enabled=True,
            passwords=[f"+{password}"],
            keys=[f"{self.prefix}*"],
            channels=[f"{self.prefix}*"],
            categories=["+@all"],
        )
        netloc = f"{name}:{password}@{self._url.hostname}:{self._url.port or 6379}"
        return urlunsplit(self._url._replace(netloc=netloc))

    def connections(self, url: str) -> int:
        name = urlsplit(url).username
        return sum(1 for c in self.admin.client_list() if c.get("user") == name)

    def revoke(self, url: str) -> None:
        name = urlsplit(url).username
        assert name is not None
        self.admin.acl_setuser(name, enabled=False)
        self.admin.client_kill_filter(user=name)

    def close(self) -> None:
        for name in self.names:
            self.admin.acl_deluser(name)
        self.admin.close()


@pytest.fixture
def users(redis_url: str, redis_key_prefix: str, pg_schema: str) -> Iterator[RedisUsers]:
    made = RedisUsers(redis_url, f"{redis_key_prefix}{pg_schema}:")
    try:
        yield made
    finally:
        made.close()


def _until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _write(path: Path, text: str) -> None:
    """Replace the file as an operator (or the kubelet) would: write aside, then rename."""
    aside = path.with_suffix(".new")
    aside.write_text(text + "\n")
    aside.replace(path)


def test_rotated_redis_password_applies_without_restart(
    fake: FakeUpstream,
    postgres_url: str,
    pg_schema: str,
    users: RedisUsers,
    tmp_path: Path,
) -> None:
    """After the URL file changes and the old user is revoked, nothing degrades or waits."""
    old, new = users.create(), users.create()
    url_file = tmp_path / "redis-url"
    _write(url_file, old)
    config = proxy_config(
        fake,
        master_key=MASTER_KEY,
        database={"schema": pg_schema},
        limits={"key_prefix": users.prefix, "replicas": 2},
        keys={"cache_ttl_seconds": 300},  # revocation must come through pub/sub
        server={"secrets_check_seconds": 0.2},
    )
    env = {"DATABASE_URL": postgres_url, "REDIS_URL_FILE": str(url_file)}
    with ExitStack() as stack:
        first = stack.enter_context(run_proxy(config, env=env))
        second = stack.enter_context(run_proxy(config, env=env))
        key = new_key(first, rpm_limit=1000)
        assert chat(second, key).status_code == 200  # cached on the second proxy
        assert users.connections(old) > 0

        _write(url_file, new)
        # Every client moved: the old user's connections are gone, with no request failing.
        _until(lambda: users.connections(old) == 0 and users.connections(new) > 0)
        users.revoke(old)

        for server in (first, second):
            assert chat(server, key).status_code == 200
            assert _ready(server)
        admin(first, "POST", "/key/block", json={"key": key})
        _until(lambda: chat(second, key).status_code == 401, timeout=2)


def _ready(server: ProxyServer) -> bool:
    status, body = server.get("/ready")
    return status == 200 and b"degraded" not in body
