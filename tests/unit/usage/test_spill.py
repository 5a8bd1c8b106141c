"""Spill files: append, seal, read back, commit, and who may claim a file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from proxy.usage import UsageRecord
from proxy.usage.spill import SpillFiles

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def usage(n: int) -> UsageRecord:
    return UsageRecord(request_id=f"req-{n}", started_at=T0, ended_at=T0, model="gpt-4o")


def _drain(spill: SpillFiles, limit: int = 10) -> list[str]:
    """Read and commit every sealed record; returns their request ids."""
    ids: list[str] = []
    while (batch := spill.read_batch(limit)) is not None:
        ids += [r.request_id for r in batch.records]
        spill.commit(batch)
    return ids


def test_spilled_records_read_back_in_order(tmp_path: Path) -> None:
    """Appended records come back, in order and in batches, once the file is sealed."""
    spill = SpillFiles(str(tmp_path))
    for i in range(25):
        spill.append(usage(i))
    assert spill.pending == 25 and spill.read_batch(10) is None  # the active file is not read
    spill.seal()
    assert _drain(spill) == [f"req-{i}" for i in range(25)]
    assert spill.pending == 0 and not spill.has_files
    assert list(tmp_path.iterdir()) == []  # fully replayed files are deleted
    spill.close()


def test_uncommitted_batch_is_read_again(tmp_path: Path) -> None:
    """A batch that was read but not committed (its write failed) is read again."""
    spill = SpillFiles(str(tmp_path))
    for i in range(3):
        spill.append(usage(i))
    spill.seal()
    first = spill.read_batch(2)
    again = spill.read_batch(2)
    assert first is not None and again is not None
    assert [r.request_id for r in first.records] == [r.request_id for r in again.records]
    spill.commit(again)
    assert _drain(spill) == ["req-2"]
    spill.close()


def test_live_files_are_not_claimed_by_another_writer(tmp_path: Path) -> None:
    """A file held by a live writer is skipped; after that writer closes it is claimed."""
    owner = SpillFiles(str(tmp_path))
    for i in range(5):
        owner.append(usage(i))
    other = SpillFiles(str(tmp_path))
    assert other.claim_orphans() == 0
    owner.close()  # as if the process had exited without replaying
    assert other.claim_orphans() == 5 and other.pending == 5
    assert _drain(other) == [f"req-{i}" for i in range(5)]
    other.close()


def test_torn_line_is_skipped_and_counted(tmp_path: Path) -> None:
    """A line that does not decode (a crash mid-write) is reported as bad, not fatal."""
    orphan = tmp_path / "usage-1-1.jsonl"
    orphan.write_bytes(b'{"request_id": "cut sho')
    spill = SpillFiles(str(tmp_path))
    assert spill.claim_orphans() == 1
    batch = spill.read_batch(10)
    assert batch is not None and batch.records == [] and batch.bad == 1
    spill.commit(batch)
    assert spill.read_batch(10) is not None  # the end: an empty batch deletes the file
    assert _drain(spill) == [] and not orphan.exists()
    spill.close()


def test_close_keeps_unreplayed_files(tmp_path: Path) -> None:
    """close() syncs and releases files without deleting them."""
    spill = SpillFiles(str(tmp_path))
    spill.append(usage(1))
    spill.close()
    [path] = tmp_path.glob("usage-*.jsonl")
    assert path.read_bytes().count(b"\n") == 1


def test_rejected_records_go_to_their_own_file(tmp_path: Path) -> None:
    """reject() writes outside the replayed usage-*.jsonl files."""
    spill = SpillFiles(str(tmp_path))
    path = spill.reject(usage(7))
    assert Path(path).name.startswith("rejected-") and b"req-7" in Path(path).read_bytes()
    assert spill.claim_orphans() == 0
    spill.close()
