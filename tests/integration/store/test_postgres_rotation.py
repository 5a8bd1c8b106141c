"""A rotated DATABASE_URL reaches the Postgres pool's new connections without a restart."""

from __future__ import annotations

from proxy.store import DatabaseUnavailableError, PostgresStore
from tests.integration.store.conftest import pg_proxy_url
from tests.support.fault_proxy import FaultProxy


async def _ping_with_retries(store: PostgresStore, attempts: int) -> bool:
    """Ping until one succeeds; the first may meet the connection the cut killed."""
    for _ in range(attempts):
        try:
            await store.ping()
        except DatabaseUnavailableError:
            continue
        return True
    return False


async def test_new_connections_use_the_rotated_dsn(
    postgres_url: str, pg_schema: str, pg_proxy: FaultProxy
) -> None:
    """After set_dsn, connections are opened with the new DSN, not the one the pool began with."""
    store = PostgresStore(pg_proxy_url(postgres_url, pg_proxy), schema=pg_schema, max_size=1)
    try:
        await store.ping()
        store.set_dsn(postgres_url)
        await pg_proxy.cut()  # the old address is gone for good
        assert await _ping_with_retries(store, attempts=3)
    finally:
        await store.aclose()


async def test_without_rotation_the_old_dsn_is_kept(
    postgres_url: str, pg_schema: str, pg_proxy: FaultProxy
) -> None:
    """The control: with the old address cut and no new DSN, the store stays unavailable."""
    store = PostgresStore(pg_proxy_url(postgres_url, pg_proxy), schema=pg_schema, max_size=1)
    try:
        await store.ping()
        await pg_proxy.cut()
        assert not await _ping_with_retries(store, attempts=3)
    finally:
        await store.aclose()
