"""Usage retention in the store: old usage records rolled up into ``usage_daily``, and the
``usage_summary`` query that adds those daily rows back in.

A prune moves records started before a cut-off in batches of ``batch_size`` rows, each
batch one short transaction: its rows are added to their day's aggregate (an upsert that
adds, keyed by day, key, model, deployment and provider) and deleted, together. A batch is
therefore either fully rolled up or untouched, so a prune stopped half way, or run again,
counts every request exactly once. Only one process prunes at a time (PostgreSQL: a
session advisory lock taken with try-lock, the others skip; SQLite: each batch holds the
write lock through ``BEGIN IMMEDIATE``).

Rolled-up days have day granularity: a summary whose ``from``/``to`` falls inside such a
day counts that whole day.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any, Final

import msgspec

from proxy.store.base import GroupBy, utc

PRUNE_BATCH_DEFAULT: Final = 5000

# Each usage_summary row's totals, from usage_records and from usage_daily (same order).
_RAW_TOTALS = (
    "count(*) AS n, sum(prompt_tokens) AS p, sum(completion_tokens) AS c,"
    " sum(total_tokens) AS t, sum(cost_usd) AS usd"
)
_DAILY_TOTALS = (
    "sum(requests), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens), sum(cost_usd)"
)
_TOTAL_NAMES = ("n", "p", "c", "t", "usd")

DAILY_COLUMNS: Final = (
    "day, token_hash, key_alias, model, deployment, provider, requests, errors,"
    " prompt_tokens, completion_tokens, total_tokens, cached_tokens, cost_usd"
)
DAILY_UPSERT: Final = """
    ON CONFLICT (day, token_hash, model, deployment, provider) DO UPDATE SET
        key_alias = coalesce(excluded.key_alias, usage_daily.key_alias),
        requests = usage_daily.requests + excluded.requests,
        errors = usage_daily.errors + excluded.errors,
        prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens,
        total_tokens = usage_daily.total_tokens + excluded.total_tokens,
        cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens,
        cost_usd = usage_daily.cost_usd + excluded.cost_usd"""


def daily_aggregate(day: str, errors: str, source: str) -> str:
    """SELECT the usage_daily rows for the records in ``source`` (a FROM clause)."""
    return (
        f"SELECT {day}, coalesce(token_hash, ''), max(key_alias), model,"
        f" coalesce(deployment, ''), coalesce(provider, ''), count(*), {errors},"
        " sum(prompt_tokens), sum(completion_tokens), sum(total_tokens), sum(cached_tokens),"
        f" sum(cost_usd) FROM {source} GROUP BY 1, 2, 4, 5, 6"
    )


# PostgreSQL, one prune batch: the oldest batch_size records before the cut-off, found
# through the started_at index and deleted by primary key; with roll-up, added to
# usage_daily by the same statement (data-modifying CTEs run to completion, read or not).
_PG_BATCH = """
    DELETE FROM usage_records WHERE request_id IN (
        SELECT request_id FROM usage_records WHERE started_at < $1
        ORDER BY started_at LIMIT $2)"""
POSTGRES_PRUNE_DELETE: Final = f"WITH gone AS ({_PG_BATCH} RETURNING 1) SELECT count(*) FROM gone"
_PG_ROLLUP_SELECT = daily_aggregate(
    "(started_at AT TIME ZONE 'UTC')::date", "count(*) FILTER (WHERE status >= 400)", "gone"
)
POSTGRES_PRUNE_ROLLUP: Final = f"""
    WITH gone AS ({_PG_BATCH}
        RETURNING started_at, token_hash, key_alias, model, deployment, provider, status,
            prompt_tokens, completion_tokens, total_tokens, cached_tokens, cost_usd
    ), rolled AS (
        INSERT INTO usage_daily ({DAILY_COLUMNS}) {_PG_ROLLUP_SELECT} {DAILY_UPSERT}
    )
    SELECT count(*) FROM gone"""

# SQLite: a prune batch is the rowids of the oldest records before the cut-off, found
# through the started_at index; the write lock (BEGIN IMMEDIATE) keeps it so until COMMIT.
SQLITE_PRUNE_TABLE: Final = """
CREATE TEMP TABLE IF NOT EXISTS prune_batch (id INTEGER PRIMARY KEY)"""
SQLITE_PRUNE_PICK: Final = """
INSERT INTO temp.prune_batch
SELECT rowid FROM usage_records WHERE started_at < ? ORDER BY started_at LIMIT ?"""
SQLITE_PRUNE_ROLLUP: Final = (
    f"INSERT INTO usage_daily ({DAILY_COLUMNS}) "
    + daily_aggregate(
        "substr(started_at, 1, 10)",
        "sum(status >= 400)",
        "usage_records WHERE rowid IN (SELECT id FROM temp.prune_batch)",
    )
    + DAILY_UPSERT
)
SQLITE_PRUNE_DELETE: Final = (
    "DELETE FROM usage_records WHERE rowid IN (SELECT id FROM temp.prune_batch)"
)


class PruneResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one prune did. ``skipped``: another process was pruning, this one did nothing."""

    deleted: int = 0
    batches: int = 0
    skipped: bool = False


