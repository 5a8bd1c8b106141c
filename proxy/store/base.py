"""The ``Store`` interface both backends implement, and the pieces they share.

Backends open lazily: constructing one does no I/O, the first call connects, and a call
made while the database is away raises ``DatabaseUnavailableError`` and leaves the store
usable, so the next call reconnects. A process can therefore start while its database is
down and recover without a restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

from proxy.store.records import UPDATABLE_KEY_FIELDS, KeyRecord, UsageRecord

if TYPE_CHECKING:
    from proxy.store.audit import AuditEntry, AuditQuery
    from proxy.store.rollup import PruneResult

GroupBy = Literal["day", "model", "key"]
GROUP_BY: tuple[GroupBy, ...] = ("day", "model", "key")

# Totals every usage_summary row carries, besides its group column(s).
SUMMARY_TOTALS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
)


class Store(Protocol):
    """Virtual keys and usage records in one database (PostgreSQL or SQLite)."""

    async def migrate(self) -> int:
        """Create or upgrade the schema; safe to run from many processes at once.

        Returns the schema version now in place.
        """
        ...

    async def ping(self) -> None:
        """Raise ``DatabaseUnavailableError`` unless the database answers a query."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    # The key writes take an optional ``audit`` entry, stored in the same transaction when
    # the write changes a key (so a committed change always has its audit row).

    async def insert_key(self, rec: KeyRecord, *, audit: AuditEntry | None = None) -> KeyRecord:
        """Store a new key; ``KeyExistsError`` when its hash or alias is taken."""
        ...

    async def get_key(self, token_hash: str) -> KeyRecord | None: ...

    async def update_key(
        self, token_hash: str, *, audit: AuditEntry | None = None, **fields: Any
    ) -> KeyRecord | None:
        """Change the named fields; None when no such key. Unknown fields: ``TypeError``."""
        ...

    async def delete_key(self, token_hash: str, *, audit: AuditEntry | None = None) -> bool: ...

    async def list_keys(
        self,
        *,
        user_id: str | None = None,
        team_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[KeyRecord]:
        """Keys in creation order, optionally filtered by owner."""
        ...

    async def replace_key_hash(
        self, old: str, new: str, *, key_name: str | None = None, audit: AuditEntry | None = None
    ) -> KeyRecord | None:
        """Give a key a new hash (regeneration), keeping its settings and spend."""
        ...

    async def insert_audit(self, entry: AuditEntry) -> None:
        """Store an audit entry on its own (for actions that change no key)."""
        ...

    async def list_audit(self, query: AuditQuery) -> list[AuditEntry]:
        """Audit entries matching ``query``, newest first."""
        ...

    async def prune_usage(
        self, before: datetime, *, batch_size: int = 5000, rollup: bool = True
    ) -> PruneResult:
        """Delete usage records started before ``before``, in batches of ``batch_size``;
        with ``rollup``, add each batch to ``usage_daily`` in the same transaction."""
        ...

    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        """Write a batch in one transaction and add its cost to each key's ``spend``.

        Idempotent per ``request_id``: rows already stored are skipped, and so is their cost.
        """
        ...

    async def usage_summary(
        self,
        *,
        key_hash: str | None = None,
        model: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: GroupBy = "day",
    ) -> list[dict[str, Any]]:
        """Totals per UTC day, model or key over ``start <= started_at < end``, including
        days rolled up into ``usage_daily`` (those count whole: see proxy/store/rollup.py).

        Each row holds the group column (``day`` as "YYYY-MM-DD", ``model``, or
        ``token_hash`` plus ``key_alias``) and ``SUMMARY_TOTALS``; rows sorted by group.
        """
        ...

    async def key_spend(self, token_hash: str, since: datetime) -> float:
        """USD spent by a key on requests started at or after ``since``."""
        ...


def utc(value: datetime) -> datetime:
    """An aware UTC datetime; naive values are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def checked_update(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields for ``update_key``, stamped with ``updated_at``; None empties a collection."""
    unknown = sorted(set(fields) - UPDATABLE_KEY_FIELDS)
    if unknown:
        raise TypeError(f"update_key: fields cannot be updated: {', '.join(unknown)}")
    out = dict(fields)
    if "models" in out and out["models"] is None:
        out["models"] = ()
    if "metadata" in out and out["metadata"] is None:
        out["metadata"] = {}
    out["updated_at"] = datetime.now(UTC)
    return out


def check_group_by(group_by: str) -> None:
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by: expected one of {', '.join(GROUP_BY)}, got {group_by!r}")


def per_request_unique(records: Iterable[UsageRecord]) -> list[UsageRecord]:
    """The batch without repeated request ids (the first occurrence wins)."""
    seen: dict[str, UsageRecord] = {}
    for record in records:
        seen.setdefault(record.request_id, record)
    return list(seen.values())


def summary_row(group_by: GroupBy, values: Sequence[Any]) -> dict[str, Any]:
    """One usage_summary row with plain Python types, the same for both backends."""
    if group_by == "key":
        head: dict[str, Any] = {"token_hash": values[0], "key_alias": values[1]}
        totals = values[2:]
    else:
        head = {group_by: str(values[0]) if values[0] is not None else None}
        totals = values[1:]
    requests, prompt, completion, total, cost = totals
    return {
        **head,
        "requests": int(requests),
        "prompt_tokens": int(prompt or 0),
        "completion_tokens": int(completion or 0),
        "total_tokens": int(total or 0),
        "cost_usd": float(cost or 0.0),
    }
