"""Usage retention: the cut-off, one prune pass, the background loop and its settings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxy.settings import ConfigError, load_settings
from proxy.store import SqliteStore, UsageRecord
from proxy.store.errors import DatabaseUnavailableError
from proxy.store.rollup import PruneResult
from proxy.usage.retention import UsagePruner, cutoff
from tests.conftest import WriteConfig

NOW = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)


def test_cutoff_is_the_start_of_a_whole_utc_day() -> None:
    """N retention days keep today and the N whole days before it."""
    assert cutoff(NOW, 1) == datetime(2026, 3, 9, tzinfo=UTC)
    assert cutoff(NOW, 30) == datetime(2026, 2, 8, tzinfo=UTC)
    late_evening_in_new_york = datetime.fromisoformat("2026-03-10T23:00:00-05:00")
    assert cutoff(late_evening_in_new_york, 1) == datetime(2026, 3, 10, tzinfo=UTC)


def test_retention_must_be_at_least_a_day() -> None:
    """Zero or negative retention is refused rather than deleting today's records."""
    with pytest.raises(ValueError, match="retention_days"):
        cutoff(NOW, 0)
    with pytest.raises(ValueError, match="retention_days"):
        UsagePruner(SqliteStore(":memory:"), retention_days=-1)


async def test_prune_once_keeps_the_retention_window(tmp_path: Path) -> None:
    """A pass against a real SQLite store removes only records before the cut-off."""
    async with SqliteStore(str(tmp_path / "p.db")) as store:
        await store.migrate()
        await store.insert_usage(
            [
                UsageRecord(
                    request_id=f"r{days}",
                    started_at=NOW - timedelta(days=days),
                    ended_at=NOW - timedelta(days=days),
                    model="m",
                    total_tokens=days,
                )
                for days in range(6)
            ]
        )
        pruner = UsagePruner(store, retention_days=2, batch_size=1, clock=lambda: NOW)
        result = await pruner.prune_once()
        assert (result.deleted, result.batches) == (3, 3)  # 3, 4 and 5 days old
        rows = await store.usage_summary(group_by="day")
        assert [r["requests"] for r in rows] == [1, 1, 1, 1, 1, 1]
        assert (await pruner.prune_once()).deleted == 0


class _FlakyStore:
    """Unavailable on the first pass, then records each cut-off it is asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[datetime, int, bool]] = []
        self.second = asyncio.Event()

    async def prune_usage(
        self, before: datetime, *, batch_size: int = 5000, rollup: bool = True
    ) -> PruneResult:
        self.calls.append((before, batch_size, rollup))
        if len(self.calls) == 1:
            raise DatabaseUnavailableError("down")
        self.second.set()
        return PruneResult(deleted=1, batches=1)


async def test_run_survives_an_unavailable_database() -> None:
    """The loop logs a failed pass and prunes again on the next interval."""
    store = _FlakyStore()
    pruner = UsagePruner(store, retention_days=7, rollup=False, batch_size=10, clock=lambda: NOW)
    task = asyncio.create_task(pruner.run(0.0, first_delay=0.0))
    await store.second.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.calls[:2] == [(cutoff(NOW, 7), 10, False)] * 2


@pytest.mark.parametrize(
    ("usage", "message"),
    [
        ({"retention_days": 0}, "usage.retention_days"),
        ({"prune_batch_size": 0}, "prune_batch_size"),
        ({"prune_interval_seconds": 0}, "prune_interval_seconds"),
    ],
)
def test_bad_retention_settings_are_refused(
    write_config: WriteConfig, usage: dict[str, int], message: str
) -> None:
    """Settings that would prune everything or never finish are config errors."""
    with pytest.raises(ConfigError, match=message):
        load_settings(str(write_config({"usage": usage})), {})


def test_retention_defaults_keep_everything() -> None:
    """Without a setting nothing is pruned; roll-ups are on for when it is set."""
    usage = load_settings(None, {}).usage
    assert usage.retention_days is None and usage.rollup and usage.prune_batch_size == 5000
