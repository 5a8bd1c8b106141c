"""``eventually``: wait for state that a background task or thread changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        # The state lives in a probe task or the fault proxy's thread: there is no event to await.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
