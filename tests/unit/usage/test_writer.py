"""SpendWriter's batching against an in-memory sink whose writes the test holds open."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from proxy.store.records import UsageRecord
from proxy.usage import SpendWriter
from tests.integration.store.factories import usage


class HeldSink:
    """Stores batches; each write waits until the test lets it finish."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        self.writing.set()
        await self.release.wait()
        self.batches.append([r.request_id for r in records])


async def settle() -> None:
    """Give the writer's task every chance to start another write."""
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)


async def test_records_that_arrive_during_a_write_wait_for_a_full_batch(tmp_path: Path) -> None:
    """Under steady load the writes stay a batch apart: what comes in while one is written
    is not written the moment it ends (that made them back to back and tiny), but with the
    next full batch or tick; full batches that piled up meanwhile go at once."""
    sink = HeldSink()
    writer = SpendWriter(sink, batch_size=4, flush_interval=3600.0, spill_dir=str(tmp_path))
    await writer.start()
    for i in range(4):
        writer.submit(usage(i))
    await asyncio.wait_for(sink.writing.wait(), 5)
    for i in range(4, 14):  # two full batches and two more, while the first is written
        writer.submit(usage(i))
    sink.release.set()
    await settle()
    assert [len(batch) for batch in sink.batches] == [4, 4, 4]
    assert writer.queue_depth == 2  # they wait for the tick or two more records
    writer.submit(usage(14))
    writer.submit(usage(15))
    await settle()
    assert sink.batches[-1] == ["req-12", "req-13", "req-14", "req-15"]
    assert writer.queue_depth == 0
    await writer.aclose()


async def test_flush_and_close_write_everything_waiting(tmp_path: Path) -> None:
    sink = HeldSink()
    sink.release.set()
    writer = SpendWriter(sink, batch_size=4, flush_interval=3600.0, spill_dir=str(tmp_path))
    await writer.start()
    for i in range(6):
        writer.submit(usage(i))
    assert await writer.flush()
    assert [len(batch) for batch in sink.batches] == [4, 2]
    writer.submit(usage(6))
    await writer.aclose()
    assert sink.batches[-1] == ["req-6"]
    assert writer.spilled_records_total == 0
