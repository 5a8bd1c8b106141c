"""Both translations against the fake upstream: real HTTP, real framing, SDK-checked output."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from proxy.errors import UpstreamStatusError
from proxy.providers._sse import event_data, split_events
from proxy.providers.anthropic import AnthropicAdapter
from proxy.providers.anthropic_reverse import (
    OpenAIToAnthropicStream,
    messages_to_openai,
    openai_response_to_messages,
)
from proxy.providers.base import Operation, ParsedRequest, StreamTranslator
from proxy.settings import DeploymentParams
from tests.support.fake_upstream import REPLY_PREFIX
from tests.support.processes import FakeUpstream, run_fake_upstream

KEY = "sk-live"
ADAPTER = AnthropicAdapter()
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    """One fake upstream process for the module."""
    with run_fake_upstream("--require-key", KEY, "--chunks", "4") as upstream:
        yield upstream


def _send(
    fake: FakeUpstream, model: str, stream: bool = False, **data: Any
) -> tuple[ParsedRequest, httpx.Response]:
    params = DeploymentParams(model=f"anthropic/{model}", api_key=KEY, api_base=fake.base_url)
    data.setdefault("messages", [{"role": "user", "content": "hello there"}])
    body = orjson.dumps({"model": "alias", **data, "stream": stream})
    req = ParsedRequest(Operation.CHAT, "alias", body, stream, client_wants_usage=True)
    out = ADAPTER.build_request(
        req, params, ADAPTER.url(Operation.CHAT, params), ADAPTER.prepare(params)
    )
    response = httpx.post(out.url, content=out.body, headers=dict(out.headers), timeout=10)
    return req, response


def _relay(translator: StreamTranslator, response: httpx.Response) -> list[bytes]:
    """Feed the raw body in small, uneven pieces, as a network would."""
    raw, out, size = response.content, [], 1
    position = 0
    while position < len(raw):
        out.append(translator.feed(raw[position : position + size]))
        position += size
        size = size % 37 + 5
    out.append(translator.finish())
    events, rest = split_events(b"".join(out))
    assert rest == b""
    return [p for p in (event_data(e) for e in events) if p is not None]


def test_chat_completion_through_anthropic(fake: FakeUpstream) -> None:
    """A chat request reaches the fake as a valid Messages request and comes back as OpenAI."""
    req, response = _send(
        fake,
        "claude-x",
        messages=[{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hi"}],
    )
    assert response.status_code == 200, response.text
    parsed = ADAPTER.parse_response(req, response.content)
    completion = ChatCompletion.model_validate_json(parsed.body)
    assert completion.choices[0].message.content == REPLY_PREFIX + "alpha bravo charlie delta"
    assert completion.choices[0].finish_reason == "stop"
    assert parsed.usage is not None
    assert parsed.usage.completion_tokens == 4


def test_tool_call_and_its_result_through_anthropic(fake: FakeUpstream) -> None:
    """A tool call comes back as tool_calls, and the follow-up with its result is accepted."""
    req, response = _send(fake, "claude-tool", tools=TOOLS)
    completion = ChatCompletion.model_validate_json(
        ADAPTER.parse_response(req, response.content).body
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    follow_up = [
        {"role": "user", "content": "weather?"},
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    _, second = _send(fake, "claude-x", messages=follow_up, tools=TOOLS)
    assert second.status_code == 200, second.text


def test_json_schema_through_anthropic(fake: FakeUpstream) -> None:
    """response_format json_schema comes back as JSON content, streamed or not."""
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "result", "schema": schema}}
    req, response = _send(fake, "claude-x", response_format=fmt)
    completion = ChatCompletion.model_validate_json(
        ADAPTER.parse_response(req, response.content).body
    )
    assert orjson.loads(completion.choices[0].message.content or "") == {"answer": 1}
    req, response = _send(fake, "claude-x", stream=True, response_format=fmt)
    payloads = _relay(ADAPTER.stream_translator(req), response)
    chunks = [ChatCompletionChunk.model_validate_json(p) for p in payloads[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert orjson.loads(text) == {"answer": 1}


def test_stream_through_anthropic(fake: FakeUpstream) -> None:
    """A streamed answer with thinking and a tool call arrives as valid OpenAI chunks."""
    req, response = _send(fake, "claude-tool", stream=True, tools=TOOLS, reasoning_effort="low")
    translator = ADAPTER.stream_translator(req)
    payloads = _relay(translator, response)
    assert payloads[-1] == b"[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(p) for p in payloads[:-1]]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content", "") for d in deltas)
    arguments = "".join(
        call.function.arguments or ""
        for d in deltas
        for call in d.tool_calls or ()
        if call.function
    )
    assert orjson.loads(arguments) == {"city": "alpha"}
    assert chunks[-1].usage is not None
    assert translator.account.usage is not None


@pytest.mark.parametrize(
    ("model", "status"), [("error-529", 503), ("error-429", 429), ("error-401", 502)]
)
def test_error_statuses_through_anthropic(fake: FakeUpstream, model: str, status: int) -> None:
    """The fake's Anthropic error answers map to the statuses OpenAI clients expect."""
    _, response = _send(fake, model)
    err = ADAPTER.parse_error(response.status_code, response.headers, response.content, "dep")
    assert err.status == status


def test_midstream_error_through_anthropic(fake: FakeUpstream) -> None:
    """An error event mid-stream ends the OpenAI stream with an error event, no [DONE]."""
    req, response = _send(fake, "midstream-error", stream=True)
    translator = ADAPTER.stream_translator(req)
    payloads = _relay(translator, response)
    assert b"[DONE]" not in payloads
    assert "error" in orjson.loads(payloads[-1])
    assert isinstance(getattr(translator, "error", None), UpstreamStatusError)


def _send_openai(fake: FakeUpstream, body: dict[str, Any]) -> tuple[bytes, bool]:
    openai_body, stream = messages_to_openai(orjson.dumps(body), "gpt-4o")
    response = httpx.post(
        f"{fake.base_url}/chat/completions",
        content=openai_body,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.content, stream


def test_messages_through_an_openai_upstream(fake: FakeUpstream) -> None:
    """An Anthropic request reaches an OpenAI upstream and comes back as an Anthropic message."""
    body = {
        "model": "claude-alias",
        "max_tokens": 50,
        "system": "Be nice.",
        "messages": [{"role": "user", "content": "hi"}],
    }
    raw, stream = _send_openai(fake, body)
    assert stream is False
    out, usage = openai_response_to_messages(raw, "claude-alias")
    message = Message.model_validate_json(out)
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith(REPLY_PREFIX)
    assert message.stop_reason == "end_turn"
    assert usage is not None
    assert message.usage.output_tokens == usage.completion_tokens == 4


def test_messages_stream_through_an_openai_upstream(fake: FakeUpstream) -> None:
    """A streamed Anthropic request gets Anthropic events from an OpenAI upstream's chunks."""
    body = {
        "model": "claude-alias",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    openai_body, _ = messages_to_openai(orjson.dumps(body), "gpt-4o")
    response = httpx.post(
        f"{fake.base_url}/chat/completions",
        content=openai_body,
        headers={"authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    translator = OpenAIToAnthropicStream(model="claude-alias")
    payloads = _relay(translator, response)
    kinds = [orjson.loads(p)["type"] for p in payloads]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    delta = orjson.loads(payloads[-2])
    assert delta["usage"]["output_tokens"] == 4
    assert translator.completion_text() == REPLY_PREFIX + "alpha bravo charlie delta"
