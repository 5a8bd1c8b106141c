"""The response cache end to end: hits, misses, controls, streams, embeddings (issue 4).

A real proxy process in front of the fake upstream, driven by the official SDK; the fake's
per-model call counts prove what reached the upstream.
"""

from __future__ import annotations

import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import UPSTREAM_KEY
from tests.support.processes import FakeUpstream
from tests.support.proxy_server import ProxyServer, run_proxy

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "what is a cache?"}]
ALIASES = ("cached", "cached-2", "cut", "embed")


def _config(fake: FakeUpstream, cache: dict[str, Any], tag: str) -> dict[str, Any]:
    """Each alias maps to an upstream model unique to this proxy, so counts do not mix."""

    def dep(alias: str, upstream: str) -> dict[str, Any]:
        params = {"model": f"openai/{upstream}", "api_base": fake.base_url, "api_key": UPSTREAM_KEY}
        return {"model_name": alias, "params": params}

    return {
        "model_list": [
            dep("cached", f"gpt-4o-mini-{tag}"),
            dep("cached-2", f"gpt-4o-mini-{tag}-b"),
            dep("cut", f"cut-3-{tag}"),
            dep("embed", f"text-embedding-3-small-{tag}"),
        ],
        "cache": cache,
    }


@pytest.fixture(scope="module", params=["memory", "redis"])
def cached_proxy(
    request: pytest.FixtureRequest, fake: FakeUpstream, redis_url: str
) -> Iterator[tuple[ProxyServer, str]]:
    """A proxy with the memory cache, then one with the Redis cache (real Redis)."""
    tag = f"{request.param}-{uuid.uuid4().hex[:8]}"
    cache: dict[str, Any] = {"type": request.param, "ttl": 60}
    if request.param == "redis":
        cache |= {"redis_url": redis_url, "key_prefix": f"llm-proxy-test:{tag}:"}
    with run_proxy(_config(fake, cache, tag)) as server:
        yield server, tag


@pytest.fixture
def client(cached_proxy: tuple[ProxyServer, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=cached_proxy[0].base_url, api_key="unused", max_retries=0)


def upstream_calls(fake: FakeUpstream, model: str) -> int:
    count: int = fake.stats()["by_model"].get(model, 0)
    return count


def chat(client: openai.OpenAI, model: str = "cached", **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(model=model, messages=USER, **extra)


def test_second_identical_request_is_a_hit(
    client: openai.OpenAI, cached_proxy: tuple[ProxyServer, str], fake: FakeUpstream
) -> None:
    tag = cached_proxy[1]
    nonce = uuid.uuid4().hex
    first = chat(client, seed=7, user=nonce)
    second = chat(client, seed=7, user="someone else")  # user does not change the answer
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.parse().id == first.parse().id
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.parse().usage.total_tokens == first.parse().usage.total_tokens
    assert upstream_calls(fake, f"gpt-4o-mini-{tag}") == 1


def test_fields_that_change_the_answer_change_the_key(
    client: openai.OpenAI, cached_proxy: tuple[ProxyServer, str], fake: FakeUpstream
) -> None:
    tag = cached_proxy[1]
    before = upstream_calls(fake, f"gpt-4o-mini-{tag}")
    assert chat(client, temperature=0.1).headers["x-cache"] == "MISS"
    assert chat(client, temperature=0.2).headers["x-cache"] == "MISS"
    assert chat(client, temperature=0.2, max_tokens=50).headers["x-cache"] == "MISS"
    assert chat(client, temperature=0.2).headers["x-cache"] == "HIT"
    # Another alias never shares an entry, even with the same body.
    assert chat(client, "cached-2", temperature=0.2).headers["x-cache"] == "MISS"
    assert upstream_calls(fake, f"gpt-4o-mini-{tag}") == before + 3


def test_per_request_controls(
    client: openai.OpenAI, cached_proxy: tuple[ProxyServer, str], fake: FakeUpstream
) -> None:
    tag = cached_proxy[1]
    seed = 11
    assert (
        chat(client, seed=seed, extra_body={"cache": {"no-store": True}}).headers["x-cache"]
        == "MISS"
    )
    assert chat(client, seed=seed).headers["x-cache"] == "MISS"  # nothing was stored
    assert chat(client, seed=seed).headers["x-cache"] == "HIT"
    no_cache = chat(client, seed=seed, extra_body={"cache": {"no-cache": True}})
    assert no_cache.headers["x-cache"] == "MISS"
    header = client.chat.completions.with_raw_response.create(
        model="cached", messages=USER, seed=seed, extra_headers={"Cache-Control": "no-cache"}
    )
    assert header.headers["x-cache"] == "MISS"
    # A namespace partitions the cache.
    spaced = {"cache": {"namespace": f"team-{tag}"}}
    assert chat(client, seed=seed, extra_body=spaced).headers["x-cache"] == "MISS"
    assert chat(client, seed=seed, extra_body=spaced).headers["x-cache"] == "HIT"
    # s-maxage 0: only an entry stored this very instant would do.
    fresh_only = chat(client, seed=seed, extra_body={"cache": {"s-maxage": 0}})
    assert fresh_only.headers["x-cache"] == "MISS"
    # The cache field never reaches the upstream (OpenAI rejects unknown parameters).
    assert "cache" not in fake.stats()["last_body"]


def test_bad_cache_control_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, extra_body={"cache": {"ttl": -5}})
    assert caught.value.body["param"] == "cache.ttl"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as unknown:
        chat(client, extra_body={"cache": {"no_store": True}})
    assert unknown.value.body["param"] == "cache.no_store"  # type: ignore[index]


def _stream_text(client: openai.OpenAI, **extra: Any) -> tuple[str, str, Any]:
    raw = client.chat.completions.with_raw_response.create(
        model="cached", messages=USER, stream=True, **extra
    )
    text, usage = [], None
    for chunk in raw.parse():
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
    return raw.headers["x-cache"], "".join(text), usage


def test_stream_miss_is_stored_and_replayed_as_a_stream(
    client: openai.OpenAI, cached_proxy: tuple[ProxyServer, str], fake: FakeUpstream
) -> None:
    tag = cached_proxy[1]
    before = upstream_calls(fake, f"gpt-4o-mini-{tag}")
    status, text, _ = _stream_text(client, seed=21)
    assert status == "MISS"
    again, replayed, usage = _stream_text(client, seed=21, stream_options={"include_usage": True})
    assert again == "HIT"
    assert replayed == text
    assert usage is not None and usage.completion_tokens > 0
    # The same request without stream is the same entry.
    plain = chat(client, seed=21)
    assert plain.headers["x-cache"] == "HIT"
    assert plain.parse().choices[0].message.content == text
    assert upstream_calls(fake, f"gpt-4o-mini-{tag}") == before + 1


def test_a_cut_stream_is_never_stored(
    client: openai.OpenAI, cached_proxy: tuple[ProxyServer, str], fake: FakeUpstream
) -> None:
    tag = cached_proxy[1]
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="cut", messages=USER, stream=True
        )
        assert raw.headers["x-cache"] == "MISS"
        with pytest.raises(openai.APIError):
            for _chunk in raw.parse():
                pass
    assert upstream_calls(fake, f"cut-3-{tag}") == 2


