"""Per-stream bookkeeping of the streams benchmark: lateness, completeness, stalls."""

from __future__ import annotations

import json

import pytest

from loadtests.streamstats import StreamRecord, percentile, summarise


def _event(content: str) -> bytes:
    chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": content}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _stream(sent: list[float], lateness: float, done: bool = True) -> StreamRecord:
    record = StreamRecord(status=200)
    for t in sent:
        record.feed(_event(f"{t:.6f} "), t + lateness)
    if done:
        record.feed(b"data: [DONE]\n\n", sent[-1] + lateness)
    return record


def test_feed_measures_lateness_from_the_stamp_even_across_split_reads() -> None:
    """An event cut over two reads is read once whole, at the time its end arrived."""
    record = StreamRecord(status=200)
    data = _event("100.000000 ")
    record.feed(data[:20], 100.5)
    assert record.delays == []
    record.feed(data[20:], 100.25)
    assert record.delays == [pytest.approx(0.25)]
    record.feed(b"data: [DONE]\n\n", 101.0)
    assert record.done and record.complete(1) and not record.complete(2)


def test_an_error_event_or_a_bad_status_makes_a_stream_incomplete() -> None:
    """A final error event, an undecodable one, or a non-200 status is not a complete stream."""
    failed = StreamRecord(status=200)
    failed.feed(b'data: {"error": {"message": "upstream gone"}}\n\n', 1.0)
    failed.feed(b"data: [DONE]\n\n", 1.0)
    assert failed.error is not None and not failed.complete(0)
    garbage = StreamRecord(status=200)
    garbage.feed(b"data: {nope\n\n", 1.0)
    assert garbage.error is not None
    assert not StreamRecord(status=502, done=True).complete(0)


def test_max_gap_is_the_longest_wait_between_chunks() -> None:
    """Gaps are measured between arrivals; one chunk has no gap."""
    assert _stream([0.0, 0.5, 2.5, 3.0], 0.01).max_gap() == pytest.approx(2.0)
    assert _stream([0.0], 0.01).max_gap() == 0.0


def test_percentile_uses_the_nearest_rank() -> None:
    """p50 of 1..100 is 50, p99 is 99, p100 the maximum; no values give 0."""
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([], 50) == 0.0


def test_summarise_counts_complete_and_stalled_streams() -> None:
    """A stream missing [DONE] is incomplete; one with a gap over interval + threshold stalled."""
    fine = _stream([0.0, 0.5, 1.0], 0.002)
    cut = _stream([0.0, 0.5, 1.0], 0.002, done=False)
    stalled = _stream([0.0, 0.5, 3.0], 0.004)
    summary = summarise([fine, cut, stalled], chunks=3, interval_s=0.5, stall_s=1.0)
    assert (summary.streams, summary.complete, summary.stalled) == (3, 2, 1)
    assert summary.chunks == 9
    assert summary.delay_ms[0] == pytest.approx(2.0)
    assert summary.delay_ms[3] == pytest.approx(4.0)
    assert summary.max_gap_s == pytest.approx(2.5)
    assert not summary.ok
    assert summarise([fine], chunks=3, interval_s=0.5, stall_s=1.0).ok
