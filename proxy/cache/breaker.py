"""``CircuitBreaker``: after a few failures in a row, stop using the cache store for a while.

::

    closed ──(threshold failures in a row)──▶ open ──(retry_interval passed)──▶ one probe
      ▲                                                                           │
      └───────────────────────────── probe answered ◀─────────────────────────────┘
                                     probe failed: open for another retry_interval

While open, a cache operation costs one comparison: no connection attempt, no timeout to
wait for. The probe runs as a background task started by the first operation after the
interval, so no request ever waits for it; nothing runs while the cache is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("llm_proxy")


class CircuitBreaker:
    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        *,
        name: str,
        threshold: int = 3,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or retry_interval <= 0:
            raise ValueError("threshold must be at least 1 and retry_interval positive")
        self.name = name
        self.threshold = threshold
        self.retry_interval = retry_interval
        self.failures = 0  # in a row
        self.opened_total = 0
        self._probe = probe
        self._clock = clock
        self._retry_at: float | None = None  # None: closed
        self._probe_task: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        return self._retry_at is not None

    def allow(self) -> bool:
        """True when the caller may use the store; starts the probe once the interval is up."""
        if self._retry_at is None:
            return True
        if self._probe_task is None and self._clock() >= self._retry_at:
            self._probe_task = asyncio.get_running_loop().create_task(
                self._run_probe(), name=f"{self.name}-probe"
            )
        return False

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, reason: object) -> None:
        self.failures += 1
        if self._retry_at is None and self.failures >= self.threshold:
            self._retry_at = self._clock() + self.retry_interval
            self.opened_total += 1
            log.warning("%s unavailable (%s); bypassing it until it answers", self.name, reason)

    async def aclose(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_probe(self) -> None:
        try:
            await self._probe()
        except Exception:  # still down: the probe maps nothing, any failure counts
            self._retry_at = self._clock() + self.retry_interval
        else:
            self._retry_at = None
            self.failures = 0
            log.info("%s is back; using it again", self.name)
        finally:
            self._probe_task = None
