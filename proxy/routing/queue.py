"""Fair queuing in front of busy deployments, instead of a bare 429.

A deployment with ``max_parallel_requests`` admits that many requests at once; the next ones
wait in its queue. Waiters are served round-robin across keys: each key with someone waiting
gets one turn per round, so a key with fifty requests queued cannot starve a key with one.
A freed slot is handed straight to the next waiter (no barging by newcomers). A request that
waits longer than ``max_wait``, or finds ``max_depth`` requests already waiting for the
deployment, gets ``NoDeploymentAvailableError`` (429 with retry-after).

``wait_until`` is the same fairness for time instead of slots: requests that must wait for a
deployment's rpm window are let go, once it opens, one key at a time in round-robin order.

All of it runs on one event loop (one worker); nothing is shared between processes.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.errors import NoDeploymentAvailableError

if TYPE_CHECKING:
    from proxy.routing.router import Deployment
    from proxy.settings import RouterSettings

_Waiter = asyncio.Future[None]


@dataclass(slots=True)
class _Turns:
    """Waiters per key, keys in round-robin order (the next key to serve first)."""

    keys: OrderedDict[str, deque[tuple[float, _Waiter]]] = field(default_factory=OrderedDict)
    count: int = 0

    def add(self, key_id: str, waiter: _Waiter, when: float = 0.0) -> None:
        self.keys.setdefault(key_id, deque()).append((when, waiter))
        self.count += 1

    def forget(self, key_id: str, waiter: _Waiter) -> None:
        """Drop a waiter that gave up; it may already have been served."""
        queue = self.keys.get(key_id)
        if queue is None:
            return
        for item in queue:
            if item[1] is waiter:
                queue.remove(item)
                self.count -= 1
                if not queue:
                    del self.keys[key_id]
                return

    def serve(self, key_id: str) -> _Waiter:
        """The key's first waiter, out of the queue; the key goes to the end of the round."""
        queue = self.keys[key_id]
        _, waiter = queue.popleft()
        self.count -= 1
        if queue:
            self.keys.move_to_end(key_id)
        else:
            del self.keys[key_id]
        return waiter


@dataclass(slots=True)
class _Lane:
    limit: int
    active: int = 0
    slots: _Turns = field(default_factory=_Turns)
    timed: _Turns = field(default_factory=_Turns)
    timer: asyncio.TimerHandle | None = None


