"""``PostgresStore``: the store on PostgreSQL through an asyncpg pool.

Connections: each worker process holds one pool of ``min_size``..``max_size`` connections
(default 1..5), so a deployment uses up to ``max_size x workers x replicas`` connections in
total; keep that under the server's ``max_connections`` (or a pgbouncer's pool size).

Usage batches are COPYed into a per-connection temporary table and moved with
``INSERT .. ON CONFLICT (request_id) DO NOTHING RETURNING``, so a replayed batch adds
neither rows nor spend. Key spend is then bumped once per key, in key order, so that
replicas flushing overlapping keys at the same moment take row locks in the same order
and cannot deadlock.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn, Self

import asyncpg
import msgspec

from proxy.errors import ProxyError
from proxy.store.audit import (
    AUDIT_COLUMNS,
    AuditEntry,
    AuditQuery,
    audit_entry,
    audit_list_sql,
    audit_values,
)
from proxy.store.base import (
    GroupBy,
    check_group_by,
    checked_update,
    per_request_unique,
    summary_row,
    utc,
)
from proxy.store.errors import DatabaseError, DatabaseUnavailableError, KeyExistsError
from proxy.store.records import KEY_COLUMNS, USAGE_COLUMNS, KeyRecord, UsageRecord
from proxy.store.rollup import (
    POSTGRES_PRUNE_DELETE,
    POSTGRES_PRUNE_ROLLUP,
    PRUNE_BATCH_DEFAULT,
    PruneResult,
    summary_sql,
)
from proxy.store.schema import MIGRATIONS, POSTGRES_LEDGER, POSTGRES_STAGING

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_KEY_SELECT = ", ".join(KEY_COLUMNS)
_USAGE_LIST = ", ".join(USAGE_COLUMNS)
_JSON_COLUMNS = frozenset({"models", "metadata"})
# SQLSTATE classes and codes after which a later retry can succeed.
_TRANSIENT_CLASSES = ("08", "53", "57", "58")  # connection, resources, operator, system
_TRANSIENT_CODES = frozenset({"40001", "40P01", "55P03"})  # serialization, deadlock, lock

_RECORD_DAY = "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
_AUDIT_INSERT = (
    f"INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)})"
    f" VALUES ({', '.join(f'${i}' for i in range(1, len(AUDIT_COLUMNS) + 1))})"
)

_json_encode = msgspec.json.Encoder().encode

if TYPE_CHECKING:
    Connection = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]


class PostgresStore:
    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 5,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema: expected a lower-case SQL identifier, got {schema!r}")
        self._dsn = dsn
        self._schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self._command_timeout)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()  # the server is gone; do not wait for goodbyes

    def set_dsn(self, dsn: str) -> None:
        """Open new connections with ``dsn`` (rotated credentials); open ones stay."""
        self._dsn = dsn

    async def _connect_with_current_dsn(
        self, dsn: str | None = None, **kwargs: Any
    ) -> asyncpg.Connection[asyncpg.Record]:
        # The pool's connect hook: the DSN given at pool creation may have been rotated since.
        connection: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(self._dsn, **kwargs)
        return connection

    async def _get_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._closed:
                raise DatabaseUnavailableError("the database store is closed")
            if self._pool is None:
                settings = {"application_name": "llm-proxy"}
                if self._schema:
                    settings["search_path"] = self._schema
                try:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=self._min_size,
                        max_size=self._max_size,
                        timeout=self._connect_timeout,
                        command_timeout=self._command_timeout,
                        server_settings=settings,
                        init=_prepare_connection,
                        connect=self._connect_with_current_dsn,
                    )
                except Exception as exc:
                    _raise_mapped(exc)
            return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        pool = await self._get_pool()
        try:
            async with pool.acquire(timeout=self._connect_timeout) as con:
                yield con
        except ProxyError:
            raise
        except Exception as exc:
            _raise_mapped(exc)

    async def ping(self) -> None:
        async with self._connection() as con:
            await con.fetchval("SELECT 1")

    async def migrate(self) -> int:
        lock = f"llm-proxy migrate {self._schema or ''}"
        async with self._connection() as con:
            # A session lock taken before the transaction, not a transaction lock inside it:
            # the transaction must start after the lock is ours, so that it sees (through
            # fresh catalog caches) everything the previous holder committed.
            await con.execute("SELECT pg_advisory_lock(hashtext($1))", lock)
            version = await self._apply_migrations(con)
            # On an error the pool's reset on release (pg_advisory_unlock_all) frees it.
            await con.execute("SELECT pg_advisory_unlock(hashtext($1))", lock)
            return version

    async def _apply_migrations(self, con: Connection) -> int:
        async with con.transaction():
            if self._schema:
                await con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
            await con.execute(POSTGRES_LEDGER)
            rows = await con.fetch("SELECT version FROM schema_migrations")
            applied: set[int] = {row[0] for row in rows}
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                for statement in migration.postgres:
                    await con.execute(statement)
                await con.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
                applied.add(migration.version)
            return max(applied)

    # -- keys ----------------------------------------------------------------------------

    async def insert_key(self, rec: KeyRecord, *, audit: AuditEntry | None = None) -> KeyRecord:
        now = datetime.now(UTC)
        rec = msgspec.structs.replace(rec, created_at=rec.created_at or now, updated_at=now)
        values = [_encode(name, getattr(rec, name)) for name in KEY_COLUMNS]
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        sql = f"INSERT INTO virtual_keys ({_KEY_SELECT}) VALUES ({marks}) RETURNING {_KEY_SELECT}"
        async with self._connection() as con, con.transaction():
            try:
                row = await con.fetchrow(sql, *values)
            except asyncpg.UniqueViolationError as exc:
                raise KeyExistsError("a key with this hash or alias already exists") from exc
            await _audit(con, audit)
        assert row is not None
        return _key_record(row)

    async def get_key(self, token_hash: str) -> KeyRecord | None:
        sql = f"SELECT {_KEY_SELECT} FROM virtual_keys WHERE token_hash = $1"
        async with self._connection() as con:
            row = await con.fetchrow(sql, token_hash)
        return None if row is None else _key_record(row)

    async def update_key(
        self, token_hash: str, *, audit: AuditEntry | None = None, **fields: Any
    ) -> KeyRecord | None:
        fields = checked_update(fields)
        names = list(fields)
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
        sql = f"UPDATE virtual_keys SET {sets} WHERE token_hash = $1 RETURNING {_KEY_SELECT}"
        values = [_encode(name, fields[name]) for name in names]
        async with self._connection() as con, con.transaction():
            try:
                row = await con.fetchrow(sql, token_hash, *values)
            except asyncpg.UniqueViolationError as exc:
                raise KeyExistsError("another key already has this alias") from exc
            if row is not None:
                await _audit(con, audit)
        return None if row is None else _key_record(row)

    async def delete_key(self, token_hash: str, *, audit: AuditEntry | None = None) -> bool:
        sql = "DELETE FROM virtual_keys WHERE token_hash = $1 RETURNING 1"
        async with self._connection() as con, con.transaction():
            deleted = await con.fetchval(sql, token_hash) is not None
            if deleted:
                await _audit(con, audit)
            return deleted

    async def list_keys(
        self,
        *,
        user_id: str | None = None,
        team_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[KeyRecord]:
        where, args = _where({"user_id = {}": user_id, "team_id = {}": team_id})
        n = len(args)
        sql = (
            f"SELECT {_KEY_SELECT} FROM virtual_keys {where}"
            f" ORDER BY created_at, token_hash LIMIT ${n + 1} OFFSET ${n + 2}"
        )
        async with self._connection() as con:
            rows = await con.fetch(sql, *args, limit, offset)
        return [_key_record(row) for row in rows]

    async def replace_key_hash(
        self, old: str, new: str, *, key_name: str | None = None, audit: AuditEntry | None = None
    ) -> KeyRecord | None:
        sql = (
            "UPDATE virtual_keys SET token_hash = $2, key_name = coalesce($3, key_name),"
            f" updated_at = $4 WHERE token_hash = $1 RETURNING {_KEY_SELECT}"
        )
        async with self._connection() as con, con.transaction():
            try:
                row = await con.fetchrow(sql, old, new, key_name, datetime.now(UTC))
            except asyncpg.UniqueViolationError as exc:
                raise KeyExistsError("a key with the new hash already exists") from exc
            if row is not None:
                await _audit(con, audit)
        return None if row is None else _key_record(row)

    # -- audit ---------------------------------------------------------------------------

    async def insert_audit(self, entry: AuditEntry) -> None:
        async with self._connection() as con:
            await _audit(con, entry)

    async def list_audit(self, query: AuditQuery) -> list[AuditEntry]:
        sql, args = audit_list_sql(query, lambda n: f"${n}", utc)
        async with self._connection() as con:
            rows = await con.fetch(sql, *args)
        return [audit_entry(tuple(row), utc) for row in rows]

    # -- usage ---------------------------------------------------------------------------

    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        rows = [_usage_row(r) for r in per_request_unique(records)]
        async with self._connection() as con, con.transaction():
            try:
                await con.copy_records_to_table(
                    "usage_incoming", records=rows, columns=USAGE_COLUMNS
                )
            except (OverflowError, TypeError, ValueError) as exc:  # encoded here, not checked
                raise DatabaseError(f"a usage record has a value out of range: {exc}") from exc
            # Sorted so that two replicas replaying overlapping batches lock ids in one order.
            per_key = await con.fetch(
                f"""
                WITH inserted AS (
                    INSERT INTO usage_records ({_USAGE_LIST})
                    SELECT {_USAGE_LIST} FROM usage_incoming ORDER BY request_id
                    ON CONFLICT (request_id) DO NOTHING
                    RETURNING token_hash, cost_usd
                )
                SELECT token_hash, sum(cost_usd) FROM inserted
                WHERE token_hash IS NOT NULL GROUP BY token_hash ORDER BY token_hash
                """
            )
            increments = [(row[0], row[1]) for row in per_key if row[1]]
            if increments:
                await con.executemany(
                    "UPDATE virtual_keys SET spend = spend + $2 WHERE token_hash = $1",
                    increments,
                )

    async def usage_summary(
        self,
        *,
        key_hash: str | None = None,
        model: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: GroupBy = "day",
    ) -> list[dict[str, Any]]:
        check_group_by(group_by)
        sql, args = summary_sql(
            group_by=group_by,
            raw_group=_RECORD_DAY,
            daily_day="to_char(day, 'YYYY-MM-DD')",
            key_hash=key_hash,
            model=model,
            start=start,
            end=end,
            mark=lambda n: f"${n}",
            encode_time=utc,
            encode_day=lambda day: day,
        )
        async with self._connection() as con:
            rows = await con.fetch(sql, *args)
        return [summary_row(group_by, tuple(row)) for row in rows]

    async def prune_usage(
        self, before: datetime, *, batch_size: int = PRUNE_BATCH_DEFAULT, rollup: bool = True
    ) -> PruneResult:
        if batch_size < 1:
            raise ValueError("batch_size: expected at least 1")
        lock = f"llm-proxy prune {self._schema or ''}"
        sql = POSTGRES_PRUNE_ROLLUP if rollup else POSTGRES_PRUNE_DELETE
        deleted = batches = 0
        async with self._connection() as con:
            # A session lock across the batches: replicas that find it taken skip this run.
            if not await con.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", lock):
                return PruneResult(skipped=True)
            while True:
                async with con.transaction():  # one short transaction per batch
                    count: int = await con.fetchval(sql, utc(before), batch_size)
                if count:
                    deleted += count
                    batches += 1
                if count < batch_size:
                    break
            # On an error the pool's reset on release (pg_advisory_unlock_all) frees it.
            await con.execute("SELECT pg_advisory_unlock(hashtext($1))", lock)
        return PruneResult(deleted=deleted, batches=batches)

    async def key_spend(self, token_hash: str, since: datetime) -> float:
        sql = (
            "SELECT coalesce(sum(cost_usd), 0) FROM usage_records"
            " WHERE token_hash = $1 AND started_at >= $2"
        )
        async with self._connection() as con:
            total = await con.fetchval(sql, token_hash, utc(since))
        return float(total)


async def _audit(con: Connection, entry: AuditEntry | None) -> None:
    if entry is not None:
        await con.execute(_AUDIT_INSERT, *audit_values(entry, utc))


async def _prepare_connection(con: asyncpg.Connection[asyncpg.Record]) -> None:
    await con.execute(POSTGRES_STAGING)


def _where(conditions: dict[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause with only the filters given, so each variant gets its own plan."""
    parts: list[str] = []
    args: list[Any] = []
    for template, value in conditions.items():
        if value is not None:
            args.append(value)
            parts.append(template.format(f"${len(args)}"))
    return ("WHERE " + " AND ".join(parts) if parts else ""), args


