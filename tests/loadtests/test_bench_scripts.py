"""bench/streams.py and bench/capacity.py run end to end at a small scale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO_ROOT


def _run(script: str, *args: str, postgres_url: str, redis_url: str) -> str:
    env = {**os.environ, "LOADTEST_DATABASE_URL": postgres_url, "LOADTEST_REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout + f"\nexit {result.returncode}"


def test_streams_bench_checks_every_stream(postgres_url: str, redis_url: str) -> None:
    """50 short streams through one worker: all complete; memory per stream and lateness shown."""
    out = _run(
        "streams.py",
        *("--streams", "50", "--chunks", "3", "--tokens-per-s", "10", "--ttft-ms", "50"),
        postgres_url=postgres_url,
        redis_url=redis_url,
    )
    assert "proxy: 50/50 streams complete, 0 stalled, 150 chunks" in out
    assert "KB per stream" in out and "OK: every stream complete" in out
    assert out.endswith("exit 0")
    results = Path(out.split("results: ")[1].split()[0])
    figures = json.loads((results / "streams.json").read_text())
    assert figures["complete"] == 50 and figures["streams_open_gauge"] >= 1


def test_capacity_bench_steps_the_load_and_prints_a_verdict(
    postgres_url: str, redis_url: str
) -> None:
    """Three small steps, nothing written to bench/capacity.json; the report names the targets."""
    before = (REPO_ROOT / "bench" / "capacity.json").read_bytes()
    out = _run(
        "capacity.py",
        *("--start", "20", "--stop", "45", "--factor", "1.5", "--no-write"),
        *("--step-seconds", "2", "--direct-seconds", "1"),
        postgres_url=postgres_url,
        redis_url=redis_url,
    )
    assert (REPO_ROOT / "bench" / "capacity.json").read_bytes() == before
    assert "| 20 | " in out and "| 30 | " in out and "| 45 | " in out
    assert "- verdict: " in out and "order in which the HPA targets fire" in out
    results = Path(out.split("results: ")[1].split()[0].rstrip(";"))
    steps = json.loads((results / "steps.json").read_text())["steps"]
    assert [s["offered_rps"] for s in steps] == [20, 30, 45]
    assert all(s["cpu_millicores"] > 0 for s in steps)
