"""Key prefixes for the limiter tests, and the stalling fault proxy.

``redis_url`` and ``redis_key_prefix`` come from tests/integration/conftest.py (skip when
Redis is missing, fail under CI=true). Each test gets a prefix of its own below the run's;
``redis_prefix`` also deletes that prefix's keys when the test ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis

from tests.integration.limits.fault_proxy import FaultProxy


@pytest.fixture
def key_prefix(redis_key_prefix: str) -> str:
    """A prefix no other test, run or process shares (for tests that may not reach Redis)."""
    return f"{redis_key_prefix}limits:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def redis_prefix(redis_url: str, key_prefix: str) -> Iterator[str]:
    """``key_prefix`` for a test that writes to Redis; its keys are deleted afterwards."""
    yield key_prefix
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        for key in client.scan_iter(match=f"{key_prefix}*", count=1000):
            client.delete(key)


@pytest.fixture
def fault_proxy(redis_url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the test Redis (``fault_proxy.url_for(redis_url)``)."""
    target = urlsplit(redis_url)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        yield proxy
