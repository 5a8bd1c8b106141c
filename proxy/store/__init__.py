"""The database edge: virtual keys and usage records in PostgreSQL or SQLite.

This package owns asyncpg and aiosqlite; their errors leave it only as
``DatabaseUnavailableError`` (503, retry later), ``DatabaseError`` (500) or
``KeyExistsError`` (409). ``open_store`` picks the backend from the database URL::

    store = open_store(settings.database_url, sqlite_path="/var/lib/llm-proxy/proxy.db")
    await store.migrate()
    ...
    await store.aclose()
"""

from __future__ import annotations

from urllib.parse import urlsplit

from proxy.store.base import GROUP_BY, SUMMARY_TOTALS, GroupBy, Store
from proxy.store.errors import DatabaseError, DatabaseUnavailableError, KeyExistsError
from proxy.store.postgres import PostgresStore
from proxy.store.records import KeyRecord, UsageRecord
from proxy.store.sqlite import SqliteStore

__all__ = [
    "GROUP_BY",
    "SUMMARY_TOTALS",
    "DatabaseError",
    "DatabaseUnavailableError",
    "GroupBy",
    "KeyExistsError",
    "KeyRecord",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "UsageRecord",
    "open_store",
]

_POSTGRES_SCHEMES = ("postgresql", "postgres")


def open_store(
    url: str | None,
    *,
    sqlite_path: str,
    schema: str | None = None,
    pool_min_size: int = 1,
    pool_max_size: int = 5,
    connect_timeout: float = 5.0,
    command_timeout: float = 30.0,
) -> Store:
    """The store for ``url``; no I/O happens until its first call.

    ``postgresql://`` (or ``postgres://``) URLs get a ``PostgresStore`` with a pool of
    ``pool_min_size``..``pool_max_size`` connections per process and tables in ``schema``
    (default: the server's search_path). ``sqlite:///path`` or no URL at all gets a
    ``SqliteStore`` on that path or on ``sqlite_path``.
    """
    if not url:
        return SqliteStore(sqlite_path)
    scheme = urlsplit(url).scheme
    if scheme in _POSTGRES_SCHEMES:
        if not 0 <= pool_min_size <= pool_max_size or pool_max_size < 1:
            raise ValueError("pool sizes: expected 0 <= min <= max and max >= 1")
        return PostgresStore(
            url,
            schema=schema,
            min_size=pool_min_size,
            max_size=pool_max_size,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
        )
    if scheme == "sqlite":
        # SQLAlchemy's spelling: sqlite:///relative.db, sqlite:////absolute/path.db
        path = url[len("sqlite://") :].removeprefix("/")
        return SqliteStore(path or sqlite_path)
    raise ValueError(
        f"database_url: unsupported scheme {scheme!r} (use postgresql:// or sqlite://)"
    )
