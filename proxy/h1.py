"""A lean HTTP/1.1 client for the upstream hot path: uvloop transports + httptools parser.

Why not aiohttp: under load aiohttp's request machinery (header multidicts, auto headers,
timer objects, payload writers) costs ~190 µs of CPU per request, most of the proxy's budget.
This client does only what forwarding needs: one pre-encoded request head per upstream URL,
one write per request, the response parsed by httptools (C), kept-alive connections in a
LIFO pool with a hard limit and FIFO waiters (backpressure), TLS through the event loop,
gzip/deflate bodies decoded, and three timeouts: connect, whole request (non-stream), and the
longest silence between two chunks (streams). It is part of the upstream edge, so it raises
the proxy's upstream errors directly (connect 502, timeout 504, protocol 502).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import urlsplit

import httptools

from proxy.errors import UpstreamConnectError as H1ConnectError
from proxy.errors import UpstreamProtocolError as H1ProtocolError
from proxy.errors import UpstreamTimeoutError as H1TimeoutError

_HIGH_WATER = 512 * 1024  # pause reading a stream whose client falls this far behind
_LOW_WATER = 64 * 1024
_USER_AGENT = b"llm-proxy"


def _no_queue(delta: int) -> None:
    pass


class H1Response:
    """One response, filled by its connection's parser callbacks."""

    __slots__ = (
        "_buffer",
        "_conn",
        "_decoder",
        "_error",
        "_length_known",
        "_raw_headers",
        "_size",
        "_waiter",
        "complete",
        "got_bytes",
        "headers",
        "headers_done",
        "keep_alive",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._buffer: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._decoder: zlib._Decompress | None = None
        self._length_known = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False

    # -- called by the connection -------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_headers(self, status: int) -> None:
        self.status = status
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._raw_headers}
        self.headers = headers
        encoding = headers.get("content-encoding", "")
        if encoding in ("gzip", "deflate"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)
        self._length_known = "content-length" in headers or "chunked" in headers.get(
            "transfer-encoding", ""
        )
        self.headers_done = True
        self._wake()

    def _on_body(self, data: bytes) -> None:
        if self._decoder is not None:
            data = self._decoder.decompress(data)
        if data:
            self._buffer.append(data)
            self._size += len(data)
            if self._size > _HIGH_WATER:
                self._conn.pause()
            self._wake()

    def _on_complete(self, keep_alive: bool) -> None:
        self.complete = True
        self.keep_alive = keep_alive
        self._conn.stop_timer()
        self._wake()

    def _on_lost(self, exc: BaseException | None) -> None:
        if self.complete:
            return
        if self.headers_done and not self._length_known and exc is None:
            self._on_complete(keep_alive=False)  # a body delimited by the connection's end
            return
        self._fail(H1ProtocolError(f"the upstream closed the connection mid-response: {exc}"))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = exc
        self._wake()

    # -- the consumer's side ------------------------------------------------------------
    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = self._conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    async def wait_headers(self) -> None:
        while not self.headers_done:
            await self._wait()

    def _take(self) -> bytes:
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        self._conn.resume()
        return data

    async def read(self) -> bytes:
        try:
            while not self.complete:
                await self._wait()
            return self._take() if self._buffer else b""
        finally:
            self.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._buffer:
                yield self._take()
            elif self.complete:
                return
            else:
                await self._wait()

    def close(self) -> None:
        """Abandon the response: the connection is dropped, the upstream sees it go."""
        if self._conn.response is self:
            self._conn.discard()

    def release(self) -> None:
        if self._conn.response is not self:
            return  # released already; the connection may serve another request now
        if self.complete and self.keep_alive and self._error is None:
            self._conn.recycle()
        else:
            self._conn.discard()


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_deadline",
        "_idle_gap",
        "_last_data",
        "_paused",
        "_timer",
        "closed",
        "idle_since",
        "loop",
        "parser",
        "pool",
        "response",
        "transport",
    )

    def __init__(self, pool: H1Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: H1Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._idle_gap = 0.0
        self._last_data = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None:
            self.discard()  # bytes nobody asked for: the connection cannot be trusted
            return
        resp.got_bytes = True
        self._last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            resp._fail(H1ProtocolError(f"the upstream sent a malformed response: {exc}"))
            self.discard()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stop_timer()
        if self.response is not None:
            self.response._on_lost(exc)
        self.pool.forget(self)

    # -- httptools callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response._on_headers(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._on_body(body)

    def on_message_complete(self) -> None:
        # should_keep_alive() is only valid inside this callback.
        if self.response is not None:
            self.response._on_complete(self.parser.should_keep_alive())

    # -- flow control and timeouts --------------------------------------------------------
    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self._last_data = self.loop.time()  # a paused stream is not a silent upstream
            self.transport.resume_reading()

    def start_timer(self, total: float | None, idle_gap: float | None) -> None:
        now = self.loop.time()
        self._last_data = now
        self._deadline = now + total if total else 0.0
        self._idle_gap = idle_gap or 0.0
        first = min(x for x in (total, idle_gap) if x)
        self._timer = self.loop.call_at(now + first, self._check_timer)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timer(self) -> None:
        now = self.loop.time()
        due = []
        if self._deadline:
            due.append(self._deadline)
        if self._idle_gap:
            due.append(
                self._last_data + self._idle_gap if not self._paused else now + self._idle_gap
            )
        when = min(due)
        if now + 0.001 < when:
            self._timer = self.loop.call_at(when, self._check_timer)
            return
        self._timer = None
        if self.response is not None:
            self.response._fail(H1TimeoutError("the upstream did not answer in time"))
        self.discard()

    # -- pool membership ----------------------------------------------------------------
    def recycle(self) -> None:
        self.stop_timer()
        self.response = None
        if self.closed or self._paused:
            self.discard()
            return
        self.idle_since = time.monotonic()
        self.pool.give_back(self)

    def discard(self) -> None:
        self.stop_timer()
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()
            self.pool.forget(self)


class H1Pool:
    """Keep-alive connections to one origin, at most ``limit`` open at once."""

    def __init__(
        self,
        url: str,
        *,
        limit: int,
        connect_timeout: float,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        self._ssl = (ssl_context or ssl.create_default_context()) if self.tls else None
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.loop = asyncio.get_running_loop()
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._reserved = 0  # free slots promised to woken waiters that have not connected yet
        self._heads: dict[tuple[str, int], tuple[Mapping[str, str], bytes]] = {}
        self._on_queue = on_queue or _no_queue  # told +1/-1 as requests wait for a slot

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def head(self, path: str, headers: Mapping[str, str]) -> bytes:
        """The request head up to Content-Length, encoded once per (path, headers object)."""
        key = (path, id(headers))
        cached = self._heads.get(key)
        if cached is not None and cached[0] is headers:
            return cached[1]
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [
            f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")
        ]
        if not any(k.lower() == "user-agent" for k in headers):
            lines.append(f"User-Agent: {_USER_AGENT.decode()}")
        head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._heads[key] = (headers, head)  # keeps `headers` alive, so its id stays unique
        return head

    async def acquire(self) -> tuple[_Connection, bool]:
        """A connection and whether it was reused from the pool."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                return conn, True
            conn.discard()
        if len(self._open) + self._reserved >= self.limit:
            waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
            self._waiters.append(waiter)
            self._on_queue(1)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self.give_back(waiter.result())  # type: ignore[arg-type]
                elif waiter.done() and not waiter.cancelled():
                    self._reserved -= 1
                    self._wake_one()  # pass the free slot on
                raise
            finally:
                self._on_queue(-1)
            if handed is not None:
                return handed, True
            self._reserved -= 1
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        conn = _Connection(self)
        self._open.add(conn)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self.tls else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError as exc:
            self.forget(conn)
            raise H1TimeoutError(f"connecting to {self.host_header} timed out") from exc
        except OSError as exc:
            self.forget(conn)
            raise H1ConnectError(
                f"cannot connect to {self.host_header}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            self.forget(conn)
            raise
        return conn

    def give_back(self, conn: _Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._reserved += 1
                waiter.set_result(None)  # a slot is free: open a new connection
                return

    async def request(
        self,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        total_timeout: float | None,
        idle_timeout: float | None,
    ) -> H1Response:
        """Send one POST; return once the response headers are in."""
        head = self.head(path, headers)
        message = b"%b%d\r\n\r\n%b" % (head, len(body), body)
        if total_timeout is None and idle_timeout is None:
            raise ValueError("a request needs a total or an idle timeout")
        for attempt in (1, 2):
            conn, reused = await self.acquire()
            resp = H1Response(conn)
            conn.response = resp
            conn.start_timer(total_timeout, idle_timeout)
            assert conn.transport is not None
            conn.transport.write(message)
            try:
                await resp.wait_headers()
            except H1ProtocolError:
                # A kept-alive connection the upstream had already closed: nothing was
                # answered, so the request goes once more on a fresh connection.
                if reused and attempt == 1 and not resp.got_bytes:
                    conn.discard()
                    continue
                conn.discard()
                raise
            except BaseException:
                conn.discard()
                raise
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.discard()
        self._idle.clear()
