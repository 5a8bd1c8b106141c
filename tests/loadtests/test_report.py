"""The load-test report: locust's CSVs read back, rates per kind, the chart written."""

from __future__ import annotations

import csv
from pathlib import Path

from loadtests import report

HISTORY_HEADER = [
    "Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "66%",
    "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%",
    "Total Request Count", "Total Failure Count",
]  # fmt: skip


def _history(path: Path, rows: list[tuple[int, str, float, float, str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HISTORY_HEADER)
        for stamp, name, rps, fails, p50, p95 in rows:
            writer.writerow(
                [stamp, 10, "POST", name, rps, fails, p50, 0, 0, 0, 0, p95, 0, 0, 0, 0, 0, 0, 0]
            )
    return path


ROWS = [
    (1000, "Aggregated", 0.0, 0.0, "N/A", "N/A"),
    (1001, "chat", 4.0, 0.5, "1600", "1700"),
    (1001, "chat (repeat)", 1.0, 0.0, "3", "5"),
    (1001, "TTFT", 2.0, 0.0, "300", "350"),
    (1001, "stream (headers)", 2.0, 0.0, "300", "350"),
    (1001, "stream", 2.0, 0.25, "1600", "1650"),
    (1001, "Aggregated", 11.0, 0.75, "300", "1650"),
]


def test_read_history_keeps_every_row_and_turns_na_into_none(tmp_path: Path) -> None:
    """Rows keep their name and time; locust's N/A before the first answer reads as None."""
    rows = report.read_history(_history(tmp_path / "h.csv", ROWS))
    assert len(rows) == len(ROWS)
    assert rows[0].p50 is None and rows[0].t == 1000
    assert rows[1].name == "chat" and rows[1].p95 == 1700


def test_request_rates_merge_repeats_and_leave_out_auxiliary_entries(tmp_path: Path) -> None:
    """chat + chat (repeat) is one kind; TTFT and stream headers are not extra requests."""
    rows = report.read_history(_history(tmp_path / "h.csv", ROWS))
    assert report.request_rates(rows) == {"chat": [(1001, 5.0)], "stream": [(1001, 2.0)]}
    assert report.failure_rate(rows) == [(1001, 0.75)]


def test_read_stats_and_table(tmp_path: Path) -> None:
    """The totals CSV becomes one table row per request name."""
    path = tmp_path / "s.csv"
    header = ["Type", "Name", "Request Count", "Failure Count", "50%", "95%", "99%", "Requests/s"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerow(["POST", "chat", 1200, 3, 1600, 1700, 1800, 20.5])
        writer.writerow(["SSE", "TTFT", 0, 0, "N/A", "N/A", "N/A", 0])
    rows = report.read_stats(path)
    assert rows[0].requests == 1200 and rows[0].failures == 3 and rows[1].median_ms is None
    assert report.request_totals(rows) == (1200, 3, 20.5)  # TTFT is not a request
    table = report.stats_table(rows)
    assert "| POST | chat | 1,200 | 3 | 20.5 | 1,600 | 1,700 | 1,800 |" in table
    assert "| SSE | TTFT | 0 | 0 | 0.0 | — | — | — |" in table


def test_chart_writes_a_png(tmp_path: Path) -> None:
    """The chart is a PNG file, with CPU samples aligned on the same clock as the history."""
    rows = report.read_history(_history(tmp_path / "h.csv", ROWS))
    out = tmp_path / "chart.png"
    report.chart(rows, [(999.5, 120.0, 190.0), (1000.5, 300.0, 195.0)], out, "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