def test_embeddings_hit_per_input(
    client: openai.OpenAI, cached_proxy: tuple[ProxyServer, str], fake: FakeUpstream
) -> None:
    tag = cached_proxy[1]
    a, b, c = (f"{word} {uuid.uuid4().hex}" for word in ("alpha", "bravo", "charlie"))
    first = client.embeddings.with_raw_response.create(model="embed", input=[a, b])
    assert first.headers["x-cache"] == "MISS"
    vectors = {item.index: item.embedding for item in first.parse().data}
    second = client.embeddings.with_raw_response.create(model="embed", input=[b, c])
    assert second.headers["x-cache"] == "MISS"  # c had to be fetched
    assert fake.stats()["last_body"]["input"] == [c]  # only the missing item went upstream
    data = second.parse().data
    assert [item.index for item in data] == [0, 1]
    assert data[0].embedding == vectors[1]
    third = client.embeddings.with_raw_response.create(model="embed", input=[c, a])
    assert third.headers["x-cache"] == "HIT"
    assert third.parse().usage.prompt_tokens == 0  # nothing was sent upstream
    assert third.parse().data[1].embedding == vectors[0]
    assert upstream_calls(fake, f"text-embedding-3-small-{tag}") == 2


def test_metrics_count_hits_and_misses(
    client: openai.OpenAI, cached_proxy: tuple[ProxyServer, str]
) -> None:
    proxy = cached_proxy[0]
    text = proxy.get("/metrics")[1].decode()

    def value(result: str) -> float:
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            wanted = f'result="{result}"' in rest and 'route="chat"' in rest
            if name == "llm_proxy_cache_requests_total" and wanted:
                return float(line.split()[-1])
        return 0.0

    assert value("hit") >= 1
    assert value("miss") >= 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_redis_bypasses_the_cache(fake: FakeUpstream) -> None:
    """Redis away: every request still succeeds (from upstream) and a metric counts it."""
    tag = f"down-{uuid.uuid4().hex[:8]}"
    cache = {"type": "redis", "redis_url": f"redis://127.0.0.1:{_free_port()}/0"}
    with run_proxy(_config(fake, cache, tag)) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0)
        for _ in range(3):
            raw = chat(client, seed=5)
            assert raw.headers["x-cache"] == "MISS"
            assert raw.parse().choices[0].message.content
        text = proxy.get("/metrics")[1].decode()
    assert upstream_calls(fake, f"gpt-4o-mini-{tag}") == 3
    bypassed = [
        ln
        for ln in text.splitlines()
        if ln.startswith("llm_proxy_cache_requests_total")
        and 'result="bypass"' in ln
        and 'route="chat"' in ln
    ]
    assert bypassed and float(bypassed[0].split()[-1]) >= 1


def test_hits_are_recorded_at_no_cost(fake: FakeUpstream, tmp_path: Path) -> None:
    """Exactly one usage record per request; a hit is cache_hit with cost 0."""
    tag = f"usage-{uuid.uuid4().hex[:8]}"
    config = _config(fake, {"type": "memory"}, tag)
    for entry in config["model_list"]:
        entry["params"] |= {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    db = tmp_path / "usage.db"
    with run_proxy(config, env={"LLM_PROXY_SQLITE_PATH": str(db)}) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0)
        assert chat(client, seed=3).headers["x-cache"] == "MISS"
        assert chat(client, seed=3).headers["x-cache"] == "HIT"
        status, _, _ = _stream_text(client, seed=3)
        assert status == "HIT"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT cache_hit, cost_usd, prompt_tokens, completion_tokens, status"
            " FROM usage_records ORDER BY started_at"
        ).fetchall()
    assert len(rows) == 3
    miss, *hits = rows
    assert miss[0] == 0 and miss[1] > 0
    for hit in hits:
        assert hit[0] == 1 and hit[1] == 0
        assert hit[2:4] == miss[2:4]  # the tokens the answer took, saved this time
        assert hit[4] == 200
