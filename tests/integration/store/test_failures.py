"""Database failures reach callers as our errors, and stores recover without a restart."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from proxy.errors import ServiceUnavailableError
from proxy.store import (
    DatabaseUnavailableError,
    PostgresStore,
    SqliteStore,
    open_store,
)
from tests.integration.store.conftest import pg_proxy_url
from tests.integration.store.factories import key
from tests.support.fault_proxy import FaultProxy


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens here once the socket is closed


async def test_unreachable_postgres_is_unavailable() -> None:
    """Connection refused becomes DatabaseUnavailableError, a 503 the client may retry."""
    store = PostgresStore(f"postgresql://root@127.0.0.1:{_closed_port()}/test", connect_timeout=1)
    with pytest.raises(DatabaseUnavailableError) as info:
        await store.get_key("x")
    assert isinstance(info.value, ServiceUnavailableError) and info.value.status == 503
    await store.aclose()


async def test_postgres_store_recovers_after_an_outage(
    postgres_url: str, pg_schema: str, pg_proxy: FaultProxy
) -> None:
    """Calls fail while the database is cut and work again after it is back, same store."""
    url = pg_proxy_url(postgres_url, pg_proxy)
    async with PostgresStore(url, schema=pg_schema, connect_timeout=1) as store:
        await pg_proxy.cut()
        with pytest.raises(DatabaseUnavailableError):
            await store.migrate()  # not even the first connection could be made
        await pg_proxy.restore()
        await store.migrate()
        rec = await store.insert_key(key("sk-recover"))
        await pg_proxy.cut()
        with pytest.raises(DatabaseUnavailableError):
            await store.get_key(rec.token_hash)  # the pooled connection was reset
        with pytest.raises(DatabaseUnavailableError):
            await store.ping()
        await pg_proxy.restore()
        assert await store.get_key(rec.token_hash) == rec


async def test_unopenable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    """A SQLite path that cannot be opened (here: a folder) is DatabaseUnavailableError."""
    async with SqliteStore(str(tmp_path)) as store:
        with pytest.raises(DatabaseUnavailableError):
            await store.migrate()


async def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    """After aclose() a store raises DatabaseUnavailableError instead of reopening."""
    store = SqliteStore(str(tmp_path / "closed.db"))
    await store.migrate()
    await store.aclose()
    with pytest.raises(DatabaseUnavailableError):
        await store.ping()


def test_open_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    """No URL or sqlite:// gives SQLite; postgresql:// or postgres:// gives PostgreSQL."""
    default = str(tmp_path / "default.db")
    assert isinstance(open_store(None, sqlite_path=default), SqliteStore)
    assert isinstance(open_store("", sqlite_path=default), SqliteStore)
    for url in ("postgresql://root@127.0.0.1/test", "postgres://root@db:5432/test"):
        assert isinstance(open_store(url, sqlite_path=default), PostgresStore)
    relative = open_store("sqlite:///data/proxy.db", sqlite_path=default)
    absolute = open_store("sqlite:////var/lib/proxy.db", sqlite_path=default)
    assert isinstance(relative, SqliteStore) and isinstance(absolute, SqliteStore)
    assert (relative._path, absolute._path) == ("data/proxy.db", "/var/lib/proxy.db")
    bare = open_store("sqlite://", sqlite_path=default)
    assert isinstance(bare, SqliteStore) and bare._path == default


def test_open_store_refuses_bad_settings(tmp_path: Path) -> None:
    """Unknown schemes, unsafe schema names and impossible pool sizes are ValueErrors."""
    path = str(tmp_path / "x.db")
    with pytest.raises(ValueError, match="scheme"):
        open_store("mysql://db/x", sqlite_path=path)
    with pytest.raises(ValueError, match="schema"):
        open_store("postgresql://db/x", sqlite_path=path, schema='x"; DROP TABLE y; --')
    with pytest.raises(ValueError, match="pool"):
        open_store("postgresql://db/x", sqlite_path=path, pool_min_size=6, pool_max_size=5)
