"""A fake OpenAI upstream built to be much faster than the proxy under test.

Raw asyncio Protocol on uvloop with the httptools request parser, HTTP/1.1 keep-alive,
and every response body built once at start-up, so a request costs one parse and one
write. Routes:

    POST /v1/chat/completions   chat.completion JSON, or SSE chat.completion.chunk events
                                when the body has "stream": true
    POST /v1/embeddings         a small embeddings list
    GET  /v1/models             two models
    GET  /health                200 "ok"

Every reply contains MARKER so a client can check it got this server's answer. The
streamed deltas join to exactly the non-stream message content.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import cast

import httptools
import orjson
import uvloop

MARKER = "FASTUPSTREAM"
MODEL = "gpt-4o-mini-2024-07-18"
FINGERPRINT = "fp_bench0001"
COMPLETION_ID = "chatcmpl-bench0000000000000000000001"
PROMPT_TOKENS = 31

# One regex each, compiled once: a bytes scan is all a request body gets.
STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
INCLUDE_USAGE_RE = re.compile(rb'"include_usage"\s*:\s*true')


def reply_pieces(chunks: int) -> list[str]:
    """The content deltas; joined they are the whole assistant message."""
    return [MARKER] + [f" token{i}" for i in range(1, chunks)]


def usage_object(chunks: int) -> dict[str, object]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": chunks,
        "total_tokens": PROMPT_TOKENS + chunks,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def http_response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"content-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n"
        "x-request-id: req_bench0001\r\n"
        "openai-processing-ms: 1\r\n"
        "\r\n"
    )
    return head.encode() + body


def json_response(obj: object, status: str = "200 OK") -> bytes:
    return http_response(status, "application/json", orjson.dumps(obj))


def chat_completion(chunks: int, created: int) -> bytes:
    return json_response(
        {
            "id": COMPLETION_ID,
            "object": "chat.completion",
            "created": created,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "".join(reply_pieces(chunks)),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage_object(chunks),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
    )


def sse_events(chunks: int, created: int, include_usage: bool) -> list[bytes]:
    """The SSE events of one streamed completion, in OpenAI's order and shape."""

    def chunk(choices: list[dict[str, object]], usage: object = None) -> bytes:
        obj: dict[str, object] = {
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        # OpenAI adds "usage": null to every chunk only when include_usage was asked.
        if include_usage:
            obj["usage"] = usage
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def choice(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    events = [chunk([choice({"role": "assistant", "content": "", "refusal": None})])]
    events += [chunk([choice({"content": piece})]) for piece in reply_pieces(chunks)]
    events.append(chunk([choice({}, "stop")]))
    if include_usage:
        events.append(chunk([], usage_object(chunks)))
    events.append(b"data: [DONE]\n\n")
    return events


def sse_response(events: list[bytes], split: bool) -> list[bytes]:
    """Chunked-encoded SSE reply: one piece per event when split, else a single piece."""
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: text/event-stream; charset=utf-8\r\n"
        b"transfer-encoding: chunked\r\n"
        b"cache-control: no-cache\r\n"
        b"x-request-id: req_bench0001\r\n"
        b"openai-processing-ms: 1\r\n"
        b"\r\n"
    )
    frames = [b"%x\r\n%b\r\n" % (len(e), e) for e in events]
    frames[0] = head + frames[0]
    frames[-1] += b"0\r\n\r\n"
    return frames if split else [b"".join(frames)]


@dataclass(frozen=True, slots=True)
class Replies:
    """Every response this server can send, as ready-to-write byte pieces."""

    chat: list[bytes]
    chat_stream: list[bytes]
    chat_stream_usage: list[bytes]
    embeddings: list[bytes]
    models: list[bytes]
    health: list[bytes]
    not_found: list[bytes]
    bad_request: list[bytes]
    latency_s: float
    chunk_delay_s: float

    @classmethod
    def build(cls, chunks: int, latency_ms: float, chunk_delay_ms: float) -> Replies:
        created = int(time.time())
        split = chunk_delay_ms > 0
        embeddings = {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": 0,
                    "embedding": [round(0.001 * i - 0.004, 6) for i in range(16)],
                }
            ],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }
        models = {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "system"}
                for m in ("gpt-4o-mini", "text-embedding-3-small")
            ],
        }

        def error(message: str, code: str) -> dict[str, object]:
            body = {"message": message, "type": "invalid_request_error", "param": None}
            return {"error": body | {"code": code}}

        return cls(
            chat=[chat_completion(chunks, created)],
            chat_stream=sse_response(sse_events(chunks, created, False), split),
            chat_stream_usage=sse_response(sse_events(chunks, created, True), split),
            embeddings=[json_response(embeddings)],
            models=[json_response(models)],
            health=[http_response("200 OK", "text/plain", b"ok")],
            not_found=[json_response(error("Unknown route", "not_found"), "404 Not Found")],
            bad_request=[
                json_response(error("Bad HTTP request", "bad_request"), "400 Bad Request")
            ],
            latency_s=latency_ms / 1000,
            chunk_delay_s=chunk_delay_ms / 1000,
        )

    def route(self, method: bytes, path: bytes, body: bytes) -> list[bytes]:
        if method == b"POST" and path == b"/v1/chat/completions":
            if STREAM_RE.search(body) is None:
                return self.chat
            if INCLUDE_USAGE_RE.search(body) is None:
                return self.chat_stream
            return self.chat_stream_usage
        if method == b"POST" and path == b"/v1/embeddings":
            return self.embeddings
        if method == b"GET" and path == b"/v1/models":
            return self.models
        if method == b"GET" and path == b"/health":
            return self.health
        return self.not_found


class UpstreamProtocol(asyncio.Protocol):
    """One connection: parse requests, answer them in order (pipelining safe)."""

    def __init__(self, replies: Replies, loop: asyncio.AbstractEventLoop) -> None:
        self.replies = replies
        self.loop = loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.queue: deque[tuple[list[bytes], bool]] = deque()
        self.busy = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.queue.append((self.replies.bad_request, False))
            if not self.busy:
                self.next_reply()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        pieces = self.replies.route(self.parser.get_method(), path, body)
        self.queue.append((pieces, self.parser.should_keep_alive()))
        if not self.busy:
            self.next_reply()

    # replying
    def next_reply(self) -> None:
        if not self.queue or self.transport is None:
            self.busy = False
            return
        self.busy = True
        pieces, keep_alive = self.queue.popleft()
        if self.replies.latency_s > 0:
            self.loop.call_later(self.replies.latency_s, self.send, pieces, 0, keep_alive)
        else:
            self.send(pieces, 0, keep_alive)

    def send(self, pieces: list[bytes], index: int, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.busy = False
            return
        transport.write(pieces[index])
        if index + 1 < len(pieces):
            delay = self.replies.chunk_delay_s
            self.loop.call_later(delay, self.send, pieces, index + 1, keep_alive)
            return
        if not keep_alive:
            transport.close()
            self.busy = False
            return
        self.next_reply()


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    replies = Replies.build(args.chunks, args.latency_ms, args.chunk_delay_ms)
    server = await loop.create_server(
        lambda: UpstreamProtocol(replies, loop),
        host=args.host,
        port=args.port,
        backlog=4096,
        reuse_address=True,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before a reply")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between events")
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
