"""The official OpenAI SDK through the real proxy: every endpoint and every error class."""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest

from tests.e2e.conftest import MASTER_KEY
from tests.support.processes import FakeUpstream
from tests.support.proxy_server import ProxyServer

USER = [{"role": "user", "content": "Say hello"}]


def test_chat_completion(client: openai.OpenAI) -> None:
    """A non-stream chat answer comes back parsed, with usage."""
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens > 0


def test_chat_stream_without_usage(client: openai.OpenAI) -> None:
    """A stream relays every delta and ends cleanly; no usage chunk the client did not ask for."""
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello from the fake upstream")
    assert all(c.choices for c in chunks), "the usage-only chunk must be stripped"
    assert all(c.usage is None for c in chunks)


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    """With include_usage the final chunk carries usage, as OpenAI sends it."""
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_forwarded_body(client: openai.OpenAI) -> None:
    """The upstream gets its own model name and, for streams, a request for usage."""
    reply = client.chat.completions.create(model="echo", messages=USER, temperature=0.25)
    sent = orjson.loads(reply.choices[0].message.content or "")
    assert sent["model"] == "echo"
    assert sent["temperature"] == 0.25
    assert "stream_options" not in sent
    chunks = client.chat.completions.create(model="echo", messages=USER, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert orjson.loads(text)["stream_options"] == {"include_usage": True}


def test_completions(client: openai.OpenAI) -> None:
    """Legacy completions work streamed and not."""
    reply = client.completions.create(model="gpt-4o-mini", prompt="Once upon a time")
    assert reply.choices[0].text
    chunks = list(client.completions.create(model="gpt-4o-mini", prompt="Once", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_embeddings(client: openai.OpenAI) -> None:
    """Embeddings pass through; the SDK's default base64 encoding decodes."""
    reply = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in reply.data] == [0, 1]
    assert len(reply.data[0].embedding) > 0
    assert reply.usage.prompt_tokens > 0


def test_models(client: openai.OpenAI) -> None:
    """The model list holds the configured aliases; an unknown id is a NotFoundError."""
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "mock-gpt", "azure-gpt"} <= ids
    assert client.models.retrieve("mock-gpt").id == "mock-gpt"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_azure_deployment(client: openai.OpenAI) -> None:
    """An azure/ deployment is called with its URL shape, api-version and api-key."""
    reply = client.chat.completions.create(model="azure-gpt", messages=USER)
    assert reply.model == "dep1"


def test_mock_provider(client: openai.OpenAI) -> None:
    """The built-in mock answers without any upstream, streamed and not."""
    assert (
        client.chat.completions.create(model="mock-gpt", messages=USER).choices[0].message.content
        == "a b c"
    )
    chunks = client.chat.completions.create(model="mock-gpt", messages=USER, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c"


def test_authentication(proxy: ProxyServer) -> None:
    """Without the master key: 401 AuthenticationError; x-api-key and api-key also work."""
    for key in ("", "sk-wrong"):
        with (
            openai.OpenAI(base_url=proxy.base_url, api_key=key or "none", max_retries=0) as c,
            pytest.raises(openai.AuthenticationError),
        ):
            c.chat.completions.create(model="mock-gpt", messages=USER)
    body = {"model": "mock-gpt", "messages": USER}
    for header in ("x-api-key", "api-key"):
        r = httpx.post(
            f"{proxy.base_url}/chat/completions", json=body, headers={header: MASTER_KEY}
        )
        assert r.status_code == 200
    r = httpx.get(f"{proxy.base_url}/models")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("model", "exc", "status"),
    [
        ("err-400", openai.BadRequestError, 400),
        ("err-404", openai.NotFoundError, 404),
        ("err-429", openai.RateLimitError, 429),
        ("err-500", openai.InternalServerError, 502),
        ("err-503", openai.InternalServerError, 503),
        ("garbage", openai.InternalServerError, 502),
        ("reset", openai.InternalServerError, 502),
        ("down", openai.InternalServerError, 502),
        ("hang", openai.InternalServerError, 504),
        ("wrong-key", openai.InternalServerError, 502),
        ("no-such-model", openai.NotFoundError, 404),
    ],
)
def test_error_classes(
    client: openai.OpenAI, model: str, exc: type[openai.APIStatusError], status: int
) -> None:
    """Each failure reaches the SDK as the matching exception with an OpenAI error body."""
    with pytest.raises(exc) as info:
        client.chat.completions.create(model=model, messages=USER)
    assert info.value.status_code == status
    body = info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert info.value.response.headers.get("x-request-id")


def test_rate_limit_keeps_retry_after(client: openai.OpenAI) -> None:
    """An upstream 429's retry-after reaches the client."""
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="err-429", messages=USER)
    assert info.value.response.headers["retry-after"] == "1"


def test_client_timeout(proxy: ProxyServer) -> None:
    """A client that gives up first sees APITimeoutError."""
    with (
        openai.OpenAI(base_url=proxy.base_url, api_key=MASTER_KEY, max_retries=0, timeout=0.3) as c,
        pytest.raises(openai.APITimeoutError),
    ):
        c.chat.completions.create(model="slowfirst", messages=USER)


