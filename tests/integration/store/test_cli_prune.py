"""``llm-proxy usage prune``: one retention pass for a cron job, against a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from proxy.__main__ import _parser
from proxy.cli import run_usage_command
from proxy.settings import Settings, load_settings
from proxy.store import SqliteStore
from tests.integration.store.factories import usage


def _settings(path: Path, **usage_settings: object) -> Settings:
    settings = load_settings(None, env={"LLM_PROXY_SQLITE_PATH": str(path)}, warn=lambda _: None)
    if not usage_settings:
        return settings
    return msgspec.structs.replace(
        settings, usage=msgspec.structs.replace(settings.usage, **usage_settings)
    )


async def test_prune_command_rolls_up_old_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command prunes what retention_days allows, prints what it did, and keeps totals."""
    path = tmp_path / "proxy.db"
    now = datetime.now(UTC)
    async with SqliteStore(str(path)) as store:
        await store.migrate()
        await store.insert_usage([usage(i, at=now - timedelta(days=i)) for i in range(10)])
    args = _parser().parse_args(["usage", "prune", "--batch-size", "3"])
    assert await run_usage_command(_settings(path, retention_days=3), args) == 0
    printed = msgspec.json.decode(capsys.readouterr().out)
    assert printed == {"deleted": 6, "batches": 2, "skipped": False}  # 4..9 days old
    async with SqliteStore(str(path)) as store:
        rows = await store.usage_summary(group_by="model")
    assert rows[0]["requests"] == 10


async def test_prune_command_needs_a_retention_period(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --retention-days or usage.retention_days it refuses, exit status 2."""
    args = _parser().parse_args(["usage", "prune"])
    assert await run_usage_command(_settings(tmp_path / "none.db"), args) == 2
    assert "retention" in capsys.readouterr().err
    args = _parser().parse_args(["usage", "prune", "--retention-days", "0"])
    assert await run_usage_command(_settings(tmp_path / "none.db"), args) == 2
