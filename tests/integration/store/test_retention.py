"""Usage retention in the store: old records rolled up into usage_daily in batches, with
every summary the same before and after, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import aiosqlite
import asyncpg
import pytest

from proxy.store import GROUP_BY, Store, UsageRecord
from tests.integration.store.conftest import Backend, MakeStore
from tests.integration.store.factories import T0, key, usage

DAYS = 5
CUTOFF = (T0 + timedelta(days=3)).replace(hour=0)  # days 0..2 go, days 3..4 stay


async def _raw_started(backend: Backend) -> list[str]:
    """The started_at days of the rows left in usage_records, read straight from the database."""
    if backend.name == "postgres":
        con = await asyncpg.connect(backend.location)
        try:
            rows = await con.fetch(
                f"SELECT to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
                f' FROM "{backend.schema}".usage_records'
            )
        finally:
            await con.close()
        return sorted(row[0] for row in rows)
    async with aiosqlite.connect(backend.location) as db:
        found = await db.execute_fetchall("SELECT substr(started_at, 1, 10) FROM usage_records")
    return sorted(row[0] for row in found)


def _records(keys: list[str]) -> list[UsageRecord]:
    """Five days of traffic: two keys and anonymous calls, two models, some errors."""
    out = []
    for day in range(DAYS):
        for i in range(9):
            at = T0 + timedelta(days=day, minutes=37 * i)
            out.append(
                usage(
                    i,
                    prefix=f"d{day}",
                    at=at,
                    token_hash=[*keys, None][i % 3],
                    key_alias=["alpha", None, None][i % 3],
                    model="gpt-4o" if i % 2 else "o3",
                    deployment=None if i == 4 else "dep",
                    status=500 if i == 5 else 200,
                    cost_usd=0.001 * (i + 1),
                    total_tokens=10 + i,
                )
            )
    return out


async def _summaries(store: Store, **filters: Any) -> dict[str, list[dict[str, Any]]]:
    return {g: await store.usage_summary(group_by=g, **filters) for g in GROUP_BY}


def _approx(summaries: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {
        g: [{**row, "cost_usd": pytest.approx(row["cost_usd"])} for row in rows]
        for g, rows in summaries.items()
    }


async def _seeded(store: Store) -> list[UsageRecord]:
    a = await store.insert_key(key("sk-ret-a", key_alias="alpha"))
    b = await store.insert_key(key("sk-ret-b"))
    records = _records([a.token_hash, b.token_hash])
    await store.insert_usage(records)
    return records


async def test_prune_rolls_up_in_batches_and_keeps_totals(store: Store, backend: Backend) -> None:
    """Records before the cut-off leave usage_records in batches; every summary is unchanged."""
    await _seeded(store)
    before = await _summaries(store)
    filtered = await _summaries(store, model="o3", start=T0 - timedelta(days=1))
    result = await store.prune_usage(CUTOFF, batch_size=4)
    assert result.deleted == 27 and result.batches == 7 and not result.skipped
    assert set(await _raw_started(backend)) == {"2025-03-04", "2025-03-05"}
    assert await _summaries(store) == _approx(before)
    assert await _summaries(store, model="o3", start=T0 - timedelta(days=1)) == _approx(filtered)
    errors = await _daily_errors(backend)
    assert errors == 3  # one 500 a day, three days rolled up


async def test_second_prune_is_a_no_op(store: Store) -> None:
    """Pruning again with the same cut-off deletes nothing and changes no total."""
    await _seeded(store)
    await store.prune_usage(CUTOFF, batch_size=10)
    after_first = await _summaries(store)
    again = await store.prune_usage(CUTOFF, batch_size=10)
    assert (again.deleted, again.batches) == (0, 0)
    assert await _summaries(store) == _approx(after_first)


async def test_late_records_add_to_a_rolled_up_day(store: Store) -> None:
    """A record stored after its day was rolled up is added to that day's totals."""
    records = await _seeded(store)
    before = await store.usage_summary(group_by="day")
    await store.prune_usage(CUTOFF)
    late = usage(99, prefix="late", at=T0 + timedelta(hours=1), cost_usd=0.5)
    await store.insert_usage([late])
    await store.prune_usage(CUTOFF)
    days = {row["day"]: row for row in await store.usage_summary(group_by="day")}
    assert days["2025-03-01"]["requests"] == before[0]["requests"] + 1
    assert days["2025-03-01"]["cost_usd"] == pytest.approx(before[0]["cost_usd"] + 0.5)
    assert sum(row["requests"] for row in days.values()) == len(records) + 1


async def test_prune_without_rollup_only_deletes(store: Store) -> None:
    """With rollup off, the old days disappear from the summaries."""
    await _seeded(store)
    result = await store.prune_usage(CUTOFF, batch_size=100, rollup=False)
    assert result.deleted == 27
    days = [row["day"] for row in await store.usage_summary(group_by="day")]
    assert days == ["2025-03-04", "2025-03-05"]


async def test_window_on_rolled_up_days_counts_whole_days(store: Store) -> None:
    """A from/to inside a rolled-up day counts that day whole; outside, as before."""
    await _seeded(store)
    await store.prune_usage(CUTOFF)

    async def requests(start: datetime, end: datetime) -> int:
        rows = await store.usage_summary(start=start, end=end, group_by="model")
        return sum(row["requests"] for row in rows)

    midnight = T0.replace(hour=0)
    assert await requests(midnight, midnight + timedelta(days=1)) == 9
    assert await requests(T0, T0 + timedelta(days=1)) == 18  # days 0 and 1, both whole
    assert await requests(T0 + timedelta(days=1, hours=2), T0 + timedelta(days=1, hours=3)) == 9
    assert await requests(T0 + timedelta(days=2), T0 + timedelta(days=4)) == 18


async def test_concurrent_prunes_count_each_record_once(
    make_store: MakeStore, store: Store
) -> None:
    """Two stores (two replicas) pruning at once: each record is rolled up exactly once."""
    await _seeded(store)
    before = await _summaries(store)
    other = await make_store()
    results = await asyncio.gather(
        store.prune_usage(CUTOFF, batch_size=3), other.prune_usage(CUTOFF, batch_size=3)
    )
    assert sum(r.deleted for r in results) == 27
    assert await _summaries(store) == _approx(before)


async def _daily_errors(backend: Backend) -> int:
    if backend.name == "postgres":
        con = await asyncpg.connect(backend.location)
        try:
            total = await con.fetchval(f'SELECT sum(errors) FROM "{backend.schema}".usage_daily')
        finally:
            await con.close()
        return int(total)
    async with aiosqlite.connect(backend.location) as db:
        rows = list(await db.execute_fetchall("SELECT sum(errors) FROM usage_daily"))
    return int(rows[0][0])
