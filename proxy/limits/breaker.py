"""``CircuitBreaker``: after one failure, stop calling Redis until a background probe answers.

While open, a request costs one attribute read instead of a connection attempt or a
timeout; the probe (one PING per interval) closes it again without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class CircuitBreaker:
    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        *,
        interval: float,
        on_recover: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._probe = probe
        self._interval = interval
        self._on_recover = on_recover
        self._task: asyncio.Task[None] | None = None
        self.healthy = True

    def trip(self) -> None:
        """Mark the backend down and start probing it (once, however many callers fail)."""
        if not self.healthy:
            return
        self.healthy = False
        self._task = asyncio.get_running_loop().create_task(
            self._probe_until_healthy(), name="limits-redis-probe"
        )

    async def _probe_until_healthy(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._probe()
            except Exception:  # any failure means "still down"; the probe maps its own errors
                continue
            break
        self.healthy = True
        if self._on_recover is not None:
            await self._on_recover()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