def test_stream_cut_midway_becomes_an_error_event(client: openai.OpenAI) -> None:
    """An upstream that drops mid-stream ends the client's stream with an error event."""
    stream = client.chat.completions.create(model="cut", messages=USER, stream=True)
    with pytest.raises(openai.APIError, match="upstream"):
        for _ in stream:
            pass


@pytest.mark.parametrize(
    ("body", "headers", "status", "param"),
    [
        (b'{"model": "gpt-4o-mini"', {}, 400, None),
        (b'{"model": "gpt-4o-mini"}', {}, 400, "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', {}, 400, "model"),
        (b'{"model": 3, "messages": []}', {}, 400, "model"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "robot"}]}', {}, 400, "messages[0].role"),
        (b'{"model": "gpt-4o-mini", "messages": []}', {}, 400, "messages"),
        (b"", {}, 400, None),
        (b"x=1", {"content-type": "application/x-www-form-urlencoded"}, 415, None),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "'
            + b"a" * 11_000_000
            + b'"}]}',
            {},
            413,
            None,
        ),
    ],
)
def test_bad_input(
    proxy: ProxyServer, body: bytes, headers: dict[str, str], status: int, param: str | None
) -> None:
    """Malformed or oversized input gets a 4xx OpenAI error naming the problem, never a 500."""
    r = httpx.post(
        f"{proxy.base_url}/chat/completions",
        content=body,
        headers={
            "authorization": f"Bearer {MASTER_KEY}",
            "content-type": "application/json",
            **headers,
        },
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    assert error["param"] == param


def test_unknown_route_and_method(proxy: ProxyServer) -> None:
    """Unknown routes are 404 and wrong methods 405, both OpenAI-shaped."""
    r = httpx.get(f"{proxy.base_url}/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{proxy.base_url}/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_request_id(proxy: ProxyServer) -> None:
    """x-request-id is echoed when given and generated otherwise, on errors too."""
    auth = {"authorization": f"Bearer {MASTER_KEY}"}
    body = {"model": "mock-gpt", "messages": USER}
    r = httpx.post(
        f"{proxy.base_url}/chat/completions", json=body, headers={**auth, "x-request-id": "abc-123"}
    )
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers=auth)
    assert len(r.headers["x-request-id"]) >= 16
    r = httpx.post(
        f"{proxy.base_url}/chat/completions", json={"model": "zzz", "messages": USER}, headers=auth
    )
    assert r.status_code == 404 and r.headers["x-request-id"]


def test_without_v1_prefix(proxy: ProxyServer) -> None:
    """Every OpenAI route also answers without /v1."""
    with openai.OpenAI(base_url=proxy.root_url, api_key=MASTER_KEY, max_retries=0) as c:
        assert c.chat.completions.create(model="mock-gpt", messages=USER).choices
        assert {m.id for m in c.models.list()}


def test_stream_is_relayed_as_it_arrives(client: openai.OpenAI) -> None:
    """With a slow upstream, the first delta arrives long before the stream ends."""
    started = time.monotonic()
    arrivals = [
        time.monotonic() - started
        for _ in client.chat.completions.create(model="slow", messages=USER, stream=True)
    ]
    assert arrivals[-1] > 1.0  # 8+ events at 150 ms
    assert arrivals[1] < arrivals[-1] / 3


def test_client_disconnect_cancels_upstream(proxy: ProxyServer, fake: FakeUpstream) -> None:
    """When the client drops a stream, the proxy abandons the upstream request."""
    fake.reset()
    body = {"model": "slow", "messages": USER, "stream": True}
    with httpx.stream(
        "POST",
        f"{proxy.base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {MASTER_KEY}"},
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break
    stats = fake.wait_for_stats(lambda s: s["streams_cancelled"] >= 1, timeout=5)
    assert stats["streams_completed"] == 0


def test_tokens_counted_when_upstream_reports_none(
    client: openai.OpenAI, proxy: ProxyServer
) -> None:
    """A stream without upstream usage still has its tokens counted (tiktoken)."""

    def completion_tokens() -> float:
        text = proxy.get("/metrics")[1].decode()
        for line in text.splitlines():
            if line.startswith('llm_proxy_tokens_total{kind="completion",model="nousage"}'):
                return float(line.split()[-1])
        return 0.0

    before = completion_tokens()
    chunks = list(client.chat.completions.create(model="nousage", messages=USER, stream=True))
    assert chunks
    assert completion_tokens() > before


def test_health_and_readiness(proxy: ProxyServer) -> None:
    """Probes answer without a key; readiness reports its checks."""
    assert proxy.get("/health")[0] == 200
    assert proxy.get("/health/liveness")[0] == 200
    status, body = proxy.get("/ready")
    assert status == 200 and orjson.loads(body)["status"] == "ok"
    assert proxy.get("/health/readiness")[0] == 200
