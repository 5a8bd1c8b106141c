"""Schema migrations: versioned, idempotent, and safe when replicas start together."""

from __future__ import annotations

import asyncio

import aiosqlite
import asyncpg

from proxy.store.schema import LATEST_VERSION, MIGRATIONS
from tests.integration.store.conftest import Backend, MakeStore


async def _ledger(backend: Backend) -> list[int]:
    """The versions recorded in schema_migrations, read straight from the database."""
    if backend.name == "postgres":
        con = await asyncpg.connect(backend.location)
        try:
            rows = await con.fetch(f'SELECT version FROM "{backend.schema}".schema_migrations')
        finally:
            await con.close()
        return sorted(row[0] for row in rows)
    async with aiosqlite.connect(backend.location) as db:
        found = await db.execute_fetchall("SELECT version FROM schema_migrations")
    return sorted(row[0] for row in found)


async def test_migrate_creates_the_latest_schema(make_store: MakeStore, backend: Backend) -> None:
    """A first migrate applies every migration and records each version once."""
    store = await make_store()
    assert await store.migrate() == LATEST_VERSION
    assert await _ledger(backend) == [m.version for m in MIGRATIONS]
    assert await store.list_keys() == []


async def test_migrate_twice_is_a_no_op(make_store: MakeStore, backend: Backend) -> None:
    """Running migrate again, from the same or a new store, changes nothing."""
    first = await make_store()
    await first.migrate()
    assert await first.migrate() == LATEST_VERSION
    second = await make_store()
    assert await second.migrate() == LATEST_VERSION
    assert await _ledger(backend) == [m.version for m in MIGRATIONS]


async def test_concurrent_migrations_from_many_replicas(
    make_store: MakeStore, backend: Backend
) -> None:
    """Five stores (separate connections, as five replicas) migrating at once all succeed."""
    stores = [await make_store() for _ in range(5)]
    versions = await asyncio.gather(*(s.migrate() for s in stores))
    assert versions == [LATEST_VERSION] * 5
    assert await _ledger(backend) == [m.version for m in MIGRATIONS]


async def test_concurrent_migrations_on_one_store(make_store: MakeStore) -> None:
    """Five tasks migrating through one store's pool all succeed."""
    store = await make_store()
    versions = await asyncio.gather(*(store.migrate() for _ in range(5)))
    assert versions == [LATEST_VERSION] * 5
    await store.ping()
