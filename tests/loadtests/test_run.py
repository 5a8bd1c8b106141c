"""`make loadtest` end to end, short: provider, Postgres/Redis-backed proxy, locust, report."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO_ROOT


def test_a_short_load_test_writes_csvs_chart_and_summary(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    """Five users for six seconds: every kind of request succeeds and the report is complete."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "loadtests.run", "--duration", "6", "--users", "5"]
    argv += ["--spawn-rate", "5", "--keys", "3", "--error-rate", "0", "--ttft-ms", "50"]
    argv += ["--tokens-per-s", "200", "--output-tokens", "8", "--out", str(out)]
    argv += ["--", "--mix", "chat=1,stream=1,embeddings=1", "--repeat-share", "0.5"]
    env = {"LOADTEST_DATABASE_URL": postgres_url, "LOADTEST_REDIS_URL": redis_url}
    result = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    keys = (out / "keys.txt").read_text().split()
    assert len(keys) == 3 and all(k.startswith("sk-") for k in keys)
    # Options after "--" reach the locustfile: 3 keys from the file, the equal mix.
    assert "loadtest: 3 keys, mix {'chat': 0.333" in (out / "locust.log").read_text()
    counts: dict[str, int] = {}
    with (out / "locust_stats.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            name = row["Name"].removesuffix(" (repeat)")
            counts[name] = counts.get(name, 0) + int(row["Request Count"])
            assert int(row["Failure Count"]) == 0, row
    for name in ("chat", "stream", "embeddings", "TTFT"):
        assert counts.get(name, 0) > 0, counts
    assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"
    summary = (out / "summary.md").read_text()
    assert '"requests_per_s"' in summary and '"proxy_cpu_millicores_mean"' in summary
