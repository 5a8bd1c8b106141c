"""``SqliteStore``: the embedded store, one SQLite file in WAL mode.

Two connections per store (per worker process). Keys, audit and reports use one through
aiosqlite, which runs it on its own thread. Usage batches, the one write that follows every
request, have the other on a thread of their own: a batch is one function call there,
where through aiosqlite each of its ~18 statements was a round trip between the threads (a
queue, a wake-up of the event loop, and the GIL changing hands twice). An
``asyncio.Lock`` keeps one operation, and so one transaction, on the store at a time.
Several worker processes may share the file: WAL lets readers run beside the one writer,
and ``busy_timeout`` makes a writer wait for the lock instead of failing at once. Writes
that read-then-write (migrations, usage batches) start with ``BEGIN IMMEDIATE`` so they
take the write lock before reading. ``synchronous=NORMAL``: in WAL mode a commit survives a
process crash; a power cut may lose the last transactions. Needs SQLite 3.35+
(``RETURNING``).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any, Final, NoReturn, Self

import aiosqlite
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
    PRUNE_BATCH_DEFAULT,
    SQLITE_PRUNE_DELETE,
    SQLITE_PRUNE_PICK,
    SQLITE_PRUNE_ROLLUP,
    SQLITE_PRUNE_TABLE,
    PruneResult,
    summary_sql,
)
from proxy.store.schema import MIGRATIONS, SQLITE_LEDGER

_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_KEY_SELECT = ", ".join(KEY_COLUMNS)
_USAGE_LIST = ", ".join(USAGE_COLUMNS)
# Usage rows are inserted many per INSERT: executemany steps once per row, and every step
# lets go of the GIL and has to win it back from the event loop. Under the keyed benchmark
# the writer thread's CPU fell from ~11 to ~6 µs per row (per-thread /proc times). 999 is
# SQLite's smallest compiled-in limit on parameters per statement (before 3.32), so any
# build takes this many rows at once.
_USAGE_WIDTH: Final = len(USAGE_COLUMNS)
_ROWS_PER_INSERT: Final = 999 // _USAGE_WIDTH
_USAGE_ROW: Final = "(" + ", ".join("?" * _USAGE_WIDTH) + ")"
# Every distinct row count is a statement of its own for SQLite to parse (~1.2 million
# instructions at 49 rows) and for sqlite3's statement cache to hold. A batch is inserted
# in chunks of _ROWS_PER_INSERT and then of powers of two (32, 16, ... 1 rows), so at most
# seven such statements exist, all parsed once per connection.
_INSERT_SIZES: Final = (_ROWS_PER_INSERT, *(1 << i for i in reversed(range(6))))
_INSERTS: Final = {
    rows: f"INSERT INTO usage_records ({_USAGE_LIST}) VALUES {', '.join([_USAGE_ROW] * rows)}"
    " ON CONFLICT (request_id) DO NOTHING"
    for rows in _INSERT_SIZES
}
# The spend of the rows a batch stored: they are the ones past the table's last rowid before
# it (SQLite gives a new row the largest rowid + 1, and the batch holds the write lock).
# NOT INDEXED: read them by that rowid range, not through an index on token_hash.
_BATCH_SPEND: Final = """
UPDATE virtual_keys SET spend = spend + batch.cost FROM (
    SELECT token_hash, sum(cost_usd) AS cost FROM usage_records NOT INDEXED
    WHERE rowid > ? AND token_hash IS NOT NULL GROUP BY token_hash
) AS batch
WHERE virtual_keys.token_hash = batch.token_hash AND batch.cost != 0
"""
_KEY_TIMES = frozenset({"budget_reset_at", "expires", "created_at", "updated_at"})
# Primary result codes after which a later retry can succeed.
_TRANSIENT = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
_UNIQUE = frozenset({sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY})

_AUDIT_INSERT = (
    f"INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(AUDIT_COLUMNS))})"
)

_json_encode = msgspec.json.Encoder().encode
_rfc3339 = msgspec.to_builtins

# The sqlite3 module binds int, float, str and bytes at once, but looks every other value up
# as a possible adapter first, and for None and bool that lookup fails through two raised
# and cleared AttributeErrors: ~0.5 µs a value, ~3 µs of a usage row's ~6 with its five
# usual NULLs and cache_hit. These two adapters make the lookup a hit; they bind exactly
# what sqlite3 binds without them (NULL, and a bool as its int). Both are C functions (a
# Python one costs a frame per value): an empty dict's ``get`` answers None for None.
# sqlite3's adapters are process-wide, and so are these.
_NO_ADAPTERS: Final[dict[None, None]] = {}
sqlite3.register_adapter(type(None), _NO_ADAPTERS.get)
sqlite3.register_adapter(bool, int)


class SqliteStore:
    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self._path = path
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._usage: _UsageConnection | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            db, self._db = self._db, None
            if db is not None:
                await db.close()
            usage, self._usage = self._usage, None
            if usage is not None:
                await usage.aclose()

    async def _open(self) -> aiosqlite.Connection:
        if self._closed:
            raise DatabaseUnavailableError("the database store is closed")
        if self._db is None:
            await asyncio.to_thread(_make_parent_folder, self._path)
            db = await aiosqlite.connect(self._path, isolation_level=None)
            try:
                # busy_timeout first: switching to WAL needs a lock another process may hold.
                await db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                await self._enable_wal(db)
                await db.execute("PRAGMA synchronous = NORMAL")
            except BaseException:
                await db.close()
                raise
            self._db = db
        return self._db

    async def _enable_wal(self, db: aiosqlite.Connection) -> None:
        """Switch to WAL, retrying while another process holds the lock: SQLite does not
        apply busy_timeout to this switch when a new file is opened by many at once."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                await db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            with _mapped_errors():
                yield await self._open()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction that holds the database's write lock from its first line."""
        async with self._connection() as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def ping(self) -> None:
        async with self._connection() as db:
            await db.execute_fetchall("SELECT 1")

    async def migrate(self) -> int:
        async with self._transaction() as db:
            await db.execute(SQLITE_LEDGER)
            rows = await db.execute_fetchall("SELECT version FROM schema_migrations")
            applied: set[int] = {row[0] for row in rows}
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                for statement in migration.sqlite:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                    (migration.version, migration.name),
                )
                applied.add(migration.version)
            return max(applied)

    # -- keys ----------------------------------------------------------------------------

    async def insert_key(self, rec: KeyRecord, *, audit: AuditEntry | None = None) -> KeyRecord:
        now = datetime.now(UTC)
        rec = msgspec.structs.replace(rec, created_at=rec.created_at or now, updated_at=now)
        values = [_encode(getattr(rec, name)) for name in KEY_COLUMNS]
        marks = ", ".join("?" * len(values))
        sql = f"INSERT INTO virtual_keys ({_KEY_SELECT}) VALUES ({marks}) RETURNING {_KEY_SELECT}"
        async with self._transaction() as db:
            rows = await _unique_checked(db.execute_fetchall(sql, values), "hash or alias")
            await _audit(db, audit)
        return _key_record(next(iter(rows)))

    async def get_key(self, token_hash: str) -> KeyRecord | None:
        sql = f"SELECT {_KEY_SELECT} FROM virtual_keys WHERE token_hash = ?"
        async with self._connection() as db:
            rows = await db.execute_fetchall(sql, (token_hash,))
        return _first_key(rows)

    async def update_key(
        self, token_hash: str, *, audit: AuditEntry | None = None, **fields: Any
    ) -> KeyRecord | None:
        fields = checked_update(fields)
        sets = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE virtual_keys SET {sets} WHERE token_hash = ? RETURNING {_KEY_SELECT}"
        values = [_encode(value) for value in fields.values()]
        async with self._transaction() as db:
            rows = await _unique_checked(db.execute_fetchall(sql, [*values, token_hash]), "alias")
            record = _first_key(rows)
            if record is not None:
                await _audit(db, audit)
        return record

    async def delete_key(self, token_hash: str, *, audit: AuditEntry | None = None) -> bool:
        sql = "DELETE FROM virtual_keys WHERE token_hash = ? RETURNING 1"
        async with self._transaction() as db:
            deleted = bool(list(await db.execute_fetchall(sql, (token_hash,))))
            if deleted:
                await _audit(db, audit)
        return deleted

    async def list_keys(
        self,
        *,
        user_id: str | None = None,
        team_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[KeyRecord]:
        where, args = _where({"user_id = ?": user_id, "team_id = ?": team_id})
        sql = (
            f"SELECT {_KEY_SELECT} FROM virtual_keys {where}"
            " ORDER BY created_at, token_hash LIMIT ? OFFSET ?"
        )
        async with self._connection() as db:
            rows = await db.execute_fetchall(sql, [*args, limit, offset])
        return [_key_record(row) for row in rows]

    async def replace_key_hash(
        self, old: str, new: str, *, key_name: str | None = None, audit: AuditEntry | None = None
    ) -> KeyRecord | None:
        sql = (
            "UPDATE virtual_keys SET token_hash = ?, key_name = coalesce(?, key_name),"
            f" updated_at = ? WHERE token_hash = ? RETURNING {_KEY_SELECT}"
        )
        args = (new, key_name, _encode(datetime.now(UTC)), old)
        async with self._transaction() as db:
            rows = await _unique_checked(db.execute_fetchall(sql, args), "hash")
            record = _first_key(rows)
            if record is not None:
                await _audit(db, audit)
        return record

    # -- audit ---------------------------------------------------------------------------

    async def insert_audit(self, entry: AuditEntry) -> None:
        async with self._transaction() as db:
            await _audit(db, entry)

    async def list_audit(self, query: AuditQuery) -> list[AuditEntry]:
        sql, args = audit_list_sql(query, lambda _n: "?", _encode)
        async with self._connection() as db:
            rows = await db.execute_fetchall(sql, args)
        return [audit_entry(tuple(row), _decode_time) for row in rows]

    # -- usage ---------------------------------------------------------------------------

    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        values = _usage_values(per_request_unique(records))
        async with self._connection():  # opened first: the file exists and is in WAL mode
            if self._usage is None:
                self._usage = _UsageConnection(self._path, self._busy_timeout_ms)
            usage = self._usage
        # Written outside the lock: a batch takes its own connection and thread, and SQLite
        # orders it against the main connection's writes (busy_timeout) as it does against
        # other processes'. Under the lock, a key lookup the cache missed waited for the
        # whole batch. aclose's close of this connection runs on its thread after the batch.
        with _mapped_errors():  # as under _connection: refused rows vs an outage
            await usage.write(values)

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
            raw_group="substr(started_at, 1, 10)",
            daily_day="day",
            key_hash=key_hash,
            model=model,
            start=start,
            end=end,
            mark=lambda _n: "?",
            encode_time=_encode,
            encode_day=lambda day: day.isoformat(),
        )
        async with self._connection() as db:
            rows = await db.execute_fetchall(sql, args)
        return [summary_row(group_by, tuple(row)) for row in rows]

    async def prune_usage(
        self, before: datetime, *, batch_size: int = PRUNE_BATCH_DEFAULT, rollup: bool = True
    ) -> PruneResult:
        if batch_size < 1:
            raise ValueError("batch_size: expected at least 1")
        cutoff = _encode(before)
        deleted = batches = 0
        while True:
            # One batch per write transaction: other writers get the lock in between.
            async with self._transaction() as db:
                await db.execute(SQLITE_PRUNE_TABLE)
                await db.execute("DELETE FROM temp.prune_batch")
                await db.execute(SQLITE_PRUNE_PICK, (cutoff, batch_size))
                if rollup:
                    await db.execute(SQLITE_PRUNE_ROLLUP)
                count = (await db.execute(SQLITE_PRUNE_DELETE)).rowcount
                await db.execute("DELETE FROM temp.prune_batch")
            if count:
                deleted += count
                batches += 1
            if count < batch_size:
                return PruneResult(deleted=deleted, batches=batches)

    async def key_spend(self, token_hash: str, since: datetime) -> float:
        sql = (
            "SELECT coalesce(sum(cost_usd), 0.0) FROM usage_records"
            " WHERE token_hash = ? AND started_at >= ?"
        )
        async with self._connection() as db:
            rows = list(await db.execute_fetchall(sql, (token_hash, _encode(since))))
        return float(rows[0][0])


