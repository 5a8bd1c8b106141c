"""``RedisHandle``: a redis-py client whose connection details can change while it runs.

Secret rotation hands a new Redis URL to every holder of a Redis client (proxy/rotation.py).
For redis-py's clients (key events, the response cache, shared cooldowns) the holder calls
``replace(url)``: a new client is made at once, so every operation started afterwards
connects with the new details, and the old client is closed ``grace`` seconds later. Each
holder bounds its operations by a deadline no longer than ``grace``, so by then every
operation started on the old client has finished or failed by itself: none is cut short.

A pub/sub subscription lives on one connection of the client that made it; its holder
re-subscribes through the new client at once, and the old subscription ends at the latest
with the old client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from proxy.tls import redis_from_url


class RedisHandle:
    """The current redis-py client for a URL that may be replaced (``client``)."""

    def __init__(self, url: str, *, grace: float, **options: Any) -> None:
        self._options = options
        self._grace = grace
        self.client: Redis = redis_from_url(url, **options)
        self._retiring: set[asyncio.Task[None]] = set()

    def replace(self, url: str) -> None:
        """Use ``url`` for every operation from now on; close the old client after the grace.

        ValueError, with nothing changed, when ``url`` is not a usable Redis URL.
        """
        new = redis_from_url(url, **self._options)
        old, self.client = self.client, new
        task = asyncio.get_running_loop().create_task(
            self._close_later(old), name="redis-client-retire"
        )
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        """Close the current client and, without waiting out their grace, the old ones."""
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        await self.client.aclose()

    async def _close_later(self, old: Redis) -> None:
        try:
            await asyncio.sleep(self._grace)
        finally:  # on cancellation too (aclose): the old connections must not leak
            await old.aclose()


async def messages(
    pubsub: PubSub, *, idle_ping: float, what: str, until_unsubscribed: bool = False
) -> AsyncGenerator[Any, None]:
    """The data of each message published on ``pubsub``'s channels, as it arrives.

    A subscription that goes quiet is pinged every ``idle_ping`` s, and one that does not
    answer raises TimeoutError (a dead connection can be silent). With
    ``until_unsubscribed`` it ends once an unsubscribe has been confirmed.
    """
    waiting_for_pong = False
    while True:
        message = await pubsub.get_message(timeout=idle_ping)
        if message is None:
            if cancel_was_swallowed():
                raise asyncio.CancelledError
            if until_unsubscribed and not pubsub.subscribed:
                return
            if waiting_for_pong:
                raise TimeoutError(f"no answer to a ping on the {what} connection")
            await pubsub.ping()
            waiting_for_pong = True
            continue
        waiting_for_pong = False
        if message["type"] == "message":
            yield message["data"]


def cancel_was_swallowed() -> bool:
    """A cancel that arrived as a read timed out (Python 3.11's ``asyncio.timeout``) can
    come back as a timeout; without this check a subscriber's loop would outlive its
    ``aclose``."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
