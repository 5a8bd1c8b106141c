"""Bookkeeping for bench/streams.py: per-stream chunk arrivals, lateness, stalls. Pure.

The fake provider (``--stamp``) writes the wall-clock send time as each token's text, so
one content chunk tells how long it took to reach the client. Both sides run on one
machine and read the same clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class StreamRecord:
    """What one client saw of one streamed response."""

    status: int = 0
    delays: list[float] = field(default_factory=list)  # seconds, arrival - upstream send
    arrivals: list[float] = field(default_factory=list)
    done: bool = False
    error: str | None = None
    _partial: bytes = b""

    def feed(self, data: bytes, now: float) -> None:
        """Body bytes as they arrive; complete ``data:`` lines are read at ``now``."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith(b"data: "):
                self._event(line[6:].strip(), now)

    def _event(self, payload: bytes, now: float) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            self.error = f"undecodable event {payload[:60]!r}"
            return
        if "error" in chunk:
            self.error = str(chunk["error"])
            return
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.delays.append(now - float(content))
                self.arrivals.append(now)

    def complete(self, chunks: int) -> bool:
        return (
            self.status == 200 and self.done and self.error is None and len(self.delays) == chunks
        )

    def max_gap(self) -> float:
        """The longest wait between two content chunks (0 with fewer than two)."""
        gaps = [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]
        return max(gaps, default=0.0)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class StreamsSummary:
    streams: int
    complete: int
    stalled: int  # streams with a gap between chunks over the stall threshold
    chunks: int
    delay_ms: tuple[float, float, float, float]  # p50, p95, p99, max
    max_gap_s: float

    @property
    def ok(self) -> bool:
        return self.complete == self.streams and self.stalled == 0


def summarise(
    records: Sequence[StreamRecord], chunks: int, interval_s: float, stall_s: float
) -> StreamsSummary:
    """Totals over all streams; a stall is a gap of ``stall_s`` beyond the send interval."""
    delays = [d for r in records for d in r.delays]
    gaps = [r.max_gap() for r in records]
    return StreamsSummary(
        streams=len(records),
        complete=sum(r.complete(chunks) for r in records),
        stalled=sum(g > interval_s + stall_s for g in gaps),
        chunks=len(delays),
        delay_ms=(
            percentile(delays, 50) * 1000,
            percentile(delays, 95) * 1000,
            percentile(delays, 99) * 1000,
            max(delays, default=0.0) * 1000,
        ),
        max_gap_s=max(gaps, default=0.0),
    )
