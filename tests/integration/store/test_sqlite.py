"""SqliteStore's own row encoding: what a usage row holds in the file, column by column."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.store import KeyRecord, SqliteStore
from proxy.store.base import utc
from proxy.store.errors import DatabaseError, DatabaseUnavailableError
from proxy.store.sqlite import _INSERTS, _TIME_FORMAT, _time_text
from tests.integration.store.factories import T0, usage


@given(
    st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from(
        [None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)
def test_time_text_is_the_fixed_width_utc_format(moment: datetime, zone: timezone | None) -> None:
    """Any instant, in any zone or naive (taken as UTC), whole seconds included."""
    value = moment.replace(tzinfo=zone)
    assert _time_text(value) == utc(value).strftime(_TIME_FORMAT)
    assert len(_time_text(value)) == 26


async def test_usage_row_columns_as_stored(tmp_path: Path) -> None:
    """NULLs stay NULL, booleans are 0/1, times are fixed-width UTC text with six decimals."""
    path = str(tmp_path / "proxy.db")
    store = SqliteStore(path)
    await store.migrate()
    whole = T0.replace(microsecond=0)
    await store.insert_usage(
        [
            usage(1, at=whole, cache_hit=True, ttft_ms=None, status=200),
            usage(2, at=T0 + timedelta(microseconds=7), error_type="timeout", status=504),
        ]
    )
    await store.aclose()
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT request_id, started_at, ended_at, key_alias, ttft_ms, error_type,"
            " cache_hit, typeof(cache_hit) FROM usage_records ORDER BY request_id"
        ).fetchall()
    assert rows == [
        ("req-1", "2025-03-01 12:00:00.000000", "2025-03-01 12:00:01.000000",
         None, None, None, 1, "integer"),
        ("req-2", "2025-03-01 12:00:00.000007", "2025-03-01 12:00:01.000007",
         None, 120.0, "timeout", 0, "integer"),
    ]  # fmt: skip


async def test_usage_batch_as_a_stores_first_call(tmp_path: Path) -> None:
    """A store whose first call is a usage batch (its own connection) opens the file first;
    after aclose a batch is refused."""
    path = str(tmp_path / "proxy.db")
    async with SqliteStore(path) as migrating:
        await migrating.migrate()
    store = SqliteStore(path)
    await store.insert_usage([usage(1), usage(2)])
    assert [row["requests"] for row in await store.usage_summary(group_by="day")] == [2]
    await store.aclose()
    with pytest.raises(DatabaseUnavailableError):
        await store.insert_usage([usage(3)])
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT count(*) FROM usage_records").fetchone() == (2,)


async def test_batches_of_any_size_are_stored_whole_in_few_statements(tmp_path: Path) -> None:
    """A batch goes in as chunks of 49 rows and then powers of two: every row of any size
    is stored once, and no more than seven insert statements ever exist."""
    path = str(tmp_path / "proxy.db")
    store = SqliteStore(path)
    await store.migrate()
    sizes = [1, 2, 31, 48, 49, 50, 63, 97, 99, 148]
    first = 0
    for size in sizes:
        await store.insert_usage([usage(i) for i in range(first, first + size)])
        first += size
    await store.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(DISTINCT request_id) FROM usage_records").fetchone() == (
            sum(sizes),
        )
    assert len(_INSERTS) == 7


async def test_a_key_lookup_does_not_wait_for_a_usage_batch(tmp_path: Path) -> None:
    """While a usage batch waits for SQLite's write lock (held here by another connection,
    as another worker would), the store still answers reads; the batch lands after."""
    path = str(tmp_path / "proxy.db")
    store = SqliteStore(path, busy_timeout=30.0)
    await store.migrate()
    await store.insert_key(KeyRecord(token_hash="k" * 64, key_alias="reader"))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        batch = asyncio.create_task(store.insert_usage([usage(1), usage(2)]))
        await asyncio.sleep(0.2)
        assert not batch.done()  # the batch waits for the lock
        found = await asyncio.wait_for(store.get_key("k" * 64), timeout=10)
        assert found is not None and found.key_alias == "reader"
        assert not batch.done()
    finally:
        other.execute("ROLLBACK")
        other.close()
    await asyncio.wait_for(batch, timeout=30)
    await store.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM usage_records").fetchone() == (2,)


async def test_a_row_sqlite_refuses_is_a_database_error(tmp_path: Path) -> None:
    """A constraint SQLite enforces (model NOT NULL) fails the batch as DatabaseError, the
    writer's cue to retry row by row, not as an outage."""
    path = str(tmp_path / "proxy.db")
    store = SqliteStore(path)
    await store.migrate()
    bad = msgspec.structs.replace(usage(1), model=None)
    with pytest.raises(DatabaseError) as refused:
        await store.insert_usage([bad])
    assert not isinstance(refused.value, DatabaseUnavailableError)
    await store.aclose()