class _UsageConnection:
    """The usage batches' own connection, used only from its own thread.

    ``write`` is one transaction: the rows not stored yet are inserted (a replayed row is
    skipped by its request id) and their keys are charged for them. Opened at the first
    batch (after the schema is migrated through the main connection).
    """

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="llm-proxy-sqlite-usage")
        self._db: sqlite3.Connection | None = None

    async def write(self, values: list[Any]) -> None:
        """Store the rows whose column values ``values`` holds, one after the other."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._write, values)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._close)
        finally:
            self._thread.shutdown(wait=False)

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self._path, isolation_level=None)
            try:
                db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                db.execute("PRAGMA synchronous = NORMAL")  # the file is in WAL mode already
                # The batch's spend is summed by key through a sorter; on disk (the default)
                # it wrote its own temporary file every batch: ~0.8 write() a row, more than
                # the rows themselves took in the WAL. A batch's sort fits in memory.
                db.execute("PRAGMA temp_store = MEMORY")
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _write(self, values: list[Any]) -> None:
        db = self._open()
        db.execute("BEGIN IMMEDIATE")
        try:
            (last,) = db.execute("SELECT coalesce(max(rowid), 0) FROM usage_records").fetchone()
            start = 0
            left = len(values) // _USAGE_WIDTH
            for rows in _INSERT_SIZES:
                while left >= rows:
                    end = start + rows * _USAGE_WIDTH
                    try:
                        db.execute(_INSERTS[rows], values[start:end])
                    except (OverflowError, TypeError, ValueError) as exc:
                        msg = f"a usage record has a value out of range: {exc}"
                        raise DatabaseError(msg) from exc
                    start = end
                    left -= rows
            db.execute(_BATCH_SPEND, (last,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # none of the batch stays
                db.execute("ROLLBACK")
            raise


async def _unique_checked(query: Any, what: str) -> Iterable[sqlite3.Row]:
    """Await ``query``; a uniqueness violation becomes ``KeyExistsError``."""
    try:
        rows: Iterable[sqlite3.Row] = await query
    except sqlite3.IntegrityError as exc:
        if exc.sqlite_errorcode in _UNIQUE:
            raise KeyExistsError(f"a key with this {what} already exists") from exc
        raise
    return rows


def _make_parent_folder(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _where(conditions: dict[str, Any]) -> tuple[str, list[Any]]:
    parts = [clause for clause, value in conditions.items() if value is not None]
    args = [value for value in conditions.values() if value is not None]
    return ("WHERE " + " AND ".join(parts) if parts else ""), args


_STARTED: Final = USAGE_COLUMNS.index("started_at")
_ENDED: Final = USAGE_COLUMNS.index("ended_at")


def _usage_values(records: list[UsageRecord]) -> list[Any]:
    """The records' column values in one flat list, row after row (the writer's hot loop, on
    the event loop's thread); their only non-SQLite types are the two times (and a bool,
    which SQLite stores as 0/1). Flat: a list per row would be one more object for the
    garbage collector to count and walk, a thousand at a time."""
    values: list[Any] = []
    astuple = msgspec.structs.astuple
    for record in records:
        row = len(values)
        values += astuple(record)
        values[row + _STARTED] = _time_text(record.started_at)
        values[row + _ENDED] = _time_text(record.ended_at)
    return values


def _time_text(value: datetime) -> str:
    """The fixed-width UTC text of ``_TIME_FORMAT``, cut from msgspec's RFC 3339 form
    ("YYYY-MM-DDTHH:MM:SS[.ffffff]Z", or an offset in place of Z): ~3,000 instructions for
    a UTC time with microseconds (the usual), where isoformat takes ~12,000."""
    text: str = _rfc3339(value)
    if len(text) == 27:  # UTC with a fraction: "...SS.ffffffZ" (an offset is 32 long)
        return text[:26].replace("T", " ")
    if value.tzinfo is not UTC:
        text = _rfc3339(utc(value))
    if len(text) == 27:
        return text[:26].replace("T", " ")
    return f"{text[:10]} {text[11:19]}.000000"  # msgspec leaves out a zero fraction


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc(value).strftime(_TIME_FORMAT)
    if isinstance(value, tuple | list | dict):
        return _json_encode(value).decode()
    if isinstance(value, bool):
        return int(value)
    return value


async def _audit(db: aiosqlite.Connection, entry: AuditEntry | None) -> None:
    if entry is not None:
        await db.execute(_AUDIT_INSERT, audit_values(entry, _encode))


def _decode_time(value: str) -> datetime:
    return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)


def _first_key(rows: Iterable[sqlite3.Row]) -> KeyRecord | None:
    for row in rows:
        return _key_record(row)
    return None


def _key_record(row: sqlite3.Row | tuple[Any, ...]) -> KeyRecord:
    fields = dict(zip(KEY_COLUMNS, row, strict=True))
    for name in _KEY_TIMES:
        if fields[name] is not None:
            fields[name] = datetime.strptime(fields[name], _TIME_FORMAT).replace(tzinfo=UTC)
    fields["models"] = tuple(msgspec.json.decode(fields["models"]))
    fields["metadata"] = msgspec.json.decode(fields["metadata"])
    fields["blocked"] = bool(fields["blocked"])
    for name in ("spend", "max_budget"):  # RETURNING gives back an int as it was written
        if fields[name] is not None:
            fields[name] = float(fields[name])
    return KeyRecord(**fields)


@contextmanager
def _mapped_errors() -> Iterator[None]:
    """Errors raised inside become ours (``_raise_mapped``); ours pass unchanged."""
    try:
        yield
    except ProxyError:
        raise
    except Exception as exc:
        _raise_mapped(exc)


def _raise_mapped(exc: Exception) -> NoReturn:
    """Raise our error for a sqlite3 error; re-raise anything else unchanged."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _TRANSIENT:
            raise DatabaseUnavailableError(f"database unavailable: {exc}") from exc
        raise DatabaseError(f"database error: {exc}") from exc
    if isinstance(exc, OSError):
        raise DatabaseUnavailableError(f"database unavailable: {exc!r}") from exc
    raise exc
