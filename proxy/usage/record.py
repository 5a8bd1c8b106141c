"""``UsageRecord``: one request's accounting, as the pipeline hands it to the ``SpendWriter``.

Defined beside the store that persists it (``proxy.store.records``) so that the store need
not import this package; this module is its home for callers.
"""

from __future__ import annotations

from proxy.store.records import UsageRecord

__all__ = ["UsageRecord"]
