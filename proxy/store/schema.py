"""The schema, as numbered migrations with one script per dialect.

A migration is applied once: ``schema_migrations`` records each applied version, and both
backends run the pending ones inside a transaction that holds a database-wide lock
(PostgreSQL: ``pg_advisory_xact_lock``; SQLite: ``BEGIN IMMEDIATE``), so replicas that
start together apply each migration exactly once and the losers find the work done.
Never edit a released migration; append a new one.

Money is ``numeric(20, 10)`` in PostgreSQL (exact sums, sub-nano-dollar precision) and
``REAL`` in SQLite. SQLite stores timestamps as fixed-width UTC text
("YYYY-MM-DD HH:MM:SS.ffffff"), which sorts and slices (``substr(.., 1, 10)`` is the day)
like the instant it names.
"""

from __future__ import annotations

from typing import Final, NamedTuple


class Migration(NamedTuple):
    version: int
    name: str
    postgres: tuple[str, ...]
    sqlite: tuple[str, ...]


POSTGRES_LEDGER: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

SQLITE_LEDGER: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
)"""

_V1_POSTGRES: Final = (
    """
    CREATE TABLE virtual_keys (
        token_hash text PRIMARY KEY,
        key_alias text UNIQUE,
        key_name text,
        models jsonb NOT NULL DEFAULT '[]',
        max_budget numeric(20, 10),
        budget_duration text,
        budget_reset_at timestamptz,
        rpm_limit bigint,
        tpm_limit bigint,
        max_parallel_requests integer,
        expires timestamptz,
        metadata jsonb NOT NULL DEFAULT '{}',
        user_id text,
        team_id text,
        blocked boolean NOT NULL DEFAULT false,
        spend numeric(20, 10) NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX virtual_keys_user_id_idx ON virtual_keys (user_id)",
    "CREATE INDEX virtual_keys_team_id_idx ON virtual_keys (team_id)",
    """CREATE INDEX virtual_keys_budget_reset_at_idx ON virtual_keys (budget_reset_at)
       WHERE budget_reset_at IS NOT NULL""",
    """
    CREATE TABLE usage_records (
        request_id text PRIMARY KEY,
        started_at timestamptz NOT NULL,
        ended_at timestamptz NOT NULL,
        model text NOT NULL,
        token_hash text,
        key_alias text,
        user_id text,
        team_id text,
        deployment text,
        provider text,
        prompt_tokens integer NOT NULL DEFAULT 0,
        completion_tokens integer NOT NULL DEFAULT 0,
        total_tokens integer NOT NULL DEFAULT 0,
        cached_tokens integer NOT NULL DEFAULT 0,
        cost_usd numeric(20, 10) NOT NULL DEFAULT 0,
        latency_ms double precision NOT NULL DEFAULT 0,
        ttft_ms double precision,
        status integer NOT NULL,
        error_type text,
        cache_hit boolean NOT NULL DEFAULT false
    )""",
    "CREATE INDEX usage_records_key_time_idx ON usage_records (token_hash, started_at)",
    "CREATE INDEX usage_records_model_time_idx ON usage_records (model, started_at)",
    "CREATE INDEX usage_records_time_idx ON usage_records (started_at)",
)