class FairQueue:
    """Per-deployment concurrency limits with fair, bounded waiting."""

    def __init__(
        self, limits: Iterable[tuple[str, int | None]], *, max_wait: float, max_depth: int
    ) -> None:
        """``limits``: (deployment id, max_parallel_requests or None for no limit)."""
        self._lanes = {dep: _Lane(limit) for dep, limit in limits if limit is not None}
        self._extra: dict[str, _Lane] = {}  # rpm waits of deployments without a parallel limit
        self._max_wait = max_wait
        self._max_depth = max_depth

    @classmethod
    def from_settings(cls, deployments: Iterable[Deployment], router: RouterSettings) -> FairQueue:
        """The queue for these deployments' max_parallel_requests, bounded as configured."""
        return cls(
            ((d.id, d.params.max_parallel_requests) for d in deployments),
            max_wait=router.queue_max_wait_seconds,
            max_depth=router.queue_max_depth,
        )

    def limited(self, deployment_id: str) -> bool:
        """Whether ``slot`` can make a request wait (the pipeline may skip it otherwise)."""
        return deployment_id in self._lanes

    def depth(self, deployment_id: str | None = None) -> int:
        """Requests waiting (for a slot or for a window), for one deployment or all."""
        if deployment_id is not None:
            lane = self._lanes.get(deployment_id) or self._extra.get(deployment_id)
            return lane.slots.count + lane.timed.count if lane else 0
        lanes = [*self._lanes.values(), *self._extra.values()]
        return sum(lane.slots.count + lane.timed.count for lane in lanes)

    def active(self, deployment_id: str) -> int:
        lane = self._lanes.get(deployment_id)
        return lane.active if lane else 0

    @asynccontextmanager
    async def slot(self, deployment_id: str, key_id: str) -> AsyncIterator[None]:
        """Hold one of the deployment's parallel slots for the body of the block."""
        await self.acquire(deployment_id, key_id)
        try:
            yield
        finally:
            self.release(deployment_id)

    async def acquire(self, deployment_id: str, key_id: str) -> None:
        """Take a slot, waiting in fair order; pair with ``release``."""
        lane = self._lanes.get(deployment_id)
        if lane is None:
            return
        if lane.active < lane.limit and not lane.slots.count:
            lane.active += 1
            return
        self._check_room(deployment_id, lane)
        waiter: _Waiter = asyncio.get_running_loop().create_future()
        lane.slots.add(key_id, waiter)
        try:
            async with asyncio.timeout(self._max_wait):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed a slot just as the wait ended: keep it if time ran out, pass it on
                # if the request itself was cancelled, so the slot never leaks.
                if isinstance(exc, TimeoutError):
                    return
                self.release(deployment_id)
                raise
            lane.slots.forget(key_id, waiter)
            if isinstance(exc, TimeoutError):
                raise self._too_long(deployment_id) from None
            raise

    def release(self, deployment_id: str) -> None:
        """Give a slot back: to the next waiter in fair order, else to the pool."""
        lane = self._lanes.get(deployment_id)
        if lane is None:
            return
        turns = lane.slots
        while turns.keys:
            waiter = turns.serve(next(iter(turns.keys)))
            if not waiter.done():  # a cancelled waiter is skipped; its owner forgets it
                waiter.set_result(None)
                return
        lane.active = max(0, lane.active - 1)

    async def wait_until(self, deployment_id: str, key_id: str, when: float) -> None:
        """Wait until the event loop's clock reaches ``when``, then go in fair order.

        For a deployment rpm window: waiters due at the same moment are let go round-robin
        across keys. Raises ``NoDeploymentAvailableError`` at once when ``when`` is beyond
        the maximum wait or the queue is full.
        """
        loop = asyncio.get_running_loop()
        delay = when - loop.time()
        if delay <= 0:
            return
        if delay > self._max_wait:
            raise NoDeploymentAvailableError(
                f"Deployment '{deployment_id}' is at its rate limit; try again later.",
                retry_after=delay,
            )
        lane = self._lanes.get(deployment_id) or self._extra.setdefault(deployment_id, _Lane(0))
        self._check_room(deployment_id, lane)
        waiter: _Waiter = loop.create_future()
        lane.timed.add(key_id, waiter, when)
        self._arm(lane, loop)
        try:
            await waiter
        except BaseException:
            lane.timed.forget(key_id, waiter)
            raise

    def _arm(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        """Set the lane's timer for its earliest waiter."""
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        whens = [q[0][0] for q in lane.timed.keys.values()]
        if whens:
            lane.timer = loop.call_at(min(whens), self._wake, lane, loop)

    def _wake(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        """Let every due waiter go, one key per turn: they resume in this order."""
        lane.timer = None
        now = loop.time()
        turns = lane.timed
        progress = True
        while progress:
            progress = False
            for key_id in list(turns.keys):
                queue = turns.keys.get(key_id)
                if queue and queue[0][0] <= now:
                    waiter = turns.serve(key_id)
                    progress = True
                    if not waiter.done():
                        waiter.set_result(None)
        self._arm(lane, loop)

    def _check_room(self, deployment_id: str, lane: _Lane) -> None:
        if lane.slots.count + lane.timed.count >= self._max_depth:
            raise NoDeploymentAvailableError(
                f"Deployment '{deployment_id}' is busy and its queue is full; try again later.",
                retry_after=max(1.0, self._max_wait),
            )

    def _too_long(self, deployment_id: str) -> NoDeploymentAvailableError:
        return NoDeploymentAvailableError(
            f"Deployment '{deployment_id}' stayed busy for {self._max_wait:g} s; try again later.",
            retry_after=max(1.0, self._max_wait),
        )
