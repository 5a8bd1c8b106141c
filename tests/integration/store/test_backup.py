"""deploy/scripts/backup.sh and restore.sh on a real PostgreSQL: back up, wipe, restore,
and every key (hash, budget, spend) and usage row is back, bit for bit.

Each test works in a database of its own (CREATE DATABASE with a run-unique name, dropped
afterwards), since one case wipes a whole database.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec
import pytest

from proxy.store import PostgresStore
from proxy.store.audit import AuditEntry
from proxy.store.schema import LATEST_VERSION
from tests.integration.conftest import RUN_ID
from tests.integration.store.factories import T0, key, usage

SCRIPTS = Path(__file__).resolve().parents[3] / "deploy" / "scripts"
_numbers = itertools.count(1)

# Everything that must survive: whole rows, compared as text so nothing is rounded.
SNAPSHOT = {
    "keys": "SELECT vk::text FROM virtual_keys AS vk ORDER BY token_hash",
    "usage": """SELECT count(*), sum(cost_usd)::text, sum(total_tokens),
                       md5(string_agg(u::text, '|' ORDER BY request_id))
                FROM usage_records AS u""",
    "per key": """SELECT token_hash, count(*), sum(cost_usd)::text FROM usage_records
                  GROUP BY token_hash ORDER BY token_hash""",
    "daily": """SELECT count(*), sum(requests), sum(cost_usd)::text,
                       md5(string_agg(d::text, '|' ORDER BY d::text))
                FROM usage_daily AS d""",
    "audit": "SELECT a::text FROM audit_log AS a ORDER BY id",
    "ledger": "SELECT version, name FROM schema_migrations ORDER BY version",
    "indexes": """SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()
                  ORDER BY indexname""",
}


def tool(name: str) -> str:
    """The PostgreSQL client tool's path; skipped without it, failed under CI=true."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (postgresql-client)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def listing(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def database_url(server_url: str, name: str) -> str:
    return urlsplit(server_url)._replace(path=f"/{name}").geturl()


