"""Usage-record retention: old records rolled up into daily totals, then deleted.

``usage.retention_days: N`` keeps N whole UTC days before today in ``usage_records``;
older records go, in batches of ``prune_batch_size`` rows per transaction, and with
``rollup: true`` (the default) each batch is first added to ``usage_daily`` in the same
transaction, so ``GET /usage`` totals stay right for those days. The store does the
batching and keeps replicas from pruning at once (``Store.prune_usage``); this module
picks the cut-off and runs it every ``prune_interval_seconds`` in each worker::

    pruner = UsagePruner(store, retention_days=30)
    task = asyncio.create_task(pruner.run(interval=3600))

``llm-proxy usage prune`` runs one pass, for a cron job or a Kubernetes CronJob instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Protocol

from proxy.store.errors import DatabaseError, DatabaseUnavailableError
from proxy.store.rollup import PRUNE_BATCH_DEFAULT, PruneResult

log = logging.getLogger("llm_proxy.usage.retention")

_FIRST_RUN_SPREAD = 60.0  # seconds: workers starting together do not all prune at once


class PruneTarget(Protocol):
    """Where old records are pruned; every ``proxy.store.Store`` is one."""

    async def prune_usage(
        self, before: datetime, *, batch_size: int = PRUNE_BATCH_DEFAULT, rollup: bool = True
    ) -> PruneResult: ...


def cutoff(now: datetime, retention_days: int) -> datetime:
    """The start of the UTC day ``retention_days`` before ``now``'s: records started
    before it are pruned, so only whole days are ever rolled up."""
    if retention_days < 1:
        raise ValueError("retention_days: expected at least 1")
    day = now.astimezone(UTC).date() - timedelta(days=retention_days)
    return datetime.combine(day, time(0), tzinfo=UTC)


class UsagePruner:
    def __init__(
        self,
        store: PruneTarget,
        *,
        retention_days: int,
        rollup: bool = True,
        batch_size: int = PRUNE_BATCH_DEFAULT,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        cutoff(datetime.now(UTC), retention_days)  # checks retention_days
        if batch_size < 1:
            raise ValueError("batch_size: expected at least 1")
        self._store = store
        self._retention_days = retention_days
        self._rollup = rollup
        self._batch_size = batch_size
        self._clock = clock

    async def prune_once(self) -> PruneResult:
        """One pass: every record before the cut-off, batch by batch; errors propagate."""
        before = cutoff(self._clock(), self._retention_days)
        result = await self._store.prune_usage(
            before, batch_size=self._batch_size, rollup=self._rollup
        )
        if result.skipped:
            log.info("usage prune skipped: another process is pruning")
        elif result.deleted:
            log.info(
                "usage prune: %d records before %s %s in %d batches",
                result.deleted,
                before.date().isoformat(),
                "rolled up and deleted" if self._rollup else "deleted",
                result.batches,
            )
        return result

    async def run(self, interval: float, *, first_delay: float | None = None) -> None:
        """Prune every ``interval`` seconds until cancelled; a failed pass is logged and
        retried at the next one (the database may be away: nothing is lost by waiting)."""
        if first_delay is None:
            first_delay = random.uniform(0, min(interval, _FIRST_RUN_SPREAD))
        await asyncio.sleep(first_delay)
        while True:
            try:
                await self.prune_once()
            except DatabaseUnavailableError as exc:
                log.warning("usage prune postponed, database unavailable: %s", exc)
            except DatabaseError:
                log.exception("usage prune failed")
            await asyncio.sleep(interval)
