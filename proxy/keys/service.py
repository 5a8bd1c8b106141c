"""KeyService: virtual keys for requests (authenticate) and for the admin API (CRUD).

The request path reads only the local cache (see cache.py); the admin path writes the
store, drops the key from this worker's cache and publishes the change so every other
worker and replica drops it too. Every admin write names its ``Actor`` and is audited:
the store writes the audit row in the change's transaction, then it is logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from proxy import audit
from proxy.audit import Actor
from proxy.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from proxy.keys.cache import KeyCache
from proxy.keys.secrets import display_name, generate_key, hash_key, token_hash_of
from proxy.store import DatabaseUnavailableError, KeyRecord, Store
from proxy.usage.budget import next_reset, parse_duration
from proxy.wire.admin import GenerateKeyRequest, UpdateKeyRequest

Publish = Callable[[str], Awaitable[bool]]
_LIMIT_FIELDS = ("rpm_limit", "tpm_limit", "max_parallel_requests", "max_budget")
_GENERATE_DEFAULTS = msgspec.structs.asdict(GenerateKeyRequest())


def _usable(record: KeyRecord | None) -> KeyRecord:
    """The record of a key that may be used now; 401 for an unknown, blocked or expired one."""
    if record is None:
        raise AuthenticationError("Incorrect API key provided.")
    if record.blocked:
        raise AuthenticationError("This API key is blocked.", code="key_blocked")
    if record.expires is not None and record.expires <= datetime.now(UTC):
        raise AuthenticationError("This API key has expired.", code="key_expired")
    return record


class KeyService:
    def __init__(self, store: Store, cache: KeyCache, publish: Publish | None = None) -> None:
        self.store = store
        self.cache = cache
        self._publish = publish

    # -- the request path ---------------------------------------------------------------
    async def authenticate(self, raw_key: str) -> KeyRecord:
        """The key's record, or 401 (unknown, blocked, expired) / 503 (database away)."""
        token_hash = hash_key(raw_key)
        record = self.known(token_hash)
        return record if record is not None else await self.look_up(token_hash)

    def known(self, token_hash: str) -> KeyRecord | None:
        """``authenticate`` without a coroutine while the cache holds the key fresh (the
        record, or a 401); None when the store has to be asked (``look_up``)."""
        present, record, fresh = self.cache.get(token_hash)
        if not (present and fresh):
            return None
        return _usable(record)

    async def look_up(self, token_hash: str) -> KeyRecord:
        """``authenticate`` from the store, refreshing the cache (the last answer stands
        while the store is away)."""
        present, record, _ = self.cache.get(token_hash)
        try:
            record = await self.store.get_key(token_hash)
        except DatabaseUnavailableError as exc:
            if not present:
                raise ServiceUnavailableError(
                    "The key store is unavailable; unknown keys cannot be checked now.",
                    retry_after=5,
                ) from exc
            # Known (or known-unknown) key: the last answer stands until the store is back.
        else:
            self.cache.put(token_hash, record)
        return _usable(record)

    @staticmethod
    def check_model(record: KeyRecord, alias: str) -> None:
        if record.models and alias not in record.models:
            raise PermissionDeniedError(
                f"This key may not use the model '{alias}'.",
                param="model",
                code="model_not_allowed",
            )

    def invalidate(self, token_hash: str) -> None:
        self.cache.invalidate(token_hash)

    # -- the admin path -----------------------------------------------------------------
    async def generate(self, req: GenerateKeyRequest, *, by: Actor) -> tuple[str, KeyRecord]:
        raw = req.key or generate_key()
        if len(raw) < 8:
            raise InvalidRequestError("A custom key needs at least 8 characters.", param="key")
        now = datetime.now(UTC)
        record = KeyRecord(
            token_hash=hash_key(raw),
            key_alias=req.key_alias,
            key_name=display_name(raw),
            models=tuple(req.models),
            max_budget=req.max_budget,
            budget_duration=_check_duration(req.budget_duration, "budget_duration"),
            budget_reset_at=next_reset(now, req.budget_duration) if req.budget_duration else None,
            rpm_limit=req.rpm_limit,
            tpm_limit=req.tpm_limit,
            max_parallel_requests=req.max_parallel_requests,
            expires=_expires(now, req.duration),
            metadata=req.metadata,
            user_id=req.user_id,
            team_id=req.team_id,
            blocked=req.blocked,
        )
        _check_limits(record)
        given = {
            name: value
            for name, value in msgspec.structs.asdict(req).items()
            if value != _GENERATE_DEFAULTS[name]
        }
        done = audit.entry(
            by,
            "key.generated",
            target_hash=record.token_hash,
            target_alias=record.key_alias,
            changes=given,
        )
        stored = await self.store.insert_key(record, audit=done)
        audit.emit(done)
        return raw, stored

    async def info(self, key: str) -> KeyRecord:
        record = await self.store.get_key(token_hash_of(key))
        if record is None:
            raise NotFoundError("No such key.", param="key", code="key_not_found")
        return record

    async def update(
        self, req: UpdateKeyRequest, *, by: Actor, action: str = "key.updated"
    ) -> KeyRecord:
        token_hash = token_hash_of(req.key)
        changes: dict[str, Any] = {
            name: value
            for name, value in msgspec.structs.asdict(req).items()
            if value is not None and name not in ("key", "duration")
        }
        if "models" in changes:
            changes["models"] = tuple(changes["models"])
        if req.budget_duration is not None:
            _check_duration(req.budget_duration, "budget_duration")
            changes["budget_reset_at"] = next_reset(datetime.now(UTC), req.budget_duration)
        if req.duration is not None:
            changes["expires"] = _expires(datetime.now(UTC), req.duration)
        for name in _LIMIT_FIELDS:
            if name in changes and changes[name] < 0:
                raise InvalidRequestError(f"'{name}' must not be negative.", param=name)
        # The audit row names the key as it was found (its alias before a rename).
        done = audit.entry(
            by,
            action,
            target_hash=token_hash,
            target_alias=(await self.info(token_hash)).key_alias,
            changes=changes,
        )
        record = await self.store.update_key(token_hash, audit=done, **changes)
        if record is None:
            raise NotFoundError("No such key.", param="key", code="key_not_found")
        audit.emit(done)
        await self._changed(token_hash)
        return record

    async def set_blocked(self, key: str, blocked: bool, *, by: Actor) -> KeyRecord:
        action = "key.blocked" if blocked else "key.unblocked"
        return await self.update(UpdateKeyRequest(key=key, blocked=blocked), by=by, action=action)

    async def delete(self, keys: list[str], aliases: list[str], *, by: Actor) -> list[str]:
        found = {
            r.token_hash: r
            for r in [await self.store.get_key(token_hash_of(k)) for k in keys]
            if r is not None
        }
        if aliases:
            wanted = set(aliases)
            found.update((r.token_hash, r) for r in await self._all() if r.key_alias in wanted)
        deleted = []
        for token_hash, record in found.items():
            done = audit.entry(
                by, "key.deleted", target_hash=token_hash, target_alias=record.key_alias
            )
            if await self.store.delete_key(token_hash, audit=done):
                audit.emit(done)
                deleted.append(token_hash)
                await self._changed(token_hash)
        return deleted

    async def regenerate(self, key: str, *, by: Actor) -> tuple[str, KeyRecord]:
        old = token_hash_of(key)
        raw = generate_key()
        new = hash_key(raw)
        done = audit.entry(
            by,
            "key.regenerated",
            target_hash=old,
            target_alias=(await self.info(old)).key_alias,
            changes={"token_hash": new},
        )
        record = await self.store.replace_key_hash(old, new, key_name=display_name(raw), audit=done)
        if record is None:
            raise NotFoundError("No such key.", param="key", code="key_not_found")
        audit.emit(done)
        await self._changed(old)
        return raw, record

    async def list_keys(
        self, *, user_id: str | None, team_id: str | None, limit: int, offset: int
    ) -> list[KeyRecord]:
        return await self.store.list_keys(
            user_id=user_id, team_id=team_id, limit=limit, offset=offset
        )

    async def _all(self) -> list[KeyRecord]:
        out: list[KeyRecord] = []
        while page := await self.store.list_keys(limit=500, offset=len(out)):
            out += page
        return out

    async def _changed(self, token_hash: str) -> None:
        self.cache.invalidate(token_hash)
        if self._publish is not None:
            await self._publish(token_hash)


def _check_duration(text: str | None, param: str) -> str | None:
    if text is None:
        return None
    try:
        parse_duration(text)
    except ValueError as exc:
        raise InvalidRequestError(
            f"'{param}' must look like 30s, 5m, 1h, 30d or 1mo; got {text!r}.", param=param
        ) from exc
    return text


def _expires(now: datetime, duration: str | None) -> datetime | None:
    if duration is None:
        return None
    return now + parse_duration(_check_duration(duration, "duration") or "")


def _check_limits(record: KeyRecord) -> None:
    for name in _LIMIT_FIELDS:
        value = getattr(record, name)
        if value is not None and value < 0:
            raise InvalidRequestError(f"'{name}' must not be negative.", param=name)
