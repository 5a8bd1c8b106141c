"""The real proxy with Redis over rediss:// and Postgres with sslmode=verify-full (issue 9)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.e2e.conftest import MASTER_KEY, proxy_config
from tests.integration.tls.fixtures import pki, tls_postgres, tls_redis
from tests.integration.tls.servers import Pki, TlsPostgres, TlsRedis
from tests.support.processes import FakeUpstream
from tests.support.proxy_server import ProxyServer, run_proxy

__all__ = ["pki", "tls_postgres", "tls_redis"]  # the servers' fixtures, used below
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}


def chat(proxy: ProxyServer, key: str) -> httpx.Response:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key}"}
    return httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers=headers, timeout=10)


def test_proxy_over_tls_redis_and_postgres(
    fake: FakeUpstream, tls_redis: TlsRedis, tls_postgres: TlsPostgres, pki: Pki
) -> None:
    """A key made and used through a proxy whose Redis and Postgres accept only TLS."""
    config = proxy_config(fake, master_key=MASTER_KEY, database={"schema": "tls_e2e"})
    env = {
        "DATABASE_URL": tls_postgres.dsn(sslmode="verify-full", sslrootcert=pki.ca_file),
        "REDIS_URL": tls_redis.url(ca_file=None),  # the CA comes from REDIS_CA_FILE
        "REDIS_CA_FILE": str(pki.ca_file),
    }
    with run_proxy(config, env=env) as proxy:
        ready = httpx.get(f"{proxy.root_url}/ready", timeout=5).json()
        assert ready["status"] == "ok", ready
        r = httpx.post(
            f"{proxy.root_url}/key/generate", json={"rpm_limit": 1}, headers=ADMIN, timeout=10
        )
        assert r.status_code == 200, r.text
        key = r.json()["key"]
        assert chat(proxy, key).status_code == 200
        assert chat(proxy, key).status_code == 429  # the RPM count lives in the TLS Redis
        deadline = time.monotonic() + 10
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not rows:
            params = {"key": key, "group_by": "key"}
            usage = httpx.get(f"{proxy.root_url}/usage", params=params, headers=ADMIN, timeout=5)
            rows = [row for row in usage.json()["data"] if row["requests"] == 2]
            time.sleep(0.2)
        assert rows, "the usage of both requests never reached Postgres"
        assert httpx.get(f"{proxy.root_url}/ready", timeout=5).json()["checks"]["limiter"] == "ok"
