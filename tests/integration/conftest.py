"""Real servers for the integration tests: PostgreSQL and Redis, with names unique per run.

The servers are ``LLM_PROXY_TEST_DATABASE_URL`` (default
``postgresql://root@127.0.0.1:5432/test``) and ``LLM_PROXY_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``). A test that needs one that does not answer is skipped with a
message saying so, except under ``CI=true``, where it fails: CI must not go green without
exercising the real servers.

Everything a run creates is named with ``RUN_ID``: PostgreSQL schemas
``llm_proxy_test_<run>_<n>`` (dropped after each test) and Redis keys under
``redis_key_prefix``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import socket
from collections.abc import AsyncIterator
from typing import NoReturn
from urllib.parse import urlsplit

import asyncpg
import pytest

RUN_ID = secrets.token_hex(4)
DEFAULT_DATABASE_URL = "postgresql://root@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_schema_numbers = itertools.count(1)


def unreachable(what: str, variable: str, url: str, reason: object) -> NoReturn:
    """Skip the test, or fail it under CI=true, because a server it needs is not there."""
    message = f"{what} is not reachable at {url} ({reason}); start it or set {variable}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of a PostgreSQL server that accepts a connection and a query."""
    url = os.environ.get("LLM_PROXY_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)

    async def check() -> None:
        con = await asyncpg.connect(url, timeout=3)
        try:
            await con.fetchval("SELECT 1")
        finally:
            await con.close()

    try:
        asyncio.run(check())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        unreachable("PostgreSQL", "LLM_PROXY_TEST_DATABASE_URL", url, exc)
    return url


@pytest.fixture
async def pg_schema(postgres_url: str) -> AsyncIterator[str]:
    """A schema name no other test or run uses; the schema is dropped after the test."""
    name = f"llm_proxy_test_{RUN_ID}_{next(_schema_numbers)}"
    yield name
    con = await asyncpg.connect(postgres_url, timeout=5)
    try:
        await con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await con.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a Redis server that answers PING."""
    url = os.environ.get("LLM_PROXY_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 3) as s:
            s.settimeout(3)
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError as exc:
        unreachable("Redis", "LLM_PROXY_TEST_REDIS_URL", url, exc)
    if not reply.startswith(b"+PONG"):
        unreachable("Redis", "LLM_PROXY_TEST_REDIS_URL", url, reply.decode(errors="replace"))
    return url


@pytest.fixture(scope="session")
def redis_key_prefix() -> str:
    """A key prefix unique to this run, so runs sharing one Redis never collide."""
    return f"llm-proxy-test:{RUN_ID}:"
