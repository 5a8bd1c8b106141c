"""Streaming at scale: many long, slow streams open at once through ONE proxy worker.

    .venv/bin/python bench/streams.py                      # 1,000 streams, ~1 minute
    .venv/bin/python bench/streams.py --streams 2000 --tokens-per-s 1

The fake provider (``--stamp``: each token is its send time) trickles ``--chunks`` tokens
per stream at ``--tokens-per-s``; the client opens ``--streams`` streams within about a
second and reads them all to ``data: [DONE]``. The same load runs first straight to the
provider, then through the proxy (one worker, production-like: master key, a virtual
key, Postgres usage and Redis limits unless turned off), pinned to ``--proxy-core``.

Reports: memory per stream (proxy RSS with every stream open minus RSS before, divided by
the streams), chunk lateness (arrival minus upstream send time; the proxy's added part is
proxy minus direct per percentile), proxy CPU, and stalls: every stream must receive all
chunks and ``[DONE]``, with no gap between chunks longer than the send interval + 1 s.
Exit 1 when a stream failed or stalled.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import resource
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

from loadtests import stack
from loadtests.streamstats import StreamRecord, StreamsSummary, summarise

BENCH = Path(__file__).resolve().parent


class StreamClient(asyncio.Protocol):
    """One connection, one streamed chat completion, read with httptools."""

    def __init__(self, request: bytes, record: StreamRecord, finished: asyncio.Future[None]):
        self.request, self.record, self.finished = request, record, finished
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(f"bad HTTP: {exc}")

    def on_headers_complete(self) -> None:
        self.record.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.record.feed(body, time.time())

    def on_message_complete(self) -> None:
        self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(f"connection lost: {exc}" if not self.finished.done() else None)

    def _finish(self, error: str | None) -> None:
        if error and self.record.error is None:
            self.record.error = error
        if not self.finished.done():
            self.finished.set_result(None)
        if self.transport is not None:
            self.transport.close()


def request_bytes(port: int, key: str, chunks: int) -> bytes:
    body = json.dumps(
        {
            "model": stack.CHAT_MODEL,
            "messages": [{"role": "user", "content": "Tell me a long story, slowly."}],
            "max_tokens": chunks,
            "stream": True,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {stack.HOST}:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def run_streams(
    port: int, key: str, opts: argparse.Namespace, on_all_open: Any
) -> list[StreamRecord]:
    """Open every stream (in batches, so the listen backlog never overflows), await them all."""
    loop = asyncio.get_running_loop()
    request = request_bytes(port, key, opts.chunks)
    records = [StreamRecord() for _ in range(opts.streams)]
    futures: list[asyncio.Future[None]] = []
    for start in range(0, opts.streams, opts.batch):
        for record in records[start : start + opts.batch]:
            finished: asyncio.Future[None] = loop.create_future()
            futures.append(finished)
            try:
                await loop.create_connection(
                    functools.partial(StreamClient, request, record, finished), stack.HOST, port
                )
            except OSError as exc:
                record.error = f"connect: {exc}"
                finished.set_result(None)
        await asyncio.sleep(opts.batch_pause)
    # Every stream is open once the last one has seen its first token.
    await asyncio.sleep(opts.ttft_ms / 1000 + 1 / opts.tokens_per_s)
    await loop.run_in_executor(None, on_all_open)
    timeout = opts.ttft_ms / 1000 + opts.chunks / opts.tokens_per_s + 30
    await asyncio.wait(futures, timeout=timeout)
    return records


def load(port: int, key: str, opts: argparse.Namespace, on_all_open: Any) -> list[StreamRecord]:
    return uvloop.run(run_streams(port, key, opts, on_all_open))


def _describe(name: str, s: StreamsSummary) -> str:
    p50, p95, p99, top = s.delay_ms
    return (
        f"{name}: {s.complete}/{s.streams} streams complete, {s.stalled} stalled, {s.chunks} "
        f"chunks, lateness p50/p95/p99/max {p50:.1f}/{p95:.1f}/{p99:.1f}/{top:.1f} ms, "
        f"longest gap {s.max_gap_s:.2f} s"
    )


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards the hard one; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        raise SystemExit(f"open files limit {want} < {needed} needed; raise `ulimit -n`")
    return want


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=30, help="content chunks per stream")
    parser.add_argument("--tokens-per-s", type=float, default=2.0, help="per stream")
    parser.add_argument("--ttft-ms", type=float, default=500.0)
    parser.add_argument("--batch", type=int, default=50, help="connections opened at once")
    parser.add_argument("--batch-pause", type=float, default=0.05, help="seconds between batches")
    parser.add_argument("--proxy-core", default="1")
    parser.add_argument("--client-core", default="0")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-redis", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    # Client, proxy (client and upstream side) and provider: ~4 descriptors per stream.
    limit = raise_fd_limit(opts.streams * 4 + 256)
    out = BENCH / "results" / f"streams-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    backends = stack.Backends.fresh(postgres=not opts.no_postgres, redis_on=not opts.no_redis)
    master = "sk-master-" + secrets.token_hex(8)
    provider = ["--stamp", "--ttft-ms", str(opts.ttft_ms), "--tokens-per-s", str(opts.tokens_per_s)]
    provider += ["--output-tokens", str(opts.chunks)]
    # The client shares the provider's core: the proxy alone has its core.
    stack_core = opts.client_core
    interval = 1 / opts.tokens_per_s
    try:
        with stack.fake_provider(*provider, cores=stack_core) as (_, provider_port):
            direct = summarise(
                load(provider_port, "sk-direct", opts, lambda: None), opts.chunks, interval, 1.0
            )
            print(_describe("direct", direct), flush=True)
            config = stack.proxy_config(
                provider_port,
                backends=backends,
                master_key=master,
                cache=False,
                max_connections=opts.streams * 2,
            )
            with stack.proxy(config, out, cores=opts.proxy_core) as proxy:
                (key,) = stack.create_keys(proxy.url, master, 1, "streams", rpm_limit=10**9)
                pid = proxy.process.pid
                load(proxy.port, key, _small(opts), lambda: None)  # warm-up: pools, caches
                time.sleep(1.0)
                idle_mb, cpu0, t0 = stack.tree_rss_mb(pid), stack.tree_cpu_seconds(pid), time.time()
                peak: dict[str, float] = {}

                def all_open() -> None:
                    # The proxy's own gauge says how many streams it relays: sample RSS at
                    # its peak (all of them, or the most before the first ones end).
                    peak.update(streams_open=0.0, rss_mb=idle_mb)
                    deadline = time.monotonic() + opts.chunks / opts.tokens_per_s
                    while time.monotonic() < deadline:
                        gauges = stack.scrape(proxy.url, ["llm_proxy_streams_open"])
                        now_open = gauges["llm_proxy_streams_open"]
                        if now_open < 0.95 * peak["streams_open"]:
                            return  # past the peak: streams are finishing
                        if now_open >= peak["streams_open"]:
                            peak.update(streams_open=now_open, rss_mb=stack.tree_rss_mb(pid))
                        if now_open >= opts.streams:
                            return
                        time.sleep(0.2)

                records = load(proxy.port, key, opts, all_open)
                cpu_s, wall_s = stack.tree_cpu_seconds(pid) - cpu0, time.time() - t0
                through = summarise(records, opts.chunks, interval, 1.0)
    finally:
        backends.cleanup()
    print(_describe("proxy", through))
    added = [p - d for p, d in zip(through.delay_ms, direct.delay_ms, strict=True)]
    per_stream_kb = (peak["rss_mb"] - idle_mb) * 1024 / max(1.0, peak["streams_open"])
    result = {
        "streams": opts.streams,
        "chunks": opts.chunks,
        "tokens_per_s": opts.tokens_per_s,
        "fd_limit": limit,
        "direct": direct.delay_ms,
        "proxy": through.delay_ms,
        "added_ms_p50_p95_p99_max": [round(a, 2) for a in added],
        "proxy_rss_idle_mb": round(idle_mb, 1),
        "proxy_rss_all_open_mb": round(peak["rss_mb"], 1),
        "streams_open_gauge": peak["streams_open"],
        "kb_per_stream": round(per_stream_kb, 1),
        "proxy_cpu_millicores": round(cpu_s / wall_s * 1000),
        "complete": through.complete,
        "stalled": through.stalled,
        "longest_gap_s": round(through.max_gap_s, 3),
    }
    (out / "streams.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"memory: {idle_mb:.0f} MB idle -> {peak['rss_mb']:.0f} MB with "
        f"{peak['streams_open']:.0f} streams open = {per_stream_kb:.1f} KB per stream\n"
        f"chunk lateness added by the proxy p50/p95/p99/max: "
        + "/".join(f"{a:+.1f}" for a in added)
        + f" ms\nproxy CPU {result['proxy_cpu_millicores']} millicores over {wall_s:.0f} s; "
        f"results: {out}"
    )
    ok = direct.ok and through.ok
    print("OK: every stream complete, none stalled" if ok else "FAILED: streams lost or stalled")
    return 0 if ok else 1


def _small(opts: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(opts), "streams": 20, "chunks": 2})


if __name__ == "__main__":
    sys.exit(main())
