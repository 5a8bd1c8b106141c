"""Fixtures for private TLS-only Redis and PostgreSQL servers, one each per session.

Imported by tests/integration/tls/conftest.py and by the e2e test. A test whose server
binary is missing is skipped with a message saying which, except under ``CI=true``, where it
fails: CI must not go green without exercising TLS for real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import NoReturn, TypeVar

import pytest

from tests.integration.tls.servers import (
    Pki,
    ServerUnavailableError,
    TlsPostgres,
    TlsRedis,
    make_pki,
    run_tls_postgres,
    run_tls_redis,
)

T = TypeVar("T")


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI=true, because a server binary is missing."""
    message = f"TLS test server unavailable: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def start(stack: ExitStack, server: AbstractContextManager[T]) -> T:
    try:
        return stack.enter_context(server)
    except ServerUnavailableError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA made for this run, its server and client certificates, and an unrelated CA."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_redis(pki: Pki) -> Iterator[TlsRedis]:
    """A redis-server on a TLS port only; client certificates optional."""
    with ExitStack() as stack:
        yield start(stack, run_tls_redis(pki, auth_clients="optional"))


@pytest.fixture(scope="session")
def tls_redis_mutual(pki: Pki) -> Iterator[TlsRedis]:
    """A redis-server on a TLS port only that requires a client certificate."""
    with ExitStack() as stack:
        yield start(stack, run_tls_redis(pki, auth_clients="yes"))


@pytest.fixture(scope="session")
def tls_postgres(pki: Pki) -> Iterator[TlsPostgres]:
    """A PostgreSQL cluster that accepts TLS connections only (hostssl)."""
    with ExitStack() as stack:
        yield start(stack, run_tls_postgres(pki))
