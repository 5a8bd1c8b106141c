"""Usage batches, spend aggregation and summaries, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from proxy.store import Store
from proxy.store.errors import DatabaseError
from tests.integration.store.conftest import MakeStore
from tests.integration.store.factories import T0, key, usage


async def _count(
    store: Store,
    key_hash: str | None = None,
    model: str | None = None,
    start: datetime | None = None,
) -> int:
    rows = await store.usage_summary(key_hash=key_hash, model=model, start=start, group_by="model")
    return sum(row["requests"] for row in rows)


async def test_replayed_batch_stores_each_record_once(store: Store) -> None:
    """The same batch written twice leaves one row per request_id and charges the key once."""
    k = await store.insert_key(key("sk-idem"))
    batch = [usage(i, token_hash=k.token_hash) for i in range(50)]
    await store.insert_usage(batch)
    await store.insert_usage(batch)
    await store.insert_usage([*batch[:10], usage(50, token_hash=k.token_hash)])
    assert await _count(store) == 51
    stored = await store.get_key(k.token_hash)
    assert stored is not None and stored.spend == pytest.approx(51 * 0.001)


async def test_repeated_request_id_in_one_batch_counts_once(store: Store) -> None:
    """A batch that carries a request twice stores and charges it once."""
    k = await store.insert_key(key("sk-dup"))
    await store.insert_usage([usage(1, token_hash=k.token_hash), usage(1, token_hash=k.token_hash)])
    assert await _count(store) == 1
    assert await store.key_spend(k.token_hash, T0) == pytest.approx(0.001)


async def test_spend_is_charged_after_every_row_was_pruned(store: Store) -> None:
    """A batch is charged for the rows it stored even when retention emptied the table
    before it (SQLite: the batch's rows are found by rowid past the largest before it)."""
    k = await store.insert_key(key("sk-pruned"))
    await store.insert_usage([usage(i, token_hash=k.token_hash) for i in range(5)])
    result = await store.prune_usage(T0 + timedelta(days=365), rollup=False)
    assert result.deleted == 5
    await store.insert_usage([usage(i, prefix="after", token_hash=k.token_hash) for i in range(3)])
    await store.insert_usage([usage(0, prefix="after", token_hash=k.token_hash)])  # replayed
    stored = await store.get_key(k.token_hash)
    assert stored is not None and stored.spend == pytest.approx(8 * 0.001)
    assert await _count(store) == 3


async def test_spend_is_added_per_key(store: Store) -> None:
    """Each key's spend grows by the cost of its own records, across batches."""
    a = await store.insert_key(key("sk-a"))
    b = await store.insert_key(key("sk-b"))
    await store.insert_usage(
        [usage(i, token_hash=a.token_hash, cost_usd=0.01) for i in range(3)]
        + [usage(i, prefix="b", token_hash=b.token_hash, cost_usd=0.5) for i in range(2)]
        + [usage(9, prefix="anon")]  # master key or no key: stored, charged to nobody
    )
    await store.insert_usage([usage(3, token_hash=a.token_hash, cost_usd=0.01)])
    got_a, got_b = await store.get_key(a.token_hash), await store.get_key(b.token_hash)
    assert got_a is not None and got_a.spend == pytest.approx(0.04)
    assert got_b is not None and got_b.spend == pytest.approx(1.0)
    assert await _count(store) == 7


async def test_batch_longer_than_one_insert_is_stored_whole(store: Store) -> None:
    """A batch of many rows (SQLite stages them many per INSERT) stores every row once and
    charges the key once per new row, also when rows already stored sit in several chunks."""
    k = await store.insert_key(key("sk-long"))
    early = [usage(i, token_hash=k.token_hash) for i in range(0, 300, 7)]
    await store.insert_usage(early)
    await store.insert_usage([usage(i, token_hash=k.token_hash) for i in range(300)])
    assert await _count(store) == 300
    stored = await store.get_key(k.token_hash)
    assert stored is not None and stored.spend == pytest.approx(300 * 0.001)


async def test_out_of_range_value_fails_the_batch_and_stores_nothing(store: Store) -> None:
    """A value the database cannot hold is a DatabaseError; the batch's other rows are not
    half-stored (the writer keeps the whole batch to retry or spill)."""
    k = await store.insert_key(key("sk-range"))
    batch = [usage(i, token_hash=k.token_hash) for i in range(120)]
    batch[90] = usage(90, token_hash=k.token_hash, prompt_tokens=1 << 70)
    with pytest.raises(DatabaseError, match="out of range"):
        await store.insert_usage(batch)
    assert await _count(store) == 0
    stored = await store.get_key(k.token_hash)
    assert stored is not None and stored.spend == 0
    # Nothing of it is left staged to slip into the next batch.
    await store.insert_usage([usage(i, prefix="next", token_hash=k.token_hash) for i in range(3)])
    assert await _count(store) == 3
    stored = await store.get_key(k.token_hash)
    assert stored is not None and stored.spend == pytest.approx(3 * 0.001)


async def test_records_of_unknown_keys_are_stored(store: Store) -> None:
    """A record naming a key that does not exist (deleted since) is stored all the same."""
    await store.insert_usage([usage(1, token_hash="0" * 64)])
    assert await _count(store) == 1


async def test_empty_batch_is_a_no_op(store: Store) -> None:
    """insert_usage([]) does nothing and does not fail."""
    await store.insert_usage([])
    assert await _count(store) == 0


async def test_usage_record_fields_are_stored(store: Store) -> None:
    """Optional and boolean fields reach the table (checked through a summary)."""
    await store.insert_usage(
        [
            usage(
                1,
                cache_hit=True,
                status=429,
                error_type="rate_limit",
                ttft_ms=None,
                cached_tokens=4,
            )
        ]
    )
    [row] = await store.usage_summary(group_by="day")
    assert row == {
        "day": "2025-03-01",
        "requests": 1,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "cost_usd": pytest.approx(0.001),
    }


async def test_costs_keep_ten_decimals(store: Store) -> None:
    """Costs are stored to the column's ten decimals (Postgres stages them as doubles)."""
    k = await store.insert_key(key("sk-cents"))
    costs = [0.0000001234, 1.2345678901, 12345.0000000001]
    await store.insert_usage(
        [usage(i, token_hash=k.token_hash, cost_usd=c) for i, c in enumerate(costs)]
    )
    assert await store.key_spend(k.token_hash, T0) == pytest.approx(sum(costs), abs=1e-9)
    stored = await store.get_key(k.token_hash)
    assert stored is not None and stored.spend == pytest.approx(sum(costs), abs=1e-9)
    [row] = await store.usage_summary(group_by="day")
    assert row["cost_usd"] == pytest.approx(sum(costs), abs=1e-9)


async def test_times_in_other_zones_are_stored_as_the_same_instant(store: Store) -> None:
    """A record whose times are not in UTC is stored at the same instant (day boundaries)."""
    east = timezone(timedelta(hours=5))
    late = (T0 + timedelta(hours=11, minutes=30)).astimezone(east)  # 23:30 UTC: next day at +05
    await store.insert_usage([usage(1, at=late), usage(2)])
    rows = await store.usage_summary(group_by="day")
    assert [(r["day"], r["requests"]) for r in rows] == [("2025-03-01", 2)]
    since = T0 + timedelta(hours=11)
    assert await _count(store, start=since) == 1


async def test_summary_groups_by_day_model_and_key(store: Store) -> None:
    """usage_summary totals per UTC day, per model and per key, sorted by the group."""
    a = await store.insert_key(key("sk-sum-a", key_alias="alpha"))
    b = await store.insert_key(key("sk-sum-b"))
    day2 = T0 + timedelta(days=1)
    await store.insert_usage(
        [
            usage(1, token_hash=a.token_hash, key_alias="alpha"),
            usage(2, token_hash=a.token_hash, key_alias="alpha", model="claude-sonnet-4", at=day2),
            usage(3, token_hash=b.token_hash, at=day2, cost_usd=0.5),
        ]
    )
    by_day = await store.usage_summary(group_by="day")
    assert [(r["day"], r["requests"]) for r in by_day] == [("2025-03-01", 1), ("2025-03-02", 2)]
    assert by_day[1]["cost_usd"] == pytest.approx(0.501)
    by_model = await store.usage_summary(group_by="model")
    assert [(r["model"], r["requests"], r["total_tokens"]) for r in by_model] == [
        ("claude-sonnet-4", 1, 15),
        ("gpt-4o", 2, 30),
    ]
    by_key = {r["token_hash"]: r for r in await store.usage_summary(group_by="key")}
    assert by_key[a.token_hash]["key_alias"] == "alpha"
    assert by_key[a.token_hash]["requests"] == 2
    assert by_key[b.token_hash]["cost_usd"] == pytest.approx(0.5)


async def test_summary_filters_by_key_model_and_time(store: Store) -> None:
    """Filters combine: key, model and the half-open window start <= started_at < end."""
    a = await store.insert_key(key("sk-filter"))
    await store.insert_usage(
        [usage(i, token_hash=a.token_hash, at=T0 + timedelta(hours=i)) for i in range(5)]
        + [usage(9, model="o3", token_hash=a.token_hash), usage(10, prefix="other")]
    )
    assert await _count(store, key_hash=a.token_hash) == 6
    assert await _count(store, key_hash=a.token_hash, model="o3") == 1
    window = await store.usage_summary(
        key_hash=a.token_hash,
        model="gpt-4o",
        start=T0 + timedelta(hours=1),
        end=T0 + timedelta(hours=3),
        group_by="day",
    )
    assert [r["requests"] for r in window] == [2]
    with pytest.raises(ValueError, match="group_by"):
        await store.usage_summary(group_by="week")  # type: ignore[arg-type]


async def test_key_spend_counts_requests_since(store: Store) -> None:
    """key_spend sums a key's cost over requests started at or after ``since``."""
    a = await store.insert_key(key("sk-since"))
    await store.insert_usage(
        [
            usage(i, token_hash=a.token_hash, at=T0 + timedelta(days=i), cost_usd=1.0)
            for i in range(4)
        ]
    )
    assert await store.key_spend(a.token_hash, T0) == pytest.approx(4.0)
    assert await store.key_spend(a.token_hash, T0 + timedelta(days=2)) == pytest.approx(2.0)
    assert await store.key_spend(a.token_hash, T0 + timedelta(days=9)) == 0.0


async def test_replicas_writing_overlapping_batches_agree(make_store: MakeStore) -> None:
    """Four stores replaying overlapping batches at once store each row once, charge once."""
    stores = [await make_store() for _ in range(4)]
    await stores[0].migrate()
    keys = [await stores[0].insert_key(key(f"sk-rep-{i}")) for i in range(5)]
    records = [usage(i, token_hash=keys[i % 5].token_hash) for i in range(200)]

    async def replica(n: int) -> None:
        for start in range(0, 200, 50):
            await stores[n].insert_usage(
                records[start : start + 50 + 10 * n][:: -1 if n % 2 else 1]
            )

    await asyncio.gather(*(replica(n) for n in range(4)))
    assert await _count(stores[0]) == 200
    for k in keys:
        stored = await stores[0].get_key(k.token_hash)
        assert stored is not None and stored.spend == pytest.approx(40 * 0.001)
