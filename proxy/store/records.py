"""The rows the store reads and writes, as frozen msgspec Structs.

Field names follow LiteLLM's ``LiteLLM_VerificationToken`` where the concept exists
(``key_alias``, ``key_name``, ``models``, ``max_budget``, ``budget_duration``,
``budget_reset_at``, ``rpm_limit``, ``tpm_limit``, ``max_parallel_requests``, ``expires``,
``metadata``, ``user_id``, ``team_id``, ``blocked``, ``spend``), so admin payloads and
documentation carry over. The primary key is ``token_hash``: the SHA-256 hex digest of the
raw ``sk-...`` key; the raw key is never stored.

``UsageRecord`` lives here because both edges need it: the store writes it, and
``proxy.usage`` (which may import the store, not the other way round) re-exports it.
All datetimes are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One virtual key. ``spend`` is the running USD total the usage writer adds to."""

    token_hash: str
    key_alias: str | None = None
    key_name: str | None = None  # display form of the raw key, e.g. "sk-...abcd"
    models: tuple[str, ...] = ()  # allowed model aliases; empty means all
    max_budget: float | None = None
    budget_duration: str | None = None  # "30s", "1h", "30d", "1mo"
    budget_reset_at: datetime | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    expires: datetime | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    user_id: str | None = None
    team_id: str | None = None
    blocked: bool = False
    spend: float = 0.0
    created_at: datetime | None = None  # set by the store on insert
    updated_at: datetime | None = None  # set by the store on every write


class UsageRecord(msgspec.Struct, frozen=True, gc=False):
    """One request's accounting: what was asked, where it went, what it cost.

    ``prompt_tokens`` includes ``cached_tokens`` (OpenAI's convention); ``model`` is the
    alias the client asked for, ``deployment`` the configured deployment that served it.
    The field order is the table's column order, and ``Ledger.close`` makes every record
    positionally (the cheap way, once per request): a new field goes last, given there too.
    """

    request_id: str
    started_at: datetime
    ended_at: datetime
    model: str
    token_hash: str | None = None
    key_alias: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    deployment: str | None = None
    provider: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: int = 200
    error_type: str | None = None
    cache_hit: bool = False


# Columns in table order; both backends and the Postgres COPY use these lists.
KEY_COLUMNS: Final = KeyRecord.__struct_fields__
USAGE_COLUMNS: Final = UsageRecord.__struct_fields__

# Fields ``update_key`` may change; the key's identity and timestamps are the store's.
UPDATABLE_KEY_FIELDS: Final = frozenset(KEY_COLUMNS) - {"token_hash", "created_at", "updated_at"}
