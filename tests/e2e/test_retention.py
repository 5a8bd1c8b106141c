"""Usage retention in a running proxy: the background pruner rolls old records up, and
GET /usage reports the same totals before and after (issue 9)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from proxy.store import SqliteStore
from tests.e2e.conftest import MASTER_KEY, proxy_config
from tests.integration.store.factories import usage
from tests.support.processes import FakeUpstream
from tests.support.proxy_server import run_proxy

ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}


async def _seed(path: Path, now: datetime) -> None:
    async with SqliteStore(str(path)) as store:
        await store.migrate()
        await store.insert_usage(
            [usage(i, prefix="old", at=now - timedelta(days=3 + i % 4)) for i in range(40)]
            + [usage(i, prefix="new", at=now - timedelta(minutes=i)) for i in range(5)]
        )


def _old_rows(path: Path, before: datetime) -> int:
    with sqlite3.connect(path) as db:
        cutoff = before.strftime("%Y-%m-%d %H:%M:%S.%f")
        found: int = db.execute(
            "SELECT count(*) FROM usage_records WHERE started_at < ?", (cutoff,)
        ).fetchone()[0]
    return found


def test_background_pruner_keeps_usage_totals(fake: FakeUpstream, tmp_path: Path) -> None:
    """Records older than retention_days leave usage_records; /usage totals do not change."""
    path = tmp_path / "proxy.db"
    now = datetime.now(UTC)
    asyncio.run(_seed(path, now))
    config = proxy_config(
        fake,
        master_key=MASTER_KEY,
        usage={"retention_days": 1, "prune_interval_seconds": 0.5, "prune_batch_size": 7},
    )
    env = {"LLM_PROXY_SQLITE_PATH": str(path)}
    with run_proxy(config, env=env) as proxy:

        def summary(group_by: str) -> list[dict[str, object]]:
            r = httpx.get(
                proxy.root_url + "/usage", params={"group_by": group_by}, headers=ADMIN, timeout=10
            )
            assert r.status_code == 200, r.text
            rows: list[dict[str, object]] = r.json()["data"]
            return rows

        before = {g: summary(g) for g in ("day", "model", "key")}
        assert sum(int(str(row["requests"])) for row in before["model"]) == 45
        deadline = time.monotonic() + 30
        while _old_rows(path, now - timedelta(days=2)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _old_rows(path, now - timedelta(days=2)) == 0
        after = {g: summary(g) for g in ("day", "model", "key")}
    for group, rows in before.items():  # SQLite sums REAL costs: equal up to rounding
        assert after[group] == [{**row, "cost_usd": pytest.approx(row["cost_usd"])} for row in rows]
