"""A TCP proxy in front of a real server that fails on demand, including by going silent.

Unlike tests/support/fault_proxy.py (cut = stop listening), this one can ``stall`` (a
black-holed server: connections open, no bytes flow, clients time out), keeps accepting
while ``cut`` (so connection attempts are counted) and counts the bytes clients send:
what the circuit-breaker tests measure. It runs its own event loop in a thread::

    with FaultProxy("127.0.0.1", 6379) as proxy:
        url = proxy.url_for("redis://127.0.0.1:6379/0")   # same URL, through the proxy
        proxy.stall()    # connections stay open, nothing flows: clients time out
        proxy.cut()      # open connections are closed, new ones closed on accept
        proxy.heal()     # forward again
        proxy.accepted, proxy.bytes_in   # what clients attempted
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future
from types import TracebackType
from typing import Literal, Self
from urllib.parse import urlsplit

Mode = Literal["forward", "stall", "cut"]


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self.mode: Mode = "forward"
        self.port = 0
        self.accepted = 0  # connections clients opened
        self.bytes_in = 0  # bytes clients sent

    def __enter__(self) -> Self:
        self._thread.start()
        self.port = self._run(self._start()).result(timeout=5)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._run(self._stop()).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        return urlsplit(url)._replace(netloc=f"127.0.0.1:{self.port}").geturl()

    def stall(self) -> None:
        self._set("stall")

    def cut(self) -> None:
        self._set("cut")

    def heal(self) -> None:
        self._set("forward")

    def _set(self, mode: Mode) -> None:
        self._run(self._apply(mode)).result(timeout=5)

    def _run(self, coro: object) -> Future[int]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]

    async def _apply(self, mode: Mode) -> int:
        self.mode = mode
        if mode == "forward":
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode == "cut":
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()
        return 0

    async def _start(self) -> int:
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> int:
        if self._server is not None:
            self._server.close()
        await self._apply("cut")
        self._flowing.set()  # let held pumps see the cut and finish
        await asyncio.sleep(0.01)
        return 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "cut":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pump(reader, up_writer, count=True),
            self._pump(up_reader, writer, count=False),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if count:
                    self.bytes_in += len(data)
                await self._flowing.wait()  # stalled: hold the bytes, forward nothing
                if self.mode == "cut":
                    break
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
