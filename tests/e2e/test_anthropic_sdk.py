"""Anthropic through the real proxy: the OpenAI SDK in front of Claude, and /v1/messages
driven by the official Anthropic SDK, routed to Anthropic and to an OpenAI-compatible model."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.e2e.conftest import MASTER_KEY, UPSTREAM_KEY, proxy_config
from tests.support.processes import FakeUpstream
from tests.support.proxy_server import ProxyServer, run_proxy

USER = [{"role": "user", "content": "Say hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _claude(fake: FakeUpstream, alias: str, upstream: str) -> dict[str, object]:
    return {
        "model_name": alias,
        "params": {
            "model": f"anthropic/{upstream}",
            "api_base": fake.root_url,
            "api_key": UPSTREAM_KEY,
        },
    }


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream) -> Iterator[ProxyServer]:
    """The proxy with Claude deployments next to the OpenAI-compatible ones."""
    config = proxy_config(fake, master_key=MASTER_KEY)
    config["model_list"] += [
        _claude(fake, "claude", "claude-sonnet-4-5"),
        _claude(fake, "claude-tool", "claude-sonnet-4-5-tool"),
        _claude(fake, "claude-529", "error-529"),
        _claude(fake, "claude-429", "error-429"),
        _claude(fake, "claude-midstream", "midstream-error"),
        _claude(fake, "claude-future", "unknown-event"),
    ]
    with run_proxy(config) as server:
        yield server


@pytest.fixture
def oai(proxy: ProxyServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=proxy.base_url, api_key=MASTER_KEY, max_retries=0) as c:
        yield c


@pytest.fixture
def claude(proxy: ProxyServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=proxy.root_url, api_key=MASTER_KEY, max_retries=0) as c:
        yield c


def test_openai_sdk_chat_to_anthropic(oai: openai.OpenAI) -> None:
    """An OpenAI chat request to a Claude deployment comes back as a chat.completion."""
    reply = oai.chat.completions.create(model="claude", messages=USER, max_tokens=50)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0


def test_openai_sdk_stream_to_anthropic_with_usage(oai: openai.OpenAI) -> None:
    """Anthropic's event stream becomes chat.completion.chunk SSE with a usage chunk."""
    chunks = list(
        oai.chat.completions.create(
            model="claude", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_sdk_tool_calls_to_anthropic(oai: openai.OpenAI) -> None:
    """tool_use blocks come back as tool_calls, streamed and not."""
    reply = oai.chat.completions.create(
        model="claude-tool", messages=USER, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    assert isinstance(orjson.loads(call.function.arguments), dict)
    assert reply.choices[0].finish_reason == "tool_calls"
    chunks = list(
        oai.chat.completions.create(
            model="claude-tool", messages=USER, tools=[WEATHER_TOOL], stream=True
        )
    )
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
        for tc in c.choices[0].delta.tool_calls
        if tc.function
    )
    assert isinstance(orjson.loads(args), dict)


def test_dropped_params_are_named(proxy: ProxyServer) -> None:
    """Parameters Anthropic has no use for are dropped and listed in a header."""
    r = httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": "claude", "messages": USER, "logit_bias": {"1": 1}, "seed": 3},
        headers={"authorization": f"Bearer {MASTER_KEY}"},
    )
    assert r.status_code == 200, r.text
    assert set(r.headers["x-llm-proxy-dropped-params"].split(",")) == {"logit_bias", "seed"}


@pytest.mark.parametrize(
    ("model", "exc", "status"),
    [("claude-529", openai.InternalServerError, 503), ("claude-429", openai.RateLimitError, 429)],
)
def test_anthropic_errors_map_for_openai_clients(
    oai: openai.OpenAI, model: str, exc: type[openai.APIStatusError], status: int
) -> None:
    """overloaded_error 529 becomes 503, rate_limit_error 429, in OpenAI's shape."""
    with pytest.raises(exc) as info:
        oai.chat.completions.create(model=model, messages=USER)
    assert info.value.status_code == status
    assert set(info.value.response.json()["error"]) == {"message", "type", "param", "code"}


def test_midstream_error_ends_the_stream_cleanly(oai: openai.OpenAI) -> None:
    """An error event in Anthropic's stream reaches the OpenAI client as an error."""
    with pytest.raises(openai.APIError):
        for _ in oai.chat.completions.create(model="claude-midstream", messages=USER, stream=True):
            pass


def test_unknown_events_are_passed_over(oai: openai.OpenAI) -> None:
    """Event types from the future do not break the translation."""
    chunks = list(oai.chat.completions.create(model="claude-future", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("model", ["claude", "gpt-4o-mini"])
def test_messages_endpoint(claude: anthropic.Anthropic, model: str) -> None:
    """/v1/messages answers in Anthropic's format, passed through or translated."""
    message = claude.messages.create(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["claude", "gpt-4o-mini"])
def test_messages_endpoint_stream(claude: anthropic.Anthropic, model: str) -> None:
    """Streamed /v1/messages gives Anthropic's event sequence, both routings."""
    with claude.messages.stream(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_messages_endpoint_tools_to_anthropic(claude: anthropic.Anthropic) -> None:
    """Tool use passes through /v1/messages to a Claude deployment."""
    message = claude.messages.create(
        model="claude-tool",
        max_tokens=200,
        tools=[
            {
                "name": "get_weather",
                "description": "Weather",
                "input_schema": WEATHER_TOOL["function"]["parameters"],
            }
        ],  # type: ignore[index]
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert any(block.type == "tool_use" for block in message.content)
    assert message.stop_reason == "tool_use"


def test_messages_endpoint_errors(claude: anthropic.Anthropic) -> None:
    """Errors on /v1/messages are Anthropic-shaped, so the SDK raises its own classes."""
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(
            model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "robot", "content": "x"}]
        )  # type: ignore[list-item]
    assert info.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(
            model="claude-529", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )


def test_messages_endpoint_needs_the_key(proxy: ProxyServer) -> None:
    """Without our key, /v1/messages is a 401 in Anthropic's shape."""
    with (
        anthropic.Anthropic(base_url=proxy.root_url, api_key="sk-wrong", max_retries=0) as c,
        pytest.raises(anthropic.AuthenticationError),
    ):
        c.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    r = httpx.post(
        f"{proxy.base_url}/messages",
        json={"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 200


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    """/v1/messages/count_tokens answers with an input token count."""
    counted = claude.messages.count_tokens(
        model="claude", messages=[{"role": "user", "content": "Hello there, how are you?"}]
    )
    assert counted.input_tokens > 5


def test_metrics_count_messages(proxy: ProxyServer, claude: anthropic.Anthropic) -> None:
    """Requests on /v1/messages are counted under their own route."""
    claude.messages.create(
        model="claude", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    text = proxy.get("/metrics")[1].decode()
    assert 'llm_proxy_requests_total{model="claude",route="messages",status="200"}' in text