def first_day_at_or_after(value: datetime) -> date:
    """The first UTC day that starts at or after ``value``."""
    value = utc(value)
    day = value.date()
    return day if value.timetz().replace(tzinfo=None) == time(0) else day + timedelta(days=1)


def summary_sql(
    *,
    group_by: GroupBy,
    raw_group: str,
    daily_day: str,
    key_hash: str | None,
    model: str | None,
    start: datetime | None,
    end: datetime | None,
    mark: Callable[[int], str],
    encode_time: Callable[[datetime], Any],
    encode_day: Callable[[date], Any],
) -> tuple[str, list[Any]]:
    """The usage_summary query over usage_records and usage_daily, with its arguments.

    ``raw_group`` is the record's group expression for ``day`` (the dialect's UTC day of
    ``started_at``), ``daily_day`` the daily row's day as "YYYY-MM-DD". Each half keeps the
    filters' index-friendly shape (``token_hash``/``model`` equality, a time range), and
    a daily day counts when it starts in ``[floor(start), end)``.
    """
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return mark(len(args))

    # Arguments in text order: "?" placeholders are positional.
    raw: list[str] = []
    if key_hash is not None:
        raw.append(f"token_hash = {arg(key_hash)}")
    if model is not None:
        raw.append(f"model = {arg(model)}")
    if start is not None:
        raw.append(f"started_at >= {arg(encode_time(utc(start)))}")
    if end is not None:
        raw.append(f"started_at < {arg(encode_time(utc(end)))}")
    daily: list[str] = []
    if key_hash is not None:
        daily.append(f"token_hash = {arg(key_hash)}")
    if model is not None:
        daily.append(f"model = {arg(model)}")
    if start is not None:
        daily.append(f"day >= {arg(encode_day(utc(start).date()))}")
    if end is not None:
        daily.append(f"day < {arg(encode_day(first_day_at_or_after(end)))}")
    if group_by == "key":
        raw_head = "token_hash AS g, max(key_alias) AS a"
        daily_head = "nullif(token_hash, ''), max(key_alias)"
        outer = "g, max(a)"
    else:
        raw_head = (raw_group if group_by == "day" else "model") + " AS g"
        daily_head = daily_day if group_by == "day" else "model"
        outer = "g"
    # Column names come from the first SELECT of the UNION (SQLite has no alias lists).
    sums = ", ".join(f"sum({n})" for n in _TOTAL_NAMES)
    sql = (
        f"SELECT {outer}, {sums} FROM ("
        f"SELECT {raw_head}, {_RAW_TOTALS} FROM usage_records {_where(raw)} GROUP BY 1"
        f" UNION ALL SELECT {daily_head}, {_DAILY_TOTALS} FROM usage_daily {_where(daily)}"
        " GROUP BY 1) AS u GROUP BY g ORDER BY g"
    )
    return sql, args


def _where(parts: list[str]) -> str:
    return "WHERE " + " AND ".join(parts) if parts else ""
