"""The lean pipelined Redis client: order, scripts, errors, deadlines, reconnects."""

from __future__ import annotations

import asyncio

import pytest

from proxy.limits.resp import RespClient, RespReplyError, RespUnavailableError

SCRIPT = "return {KEYS[1], ARGV[1]}"


async def test_pipelined_calls_come_back_in_order(redis_url: str, redis_key_prefix: str) -> None:
    """200 concurrent calls on one connection each get their own reply."""
    client = RespClient(redis_url, timeout=2)
    key = f"{redis_key_prefix}resp:counter"
    try:
        await client.call("DEL", key)
        replies = await asyncio.gather(*(client.call("INCR", key) for _ in range(200)))
        assert sorted(replies) == list(range(1, 201))
        assert await client.call("GET", key) == b"200"
    finally:
        await client.call("DEL", key)
        await client.aclose()


async def test_evalsha_loads_an_unknown_script(redis_url: str, redis_key_prefix: str) -> None:
    """A script Redis has never seen (or flushed) is loaded once, then runs by its hash."""
    client = RespClient(redis_url, timeout=2)
    try:
        sha = client.script_sha(SCRIPT + " -- " + redis_key_prefix)
        reply = await client.evalsha(sha, [f"{redis_key_prefix}k"], ["v"])
        assert reply == [f"{redis_key_prefix}k".encode(), b"v"]
        assert await client.call("SCRIPT", "EXISTS", sha) == [1]
    finally:
        await client.aclose()


async def test_error_replies_are_raised(redis_url: str, redis_key_prefix: str) -> None:
    """An error reply fails that call only; the connection goes on serving."""
    client = RespClient(redis_url, timeout=2)
    key = f"{redis_key_prefix}resp:string"
    try:
        await client.call("SET", key, "x")
        with pytest.raises(RespReplyError, match="WRONGTYPE"):
            await client.call("LPUSH", key, "y")
        assert await client.call("GET", key) == b"x"
    finally:
        await client.call("DEL", key)
        await client.aclose()


async def test_silent_server_times_out_then_reconnects() -> None:
    """A server that never answers fails the call within the timeout, every time, quickly."""
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            await reader.read()  # never answer
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        loop = asyncio.get_running_loop()
        for _ in range(2):
            started = loop.time()
            with pytest.raises(RespUnavailableError, match="in time"):
                await client.call("PING")
            assert loop.time() - started < 0.5
        assert accepted == 2  # the timed-out connection was dropped and replaced
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # let the handlers see the disconnects and close


async def test_refused_connection() -> None:
    """Nothing listening is an unavailable error, not a hang."""
    client = RespClient("redis://127.0.0.1:9/0", timeout=0.5)
    with pytest.raises(RespUnavailableError, match="cannot connect"):
        await client.call("PING")


async def test_database_number_from_the_url(redis_url: str, redis_key_prefix: str) -> None:
    """redis://host/N selects database N on connect."""
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    client = RespClient(f"{base}/3", timeout=2)
    key = f"{redis_key_prefix}resp:db3"
    try:
        await client.call("SET", key, "here")
        other = RespClient(f"{base}/0", timeout=2)
        try:
            assert await other.call("GET", key) is None
        finally:
            await other.aclose()
        assert await client.call("GET", key) == b"here"
    finally:
        await client.call("DEL", key)
        await client.aclose()


async def test_observe_is_told_every_call_and_its_outcome(
    redis_url: str, redis_key_prefix: str
) -> None:
    """The dependency-latency hook sees each call's time, failures included."""
    client = RespClient(redis_url, timeout=2)
    seen: list[tuple[float, bool]] = []
    client.observe = lambda seconds, ok: seen.append((seconds, ok))
    key = f"{redis_key_prefix}resp:observed"
    try:
        await client.call("SET", key, "x")
        with pytest.raises(RespReplyError):
            await client.call("INCR", key)  # not an integer
        assert [ok for _, ok in seen] == [True, False]
        assert all(0 <= seconds < 2 for seconds, _ in seen)
    finally:
        client.observe = None
        await client.call("DEL", key)
        await client.aclose()
