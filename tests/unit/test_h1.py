"""The lean HTTP/1.1 client: keep-alive, limits, framing, timeouts, error mapping."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeoutError
from proxy.h1 import H1Pool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A scripted upstream that counts its connections and concurrent ones."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.active = 0
        self.peak = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length)


def reply(body: bytes, *extra: bytes) -> bytes:
    headers = b"".join(h + b"\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), headers, body)


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        body = await read_request(reader)
        writer.write(reply(body))
        await writer.drain()


@pytest.fixture
async def echo() -> AsyncIterator[Server]:
    async with Server(echo_forever) as server:
        yield server


def pool_for(server: Server, limit: int = 8) -> H1Pool:
    return H1Pool(server.url, limit=limit, connect_timeout=2)


async def post(pool: H1Pool, body: bytes = b"{}", **timeouts: float | None) -> bytes:
    resp = await pool.request(
        "/v1/x",
        {"content-type": "application/json"},
        body,
        total_timeout=timeouts.get("total", 5.0),
        idle_timeout=timeouts.get("idle"),
    )
    return await resp.read()


async def test_keep_alive_reuses_one_connection(echo: Server) -> None:
    """Sequential requests share one kept-alive connection."""
    pool = pool_for(echo)
    for i in range(20):
        assert await post(pool, b"n%d" % i) == b"n%d" % i
    assert echo.connections == 1
    await pool.aclose()


async def test_limit_bounds_open_connections() -> None:
    """With limit 3, 30 concurrent requests never open more than 3 connections."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            await asyncio.sleep(0.01)
            writer.write(reply(body))

    async with Server(slow) as server:
        pool = pool_for(server, limit=3)
        results = await asyncio.gather(*(post(pool, b"%d" % i) for i in range(30)))
        assert results == [b"%d" % i for i in range(30)]
        assert server.peak <= 3
        assert pool.open_connections <= 3
        await pool.aclose()


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    """A request cancelled while queued for a connection gives its place back."""
    release = asyncio.Event()

    async def gated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            await release.wait()
            writer.write(reply(body))

    async with Server(gated) as server:
        pool = pool_for(server, limit=1)
        first = asyncio.create_task(post(pool, b"a"))
        queued = asyncio.create_task(post(pool, b"b"))
        await asyncio.sleep(0.05)
        queued.cancel()
        release.set()
        assert await first == b"a"
        assert await asyncio.wait_for(post(pool, b"c"), 2) == b"c"
        with pytest.raises(asyncio.CancelledError):
            await queued
        await pool.aclose()


async def test_stale_kept_alive_connection_is_retried_once() -> None:
    """An upstream that closed the idle connection costs a reconnect, not an error."""

    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        body = await read_request(reader)
        writer.write(reply(body))  # claims keep-alive, then closes after the first answer
        await writer.drain()
        await read_request(reader)  # read the second request and drop it unanswered

    async with Server(one_per_connection) as server:
        pool = pool_for(server)
        assert await post(pool, b"1") == b"1"
        assert await post(pool, b"2") == b"2"
        assert server.connections == 2
        await pool.aclose()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b"
        % (len(gzip.compress(b"hello world")), gzip.compress(b"hello world")),
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world",
    ],
    ids=["chunked", "gzip", "close-delimited"],
)
async def test_body_framings(response: bytes) -> None:
    """Chunked, gzip-encoded and close-delimited bodies are read whole."""

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()

    async with Server(once) as server:
        pool = pool_for(server)
        assert await post(pool) == b"hello world"
        await pool.aclose()


async def test_stream_chunks_arrive_as_sent() -> None:
    """A streamed body is delivered piece by piece, before the upstream has finished."""
    gate = asyncio.Event()

    async def streaming(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfirs\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"4\r\nlast\r\n0\r\n\r\n")
        await writer.drain()

    async with Server(streaming) as server:
        pool = pool_for(server)
        resp = await pool.request("/s", {}, b"", total_timeout=None, idle_timeout=5)
        pieces = resp.chunks()
        assert await anext(pieces) == b"firs"
        gate.set()
        assert await anext(pieces) == b"last"
        with pytest.raises(StopAsyncIteration):
            await anext(pieces)
        resp.release()
        await pool.aclose()


async def test_total_timeout() -> None:
    """A non-stream request that outlives its total timeout is a 504-class error."""

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async with Server(never) as server:
        pool = pool_for(server)
        with pytest.raises(UpstreamTimeoutError):
            await post(pool, total=0.2)
        await pool.aclose()


async def test_stream_idle_timeout() -> None:
    """A stream that goes silent longer than the idle timeout fails mid-way."""

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    async with Server(stall) as server:
        pool = pool_for(server)
        resp = await pool.request("/s", {}, b"", total_timeout=None, idle_timeout=0.2)
        pieces = resp.chunks()
        assert await anext(pieces) == b"hi"
        with pytest.raises(UpstreamTimeoutError):
            await anext(pieces)
        resp.close()
        await pool.aclose()


async def test_malformed_response_is_a_protocol_error() -> None:
    """Bytes that are not HTTP become an upstream protocol error."""

    async def nonsense(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with Server(nonsense) as server:
        pool = pool_for(server)
        with pytest.raises(UpstreamProtocolError):
            await post(pool)
        await pool.aclose()


async def test_connection_refused() -> None:
    """Nothing listening: a connect error naming the upstream."""
    pool = H1Pool("http://127.0.0.1:9", limit=1, connect_timeout=1)
    with pytest.raises(UpstreamConnectError, match=r"127\.0\.0\.1:9"):
        await post(pool)


async def test_request_head_is_encoded_once(echo: Server) -> None:
    """The head is built once per path and headers object, with Host and User-Agent."""
    pool = pool_for(echo)
    headers = {"authorization": "Bearer k"}
    head = pool.head("/v1/chat/completions", headers)
    assert pool.head("/v1/chat/completions", headers) is head
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"authorization: Bearer k\r\n" in head
    assert head.endswith(b"User-Agent: llm-proxy\r\nContent-Length: ")
