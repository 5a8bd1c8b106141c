"""Spill files: usage records parked on local disk while the database is away.

One folder, shared by every worker process on the machine. Each writer appends to its own
active file, ``usage-<pid>-<ns>.jsonl``, one msgspec-JSON record per line, and holds an
exclusive ``flock`` on every file it owns. Ownership is what makes replay safe:

- A live writer's files are locked, so no other process touches them.
- A file left by a crashed process is unlocked; the next writer to start claims it
  (takes the lock) and replays it.
- A new file is created under a hidden name, locked, then renamed, so no other process
  can claim it between creation and locking.

Durability (the fsync policy): each record is handed to the OS with one unbuffered
``write`` as it is spilled, so it survives a crash of the process; the active file is
fsynced when the writer syncs it (once per flush interval while spilling) and on close, so
a power cut can lose at most the last interval's records. A replayed file is deleted only
after every record in it is stored; a crash in between replays it again, which the
store's per-request_id idempotency absorbs.
"""

from __future__ import annotations

import fcntl
import glob
import os
import time
from collections import deque
from dataclasses import dataclass

import msgspec

from proxy.store.records import UsageRecord

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(UsageRecord).decode


@dataclass
class _Segment:
    """A sealed spill file being replayed: its lock-holding descriptor and read position."""

    path: str
    fd: int
    offset: int = 0
    lines: int = 0  # records not yet replayed (a count, for metrics)


@dataclass
class SpillBatch:
    segment: _Segment
    records: list[UsageRecord]
    bad: int  # lines that did not decode; skipped
    offset: int  # where the next batch starts


class SpillFiles:
    """This process's spill files in ``folder``: append, seal, claim orphans, read back."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._active: _Segment | None = None
        self._segments: deque[_Segment] = deque()  # sealed, oldest first
        self._unsynced = False
        self.pending = 0  # records on disk that are not stored yet

    def append(self, record: UsageRecord) -> None:
        """Write one record to the active file (created on first use). Raises OSError."""
        if self._active is None:
            self._active = self._create()
        line = _encode(record) + b"\n"
        os.write(self._active.fd, line)
        self._active.lines += 1
        self.pending += 1
        self._unsynced = True

    def sync(self) -> None:
        """fsync the active file if anything was written since the last sync (blocking)."""
        active = self._active
        if active is not None and self._unsynced:
            self._unsynced = False
            os.fsync(active.fd)

    @property
    def unsynced(self) -> bool:
        return self._unsynced

    @property
    def has_files(self) -> bool:
        """True while any file (active or sealed) may hold records not stored yet."""
        return self._active is not None or bool(self._segments)

    def seal(self) -> None:
        """Stop appending to the active file and queue it for replay; the next append
        starts a new file, so a replay never races with new records. Call ``sync`` first
        if the file must be durable before it is read back."""
        if self._active is not None:
            self._segments.append(self._active)
            self._active = None

    def reject(self, record: UsageRecord) -> str:
        """Park a record the database refused in ``rejected-<pid>.jsonl`` (not replayed;
        for an operator to inspect). Returns the file's path. Raises OSError."""
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, f"rejected-{os.getpid()}.jsonl")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, _encode(record) + b"\n")
        finally:
            os.close(fd)
        return path

    def claim_orphans(self) -> int:
        """Take over files no live process holds (left by a crash); returns records found."""
        found = 0
        owned = {s.path for s in self._segments} | {self._active.path if self._active else ""}
        for path in sorted(glob.glob(os.path.join(self.folder, "usage-*.jsonl"))):
            if path in owned:
                continue
            segment = _try_lock(path)
            if segment is not None:
                self._segments.append(segment)
                found += segment.lines
        self.pending += found
        return found

    def read_batch(self, limit: int) -> SpillBatch | None:
        """Up to ``limit`` lines from the oldest sealed file; None when none is left.

        Only reads (run it in a thread); nothing is consumed until ``commit``. A batch with
        no lines means that file is done, and committing it deletes the file.
        """
        if not self._segments:
            return None
        segment = self._segments[0]
        records: list[UsageRecord] = []
        bad = 0
        offset = segment.offset
        with open(segment.path, "rb") as fh:
            fh.seek(offset)
            while len(records) + bad < limit:
                line = fh.readline()
                if not line:
                    break
                offset += len(line)
                try:
                    records.append(_decode(line))
                except msgspec.DecodeError:
                    bad += 1  # a torn last line after a crash, or a damaged file
        return SpillBatch(segment, records, bad, offset)

    def commit(self, batch: SpillBatch) -> None:
        """``batch`` is stored: move past it, deleting its file once all of it is."""
        count = len(batch.records) + batch.bad
        segment = batch.segment
        if count == 0:
            self._segments.remove(segment)
            self.pending = max(0, self.pending - segment.lines)
            # Delete while still locked, so no other process claims a half-deleted file.
            os.unlink(segment.path)
            os.close(segment.fd)
            return
        segment.offset = batch.offset
        segment.lines = max(0, segment.lines - count)
        self.pending = max(0, self.pending - count)

    def close(self) -> None:
        """Sync and release every file; unreplayed ones stay for the next start (blocking)."""
        self.sync()
        self.seal()
        while self._segments:
            os.close(self._segments.popleft().fd)
        self.pending = 0

    def _create(self) -> _Segment:
        os.makedirs(self.folder, exist_ok=True)
        name = f"usage-{os.getpid()}-{time.time_ns()}.jsonl"
        hidden = os.path.join(self.folder, f".{name}.new")
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = os.path.join(self.folder, name)
        os.rename(hidden, path)
        return _Segment(path, fd)


def _try_lock(path: str) -> _Segment | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The owner may have replayed and deleted it between our open and our lock.
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(path)
        with open(path, "rb") as fh:
            lines = sum(1 for _ in fh)
    except OSError:  # held by a live writer, or gone
        os.close(fd)
        return None
    return _Segment(path, fd, lines=lines)
