"""Exactness under contention: two processes, each with its own loop and connections."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy.errors import RateLimitedError
from proxy.limits import Admission, Limits, LimitsSettings, RateLimiter

WORKER = Path(__file__).with_name("burst_worker.py")


async def run_children(spec: dict[str, Any], processes: int = 2) -> list[dict[str, Any]]:
    """Start ``processes`` workers on the same start line and collect their summaries."""
    start_at = time.time() + 1.5  # enough for each child to import and connect
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            json.dumps({**spec, "name": f"p{i}", "start_at": start_at}),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(processes)
    ]
    results = []
    for child in children:
        out, err = await asyncio.wait_for(child.communicate(), timeout=60)
        assert child.returncode == 0, err.decode()
        results.append(json.loads(out.decode().splitlines()[-1]))
    return results


async def test_rpm_admits_exactly_the_limit_across_processes(
    redis_url: str, redis_prefix: str
) -> None:
    """200 concurrent admits from two processes against rpm_limit 50 admit exactly 50."""
    spec = {
        "redis_url": redis_url,
        "key_prefix": redis_prefix,
        "scenario": "burst",
        "concurrency": 100,
        "limits": {"rpm_limit": 50},
    }
    results = await run_children(spec)
    assert sum(len(r["admitted"]) for r in results) == 50
    assert sum(r["denied"] for r in results) == 150


async def test_parallel_limit_holds_exactly_across_processes(
    redis_url: str, redis_prefix: str
) -> None:
    """Two processes racing for 5 parallel slots get exactly 5; a release admits one more."""
    limits = {"max_parallel_requests": 5}
    spec = {
        "redis_url": redis_url,
        "key_prefix": redis_prefix,
        "scenario": "burst",
        "concurrency": 100,
        "limits": limits,
    }
    results = await run_children(spec)
    held = [rid for r in results for rid in r["admitted"]]
    assert len(held) == 5

    limiter = RateLimiter(LimitsSettings(redis_url=redis_url, key_prefix=redis_prefix))
    try:
        kwargs: dict[str, Any] = {"estimated_tokens": 0, "estimated_cost": 0.0}
        with pytest.raises(RateLimitedError) as denied:
            await limiter.admit("subject", Limits(**limits), request_id="late-0", **kwargs)
        assert denied.value.code == "parallel_requests_limit_exceeded"
        # The children have exited; the parent releases one of their leases by id.
        limiter.release(Admission("subject", held[0], Limits(**limits), "redis"))
        await limiter.settled()
        await limiter.admit("subject", Limits(**limits), request_id="late-1", **kwargs)
        with pytest.raises(RateLimitedError):
            await limiter.admit("subject", Limits(**limits), request_id="late-2", **kwargs)
    finally:
        await limiter.aclose()


async def test_budget_is_not_overshot_by_concurrent_requests(
    redis_url: str, redis_prefix: str
) -> None:
    """Concurrent admit/settle loops end with spend at most one estimate above the budget."""
    budget, estimate = 1.0, 0.01
    spec = {
        "redis_url": redis_url,
        "key_prefix": redis_prefix,
        "scenario": "budget",
        "concurrency": 100,
        "estimated_cost": estimate,
        "limits": {"max_budget": budget},
    }
    results = await run_children(spec)
    admitted = sum(len(r["admitted"]) for r in results)
    spent_by_children = sum(r["spent"] for r in results)

    client = aioredis.Redis.from_url(redis_url)
    try:
        stored = await client.hgetall(f"{redis_prefix}{{subject}}:budget:0")
    finally:
        await client.aclose()
    spend = int(stored[b"s"]) / 1e9
    assert int(stored.get(b"r", b"0")) == 0  # every reservation was settled
    assert abs(spend - spent_by_children) < 1e-6
    assert spend <= budget + estimate
    assert admitted >= budget / estimate  # actual costs below estimates left room for more
