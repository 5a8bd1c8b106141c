"""Stores under test: every test here runs once on SQLite and once on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from proxy.store import PostgresStore, SqliteStore, Store
from tests.support.fault_proxy import FaultProxy

MakeStore = Callable[[], Awaitable[Store]]


def pg_proxy_url(postgres_url: str, proxy: FaultProxy) -> str:
    """``postgres_url`` with its port replaced by the fault proxy's."""
    parts = urlsplit(postgres_url)
    return parts._replace(netloc=f"{parts.netloc.rsplit(':', 1)[0]}:{proxy.port}").geturl()


@pytest.fixture
async def pg_proxy(postgres_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the test PostgreSQL."""
    target = urlsplit(postgres_url)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        yield proxy


@dataclass(frozen=True)
class Backend:
    name: str
    location: str  # SQLite file path or PostgreSQL URL
    schema: str | None = None

    def open(self) -> Store:
        if self.name == "postgres":
            return PostgresStore(self.location, schema=self.schema, max_size=3)
        return SqliteStore(self.location)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Where the stores of one test live: a fresh SQLite file or PostgreSQL schema."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return Backend("postgres", url, request.getfixturevalue("pg_schema"))
    return Backend("sqlite", str(tmp_path / "proxy.db"))


@pytest.fixture
async def make_store(backend: Backend) -> AsyncIterator[MakeStore]:
    """Open unmigrated stores on one database, as separate processes would; closed after."""
    opened: list[Store] = []

    async def make() -> Store:
        opened.append(backend.open())
        return opened[-1]

    yield make
    for store in opened:
        await store.aclose()


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    """A migrated store on a fresh database."""
    store = await make_store()
    await store.migrate()
    return store
