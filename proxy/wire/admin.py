"""Admin API request shapes. Field names follow LiteLLM's where they exist, so migration
scripts written against its ``/key/*`` endpoints keep working."""

from __future__ import annotations

from typing import Any

import msgspec


class GenerateKeyRequest(msgspec.Struct, forbid_unknown_fields=False):
    key: str | None = None  # a caller-chosen key; generated when absent
    key_alias: str | None = None
    models: list[str] = []
    max_budget: float | None = None
    budget_duration: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    duration: str | None = None  # lifetime, e.g. "30d"; None: never expires
    metadata: dict[str, Any] = {}
    user_id: str | None = None
    team_id: str | None = None
    blocked: bool = False


class UpdateKeyRequest(msgspec.Struct, forbid_unknown_fields=False):
    key: str
    key_alias: str | None = None
    models: list[str] | None = None
    max_budget: float | None = None
    budget_duration: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    duration: str | None = None
    metadata: dict[str, Any] | None = None
    user_id: str | None = None
    team_id: str | None = None
    blocked: bool | None = None


class KeyRef(msgspec.Struct):
    key: str


class DeleteKeysRequest(msgspec.Struct):
    keys: list[str] = []
    key_aliases: list[str] = []
