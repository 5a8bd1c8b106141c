"""A lean Redis client for the limiter's hot path: one pipelined connection, hiredis in C.

redis-py's asyncio client costs ~100 µs of Python per command (connection checkout, retry
wrapper, response callbacks, a timeout context); the limiter makes two commands per request,
which made keys with limits cost more than the whole rest of the proxy (bench/README.md).
This client packs commands with ``hiredis.pack_command``, writes them straight to one
kept-open connection (requests pipeline: many may be in flight, replies come back in
order), parses replies with ``hiredis.Reader``, and checks one deadline timer per connection
instead of a timeout object per call. A dead or slow connection fails every waiting call
with ``RespUnavailableError`` and is replaced on the next call.

Commands nobody waits on (the limiter's settles) are sent with ``send_later``: they ride
along with the next write, or go out on their own within ``LATER_SECONDS``, so under load
they cost no write (no syscall) of their own and the caller never suspends.

``rediss://`` URLs get TLS with the options in the URL query (CA file, client certificate,
hostname check; proxy/tls.py), set up once per client: the per-call path is the same.

``set_redis_url`` (secret rotation) takes new connection details for the NEXT connection.
The open one is retired, not cut: it takes no new calls and closes once the replies it owes
have arrived (or fails as any connection would), so no accepted call is dropped. A
connection still being made with the old details is not handed out: its callers wait for
one made with the new details.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import hiredis

from proxy.tls import redis_ssl_context

# How long a ``send_later`` command may wait for another command's write to ride along with.
LATER_SECONDS: Final = 0.002


class RespUnavailableError(Exception):
    """The connection failed, timed out, or could not be made."""


class RespReplyError(Exception):
    """Redis answered with an error reply (e.g. NOSCRIPT, WRONGTYPE)."""


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """Where and as whom to connect: everything a ``redis://`` / ``rediss://`` URL says."""

    host: str
    port: int
    ssl: SSLContext | None
    username: str | None
    password: str | None
    db: int

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        """ValueError for anything but a usable Redis URL (its TLS files are loaded here)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis:// or rediss:// URL (scheme {parts.scheme!r})")
        path = parts.path.lstrip("/")
        if path and not path.isdigit():
            raise ValueError(f"the database in a Redis URL is a number, got {path!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            # rediss://: verified TLS, options in the URL query (proxy/tls.py); made once here.
            ssl=redis_ssl_context(url),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            db=int(path) if path else 0,
        )


class _Connection(asyncio.Protocol):
    def __init__(self, client: RespClient) -> None:
        self._client = client
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self.closed = False
        self.retiring = False  # closes once the replies it owes have come
        # Commands sent in one pass of the event loop go out in one write (one syscall):
        # under load many requests ask Redis in the same pass.
        self._out: list[bytes] = []
        self._flush_soon = False  # a flush is scheduled for this loop pass
        self._flush_later = False  # a flush is scheduled LATER_SECONDS on

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
                if self.retiring and not self.waiters:
                    self.close()
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

    def write(self, command: bytes, *, later: bool = False) -> None:
        """Buffer ``command``; it goes out this loop pass, or, ``later``, with the next
        write or within LATER_SECONDS."""
        self._out.append(command)
        if later:
            if not self._flush_later and not self._flush_soon:
                self._flush_later = True
                asyncio.get_running_loop().call_later(LATER_SECONDS, self._flush_by_timer)
        elif not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush_by_timer(self) -> None:
        self._flush_later = False
        self._flush()

    def _flush(self) -> None:
        # A timer left behind by a flush that came sooner finds nothing, or later commands.
        self._flush_soon = False
        out, self._out = self._out, []
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RespUnavailableError(f"redis: connection lost: {exc}"))

    def retire(self) -> None:
        """Take no new calls; close once every reply owed has arrived."""
        self.retiring = True
        if not self.waiters:
            self.close()

    def close(self) -> None:
        """Close after writing what is buffered (a retired connection owes nothing)."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()  # connection_lost follows and forgets it

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
        self._endpoint = _Endpoint.parse(url)
        self._timeout = timeout
        # Told each call's time and whether it succeeded (the latency metric), when set.
        self.observe: Callable[[float, bool], None] | None = None
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        # Every open connection: the current one, one being made, retired ones still owing
        # replies. The deadline timer watches them all.
        self._open: set[_Connection] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._scripts: dict[str, bytes] = {}

    def set_redis_url(self, url: str) -> None:
        """Connect with ``url``'s details from the next connection on (see the docstring).

        ValueError, before anything changes, when ``url`` is not a usable Redis URL.
        """
        self._endpoint = _Endpoint.parse(url)
        conn, self._conn, self._connecting = self._conn, None, None
        if conn is not None:
            conn.retire()

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if self._conn is conn:
            self._conn = None

    async def _connection(self) -> _Connection:
        while True:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            # A connection under way always uses the current details (set_redis_url drops it).
            endpoint = self._endpoint
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect(endpoint))
            connecting = self._connecting
            try:
                conn = await asyncio.shield(connecting)
            except RespUnavailableError:
                if endpoint is self._endpoint:
                    raise
                continue  # the old details failed, but new ones came meanwhile: try those
            finally:
                if self._connecting is connecting and connecting.done():
                    self._connecting = None
            if endpoint is self._endpoint:
                return conn  # if it was lost meanwhile, the call fails like any other
            # set_redis_url came while it was being made: it was closed unused; go again.

    async def _connect(self, endpoint: _Endpoint) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(self)
        self._open.add(conn)
        try:
            async with asyncio.timeout(self._timeout):
                await loop.create_connection(
                    lambda: conn,
                    endpoint.host,
                    endpoint.port,
                    ssl=endpoint.ssl,
                    server_hostname=endpoint.host if endpoint.ssl else None,
                )
                if endpoint.password is not None:
                    user = (endpoint.username,) if endpoint.username else ()
                    await self._send(conn, ("AUTH", *user, endpoint.password))
                if endpoint.db:
                    await self._send(conn, ("SELECT", endpoint.db))
        except (OSError, TimeoutError, RespReplyError, RespUnavailableError) as exc:
            conn.fail(RespUnavailableError(f"redis: cannot connect: {exc!r}"))
            raise RespUnavailableError(
                f"redis: cannot connect to {endpoint.host}: {exc!r}"
            ) from exc
        if endpoint is not self._endpoint:
            conn.retire()  # details rotated while connecting; nobody has used it
        else:
            self._conn = conn
        return conn

    def _send(
        self, conn: _Connection, args: Sequence[Any], *, later: bool = False
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if conn.closed or conn.transport is None:
            future.set_exception(RespUnavailableError("redis: connection closed"))
            return future
        conn.waiters.append((loop.time(), future))
        conn.write(hiredis.pack_command(tuple(args)), later=later)
        if self._timer is None:
            self._timer = loop.call_later(self._timeout, self._check_deadline)
        return future

    def _check_deadline(self) -> None:
        """One timer per client: fail each connection whose oldest call is overdue."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now, next_check = loop.time(), None
        for conn in list(self._open):
            if not conn.waiters:
                continue
            due = conn.waiters[0][0] + self._timeout
            if now >= due:
                conn.fail(RespUnavailableError("redis: no reply in time"))
            elif next_check is None or due < next_check:
                next_check = due
        if next_check is not None:
            self._timer = loop.call_at(next_check, self._check_deadline)

    async def call(self, *args: Any) -> Any:
        return await self._call(args)

    async def _call(self, args: Sequence[Any]) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
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

    def send_later(self, *args: Any) -> asyncio.Future[Any]:
        """Queue a command without waiting for it (see the module docstring); its reply, or
        its RespUnavailableError / RespReplyError, arrives in the returned future.

        Not timed by ``observe``, which times the calls someone waits on."""
        conn = self._conn
        if conn is None or conn.closed:
            # No connection to write to now: make one, as ``call`` does (rare).
            return asyncio.ensure_future(self.call(*args))
        return self._send(conn, args, later=True)

    def script_sha(self, script: str) -> str:
        sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self._scripts[sha] = script.encode()
        return sha

    async def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA, loading the script once when Redis does not know it (NOSCRIPT)."""
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        try:
            return await self._call(command)
        except RespReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._call(("SCRIPT", "LOAD", self._scripts[sha]))
        return await self._call(command)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for conn in list(self._open):
            conn.fail(RespUnavailableError("redis: client closed"))
