"""The audit log in the store: written with the change it records, listed and filtered."""

from __future__ import annotations

from datetime import timedelta

import pytest

from proxy.store import KeyExistsError, Store
from proxy.store.audit import AuditEntry, AuditQuery
from tests.integration.store.factories import T0, key, token_hash


def _entry(action: str, target: str | None = None, **fields: object) -> AuditEntry:
    values: dict[str, object] = {
        "at": T0,
        "actor": "master-key:3f2a9c1b7d4e",
        "action": action,
        "target_hash": target,
        "client_ip": "127.0.0.1",
        "request_id": "req-1",
        **fields,
    }
    return AuditEntry(**values)  # type: ignore[arg-type]


async def test_key_writes_store_their_audit_rows(store: Store) -> None:
    """Each key write stores its entry, and list_audit returns them newest first, intact."""
    h = token_hash("sk-audited")
    await store.insert_key(
        key("sk-audited", key_alias="team-a"),
        audit=_entry("key.generated", h, target_alias="team-a", changes={"models": ["gpt-4o"]}),
    )
    await store.update_key(h, rpm_limit=5, audit=_entry("key.updated", h, changes={"rpm_limit": 5}))
    new = token_hash("sk-audited-2")
    await store.replace_key_hash(
        h, new, audit=_entry("key.regenerated", h, changes={"token_hash": new})
    )
    await store.delete_key(
        new, audit=_entry("key.deleted", new, forwarded_for="10.0.0.1, 10.0.0.2")
    )
    rows = await store.list_audit(AuditQuery())
    assert [r.action for r in rows] == [
        "key.deleted",
        "key.regenerated",
        "key.updated",
        "key.generated",
    ]
    ids = [r.id for r in rows]
    assert all(i is not None for i in ids) and ids == sorted(ids, reverse=True)  # type: ignore[type-var]
    generated = rows[-1]
    assert generated.at == T0
    assert generated.target_alias == "team-a"
    assert generated.changes == {"models": ["gpt-4o"]}
    assert generated.actor == "master-key:3f2a9c1b7d4e"
    assert generated.client_ip == "127.0.0.1" and generated.request_id == "req-1"
    assert rows[0].forwarded_for == "10.0.0.1, 10.0.0.2"


async def test_failed_or_missed_writes_leave_no_audit_row(store: Store) -> None:
    """A write that fails or finds no key records nothing: the row shares its transaction."""
    await store.insert_key(key("sk-one", key_alias="taken"))
    with pytest.raises(KeyExistsError):
        await store.insert_key(key("sk-two", key_alias="taken"), audit=_entry("key.generated", "x"))
    missing = token_hash("sk-missing")
    assert await store.update_key(missing, rpm_limit=1, audit=_entry("key.updated")) is None
    assert not await store.delete_key(missing, audit=_entry("key.deleted"))
    assert await store.replace_key_hash(missing, "0" * 64, audit=_entry("key.regenerated")) is None
    assert await store.list_audit(AuditQuery()) == []


async def test_audit_filters_combine(store: Store) -> None:
    """action, actor, key (hash or alias) and the time window narrow the list together."""
    a, b = token_hash("sk-a"), token_hash("sk-b")
    for i, (action, target, alias, actor) in enumerate(
        [
            ("key.generated", a, "alpha", "master-key:aaaaaaaaaaaa"),
            ("key.generated", b, None, "cli:root"),
            ("key.blocked", a, "alpha", "master-key:aaaaaaaaaaaa"),
            ("key.updated", b, "beta", "master-key:bbbbbbbbbbbb"),
        ]
    ):
        entry = _entry(action, target, target_alias=alias, actor=actor, at=T0 + timedelta(hours=i))
        await store.insert_audit(entry)

    async def actions(**filters: object) -> list[str]:
        rows = await store.list_audit(AuditQuery(**filters))  # type: ignore[arg-type]
        return [f"{r.action}@{r.at.hour - T0.hour}" for r in rows]

    assert await actions(action="key.generated") == ["key.generated@1", "key.generated@0"]
    assert await actions(actor="cli:root") == ["key.generated@1"]
    assert await actions(key_hash=a) == ["key.blocked@2", "key.generated@0"]
    assert await actions(key_hash="0" * 64, key_alias="beta") == ["key.updated@3"]
    assert await actions(start=T0 + timedelta(hours=1), end=T0 + timedelta(hours=3)) == [
        "key.blocked@2",
        "key.generated@1",
    ]
    assert await actions(action="key.generated", key_hash=b) == ["key.generated@1"]


async def test_audit_pages_by_cursor_and_offset(store: Store) -> None:
    """A page's last id is the cursor for the next; offset skips rows; nothing repeats."""
    for i in range(7):
        await store.insert_audit(_entry("key.updated", token_hash(f"sk-{i}")))
    seen: list[int] = []
    cursor: int | None = None
    while page := await store.list_audit(AuditQuery(limit=3, before_id=cursor)):
        seen += [r.id for r in page if r.id is not None]
        cursor = page[-1].id
    assert len(seen) == 7 and seen == sorted(set(seen), reverse=True)
    assert [r.id for r in await store.list_audit(AuditQuery(limit=2, offset=5))] == seen[5:]
