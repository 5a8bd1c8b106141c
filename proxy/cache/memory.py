"""``MemoryCache``: an in-process LRU bounded in bytes, with a TTL per entry.

One ``OrderedDict`` in least-recently-used order makes every operation O(1): a hit moves
its key to the end, a store evicts from the front until the total fits. An expired entry is
dropped when it is read; one never read again leaves in LRU order, so the byte bound holds
either way. Per worker process: workers do not share it (use Redis for that).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

from proxy.cache.entry import CachedEntry

DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024


class _Slot(NamedTuple):
    entry: CachedEntry
    expires_at: float
    size: int


class MemoryCache:
    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self.bypasses = 0  # never: memory is always there (CacheBackend's counter)
        self.evictions = 0
        self._clock = clock
        self._slots: OrderedDict[str, _Slot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    async def get(self, key: str) -> CachedEntry | None:
        return self._get(key)

    async def set(self, key: str, entry: CachedEntry, ttl: float) -> None:
        self._set(key, entry, ttl)

    async def get_many(self, keys: Sequence[str]) -> list[CachedEntry | None]:
        return [self._get(key) for key in keys]

    async def set_many(self, items: Sequence[tuple[str, CachedEntry]], ttl: float) -> None:
        for key, entry in items:
            self._set(key, entry, ttl)

    async def aclose(self) -> None:
        self._slots.clear()
        self.bytes_used = 0

    def _get(self, key: str) -> CachedEntry | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires_at <= self._clock():
            self._drop(key)
            return None
        self._slots.move_to_end(key)
        return slot.entry

    def _set(self, key: str, entry: CachedEntry, ttl: float) -> None:
        size = entry.size + len(key)
        if key in self._slots:
            self._drop(key)
        if size > self.max_bytes or ttl <= 0:
            return  # would evict everything else and still not fit
        self._slots[key] = _Slot(entry, self._clock() + ttl, size)
        self.bytes_used += size
        while self.bytes_used > self.max_bytes:
            _, oldest = self._slots.popitem(last=False)
            self.bytes_used -= oldest.size
            self.evictions += 1

    def _drop(self, key: str) -> None:
        self.bytes_used -= self._slots.pop(key).size
