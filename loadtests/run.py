"""``make loadtest``: fake provider + a Redis/Postgres-backed proxy + locust, bounded in time.

    .venv/bin/python -m loadtests.run --duration 60 --users 100
    .venv/bin/python -m loadtests.run --help

The proxy runs as in the container: ``llm-proxy serve`` with one worker (the Deployment's
``LLM_PROXY_WORKERS``), a master key, keys and usage in a fresh Postgres schema, limits
and the response cache in Redis under a unique prefix (both removed afterwards). Keys
are created through the admin API before locust starts. Everything lands in
``loadtests/results/<timestamp>/``: locust's CSVs, ``chart.png`` (requests/s, latency
percentiles, proxy CPU and RSS over time), ``summary.md``, the proxy's log.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

from loadtests import report, stack

RESULTS = stack.REPO / "loadtests" / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds of load")
    parser.add_argument("--users", type=int, default=100, help="locust users (one key each)")
    parser.add_argument("--spawn-rate", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1, help="proxy workers (container: 1)")
    parser.add_argument("--keys", type=int, default=50, help="virtual keys to create")
    parser.add_argument("--ttft-ms", type=float, default=300.0)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--error-rate", type=float, default=0.01, help="injected upstream 500s")
    parser.add_argument("--provider-processes", type=int, default=1)
    parser.add_argument("--no-postgres", action="store_true", help="keys and usage in SQLite")
    parser.add_argument("--no-redis", action="store_true", help="in-process limits and cache")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("locust_args", nargs="*", help="more locust options, after --")
    return parser


def _locust(opts: argparse.Namespace, url: str, keys_file: Path, out: Path) -> int:
    argv = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(Path(__file__).parent / "locustfile.py"),
    ]
    argv += ["--headless", "--only-summary", "--host", url, "-u", str(opts.users)]
    argv += ["-r", str(opts.spawn_rate), "-t", f"{opts.duration}s", "--stop-timeout", "10"]
    argv += ["--csv", str(out / "locust"), "--csv-full-history", "--keys-file", str(keys_file)]
    argv += ["--max-tokens", str(opts.output_tokens), *opts.locust_args]
    with (out / "locust.log").open("w") as log:
        # Load-test failures (injected errors) must not fail the run: the report shows them.
        return subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    out = opts.out or RESULTS / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    backends = stack.Backends.fresh(postgres=not opts.no_postgres, redis_on=not opts.no_redis)
    master = "sk-master-" + secrets.token_hex(8)
    provider_args = ["--ttft-ms", str(opts.ttft_ms), "--tokens-per-s", str(opts.tokens_per_s)]
    provider_args += ["--output-tokens", str(opts.output_tokens)]
    provider_args += ["--error-rate", str(opts.error_rate)]
    provider_args += ["--processes", str(opts.provider_processes)]
    try:
        with stack.fake_provider(*provider_args) as (_, provider_port):
            config = stack.proxy_config(
                provider_port, backends=backends, master_key=master, workers=opts.workers
            )
            with stack.proxy(config, out) as proxy:
                keys_file = out / "keys.txt"
                keys_file.write_text("\n".join(stack.create_keys(proxy.url, master, opts.keys)))
                print(f"loadtest: proxy {proxy.url}, {opts.keys} keys, {opts.duration} s -> {out}")
                with stack.Sampler(proxy.process.pid) as sampler:
                    status = _locust(opts, proxy.url, keys_file, out)
    finally:
        backends.cleanup()
    return _report(opts, out, sampler.samples, status)


def _report(
    opts: argparse.Namespace, out: Path, cpu: list[tuple[float, float, float]], status: int
) -> int:
    history_csv, stats_csv = out / "locust_stats_history.csv", out / "locust_stats.csv"
    if not stats_csv.exists():
        print(f"locust wrote no statistics (exit {status}); see {out / 'locust.log'}")
        return 1
    history = report.read_history(history_csv)
    title = (
        f"llm-proxy load test: {opts.users} users, {opts.workers} worker(s), "
        f"TTFT {opts.ttft_ms:.0f} ms, {opts.tokens_per_s:.0f} tok/s"
    )
    report.chart(history, cpu, out / "chart.png", title)
    busy = [s[1] for s in cpu[2:]] or [0.0]  # the first samples include the ramp-up
    stats = report.read_stats(stats_csv)
    requests, failures, rps = report.request_totals(stats)
    summary = {
        "duration_s": opts.duration,
        "users": opts.users,
        "requests": requests,
        "failures": failures,
        "requests_per_s": round(rps, 1),
        "proxy_cpu_millicores_mean": round(sum(busy) / len(busy)),
        "proxy_cpu_millicores_max": round(max(busy)),
        "proxy_rss_mb_peak": round(max((s[2] for s in cpu), default=0.0), 1),
        "locust_exit_status": status,
    }
    table = report.stats_table(stats)
    text = f"# {title}\n\n{table}\n\n```\n{json.dumps(summary, indent=2)}\n```\n"
    (out / "summary.md").write_text(text)
    print(text)
    print(f"chart: {out / 'chart.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
