"""RespClient.set_redis_url against a scripted RESP server: nothing accepted is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import hiredis
import pytest

from proxy.limits.resp import RespClient, RespUnavailableError


@dataclass
class _Seen:
    """One connection as the server saw it: the commands, and whether the client closed it."""

    commands: list[list[bytes]] = field(default_factory=list)
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)


class ScriptedRedis:
    """Answers AUTH with OK and GET k with k; holds replies while ``hold`` is set."""

    def __init__(self) -> None:
        self.connections: list[_Seen] = []
        self.released = asyncio.Event()
        self.released.set()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedRedis:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = _Seen()
        self.connections.append(seen)
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                seen.commands.append(command)
                if command[0] == b"AUTH":
                    writer.write(b"+OK\r\n")
                else:
                    await self.released.wait()
                    writer.write(b"$%d\r\n%b\r\n" % (len(command[1]), command[1]))
                await writer.drain()
        seen.closed_by_client.set()
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[ScriptedRedis]:
    async with ScriptedRedis() as running:
        yield running


async def test_calls_in_flight_finish_on_the_old_connection(server: ScriptedRedis) -> None:
    """Replies owed on the old connection arrive; it is closed after them; later calls re-auth."""
    client = RespClient(server.url("u1", "p1"), timeout=5)
    try:
        assert await client.call("GET", "a") == b"a"
        server.released.clear()
        in_flight = [asyncio.ensure_future(client.call("GET", key)) for key in "bcd"]
        await asyncio.sleep(0)
        client.set_redis_url(server.url("u2", "p2"))
        later = asyncio.ensure_future(client.call("GET", "e"))
        await asyncio.sleep(0.01)  # let the new connection be made while the old one waits
        assert not server.connections[0].closed_by_client.is_set()
        server.released.set()
        assert await asyncio.gather(*in_flight, later) == [b"b", b"c", b"d", b"e"]
        await server.connections[0].closed_by_client.wait()
        old, new = (seen.commands for seen in server.connections)
        assert old == [[b"AUTH", b"u1", b"p1"], *([b"GET", k] for k in (b"a", b"b", b"c", b"d"))]
        assert new == [[b"AUTH", b"u2", b"p2"], [b"GET", b"e"]]
    finally:
        await client.aclose()


async def test_an_idle_connection_is_closed_at_once(server: ScriptedRedis) -> None:
    """With no reply owed, the old connection closes when the details change."""
    client = RespClient(server.url("u1", "p1"), timeout=5)
    try:
        assert await client.call("GET", "a") == b"a"
        client.set_redis_url(server.url("u2", "p2"))
        await server.connections[0].closed_by_client.wait()
        assert await client.call("GET", "b") == b"b"
        assert server.connections[1].commands[0] == [b"AUTH", b"u2", b"p2"]
    finally:
        await client.aclose()


async def test_a_silent_old_connection_still_times_out(server: ScriptedRedis) -> None:
    """A retired connection that never answers fails its calls within the timeout."""
    client = RespClient(server.url("u1", "p1"), timeout=0.2)
    try:
        assert await client.call("GET", "a") == b"a"
        server.released.clear()
        stuck = asyncio.ensure_future(client.call("GET", "b"))
        await asyncio.sleep(0)
        client.set_redis_url(server.url("u2", "p2"))
        with pytest.raises(RespUnavailableError, match="no reply in time"):
            await stuck
    finally:
        server.released.set()
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://u:secret-pw@127.0.0.1:6379/0", "scheme"),
        ("redis://u:secret-pw@127.0.0.1:6379/zero", "database"),
        ("rediss://u:secret-pw@127.0.0.1/0?ssl_cert_reqs=x", "ssl_cert_reqs"),
    ],
)
async def test_an_unusable_url_is_refused_and_changes_nothing(
    server: ScriptedRedis, url: str, problem: str
) -> None:
    """ValueError, naming no secret, and the client goes on with its old details."""
    client = RespClient(server.url("u1", "p1"), timeout=5)
    try:
        assert await client.call("GET", "a") == b"a"
        with pytest.raises(ValueError, match=problem) as raised:
            client.set_redis_url(url)
        assert "secret-pw" not in str(raised.value)
        assert await client.call("GET", "b") == b"b"
        assert len(server.connections) == 1
    finally:
        await client.aclose()


async def test_send_later_rides_along_with_the_next_call(server: ScriptedRedis) -> None:
    """A command nobody waits on goes out in the same write as the next call, in order."""
    client = RespClient(server.url("u", "p"), timeout=5)
    try:
        assert await client.call("GET", "a") == b"a"
        conn = client._conn
        assert conn is not None and conn.transport is not None
        writes: list[bytes] = []
        write = conn.transport.write

        def counting(data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            write(data)

        conn.transport.write = counting  # type: ignore[method-assign]
        settled = client.send_later("GET", "b")
        assert await client.call("GET", "c") == b"c"
        assert await settled == b"b"
        assert len(writes) == 1 and writes[0].index(b"b\r\n") < writes[0].index(b"c\r\n")
    finally:
        await client.aclose()


async def test_send_later_alone_goes_out_by_itself(server: ScriptedRedis) -> None:
    """With no other call to ride along with, it is sent within LATER_SECONDS."""
    client = RespClient(server.url("u", "p"), timeout=5)
    try:
        assert await client.call("GET", "a") == b"a"
        assert await asyncio.wait_for(client.send_later("GET", "b"), timeout=1) == b"b"
        # With no connection yet, one is made for it.
        fresh = RespClient(server.url("u", "p"), timeout=5)
        try:
            assert await asyncio.wait_for(fresh.send_later("GET", "z"), timeout=1) == b"z"
        finally:
            await fresh.aclose()
    finally:
        await client.aclose()


async def test_send_later_fails_when_the_server_is_silent(server: ScriptedRedis) -> None:
    """Its future carries the timeout like any call's."""
    client = RespClient(server.url("u", "p"), timeout=0.2)
    try:
        assert await client.call("GET", "a") == b"a"
        server.released.clear()
        with pytest.raises(RespUnavailableError, match="in time"):
            await asyncio.wait_for(client.send_later("GET", "b"), timeout=2)
    finally:
        server.released.set()
        await client.aclose()
