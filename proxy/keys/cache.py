"""The per-worker cache of key records: authentication costs no database round trip.

Entries are fresh for ``ttl`` seconds; after that the next request reloads the record, and
if the database cannot answer the stale record keeps serving (known keys keep working while
Postgres is down). Unknown keys are remembered for ``negative_ttl`` seconds, so a client
hammering with a bad key costs one lookup per interval, not one per request. Every change
made through the admin API is also published (Redis pub/sub) and dropped from every
replica's cache at once; ``clear()`` runs after the subscription was interrupted, when
messages may have been missed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from proxy.store import KeyRecord


@dataclass(slots=True)
class _Entry:
    record: KeyRecord | None  # None: known not to exist
    fresh_until: float


class KeyCache:
    def __init__(
        self,
        *,
        ttl: float = 30.0,
        negative_ttl: float = 5.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, token_hash: str) -> tuple[bool, KeyRecord | None, bool]:
        """(present, record, fresh) for a hash; ``present`` False means never looked up."""
        entry = self._entries.get(token_hash)
        if entry is None:
            return False, None, False
        return True, entry.record, self._clock() < entry.fresh_until

    def put(self, token_hash: str, record: KeyRecord | None) -> None:
        ttl = self.ttl if record is not None else self.negative_ttl
        self._entries[token_hash] = _Entry(record, self._clock() + ttl)
        self._entries.move_to_end(token_hash)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def invalidate(self, token_hash: str) -> None:
        self._entries.pop(token_hash, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
