"""Usage accounting: the record, the spend writer, token prices and budget periods.

This edge owns no database library: it hands batches to a ``proxy.store`` store (the only
package of ours it imports, for ``UsageRecord`` and the store's errors)::

    writer = SpendWriter(store, spill_dir=settings.usage.spill_dir)
    await writer.start()
    writer.submit(UsageRecord(..., cost_usd=cost_usd(model, prompt, completion, cached)))
    ...
    await writer.aclose()
"""

from __future__ import annotations

from proxy.usage.budget import Duration, next_reset, parse_duration
from proxy.usage.prices import Price, PriceTable, cost_usd, default_prices
from proxy.usage.record import UsageRecord
from proxy.usage.writer import SpendWriter, UsageSink, default_spill_dir

__all__ = [
    "Duration",
    "Price",
    "PriceTable",
    "SpendWriter",
    "UsageRecord",
    "UsageSink",
    "cost_usd",
    "default_prices",
    "default_spill_dir",
    "next_reset",
    "parse_duration",
]
