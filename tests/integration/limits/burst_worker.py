"""A child process for the cross-process tests: its own loop, connections and limiter.

``python burst_worker.py '<json>'`` waits until ``start_at`` (so two children start their
bursts together), runs ``concurrency`` tasks against the shared Redis, and prints one JSON
line: ``{"admitted": [...request ids...], "denied": n, "spent": usd}``.

Scenarios: ``burst`` admits once per task and keeps what it got (no settle); ``budget``
loops admit -> settle (actual cost 50-100% of the estimate) until the budget denies.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from proxy.errors import RateLimitedError
from proxy.limits import Limits, LimitsSettings, RateLimiter


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    settings = LimitsSettings(
        redis_url=spec["redis_url"], key_prefix=spec["key_prefix"], timeout_ms=5000
    )
    limiter = RateLimiter(settings)
    limits = Limits(**spec["limits"])
    name, estimate = spec["name"], spec.get("estimated_cost", 0.0)
    admitted: list[str] = []
    spent = 0.0
    denied = 0
    await limiter.counters.ping()  # connect before the start line
    await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))

    async def burst(i: int) -> None:
        nonlocal denied
        try:
            a = await limiter.admit(
                "subject", limits, estimated_tokens=0, estimated_cost=estimate,
                request_id=f"{name}-{i}",
            )  # fmt: skip
        except RateLimitedError:
            denied += 1
        else:
            admitted.append(a.request_id)

    async def budget(i: int) -> None:
        nonlocal denied, spent
        for n in range(1_000_000):
            try:
                a = await limiter.admit(
                    "subject", limits, estimated_tokens=0, estimated_cost=estimate,
                    request_id=f"{name}-{i}-{n}",
                )  # fmt: skip
            except RateLimitedError:
                denied += 1
                return
            admitted.append(a.request_id)
            await asyncio.sleep(random.random() / 1000)
            cost = estimate * random.uniform(0.5, 1.0)
            spent += cost
            limiter.settle(a, actual_tokens=0, actual_cost=cost)
            await limiter.settled()

    run = burst if spec["scenario"] == "burst" else budget
    await asyncio.gather(*(run(i) for i in range(spec["concurrency"])))
    await limiter.aclose()
    return {"admitted": admitted, "denied": denied, "spent": spent}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
