"""``CacheBackend``: what ``ResponseCache`` needs from a store of entries.

Backends never raise for the store being away: a backend that cannot answer behaves as an
empty cache (``get`` returns None, ``set`` is dropped) and counts the bypass, so a request
never fails or waits long because of its cache. Keys arrive complete (namespace included);
a backend may prefix them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from proxy.cache.entry import CachedEntry


class CacheBackend(Protocol):
    bypasses: int  # operations answered as a miss / dropped because the store was away

    async def get(self, key: str) -> CachedEntry | None: ...

    async def set(self, key: str, entry: CachedEntry, ttl: float) -> None:
        """Store ``entry`` for ``ttl`` seconds (more than zero)."""

    async def get_many(self, keys: Sequence[str]) -> list[CachedEntry | None]:
        """``get`` for each key, in one round trip where the store allows it."""

    async def set_many(self, items: Sequence[tuple[str, CachedEntry]], ttl: float) -> None:
        """``set`` for each pair, in one round trip where the store allows it."""

    async def aclose(self) -> None: ...
