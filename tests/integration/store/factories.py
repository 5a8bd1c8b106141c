"""Record factories for the store and spend-writer tests."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.store import KeyRecord, UsageRecord

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def key(raw: str = "sk-test", **fields: Any) -> KeyRecord:
    return KeyRecord(token_hash=token_hash(raw), key_name=f"sk-...{raw[-4:]}", **fields)


def usage(n: int, *, prefix: str = "req", at: datetime = T0, **fields: Any) -> UsageRecord:
    """Request number ``n``: 10 prompt and 5 completion tokens, $0.001, one second long."""
    values: dict[str, Any] = {
        "model": "gpt-4o",
        "deployment": "gpt-4o/openai/gpt-4o",
        "provider": "openai",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "cost_usd": 0.001,
        "latency_ms": 1000.0,
        "ttft_ms": 120.0,
        **fields,
    }
    return UsageRecord(
        request_id=f"{prefix}-{n}", started_at=at, ended_at=at + timedelta(seconds=1), **values
    )