def _encode(name: str, value: Any) -> Any:
    if name in _JSON_COLUMNS:
        return _json_encode(list(value) if name == "models" else value).decode()
    if isinstance(value, datetime):
        return utc(value)
    return value


def _key_record(row: asyncpg.Record) -> KeyRecord:
    fields = dict(row.items())
    fields["models"] = tuple(msgspec.json.decode(fields["models"]))
    fields["metadata"] = msgspec.json.decode(fields["metadata"])
    for name in ("spend", "max_budget"):
        if isinstance(fields[name], Decimal):
            fields[name] = float(fields[name])
    return KeyRecord(**fields)


def _usage_row(record: UsageRecord) -> tuple[Any, ...]:
    row = msgspec.structs.astuple(record)
    if record.started_at.tzinfo is UTC and record.ended_at.tzinfo is UTC:
        return row  # the Ledger's records: nothing to convert
    return tuple(utc(v) if isinstance(v, datetime) else v for v in row)


def _raise_mapped(exc: Exception) -> NoReturn:
    """Raise our error for an asyncpg or socket error; re-raise anything else unchanged."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state.startswith(_TRANSIENT_CLASSES) or state in _TRANSIENT_CODES:
            raise DatabaseUnavailableError(f"database unavailable: {exc}") from exc
        raise DatabaseError(f"database error {state}: {exc}") from exc
    if isinstance(exc, asyncpg.exceptions.DataError):
        raise DatabaseError(f"database rejected a value: {exc}") from exc
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        # OSError covers refused and reset sockets and TimeoutError; InterfaceError a
        # connection closed under us or a pool that is shutting down.
        raise DatabaseUnavailableError(f"database unavailable: {exc!r}") from exc
    raise exc
