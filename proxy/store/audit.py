"""Audit rows: who changed which key, how, when and from where; the SQL both backends share.

An ``AuditEntry`` is written by the store in the same transaction as the change it
describes (``insert_key(..., audit=entry)`` and friends), so a change that committed has
its row, and a change that failed leaves none. ``changes`` holds the changed fields' names
and their new, non-secret values; never a raw key (``proxy.audit`` builds the entries).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import msgspec

# What an admin did; GET /audit's ``action`` filter accepts exactly these.
AUDIT_ACTIONS: Final = (
    "key.generated",
    "key.updated",
    "key.blocked",
    "key.unblocked",
    "key.regenerated",
    "key.deleted",
)

AUDIT_LIMIT_MAX: Final = 1000


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One admin action. ``id`` is the store's (ascending in write order); None before."""

    at: datetime
    actor: str  # "master-key:3f2a9c1b7d4e", "cli:alice"
    action: str
    target_hash: str | None = None  # the key's SHA-256 (its id in the admin API)
    target_alias: str | None = None
    changes: dict[str, Any] = msgspec.field(default_factory=dict)
    client_ip: str | None = None
    forwarded_for: str | None = None  # the x-forwarded-for header, as given
    request_id: str | None = None
    id: int | None = None


class AuditQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters for ``list_audit``; rows come newest first, ``limit`` at a time.

    ``key_hash`` and ``key_alias`` together match rows for either (a key named by alias
    or hash); ``before_id`` is the cursor: the ``id`` of the last row of the previous page.
    """

    action: str | None = None
    actor: str | None = None
    key_hash: str | None = None
    key_alias: str | None = None
    start: datetime | None = None  # at >= start
    end: datetime | None = None  # at < end
    before_id: int | None = None
    limit: int = 100
    offset: int = 0


AUDIT_COLUMNS: Final = tuple(name for name in AuditEntry.__struct_fields__ if name != "id")
AUDIT_SELECT: Final = ", ".join(("id", *AUDIT_COLUMNS))

_json_encode = msgspec.json.Encoder().encode


def audit_values(entry: AuditEntry, encode_time: Callable[[datetime], Any]) -> list[Any]:
    """The row for ``AUDIT_COLUMNS``: the time in the backend's form, changes as JSON text."""
    row = [getattr(entry, name) for name in AUDIT_COLUMNS]
    row[0] = encode_time(entry.at)
    row[AUDIT_COLUMNS.index("changes")] = _json_encode(entry.changes).decode()
    return row


def audit_entry(row: Any, decode_time: Callable[[Any], datetime]) -> AuditEntry:
    """An entry from a row in ``AUDIT_SELECT`` order."""
    fields = dict(zip(("id", *AUDIT_COLUMNS), row, strict=True))
    fields["at"] = decode_time(fields["at"])
    fields["changes"] = msgspec.json.decode(fields["changes"])
    return AuditEntry(**fields)


def audit_list_sql(
    query: AuditQuery,
    mark: Callable[[int], str],
    encode_time: Callable[[datetime], Any],
) -> tuple[str, list[Any]]:
    """The list_audit query with only the filters given (each variant gets its own plan).

    ``mark(n)`` is the backend's placeholder for the n-th argument ($n or ?).
    """
    parts: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return mark(len(args))

    if query.action is not None:
        parts.append(f"action = {arg(query.action)}")
    if query.actor is not None:
        parts.append(f"actor = {arg(query.actor)}")
    keys = []
    if query.key_hash is not None:
        keys.append(f"target_hash = {arg(query.key_hash)}")
    if query.key_alias is not None:
        keys.append(f"target_alias = {arg(query.key_alias)}")
    if keys:
        parts.append("(" + " OR ".join(keys) + ")")
    if query.start is not None:
        parts.append(f"at >= {arg(encode_time(query.start))}")
    if query.end is not None:
        parts.append(f"at < {arg(encode_time(query.end))}")
    if query.before_id is not None:
        parts.append(f"id < {arg(query.before_id)}")
    where = "WHERE " + " AND ".join(parts) if parts else ""
    limit = arg(min(max(query.limit, 1), AUDIT_LIMIT_MAX))
    offset = arg(max(query.offset, 0))
    order = f"ORDER BY id DESC LIMIT {limit} OFFSET {offset}"
    return f"SELECT {AUDIT_SELECT} FROM audit_log {where} {order}", args
