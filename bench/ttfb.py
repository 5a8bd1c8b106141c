"""Time to first byte of a stream, direct and through the proxy, in one run.

wrk measures whole responses; a streaming client cares when the first token arrives. This
sends sequential streamed chat requests (one at a time, so it measures latency, not load)
over a kept-alive connection and times the gap between writing the request and reading the
first ``data:`` byte of the body. The upstream paces its events (``--chunk-delay-ms``), so a
proxy that buffered the stream would show it at once: the first byte would come late.

    .venv/bin/python bench/ttfb.py [--requests 300] [--chunk-delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import launch
import yaml

BODY = (
    b'{"model":"gpt-4o-mini","stream":true,"max_tokens":64,'
    b'"messages":[{"role":"user","content":"Write one sentence about the sea."}]}'
)


async def ttfb_series(port: int, requests: int) -> list[float]:
    """Milliseconds to the first body byte of each of ``requests`` streamed requests."""
    reader, writer = await asyncio.open_connection(launch.HOST, port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {launch.HOST}:{port}\r\n"
        "Content-Type: application/json\r\nAuthorization: Bearer sk-bench-client\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    times: list[float] = []
    try:
        for _ in range(requests):
            started = time.perf_counter()
            writer.write(head + BODY)
            await reader.readuntil(b"\r\n\r\n")
            buf = b""
            while b"data:" not in buf:
                buf += await reader.read(65536)
            times.append((time.perf_counter() - started) * 1000)
            while not buf.endswith(b"0\r\n\r\n"):  # drain to the end of the chunked body
                buf += await reader.read(65536)
    finally:
        writer.close()
    return times


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--chunk-delay-ms", type=float, default=20.0)
    parser.add_argument("--chunks", type=int, default=20)
    opts = parser.parse_args()
    children = launch.Children()
    workdir = launch.RESULTS
    try:
        argv = ["taskset", "-c", "0", sys.executable, str(launch.BENCH / "fast_upstream.py")]
        argv += ["--host", launch.HOST, "--port", "0", "--chunks", str(opts.chunks)]
        argv += ["--chunk-delay-ms", str(opts.chunk_delay_ms)]
        upstream = children.start(argv, stdout=launch.subprocess.PIPE)
        upstream_port = int(launch.read_line(upstream, 15.0).split()[1])
        config = Path(workdir / "ttfb-proxy.yaml")
        config.write_text(yaml.safe_dump(launch.proxy_config(upstream_port, None)))
        port = launch.free_port()
        log = workdir / "ttfb-proxy.log"
        with log.open("wb") as log_file:
            proxy = children.start(
                [
                    "taskset",
                    "-c",
                    "1",
                    str(launch.REPO / ".venv/bin/llm-proxy"),
                    "serve",
                    "--config",
                    str(config),
                    "--host",
                    launch.HOST,
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                ],
                stdout=log_file,
                stderr=launch.subprocess.STDOUT,
                env=launch.os.environ | {"LLM_PROXY_LOG_LEVEL": "warning"},
            )
        launch.wait_health(proxy, port, log, 30.0)
        rows: list[tuple[str, float, float, float]] = []
        for name, target in (("direct", upstream_port), ("proxy", port)):
            asyncio.run(ttfb_series(target, 20))  # warm-up
            series = asyncio.run(ttfb_series(target, opts.requests))
            rows.append(
                (name, percentile(series, 50), percentile(series, 90), percentile(series, 99))
            )
        print(
            f"TTFB of a stream ({opts.requests} sequential requests, "
            f"upstream events every {opts.chunk_delay_ms:g} ms)\n"
        )
        print("| target | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|")
        for name, p50, p90, p99 in rows:
            print(f"| {name} | {p50:.2f} | {p90:.2f} | {p99:.2f} |")
        added = [rows[1][i] - rows[0][i] for i in (1, 2, 3)]
        print(f"| added by the proxy | +{added[0]:.2f} | +{added[1]:.2f} | +{added[2]:.2f} |")
        return 0
    finally:
        children.stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
