"""Postgres goes away mid-load: requests keep flowing and no usage record is lost."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from tests.e2e.conftest import MASTER_KEY, proxy_config
from tests.support.fault_proxy import FaultProxy
from tests.support.processes import FakeUpstream
from tests.support.proxy_server import ProxyServer, run_proxy

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


async def _send(client: httpx.AsyncClient, server: ProxyServer, key: str, n: int) -> list[int]:
    async def one() -> int:
        r = await client.post(
            f"{server.base_url}/chat/completions",
            json=BODY,
            headers={"authorization": f"Bearer {key}"},
        )
        return r.status_code

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_usage_survives_a_database_outage(
    fake: FakeUpstream, postgres_url: str, pg_schema: str
) -> None:
    """Cut Postgres mid-load: known keys keep working, unknown keys get 503, and after it is
    back every record is in the table exactly once (some of them via the spill file)."""
    target = urlsplit(postgres_url)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 5432) as fault:
        config = proxy_config(
            fake,
            master_key=MASTER_KEY,
            database={"schema": pg_schema},
            usage={"max_buffered": 20, "flush_interval_seconds": 0.2},  # spill early
        )
        env = {"DATABASE_URL": _through(postgres_url, fault.port)}
        with ExitStack() as stack:
            server = await asyncio.to_thread(stack.enter_context, run_proxy(config, env=env))
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(
                    f"{server.root_url}/key/generate",
                    json={"key_alias": "outage"},
                    headers={"authorization": f"Bearer {MASTER_KEY}"},
                )
                key, token = r.json()["key"], r.json()["token"]
                assert set(await _send(client, server, key, 30)) == {200}
                await fault.cut()
                assert set(await _send(client, server, key, 60)) == {200}
                unknown = await client.post(
                    f"{server.base_url}/chat/completions",
                    json=BODY,
                    headers={"authorization": "Bearer sk-never-seen-before-0000"},
                )
                assert unknown.status_code == 503
                # The writer finds the outage at its next write (every 0.2 s here); a fast
                # machine sends the 60 requests before that.
                for _ in range(50):
                    status = (await client.get(f"{server.root_url}/ready")).json()
                    if status["status"] == "degraded":
                        break
                    await asyncio.sleep(0.1)
                assert status["status"] == "degraded"
                await asyncio.sleep(1.5)
                scrape = (await client.get(f"{server.root_url}/metrics")).text
                samples = dict(
                    line.rsplit(" ", 1)
                    for line in scrape.splitlines()
                    if line.startswith("llm_proxy_")
                )
                assert float(samples["llm_proxy_usage_spilled_records_total"]) > 0
                assert float(samples["llm_proxy_limiter_degraded"]) == 0
                await fault.restore()
                assert set(await _send(client, server, key, 10)) == {200}
            con = await asyncpg.connect(postgres_url)
            try:
                count = 0
                for _ in range(100):
                    count = await con.fetchval(
                        f'SELECT count(*) FROM "{pg_schema}".usage_records WHERE token_hash = $1',
                        token,
                    )
                    if count >= 100:
                        break
                    await asyncio.sleep(0.2)
                assert count == 100
                ids = await con.fetchval(
                    f'SELECT count(DISTINCT request_id) FROM "{pg_schema}".usage_records'
                    " WHERE token_hash = $1",
                    token,
                )
                assert ids == 100
            finally:
                await con.close()
