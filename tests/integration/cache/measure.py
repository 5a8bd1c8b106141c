"""Per-operation cost of the cache: backends (get/set) and the pure steps (key, replay, assembly).

Not a test (nothing is asserted about time); run it and read the table::

    .venv/bin/python -m tests.integration.cache.measure [redis_url]

Each figure is the mean of 5,000 sequential operations on one connection under uvloop, as a
single request would see them, after 500 warm-up operations.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable

import orjson
import uvloop

from proxy.cache import (
    CacheBackend,
    CachedEntry,
    MemoryCache,
    RedisCache,
    assemble_chat_completion,
    cache_key,
    make_entry,
    replay_as_stream,
)

OPS = 5_000
WARM_UP = 500
CHAT = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. " * 10},
        {"role": "user", "content": "Summarise the following text please. " * 20},
    ],
    "temperature": 0.2,
    "max_tokens": 400,
    "stream": True,
}


def answer(words: int) -> bytes:
    text = " ".join(f"word{i % 50}" for i in range(words))
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 200,
                "completion_tokens": words,
                "total_tokens": 200 + words,
            },
        }
    )


async def per_op(operation: Callable[[int], Awaitable[object]]) -> float:
    """Mean microseconds of ``operation(i)`` over OPS sequential calls."""
    for i in range(WARM_UP):
        await operation(i)
    started = time.perf_counter()
    for i in range(OPS):
        await operation(i)
    return (time.perf_counter() - started) / OPS * 1e6


def sync_per_op(operation: Callable[[], object]) -> float:
    for _ in range(WARM_UP):
        operation()
    started = time.perf_counter()
    for _ in range(OPS):
        operation()
    return (time.perf_counter() - started) / OPS * 1e6


async def backend_rows(name: str, backend: CacheBackend) -> list[tuple[str, float]]:
    rows = []
    for label, words in (("1 KB", 100), ("16 KB", 1800)):
        entry = make_entry(answer(words))
        keys = [f"measure:{label}:{i % 100}" for i in range(OPS + WARM_UP)]

        async def set_one(i: int, keys: list[str] = keys, entry: CachedEntry = entry) -> None:
            await backend.set(keys[i], entry, 60)

        async def get_one(i: int, keys: list[str] = keys) -> CachedEntry | None:
            return await backend.get(keys[i])

        rows.append((f"{name} set {label} ({len(entry.body)} B)", await per_op(set_one)))
        rows.append((f"{name} get {label} hit", await per_op(get_one)))
    rows.append((f"{name} get miss", await per_op(lambda i: backend.get(f"absent:{i}"))))
    return rows


async def main(redis_url: str) -> None:
    rows = await backend_rows("memory", MemoryCache())
    redis = RedisCache(redis_url, key_prefix="llm-proxy-measure:", timeout=1.0)
    try:
        rows += await backend_rows("redis", redis)
    finally:
        await redis.aclose()
    print(f"(Redis bypasses during the run: {redis.bypasses})")
    entry = make_entry(answer(300))
    stream = replay_as_stream(entry, include_usage=True, chat=True)
    rows.append(
        ("cache_key, chat body of 1.2 KB", sync_per_op(lambda: cache_key("m", CHAT, namespace="n")))
    )
    rows.append(
        (
            "replay_as_stream, 300 words",
            sync_per_op(lambda: replay_as_stream(entry, include_usage=True, chat=True)),
        )
    )
    rows.append(
        (
            "assemble_chat_completion, 12 events",
            sync_per_op(lambda: assemble_chat_completion(stream)),
        )
    )
    width = max(len(name) for name, _ in rows)
    print(f"{'operation':<{width}}  µs/op")
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:6.1f}")


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"))
