"""The Postgres store over TLS (asyncpg's libpq-style sslmode) against a hostssl-only server."""

from __future__ import annotations

import itertools

import pytest

from proxy.cli import migrate
from proxy.settings import ConfigError, load_settings
from proxy.store import DatabaseError, DatabaseUnavailableError, PostgresStore
from tests.integration.store.factories import T0, key, token_hash, usage
from tests.integration.tls.servers import Pki, TlsPostgres

_schemas = itertools.count(1)


def schema() -> str:
    return f"tls_test_{next(_schemas)}"


async def test_store_round_trip_with_verify_full(tls_postgres: TlsPostgres, pki: Pki) -> None:
    """migrate, a key round trip and a usage write all run with sslmode=verify-full."""
    dsn = tls_postgres.dsn(sslmode="verify-full", sslrootcert=pki.ca_file)
    async with PostgresStore(dsn, schema=schema()) as store:
        assert await store.migrate() >= 1
        await store.insert_key(key("sk-tls-1", key_alias="tls"))
        found = await store.get_key(token_hash("sk-tls-1"))
        assert found is not None and found.key_alias == "tls"
        await store.insert_usage([usage(1, token_hash=token_hash("sk-tls-1"))])
        assert await store.key_spend(token_hash("sk-tls-1"), T0) == pytest.approx(0.001)


@pytest.mark.parametrize("sslmode", ["verify-full", "verify-ca", "require"])
async def test_wrong_ca_is_refused(tls_postgres: TlsPostgres, pki: Pki, sslmode: str) -> None:
    """A server the CA file does not vouch for is unavailable, with the certificate error."""
    dsn = tls_postgres.dsn(sslmode=sslmode, sslrootcert=pki.other_ca_file)
    async with PostgresStore(dsn, schema=schema(), connect_timeout=5) as store:
        with pytest.raises(DatabaseUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            await store.ping()


async def test_wrong_hostname_is_refused(tls_postgres: TlsPostgres, pki: Pki) -> None:
    """verify-full checks the name: the certificate says 127.0.0.1, the DSN localhost."""
    dsn = tls_postgres.dsn(sslmode="verify-full", sslrootcert=pki.ca_file, host="localhost")
    async with PostgresStore(dsn, schema=schema(), connect_timeout=5) as store:
        with pytest.raises(DatabaseUnavailableError, match="not valid for 'localhost'"):
            await store.ping()


async def test_verify_ca_does_not_check_the_hostname(tls_postgres: TlsPostgres, pki: Pki) -> None:
    """verify-ca (unlike verify-full) accepts the CA-signed certificate under another name."""
    dsn = tls_postgres.dsn(sslmode="verify-ca", sslrootcert=pki.ca_file, host="localhost")
    async with PostgresStore(dsn, schema=schema(), connect_timeout=5) as store:
        await store.ping()


async def test_plaintext_is_refused(tls_postgres: TlsPostgres) -> None:
    """sslmode=disable finds no pg_hba entry on a hostssl-only server: a clear error."""
    dsn = tls_postgres.dsn(sslmode="disable")
    async with PostgresStore(dsn, schema=schema(), connect_timeout=5) as store:
        with pytest.raises(DatabaseError, match="no encryption"):
            await store.ping()


async def test_migrate_command_with_verify_full(
    tls_postgres: TlsPostgres, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llm-proxy migrate`` reaches the database through DATABASE_URL with verify-full."""
    dsn = tls_postgres.dsn(sslmode="verify-full", sslrootcert=pki.ca_file)
    settings = load_settings(None, env={"DATABASE_URL": dsn})
    assert await migrate(settings) == 0
    assert "schema at version" in capsys.readouterr().out


def test_missing_root_certificate_stops_start_up(tls_postgres: TlsPostgres, pki: Pki) -> None:
    """A sslrootcert that does not exist is a configuration error naming the field."""
    dsn = tls_postgres.dsn(sslmode="verify-full", sslrootcert=pki.ca_file.with_name("nope.pem"))
    with pytest.raises(ConfigError, match=r"database\.url: sslrootcert: no such file"):
        load_settings(None, env={"DATABASE_URL": dsn})