async def admin(server_url: str, statement: str) -> None:
    con = await asyncpg.connect(server_url, timeout=5)
    try:
        await con.execute(statement)
    finally:
        await con.close()


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    """The URL of a new, empty database; dropped (connections and all) after the test."""
    for name in ("pg_dump", "pg_restore", "psql"):
        tool(name)
    name = f"llm_proxy_backup_{RUN_ID}_{next(_numbers)}"
    await admin(postgres_url, f'CREATE DATABASE "{name}"')
    yield database_url(postgres_url, name)
    await admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run(
    script: str, *args: str, url: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPTS / script),
        *args,
        env={**os.environ, "DATABASE_URL": url, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def fill(store: PostgresStore) -> None:
    """Keys with every setting and their audit rows; usage over 116 days, part rolled up."""
    keys = [
        key(
            "sk-alpha",
            key_alias="alpha",
            models=("gpt-4o", "claude-sonnet"),
            max_budget=12.5,
            budget_duration="30d",
            budget_reset_at=T0 + timedelta(days=30),
            rpm_limit=600,
            tpm_limit=100_000,
            max_parallel_requests=8,
            metadata={"owner": "search", "tier": 2},
            user_id="u-1",
            team_id="t-1",
        ),
        key("sk-beta", key_alias="beta", max_budget=0.75, expires=T0 + timedelta(days=90)),
        key("sk-gamma", blocked=True, user_id="u-2"),
    ]
    for record in keys:
        entry = AuditEntry(at=T0, actor="cli:test", action="key.generate", target_alias="x")
        await store.insert_key(
            record, audit=msgspec.structs.replace(entry, target_hash=record.token_hash)
        )
    batch = [
        usage(
            n,
            token_hash=keys[n % 4].token_hash if n % 4 < 3 else None,  # every 4th: no key
            model=("gpt-4o", "claude-sonnet")[n % 2],
            at=T0 + timedelta(hours=7 * n),
            prompt_tokens=n,
            completion_tokens=2 * n,
            total_tokens=3 * n,
            cost_usd=0.0000012345 * (n + 1),
            status=200 if n % 10 else 429,
            error_type=None if n % 10 else "rate_limit_error",
        )
        for n in range(400)
    ]
    for start in range(0, len(batch), 100):  # as the spend writer does: several batches
        await store.insert_usage(batch[start : start + 100])
    # Retention: the first 30 days (103 records) rolled up into usage_daily.
    pruned = await store.prune_usage(T0 + timedelta(days=30))
    assert pruned.deleted == 103


async def snapshot(url: str, schema: str | None) -> dict[str, list[tuple[Any, ...]]]:
    settings = {"search_path": schema} if schema else None
    con = await asyncpg.connect(url, timeout=5, server_settings=settings)
    try:
        return {name: [tuple(r) for r in await con.fetch(sql)] for name, sql in SNAPSHOT.items()}
    finally:
        await con.close()


@pytest.mark.parametrize(
    ("schema", "wipe"),
    [
        (None, "drop the tables"),
        (None, "drop the database"),
        ("llm_proxy", "drop the schema"),
    ],
)
async def test_backup_wipe_restore_brings_back_keys_and_usage(
    database: str, postgres_url: str, tmp_path: Path, schema: str | None, wipe: str
) -> None:
    """After backup, wipe and restore, keys and usage rows equal the originals exactly."""
    async with PostgresStore(database, schema=schema) as store:
        await store.migrate()
        await fill(store)
    before = await snapshot(database, schema)
    assert before["usage"][0][0] == 297 and before["daily"][0][1] == 103
    assert len(before["keys"]) == 3 and len(before["audit"]) == 3
    assert len(before["per key"]) == 4  # three keys and the keyless records

    archive = tmp_path / "proxy.dump"
    code, out, err = await run(
        "backup.sh", *(["-n", schema] if schema else []), str(archive), url=database
    )
    assert code == 0, err
    assert out.strip() == str(archive) and archive.stat().st_size > 0

    name = urlsplit(database).path.lstrip("/")
    if wipe == "drop the database":
        await admin(postgres_url, f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin(postgres_url, f'CREATE DATABASE "{name}"')
    else:
        target = f'"{schema}".' if schema else ""
        statement = (
            f'DROP SCHEMA "{schema}" CASCADE'
            if wipe == "drop the schema"
            else "DROP TABLE "
            + ", ".join(
                f"{target}{t}" for t in ("usage_records", "virtual_keys", "schema_migrations")
            )
        )
        await admin(database, statement)

    code, out, err = await run("restore.sh", "-y", str(archive), url=database)
    assert code == 0, err
    assert f"version {LATEST_VERSION}, 3 keys, 297 usage records" in out
    assert await snapshot(database, schema) == before

    # The restored database is one the proxy runs on: nothing to migrate, and the
    # primary key is back, so a replayed record is neither stored nor charged again.
    async with PostgresStore(database, schema=schema) as store:
        assert await store.migrate() == LATEST_VERSION
        await store.insert_usage([usage(399, token_hash=key("sk-gamma").token_hash)])
        summary = await store.usage_summary(group_by="model")
        assert sum(row["requests"] for row in summary) == 400  # raw and rolled-up days
    assert await snapshot(database, schema) == before


async def test_restore_refuses_without_confirmation(database: str, tmp_path: Path) -> None:
    """Without -y restore.sh changes nothing and says how to go ahead."""
    async with PostgresStore(database) as store:
        await store.migrate()
        await fill(store)
    archive = tmp_path / "proxy.dump"
    assert (await run("backup.sh", str(archive), url=database))[0] == 0
    before = await snapshot(database, None)
    code, _, err = await run("restore.sh", str(archive), url=database)
    assert code == 2 and "-y" in err
    assert await snapshot(database, None) == before


async def test_backup_of_a_database_without_the_proxy_tables_fails(
    database: str, tmp_path: Path
) -> None:
    """Backing up the wrong database (no proxy tables) fails and leaves no file behind."""
    archive = tmp_path / "proxy.dump"
    code, out, err = await run("backup.sh", str(archive), url=database)
    assert code == 1 and "no table virtual_keys" in err and out == ""
    assert listing(tmp_path) == []


async def test_backup_without_database_url_is_a_usage_error(tmp_path: Path) -> None:
    """An unset DATABASE_URL is reported as such, before any tool runs."""
    code, _, err = await run("backup.sh", str(tmp_path / "x.dump"), url="")
    assert code == 2 and "DATABASE_URL is not set" in err


async def test_backups_beyond_backup_keep_are_deleted(database: str, tmp_path: Path) -> None:
    """With BACKUP_KEEP=2 only the two newest archives in BACKUP_DIR remain."""
    async with PostgresStore(database) as store:
        await store.migrate()
    old = [tmp_path / f"llm-proxy-2026010{n}T000000Z.dump" for n in (1, 2)]
    for n, path in enumerate(old):
        path.write_bytes(b"old")
        os.utime(path, (1_700_000_000 + n, 1_700_000_000 + n))
    code, out, err = await run(
        "backup.sh", url=database, env={"BACKUP_DIR": str(tmp_path), "BACKUP_KEEP": "2"}
    )
    assert code == 0, err
    new = Path(out.strip())
    assert new.parent == tmp_path and new.name.startswith("llm-proxy-")
    assert listing(tmp_path) == sorted([old[1], new])


def test_the_scripts_pass_shellcheck() -> None:
    """shellcheck (from the dev extra) finds nothing in backup.sh and restore.sh."""
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        tool("shellcheck")
    result = subprocess.run(
        [shellcheck, "--severity=style", *sorted(map(str, SCRIPTS.glob("*.sh")))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout
