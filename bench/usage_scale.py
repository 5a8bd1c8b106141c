"""/usage at scale: the proxy's usage-summary queries on a generated usage_records table.

Builds ``usage_records`` in a scratch schema (never ``public``) with the proxy's own
migrations, fills it with ``--rows`` generated requests (thousands of keys with a skewed
share each, tens of models, ``--days`` days, rows in time order as the batch writer
inserts them), then times the queries ``/usage`` really runs: the SQL comes from
proxy.store (``PostgresStore.usage_summary`` for the timings, the same builder for the
EXPLAIN plans). It measures twice: with the indexes of the migrations before the last
usage index migration ("before"), then after applying the rest through
``PostgresStore.migrate()`` as a deploy would ("after"; the migration is timed too).
The schema is dropped at the end unless ``--keep``.

    nice -n 10 .venv/bin/python bench/usage_scale.py --dsn postgresql://... --rows 1000000

Point it at a server of its own: 100M rows took 51 GiB with their indexes and ~25 minutes
to load and index, plus ~8 minutes for the migration, here. The work runs in the
server's backends, so start that server niced (bench/README.md, "/usage at scale").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.store import PostgresStore
from proxy.store.base import GroupBy, utc
from proxy.store.postgres import _RECORD_DAY
from proxy.store.rollup import summary_sql
from proxy.store.schema import MIGRATIONS, POSTGRES_LEDGER, Migration

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:55433/bench"
END = datetime(2026, 11, 1, tzinfo=UTC)
MODEL_NAMES = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "claude-haiku-4", "o3-mini")

if TYPE_CHECKING:
    Connection = asyncpg.Connection[asyncpg.Record]


@dataclass(frozen=True)
class Query:
    name: str
    key_hash: str | None = None
    model: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    group_by: GroupBy = "day"

    def sql(self) -> tuple[str, list[Any]]:
        """The statement and arguments PostgresStore.usage_summary sends for this query."""
        return summary_sql(
            group_by=self.group_by,
            raw_group=_RECORD_DAY,
            daily_day="to_char(day, 'YYYY-MM-DD')",
            key_hash=self.key_hash,
            model=self.model,
            start=self.start,
            end=self.end,
            mark=lambda n: f"${n}",
            encode_time=utc,
            encode_day=lambda day: day,
        )


@dataclass
class Phase:
    name: str
    seconds: dict[str, list[float]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


def index_migration() -> Migration:
    """The last migration that creates an index on usage_records: "after" applies it."""
    found = [
        m
        for m in MIGRATIONS
        if any("INDEX" in s and "ON usage_records" in s for s in m.postgres) and m.version > 1
    ]
    return found[-1] if found else MIGRATIONS[-1]


async def create_schema(con: Connection, schema: str) -> None:
    await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await con.execute(f'CREATE SCHEMA "{schema}"')


async def migrate_upto(con: Connection, schema: str, upto: int) -> None:
    """Apply the migrations not yet applied up to ``upto``, recorded as the store does."""
    await con.execute(f'SET search_path = "{schema}"')
    await con.execute(POSTGRES_LEDGER)
    applied = {row[0] for row in await con.fetch("SELECT version FROM schema_migrations")}
    for migration in MIGRATIONS:
        if migration.version > upto or migration.version in applied:
            continue
        for statement in migration.postgres:
            await con.execute(statement)
        await con.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            migration.version,
            migration.name,
        )


async def fill(con: Connection, args: argparse.Namespace) -> dict[str, float]:
    """Generate the rows with the table bare, then rebuild its indexes; seconds per step."""
    took: dict[str, float] = {}
    index_defs = await con.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1"
        " AND tablename = 'usage_records' AND indexname <> 'usage_records_pkey'",
        args.schema,
    )
    for row in index_defs:
        await con.execute(f'DROP INDEX "{row[0]}"')
    await con.execute("ALTER TABLE usage_records DROP CONSTRAINT usage_records_pkey")
    # Keys: a few very busy ones and a long tail (key n gets ~n^-2/3 of the traffic).
    await con.execute(
        """
        CREATE TABLE bench_keys AS
        SELECT id, encode(sha256(('sk-bench-' || id)::bytea), 'hex') AS token_hash,
               'key-' || id AS key_alias, 'user-' || (id % 1500) AS user_id,
               'team-' || (id % 60) AS team_id
        FROM generate_series(1, $1::int) AS id""",
        args.keys,
    )
    await con.execute(
        """
        CREATE TABLE bench_models AS
        SELECT id, CASE WHEN id <= $2::int THEN ($3::text[])[id]
                        ELSE 'model-' || id END AS name,
               (ARRAY['openai', 'anthropic', 'azure'])[1 + id % 3] AS provider,
               0.0000001 * (1 + id % 7) AS price_in, 0.0000004 * (1 + id % 7) AS price_out
        FROM generate_series(1, $1::int) AS id""",
        args.models,
        len(MODEL_NAMES),
        list(MODEL_NAMES),
    )
    await con.execute("ANALYZE bench_keys; ANALYZE bench_models")
    start = END - timedelta(days=args.days)
    step = args.days * 86400.0 / args.rows
    began = time.perf_counter()
    for lo in range(1, args.rows + 1, args.chunk):
        hi = min(lo + args.chunk - 1, args.rows)
        t = time.perf_counter()
        await con.execute(
            """
            INSERT INTO usage_records
            SELECT substr(md5((g.i % 8)::text), 1, 12) || lpad(to_hex(g.i), 12, '0'),
                   g.t, g.t + make_interval(secs => g.latency / 1000),
                   m.name, k.token_hash, k.key_alias, k.user_id, k.team_id,
                   m.name || '/' || m.provider || '/' || m.name, m.provider,
                   g.p, g.c, g.p + g.c, g.cached,
                   (g.p * m.price_in + g.c * m.price_out)::numeric(20, 10),
                   g.latency, CASE WHEN g.stream THEN g.latency * 0.2 END,
                   CASE WHEN g.fail THEN 429 ELSE 200 END,
                   CASE WHEN g.fail THEN 'rate_limit_error' END, g.cached > 0 AND g.c = 0
            FROM (
                SELECT i, $3::timestamptz
                          + make_interval(secs => (i - 1) * $4::float8 + random() * $4 * 20) AS t,
                       1 + floor($5::int * random() ^ 3)::int AS kid,
                       1 + floor($6::int * random() ^ 2)::int AS mid,
                       (20 + random() * 2000)::int AS p, (random() * 800)::int AS c,
                       CASE WHEN random() < 0.05 THEN 1024 ELSE 0 END AS cached,
                       200 + random() * 8000 AS latency, random() < 0.5 AS stream,
                       random() < 0.02 AS fail
                FROM generate_series($1::bigint, $2::bigint) AS i
            ) AS g
            JOIN bench_keys AS k ON k.id = g.kid
            JOIN bench_models AS m ON m.id = g.mid""",
            lo,
            hi,
            start,
            step,
            args.keys,
            args.models,
        )
        done = hi / args.rows
        rate = (hi - lo + 1) / (time.perf_counter() - t)
        print(f"  {hi:>12,} rows ({done:6.1%}), {rate:,.0f} rows/s", file=sys.stderr, flush=True)
    took["insert"] = time.perf_counter() - began
    t = time.perf_counter()
    await con.execute("ALTER TABLE usage_records ADD PRIMARY KEY (request_id)")
    took["primary key"] = time.perf_counter() - t
    for row in index_defs:
        t = time.perf_counter()
        await con.execute(row[1])
        took[row[0]] = time.perf_counter() - t
    t = time.perf_counter()
    # The insert-driven autovacuum (PostgreSQL 13+) does this on a live table.
    await con.execute("VACUUM (ANALYZE) usage_records")
    took["vacuum analyze"] = time.perf_counter() - t
    return took


async def relation_sizes(con: Connection, schema: str) -> dict[str, int]:
    rows = await con.fetch(
        """
        SELECT c.relname, pg_relation_size(c.oid) FROM pg_class AS c
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND (c.relname = 'usage_records'
              OR c.oid IN (SELECT indexrelid FROM pg_index
                           WHERE indrelid = (quote_ident($1) || '.usage_records')::regclass))
        ORDER BY 1""",
        schema,
    )
    return {row[0]: row[1] for row in rows}


def queries(top_key: str, median_key: str, top_model: str) -> list[Query]:
    month = END - timedelta(days=30)
    day = END - timedelta(days=45)
    return [
        Query("top key, 30 days, by day", top_key, None, month, END, "day"),
        Query("median key, 30 days, by day", median_key, None, month, END, "day"),
        Query("all keys, 1 day, by key", None, None, day, day + timedelta(days=1), "key"),
        Query("top model, 30 days, by day", None, top_model, month, END, "day"),
        Query("top model, 1 day, by key", None, top_model, day, day + timedelta(days=1), "key"),
        Query("all keys, 30 days, by model", None, None, month, END, "model"),
    ]


async def measure(
    con: Connection,
    store: PostgresStore,
    *,
    schema: str,
    name: str,
    chosen: list[Query],
    repeat: int,
) -> Phase:
    phase = Phase(name)
    for query in chosen:
        runs: list[float] = []
        for _ in range(repeat):
            t = time.perf_counter()
            rows = await store.usage_summary(
                key_hash=query.key_hash,
                model=query.model,
                start=query.start,
                end=query.end,
                group_by=query.group_by,
            )
            runs.append(time.perf_counter() - t)
        phase.seconds[query.name] = runs
        phase.rows[query.name] = len(rows)
        sql, args = query.sql()
        plan = await con.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
        phase.plans[query.name] = "\n".join(row[0] for row in plan)
        print(f"  {name}: {query.name}: {', '.join(f'{s:.3f}' for s in runs)} s", file=sys.stderr)
    phase.sizes = await relation_sizes(con, schema)
    return phase


def report(args: argparse.Namespace, facts: dict[str, Any], phases: list[Phase]) -> str:
    gb = 1024**3
    lines = [
        f"rows: {facts['rows']:,}, keys: {args.keys:,}, models: {args.models}, days: {args.days}",
        f"top key: {facts['top_key_rows']:,} rows; top model: {facts['top_model_rows']:,} rows",
        "",
        "| step | seconds |",
        "| --- | ---: |",
        *(f"| {k} | {v:,.1f} |" for k, v in facts["took"].items()),
        "",
        "| relation | " + " | ".join(p.name for p in phases) + " |",
        "| --- |" + " ---: |" * len(phases),
    ]
    names = sorted({n for p in phases for n in p.sizes})
    for rel in names:
        cells = [f"{p.sizes[rel] / gb:.2f} GiB" if rel in p.sizes else "-" for p in phases]
        lines.append(f"| {rel} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| query (groups) | "
        + " | ".join(f"{p.name}: first / best of {args.repeat}" for p in phases)
        + " |",
        "| --- |" + " ---: |" * len(phases),
    ]
    for query in phases[0].seconds:
        cells = [f"{p.seconds[query][0]:.3f} / {min(p.seconds[query]):.3f} s" for p in phases]
        lines.append(f"| {query} ({phases[0].rows[query]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def timed(what: Awaitable[Any]) -> float:
    t = time.perf_counter()
    await what
    return time.perf_counter() - t


async def main(args: argparse.Namespace) -> tuple[str, list[Phase]]:
    after = index_migration()
    before = max((m.version for m in MIGRATIONS if m.version < after.version), default=1)
    con = await asyncpg.connect(args.dsn, command_timeout=None)
    try:
        await con.execute("SET maintenance_work_mem = '1GB'")
        took: dict[str, float] = {}
        if not args.reuse:
            print(f"schema {args.schema} at version {before}, filling", file=sys.stderr)
            await create_schema(con, args.schema)
            await migrate_upto(con, args.schema, before)
            took = await fill(con, args)
            if args.load_only:
                return f"loaded and kept; measure with --reuse: {took}", []
        await migrate_upto(con, args.schema, before)  # a kept schema may be older
        key_of = "SELECT token_hash FROM bench_keys WHERE id = $1"
        top_key = await con.fetchval(key_of, 1)
        median_key = await con.fetchval(key_of, args.keys // 2)
        top_model = await con.fetchval("SELECT name FROM bench_models WHERE id = 1")
        facts: dict[str, Any] = {
            "took": took,
            "rows": await con.fetchval("SELECT count(*) FROM usage_records"),
            "top_key_rows": await con.fetchval(
                "SELECT count(*) FROM usage_records WHERE token_hash = $1", top_key
            ),
            "top_model_rows": await con.fetchval(
                "SELECT count(*) FROM usage_records WHERE model = $1", top_model
            ),
        }
        chosen = queries(top_key, median_key, top_model)
        phases: list[Phase] = []
        store = PostgresStore(args.dsn, schema=args.schema, command_timeout=3600)
        async with store:
            phases.append(
                await measure(
                    con, store, schema=args.schema, name="before", chosen=chosen, repeat=args.repeat
                )
            )
            if args.drop_replaced_first:
                # What an operator short of disk does: the migration's DROP INDEXes first,
                # so the old and new indexes never take space at the same time.
                for m in MIGRATIONS:
                    for statement in m.postgres if m.version > before else ():
                        if statement.lstrip().upper().startswith("DROP INDEX"):
                            took[statement.strip()] = await timed(con.execute(statement))
            took[f"migrate to v{after.version}"] = await timed(store.migrate())
            took["analyze"] = await timed(con.execute("ANALYZE usage_records"))
            phases.append(
                await measure(
                    con, store, schema=args.schema, name="after", chosen=chosen, repeat=args.repeat
                )
            )
        return report(args, facts, phases), phases
    finally:
        if not (args.keep or args.load_only):
            await con.execute(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE')
        await con.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dsn", default=DEFAULT_DSN, help=f"PostgreSQL URL (default {DEFAULT_DSN})")
    p.add_argument("--schema", default="usage_scale", help="scratch schema, dropped at the end")
    p.add_argument("--rows", type=int, default=100_000_000)
    p.add_argument("--chunk", type=int, default=2_000_000, help="rows per INSERT statement")
    p.add_argument("--keys", type=int, default=5000)
    p.add_argument("--models", type=int, default=30)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per query and phase")
    p.add_argument("--plans", help="write every EXPLAIN (ANALYZE, BUFFERS) to this file")
    p.add_argument("--keep", action="store_true", help="keep the schema (for --reuse)")
    p.add_argument(
        "--drop-replaced-first",
        action="store_true",
        help="run the new migrations' DROP INDEX statements before migrating (saves disk)",
    )
    p.add_argument("--load-only", action="store_true", help="fill, keep and stop")
    p.add_argument("--reuse", action="store_true", help="measure a schema kept by --keep")
    args = p.parse_args(argv)
    if args.schema == "public" or not args.schema.isidentifier():
        p.error("--schema: a plain identifier other than public")
    if args.rows < 1 or args.chunk < 1 or args.keys < 2 or args.models < 1 or args.days < 31:
        p.error("--rows, --chunk >= 1; --keys >= 2; --models >= 1; --days >= 31")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    text, measured = asyncio.run(main(arguments))
    print(text)
    if arguments.plans:
        Path(arguments.plans).write_text(
            "".join(
                f"== {phase.name}: {query}\n{plan}\n\n"
                for phase in measured
                for query, plan in phase.plans.items()
            )
        )
