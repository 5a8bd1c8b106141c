"""A Redis key prefix per routing test, its keys deleted when the test ends.

``redis_url`` and ``redis_key_prefix`` come from tests/integration/conftest.py (skip when
Redis is missing, fail under CI=true).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis


@pytest.fixture
def cooldown_prefix(redis_url: str, redis_key_prefix: str) -> Iterator[str]:
    """A prefix no other test, run or process shares; its keys are deleted afterwards."""
    prefix = f"{redis_key_prefix}routing:{uuid.uuid4().hex[:8]}:"
    yield prefix
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
