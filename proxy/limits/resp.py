"""A lean Redis client for the limiter's hot path: one pipelined connection, hiredis in C.

redis-py's asyncio client costs ~100 µs of Python per command (connection checkout, retry
wrapper, response callbacks, a timeout context); the limiter makes two commands per request,
which made keys with limits cost more than the whole rest of the proxy (bench/README.md).
This client packs commands with ``hiredis.pack_command``, writes them straight to one
kept-open connection (requests pipeline: many may be in flight, replies come back in
order), parses replies with ``hiredis.Reader``, and checks one deadline timer per connection
instead of a timeout object per call. A dead or slow connection fails every waiting call
with ``RespUnavailableError`` and is replaced on the next call.

``rediss://`` URLs get TLS with the options in the URL query (CA file, client certificate,
hostname check; proxy/tls.py), set up once per client: the per-call path is the same.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

from proxy.tls import redis_ssl_context


class RespUnavailableError(Exception):
    """The connection failed, timed out, or could not be made."""


class RespReplyError(Exception):
    """Redis answered with an error reply (e.g. NOSCRIPT, WRONGTYPE)."""


class _Connection(asyncio.Protocol):
    def __init__(self, client: RespClient) -> None:
        self._client = client
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RespUnavailableError(f"redis: bad reply: {exc}"))
                return
            if reply is False:
                return
            if not self.waiters:
                self.fail(RespUnavailableError("redis: a reply nobody asked for"))
                return
            _, future = self.waiters.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RespReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RespUnavailableError(f"redis: connection lost: {exc}"))

    def fail(self, exc: Exception) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        while self.waiters:
            _, future = self.waiters.popleft()
            if not future.done():
                future.set_exception(exc)
        self._client.forget(self)


class RespClient:
    def __init__(self, url: str, *, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        # rediss://: verified TLS, options in the URL query (proxy/tls.py); made once here.
        self._ssl = redis_ssl_context(url)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        path = parts.path.lstrip("/")
        self._db = int(path) if path else 0
        self._timeout = timeout
        # Told each call's time and whether it succeeded (the latency metric), when set.
        self.observe: Callable[[float, bool], None] | None = None
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._scripts: dict[str, bytes] = {}

    def forget(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(self)
        try:
            async with asyncio.timeout(self._timeout):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
                self._conn = conn
                if self._password is not None:
                    auth = (self._username, self._password) if self._username else (self._password,)
                    await self._send(conn, ("AUTH", *auth))
                if self._db:
                    await self._send(conn, ("SELECT", self._db))
        except (OSError, TimeoutError, RespReplyError) as exc:
            conn.fail(RespUnavailableError(f"redis: cannot connect: {exc!r}"))
            raise RespUnavailableError(f"redis: cannot connect to {self._host}: {exc!r}") from exc
        return conn

    def _send(self, conn: _Connection, args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if conn.closed or conn.transport is None:
            future.set_exception(RespUnavailableError("redis: connection closed"))
            return future
        conn.waiters.append((loop.time(), future))
        conn.transport.write(hiredis.pack_command(tuple(args)))
        if self._timer is None:
            self._timer = loop.call_later(self._timeout, self._check_deadline)
        return future

    def _check_deadline(self) -> None:
        """One timer per client: fail the connection when its oldest call is overdue."""
        self._timer = None
        conn = self._conn
        if conn is None or not conn.waiters:
            return
        loop = asyncio.get_running_loop()
        oldest = conn.waiters[0][0]
        if loop.time() - oldest >= self._timeout:
            conn.fail(RespUnavailableError("redis: no reply in time"))
            return
        self._timer = loop.call_at(oldest + self._timeout, self._check_deadline)

    async def call(self, *args: Any) -> Any:
        conn = await self._connection()
        observe = self.observe
        if observe is None:
            return await self._send(conn, args)
        started = time.perf_counter()
        try:
            reply = await self._send(conn, args)
        except BaseException:
            observe(time.perf_counter() - started, False)
            raise
        observe(time.perf_counter() - started, True)
        return reply

    def script_sha(self, script: str) -> str:
        sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self._scripts[sha] = script.encode()
        return sha

    async def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA, loading the script once when Redis does not know it (NOSCRIPT)."""
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        try:
            return await self.call(*command)
        except RespReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.call("SCRIPT", "LOAD", self._scripts[sha])
        return await self.call(*command)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._conn is not None:
            self._conn.fail(RespUnavailableError("redis: client closed"))
