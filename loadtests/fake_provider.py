"""A fake OpenAI provider for load tests that behaves like a real one, only cheaper.

Time to first token (``--ttft-ms``), a steady generation rate (``--tokens-per-s``), a
share of injected failures (``--error-rate``, ``--error-status``), and OpenAI's JSON, SSE
and embeddings shapes. Built to carry far more than one proxy worker: a raw asyncio
Protocol on uvloop with the httptools parser, HTTP/1.1 keep-alive, and ``--processes``
forked servers sharing one listening socket.

    POST /v1/chat/completions   JSON after TTFT + tokens / rate, or SSE: the first token
                                at TTFT, then one event per token on a fixed schedule
    POST /v1/embeddings         after --embedding-ms, one fixed vector per input
    GET  /health                200

``--stamp`` makes each streamed token the wall-clock time it was written (``1700000000.123456
``), so a client can measure how late each chunk reaches it (bench/streams.py). Prints
``LISTENING <port>`` once every process serves.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import signal
import socket
import time
from dataclasses import dataclass
from typing import cast

import httptools
import msgspec
import uvloop

from loadtests import replies


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    ttft_ms: float = 300.0
    tokens_per_s: float = 50.0
    output_tokens: int = 64  # per completion, unless the request's max_tokens is lower
    error_rate: float = 0.0
    error_status: int = 500
    embedding_ms: float = 30.0
    embedding_dims: int = 256
    stamp: bool = False


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}


def _head(status: int, content_type: str, length: int | None) -> bytes:
    reason = _REASONS.get(status, "Internal Server Error" if status >= 500 else "Error")
    size = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n{size}\r\n"
        "x-request-id: req_loadtest\r\n\r\n"
    ).encode()


def _full(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    return _head(status, content_type, len(body)) + body


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class ProviderProtocol(asyncio.Protocol):
    """One client connection; requests are answered in order (no pipelining needed)."""

    def __init__(self, config: ProviderConfig, vector: list[float]) -> None:
        self.config = config
        self.vector = vector
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.previous: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(_full(400, replies.error_body(400, "unparseable HTTP request")))
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        url, body = self.url, b"".join(self.body)
        method = self.parser.get_method()
        self.url, self.body = b"", []
        previous = self.previous
        self.previous = asyncio.ensure_future(self._answer(previous, method, url, body))

    def _write(self, data: bytes) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    async def _answer(
        self, previous: asyncio.Task[None] | None, method: bytes, url: bytes, body: bytes
    ) -> None:
        if previous is not None:
            await previous
        path = url.split(b"?", 1)[0]
        if method == b"GET" and path == b"/health":
            self._write(_full(200, b"ok", "text/plain"))
        elif method != b"POST" or path not in (b"/v1/chat/completions", b"/v1/embeddings"):
            self._write(_full(404, replies.error_body(404, f"no route {path.decode()}")))
        elif self.config.error_rate and random.random() < self.config.error_rate:
            status = self.config.error_status
            self._write(_full(status, replies.error_body(status, "injected failure")))
        elif path == b"/v1/embeddings":
            await self._embeddings(body)
        else:
            await self._chat(body)

    async def _embeddings(self, body: bytes) -> None:
        try:
            view = replies.EMBEDDINGS_DECODER.decode(body)
        except msgspec.DecodeError as exc:
            self._write(_full(400, replies.error_body(400, str(exc))))
            return
        await asyncio.sleep(self.config.embedding_ms / 1000)
        tokens = replies.prompt_tokens(body)
        self._write(_full(200, replies.embeddings(view, self.vector, tokens)))

    async def _chat(self, body: bytes) -> None:
        try:
            view = replies.CHAT_DECODER.decode(body)
        except msgspec.DecodeError as exc:
            self._write(_full(400, replies.error_body(400, str(exc))))
            return
        usage = replies.Usage(
            replies.prompt_tokens(body), replies.output_tokens(view, self.config.output_tokens)
        )
        ident = f"chatcmpl-{os.urandom(12).hex()}"
        created = int(time.time())
        if not view.stream:
            gen_s = (usage.completion_tokens - 1) / self.config.tokens_per_s
            await asyncio.sleep(self.config.ttft_ms / 1000 + gen_s)
            self._write(_full(200, replies.chat_completion(ident, view.model, created, usage)))
            return
        await self._stream(view, usage, ident, created)

    async def _stream(
        self, view: replies.ChatView, usage: replies.Usage, ident: str, created: int
    ) -> None:
        loop = asyncio.get_running_loop()
        self._write(_head(200, "text/event-stream", None))
        # An absolute schedule, so the rate holds however late one wake-up was.
        start = loop.time() + self.config.ttft_ms / 1000
        for i in range(usage.completion_tokens):
            delay = start + i / self.config.tokens_per_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            text = f"{time.time():.6f} " if self.config.stamp else replies.token_text(i)
            event = replies.content_event(ident, view.model, created, text, first=i == 0)
            if not self._write(_chunked(event)):
                return  # the client went away
        tail = replies.finish_event(ident, view.model, created)
        if view.stream_options is not None and view.stream_options.include_usage:
            tail += replies.usage_event(ident, view.model, created, usage)
        self._write(_chunked(tail + replies.DONE_EVENT) + b"0\r\n\r\n")


def serve(sock: socket.socket, config: ProviderConfig) -> None:
    """Serve on an already listening socket until SIGTERM or SIGINT."""
    uvloop.install()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        vector = replies.embedding_vector(config.embedding_dims)
        server = await loop.create_server(
            lambda: ProviderProtocol(config, vector), sock=sock, backlog=4096
        )
        async with server:
            await stop.wait()

    asyncio.run(main())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--processes", type=int, default=1)
    defaults = ProviderConfig()
    parser.add_argument("--ttft-ms", type=float, default=defaults.ttft_ms)
    parser.add_argument("--tokens-per-s", type=float, default=defaults.tokens_per_s)
    parser.add_argument("--output-tokens", type=int, default=defaults.output_tokens)
    parser.add_argument("--error-rate", type=float, default=defaults.error_rate)
    parser.add_argument("--error-status", type=int, default=defaults.error_status)
    parser.add_argument("--embedding-ms", type=float, default=defaults.embedding_ms)
    parser.add_argument("--embedding-dims", type=int, default=defaults.embedding_dims)
    parser.add_argument("--stamp", action="store_true", help="tokens are send timestamps")
    return parser


def config_from_args(args: argparse.Namespace) -> ProviderConfig:
    if not 0.0 <= args.error_rate <= 1.0:
        raise SystemExit(f"--error-rate: expected 0..1, got {args.error_rate}")
    if args.tokens_per_s <= 0 or args.output_tokens < 1 or args.embedding_dims < 1:
        raise SystemExit("--tokens-per-s, --output-tokens and --embedding-dims must be positive")
    return ProviderConfig(
        ttft_ms=args.ttft_ms,
        tokens_per_s=args.tokens_per_s,
        output_tokens=args.output_tokens,
        error_rate=args.error_rate,
        error_status=args.error_status,
        embedding_ms=args.embedding_ms,
        embedding_dims=args.embedding_dims,
        stamp=args.stamp,
    )


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    config = config_from_args(args)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    sock.setblocking(False)
    # Forked servers share the listening socket; the kernel spreads connections over them.
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=serve, args=(sock, config), daemon=True)
        for _ in range(args.processes - 1)
    ]
    for worker in workers:
        worker.start()
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    try:
        serve(sock, config)
    finally:
        for worker in workers:
            worker.terminate()
            worker.join(5)


if __name__ == "__main__":
    main()
