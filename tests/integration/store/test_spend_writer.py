"""The spend writer against real stores: batching, outages, spill files, shutdown."""

from __future__ import annotations

import asyncio
import glob
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from proxy.store import PostgresStore, Store
from proxy.usage import SpendWriter
from tests.integration.store.conftest import pg_proxy_url
from tests.integration.store.factories import key, usage
from tests.support.fault_proxy import FaultProxy

FAST: dict[str, Any] = {
    "flush_interval": 0.05,
    "retry_initial": 0.02,
    "retry_max": 0.2,
    "close_timeout": 3.0,
}


async def wait_until(condition: Callable[[], bool], what: str, within: float = 15.0) -> None:
    """Poll until ``condition()`` holds; fail naming ``what`` after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            # The writer's counters are plain attributes, with no event to wait on.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not true after {within} s: {what}") from None


async def stored_count(store: Store) -> int:
    return sum(row["requests"] for row in await store.usage_summary(group_by="model"))


def spill_files(folder: Path) -> list[str]:
    return glob.glob(str(folder / "usage-*.jsonl"))


def rejected_bytes(folder: Path) -> bytes:
    [path] = glob.glob(str(folder / "rejected-*.jsonl"))
    return Path(path).read_bytes()


def spilled_lines(folder: Path) -> int:
    return sum(Path(path).read_bytes().count(b"\n") for path in spill_files(folder))


@pytest.fixture
async def proxied_store(
    postgres_url: str, pg_schema: str, pg_proxy: FaultProxy
) -> AsyncIterator[PostgresStore]:
    """A migrated PostgreSQL store whose every connection goes through ``pg_proxy``."""
    store = PostgresStore(
        pg_proxy_url(postgres_url, pg_proxy),
        schema=pg_schema,
        connect_timeout=1.0,
        command_timeout=5.0,
    )
    await store.migrate()
    yield store
    await store.aclose()


async def test_outage_loses_nothing_and_duplicates_nothing(
    proxied_store: PostgresStore, pg_proxy: FaultProxy, tmp_path: Path
) -> None:
    """While PostgreSQL is cut the writer buffers, then spills; after restore each record
    is in the table exactly once and the key is charged exactly once per record."""
    store = proxied_store
    k = await store.insert_key(key("sk-outage"))
    writer = SpendWriter(store, batch_size=50, max_buffered=200, spill_dir=str(tmp_path), **FAST)
    await writer.start()
    for i in range(100):
        writer.submit(usage(i, token_hash=k.token_hash))
    await wait_until(lambda: writer.written_records_total == 100, "the first 100 are written")

    await pg_proxy.cut()
    for i in range(100, 1100):
        writer.submit(usage(i, token_hash=k.token_hash))  # never raises, never blocks
    assert writer.queue_depth == 200
    assert writer.spilled_records_total == 800 and writer.spill_pending == 800
    await wait_until(lambda: writer.write_errors_total >= 2, "writes fail while cut")
    assert not writer.healthy
    assert spilled_lines(tmp_path) == 800

    await pg_proxy.restore()
    await wait_until(
        lambda: writer.healthy and writer.queue_depth == 0 and writer.spill_pending == 0,
        "memory and spill are drained after restore",
    )
    assert await stored_count(store) == 1100
    charged = await store.get_key(k.token_hash)
    assert charged is not None and charged.spend == pytest.approx(1100 * 0.001)
    assert spill_files(tmp_path) == []
    assert writer.replayed_records_total == 800
    await writer.aclose()


async def test_close_while_down_spills_and_the_next_writer_replays(
    proxied_store: PostgresStore, pg_proxy: FaultProxy, tmp_path: Path
) -> None:
    """aclose() with the database cut writes memory to the spill file; a new writer
    started later stores it all."""
    first = SpendWriter(proxied_store, spill_dir=str(tmp_path), **FAST)
    await first.start()
    await pg_proxy.cut()
    for i in range(300):
        first.submit(usage(i))
    await first.aclose()
    assert first.spilled_records_total == 300
    assert len(spill_files(tmp_path)) == 1 and spilled_lines(tmp_path) == 300

    await pg_proxy.restore()
    async with SpendWriter(proxied_store, spill_dir=str(tmp_path), **FAST) as second:
        await wait_until(lambda: second.spill_pending == 0, "the spill file is replayed")
    assert await stored_count(proxied_store) == 300
    assert spill_files(tmp_path) == []


async def test_submit_after_close_is_spilled(store: Store, tmp_path: Path) -> None:
    """A record submitted after aclose() is not lost: it goes to the spill file."""
    writer = SpendWriter(store, spill_dir=str(tmp_path), **FAST)
    await writer.start()
    await writer.aclose()
    writer.submit(usage(1))
    assert writer.spilled_records_total == 1 and len(spill_files(tmp_path)) == 1
    writer.spill.close()


async def test_spill_left_by_a_crash_is_replayed_at_start(store: Store, tmp_path: Path) -> None:
    """A spill file nobody holds (its process died) is claimed, stored and deleted; a torn
    last line is skipped and counted."""
    encode = msgspec.json.Encoder().encode
    lines = b"".join(encode(usage(i, prefix="crash")) + b"\n" for i in range(20))
    orphan = tmp_path / "usage-999999-1.jsonl"
    orphan.write_bytes(lines + b'{"request_id": "torn')
    async with SpendWriter(store, spill_dir=str(tmp_path), **FAST) as writer:
        await wait_until(lambda: not orphan.exists(), "the orphan is replayed")
        assert writer.replayed_records_total == 20 and writer.rejected_records_total == 1
    assert await stored_count(store) == 20


async def test_full_batch_is_written_before_the_interval(store: Store, tmp_path: Path) -> None:
    """batch_size waiting records are written at once, not at the next interval."""
    writer = SpendWriter(store, batch_size=10, flush_interval=60.0, spill_dir=str(tmp_path))
    await writer.start()
    for i in range(10):
        writer.submit(usage(i))
    await wait_until(lambda: writer.written_records_total == 10, "a full batch is written", 5.0)
    assert writer.last_flush_seconds > 0
    await writer.aclose()


async def test_close_writes_memory_to_the_database(store: Store, tmp_path: Path) -> None:
    """aclose() with the database up promptly stores what is in memory; nothing is spilled."""
    writer = SpendWriter(store, flush_interval=60.0, spill_dir=str(tmp_path))
    await writer.start()
    for i in range(25):
        writer.submit(usage(i))
    assert writer.queue_depth == 25
    await asyncio.sleep(0.05)  # the task is idle, waiting for its interval
    async with asyncio.timeout(2):  # and aclose() does not wait that interval out
        await writer.aclose()
    assert await stored_count(store) == 25
    assert writer.spilled_records_total == 0 and spill_files(tmp_path) == []


async def test_refused_record_does_not_stall_its_batch(store: Store, tmp_path: Path) -> None:
    """A record the database refuses is set aside in rejected-<pid>.jsonl; the rest of its
    batch is stored and the writer stays healthy."""
    async with SpendWriter(store, spill_dir=str(tmp_path), **FAST) as writer:
        for i in range(9):
            writer.submit(usage(i))
        writer.submit(usage(9, prompt_tokens=2**70))  # fits no integer column
        await wait_until(lambda: writer.rejected_records_total == 1, "the bad record is refused")
        await wait_until(lambda: writer.queue_depth == 0, "the batch is done")
        assert writer.healthy
    assert await stored_count(store) == 9
    assert b'"req-9"' in rejected_bytes(tmp_path)


async def test_unwritable_spill_counts_drops_and_never_raises(store: Store, tmp_path: Path) -> None:
    """When the spill folder cannot be written, submit() still returns and counts the loss."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    writer = SpendWriter(store, max_buffered=1, spill_dir=str(blocker / "spill"), **FAST)
    writer.submit(usage(1))
    writer.submit(usage(2))  # memory full: to the (impossible) spill file
    assert writer.dropped_records_total == 1
    await writer.aclose()
    assert spill_files(blocker.parent) == []
