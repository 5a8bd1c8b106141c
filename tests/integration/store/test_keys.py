"""Virtual-key CRUD, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proxy.store import KeyExistsError, KeyRecord, Store
from tests.integration.store.factories import key, token_hash, usage


async def test_inserted_key_reads_back_field_for_field(store: Store) -> None:
    """Every field survives the round trip, and the store stamps created_at/updated_at."""
    expires = datetime(2026, 1, 1, tzinfo=UTC)
    rec = key(
        "sk-roundtrip",
        key_alias="analytics",
        models=("gpt-4o", "claude-sonnet-4"),
        max_budget=25.5,
        budget_duration="30d",
        budget_reset_at=expires - timedelta(days=1),
        rpm_limit=600,
        tpm_limit=100_000,
        max_parallel_requests=8,
        expires=expires,
        metadata={"team": "data", "tags": ["a", "b"], "n": 1},
        user_id="u1",
        team_id="t1",
    )
    stored = await store.insert_key(rec)
    assert stored.created_at is not None and stored.updated_at is not None
    fetched = await store.get_key(rec.token_hash)
    assert fetched == stored
    assert fetched is not None
    assert fetched.models == ("gpt-4o", "claude-sonnet-4")
    assert fetched.metadata == {"team": "data", "tags": ["a", "b"], "n": 1}
    assert fetched.expires == expires and fetched.max_budget == 25.5
    assert fetched.spend == 0.0 and fetched.blocked is False


async def test_missing_key_is_none(store: Store) -> None:
    """Looking up, updating or deleting an unknown hash finds nothing."""
    assert await store.get_key(token_hash("sk-nobody")) is None
    assert await store.update_key(token_hash("sk-nobody"), blocked=True) is None
    assert await store.delete_key(token_hash("sk-nobody")) is False
    assert await store.replace_key_hash(token_hash("sk-nobody"), "x") is None


async def test_duplicate_hash_or_alias_is_refused(store: Store) -> None:
    """A second key with the same hash, or the same alias, raises KeyExistsError (409)."""
    await store.insert_key(key("sk-one", key_alias="shared"))
    with pytest.raises(KeyExistsError) as info:
        await store.insert_key(key("sk-one"))
    assert info.value.status == 409
    with pytest.raises(KeyExistsError):
        await store.insert_key(key("sk-two", key_alias="shared"))
    await store.insert_key(key("sk-three"))  # no alias: many keys may have none
    await store.insert_key(key("sk-four"))


async def test_update_changes_named_fields_only(store: Store) -> None:
    """update_key sets the given fields, bumps updated_at and leaves the rest alone."""
    created = await store.insert_key(key("sk-upd", key_alias="before", rpm_limit=10))
    updated = await store.update_key(
        created.token_hash, key_alias="after", models=["gpt-4o"], blocked=True, metadata={"x": 1}
    )
    assert updated is not None
    assert (updated.key_alias, updated.models, updated.blocked) == ("after", ("gpt-4o",), True)
    assert updated.metadata == {"x": 1} and updated.rpm_limit == 10
    assert updated.created_at == created.created_at
    assert updated.updated_at is not None and created.updated_at is not None
    assert updated.updated_at >= created.updated_at
    assert await store.get_key(created.token_hash) == updated


async def test_update_refuses_unknown_or_identity_fields(store: Store) -> None:
    """Fields that do not exist, or that the store owns, are a TypeError."""
    rec = await store.insert_key(key("sk-bad-update"))
    with pytest.raises(TypeError, match="nonsense"):
        await store.update_key(rec.token_hash, nonsense=1)
    with pytest.raises(TypeError, match="created_at"):
        await store.update_key(rec.token_hash, created_at=rec.created_at)


async def test_update_to_a_taken_alias_is_refused(store: Store) -> None:
    """Renaming a key to another key's alias raises KeyExistsError."""
    await store.insert_key(key("sk-a", key_alias="a"))
    b = await store.insert_key(key("sk-b", key_alias="b"))
    with pytest.raises(KeyExistsError):
        await store.update_key(b.token_hash, key_alias="a")


async def test_delete_removes_the_key(store: Store) -> None:
    """delete_key is True once, then the key is gone."""
    rec = await store.insert_key(key("sk-del"))
    assert await store.delete_key(rec.token_hash) is True
    assert await store.get_key(rec.token_hash) is None
    assert await store.delete_key(rec.token_hash) is False


async def test_list_filters_by_owner_and_pages_in_creation_order(store: Store) -> None:
    """list_keys filters by user and team and pages with limit/offset, oldest first."""
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(5):
        await store.insert_key(
            key(
                f"sk-list-{i}",
                user_id="u1" if i % 2 == 0 else "u2",
                team_id="t1",
                created_at=t0 + timedelta(minutes=i),
            )
        )
    await store.insert_key(key("sk-list-other", team_id="t2", created_at=t0))
    assert [k.key_name for k in await store.list_keys(user_id="u1")] == [
        "sk-...st-0",
        "sk-...st-2",
        "sk-...st-4",
    ]
    team = await store.list_keys(team_id="t1")
    assert len(team) == 5
    assert await store.list_keys(team_id="t1", limit=2, offset=1) == team[1:3]
    assert len(await store.list_keys(user_id="u2", team_id="t1")) == 2
    assert len(await store.list_keys()) == 6


async def test_replace_key_hash_keeps_settings_and_spend(store: Store) -> None:
    """Regenerating a key moves its settings and spend to the new hash; the old one is gone."""
    old = await store.insert_key(key("sk-old", key_alias="svc", max_budget=5.0))
    await store.insert_usage([usage(1, token_hash=old.token_hash, cost_usd=0.25)])
    new = await store.replace_key_hash(old.token_hash, token_hash("sk-new"), key_name="sk-...-new")
    assert new is not None
    assert (new.token_hash, new.key_name, new.key_alias) == (
        token_hash("sk-new"),
        "sk-...-new",
        "svc",
    )
    assert new.spend == pytest.approx(0.25) and new.max_budget == 5.0
    assert await store.get_key(old.token_hash) is None
    other = await store.insert_key(key("sk-other"))
    with pytest.raises(KeyExistsError):
        await store.replace_key_hash(other.token_hash, new.token_hash)


async def test_key_record_defaults_are_stored_as_given(store: Store) -> None:
    """A key with only a hash stores the documented defaults."""
    rec = await store.insert_key(KeyRecord(token_hash="f" * 64))
    assert (rec.models, rec.metadata, rec.blocked, rec.spend, rec.max_budget) == (
        (),
        {},
        False,
        0.0,
        None,
    )
