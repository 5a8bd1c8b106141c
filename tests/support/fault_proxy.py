"""A TCP fault proxy: forwards to a real server and cuts connectivity on demand.

Put it between a client and PostgreSQL or Redis to test outages against the real server::

    async with FaultProxy("127.0.0.1", 5432) as proxy:
        store = PostgresStore(f"postgresql://root@127.0.0.1:{proxy.port}/test")
        await proxy.cut()      # open connections are reset, new ones refused
        ...
        await proxy.restore()  # accepted again, on the same port

Runs on the test's event loop; free of pytest so scripts can use it too.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Self

CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0  # chosen when started, kept across cut() and restore()
        self.connections_total = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def is_cut(self) -> bool:
        return self._server is None

    async def __aenter__(self) -> Self:
        await self.restore()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def restore(self) -> None:
        """Listen (again) on the proxy's port and forward new connections."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening (connects are refused) and reset every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()
        await asyncio.sleep(0)  # let the pipes see their sockets go

    async def aclose(self) -> None:
        """Cut, then wait for every connection handler to finish, so no socket outlives us."""
        await self.cut()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            return
        if self.is_cut:  # cut while we were connecting upstream
            up_writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._links.discard(link)
            up_writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with suppress(OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()  # one side gone: the other goes too, as a real cut would