_V1_SQLITE: Final = (
    """
    CREATE TABLE virtual_keys (
        token_hash TEXT PRIMARY KEY,
        key_alias TEXT UNIQUE,
        key_name TEXT,
        models TEXT NOT NULL DEFAULT '[]',
        max_budget REAL,
        budget_duration TEXT,
        budget_reset_at TEXT,
        rpm_limit INTEGER,
        tpm_limit INTEGER,
        max_parallel_requests INTEGER,
        expires TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        user_id TEXT,
        team_id TEXT,
        blocked INTEGER NOT NULL DEFAULT 0,
        spend REAL NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX virtual_keys_user_id_idx ON virtual_keys (user_id)",
    "CREATE INDEX virtual_keys_team_id_idx ON virtual_keys (team_id)",
    """CREATE INDEX virtual_keys_budget_reset_at_idx ON virtual_keys (budget_reset_at)
       WHERE budget_reset_at IS NOT NULL""",
    """
    CREATE TABLE usage_records (
        request_id TEXT PRIMARY KEY,
        started_at TEXT NOT NULL,
        ended_at TEXT NOT NULL,
        model TEXT NOT NULL,
        token_hash TEXT,
        key_alias TEXT,
        user_id TEXT,
        team_id TEXT,
        deployment TEXT,
        provider TEXT,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        total_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        latency_ms REAL NOT NULL DEFAULT 0,
        ttft_ms REAL,
        status INTEGER NOT NULL,
        error_type TEXT,
        cache_hit INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX usage_records_key_time_idx ON usage_records (token_hash, started_at)",
    "CREATE INDEX usage_records_model_time_idx ON usage_records (model, started_at)",
    "CREATE INDEX usage_records_time_idx ON usage_records (started_at)",
)

# Version 2: the admin audit log, and daily usage aggregates that old usage records are
# rolled up into (proxy/usage/retention.py). usage_daily's key columns use '' for "none",
# since a primary key cannot hold NULL (PostgreSQL) or would not treat NULLs as equal (SQLite).
_V2_POSTGRES: Final = (
    """
    CREATE TABLE audit_log (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL,
        actor text NOT NULL,
        action text NOT NULL,
        target_hash text,
        target_alias text,
        changes jsonb NOT NULL DEFAULT '{}',
        client_ip text,
        forwarded_for text,
        request_id text
    )""",
    "CREATE INDEX audit_log_at_idx ON audit_log (at)",
    "CREATE INDEX audit_log_target_hash_idx ON audit_log (target_hash, id)",
    "CREATE INDEX audit_log_target_alias_idx ON audit_log (target_alias, id)",
    """
    CREATE TABLE usage_daily (
        day date NOT NULL,
        token_hash text NOT NULL DEFAULT '',
        key_alias text,
        model text NOT NULL,
        deployment text NOT NULL DEFAULT '',
        provider text NOT NULL DEFAULT '',
        requests bigint NOT NULL DEFAULT 0,
        errors bigint NOT NULL DEFAULT 0,
        prompt_tokens bigint NOT NULL DEFAULT 0,
        completion_tokens bigint NOT NULL DEFAULT 0,
        total_tokens bigint NOT NULL DEFAULT 0,
        cached_tokens bigint NOT NULL DEFAULT 0,
        cost_usd numeric(20, 10) NOT NULL DEFAULT 0,
        PRIMARY KEY (day, token_hash, model, deployment, provider)
    )""",
    "CREATE INDEX usage_daily_key_day_idx ON usage_daily (token_hash, day)",
    "CREATE INDEX usage_daily_model_day_idx ON usage_daily (model, day)",
)

_V2_SQLITE: Final = (
    """
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target_hash TEXT,
        target_alias TEXT,
        changes TEXT NOT NULL DEFAULT '{}',
        client_ip TEXT,
        forwarded_for TEXT,
        request_id TEXT
    )""",
    "CREATE INDEX audit_log_at_idx ON audit_log (at)",
    "CREATE INDEX audit_log_target_hash_idx ON audit_log (target_hash, id)",
    "CREATE INDEX audit_log_target_alias_idx ON audit_log (target_alias, id)",
    """
    CREATE TABLE usage_daily (
        day TEXT NOT NULL,
        token_hash TEXT NOT NULL DEFAULT '',
        key_alias TEXT,
        model TEXT NOT NULL,
        deployment TEXT NOT NULL DEFAULT '',
        provider TEXT NOT NULL DEFAULT '',
        requests INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        total_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (day, token_hash, model, deployment, provider)
    )""",
    "CREATE INDEX usage_daily_key_day_idx ON usage_daily (token_hash, day)",
    "CREATE INDEX usage_daily_model_day_idx ON usage_daily (model, day)",
)

# Version 3: the key and model indexes carry the summed columns (INCLUDE), so /usage and
# the budget check read only the index (an index-only scan) instead of one heap page per
# matching row; measured on 100M rows in bench/README.md, "/usage at scale". IF NOT EXISTS
# lets an operator build them beforehand with CREATE INDEX CONCURRENTLY (this migration
# runs in a transaction, which blocks usage writes while it builds). SQLite: unchanged
# (its deployments are small; nothing was measured there).
_V3_POSTGRES: Final = (
    """CREATE INDEX IF NOT EXISTS usage_records_key_time_cover_idx
       ON usage_records (token_hash, started_at)
       INCLUDE (model, prompt_tokens, completion_tokens, total_tokens, cost_usd)""",
    "DROP INDEX IF EXISTS usage_records_key_time_idx",
    """CREATE INDEX IF NOT EXISTS usage_records_model_time_cover_idx
       ON usage_records (model, started_at)
       INCLUDE (prompt_tokens, completion_tokens, total_tokens, cost_usd)""",
    "DROP INDEX IF EXISTS usage_records_model_time_idx",
)

MIGRATIONS: Final = (
    Migration(1, "virtual keys and usage records", _V1_POSTGRES, _V1_SQLITE),
    Migration(2, "audit log and daily usage roll-ups", _V2_POSTGRES, _V2_SQLITE),
    Migration(3, "usage indexes that cover the summaries", _V3_POSTGRES, ()),
)
LATEST_VERSION: Final = MIGRATIONS[-1].version

# The per-connection staging table for PostgreSQL's usage batches, the target of their COPY
# (SQLite inserts into usage_records directly, see sqlite.py). Temporary, so each connection
# has its own and nothing needs migrating. Its cost_usd is a double, as the record holds it:
# asyncpg encodes a numeric through Decimal (~4 µs of the proxy's CPU per row, timed over
# 20,000 rows); the INSERT ... SELECT into usage_records rounds it to numeric(20, 10) in the
# server instead.
POSTGRES_STAGING: Final = """
CREATE TEMP TABLE IF NOT EXISTS usage_incoming (
    request_id text, started_at timestamptz, ended_at timestamptz, model text,
    token_hash text, key_alias text, user_id text, team_id text, deployment text,
    provider text, prompt_tokens integer, completion_tokens integer, total_tokens integer,
    cached_tokens integer, cost_usd double precision, latency_ms double precision,
    ttft_ms double precision, status integer, error_type text, cache_hit boolean
) ON COMMIT DELETE ROWS"""
