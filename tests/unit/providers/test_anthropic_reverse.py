"""Anthropic requests to OpenAI-compatible models: request, answer, errors, token count."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import Message
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import (
    InvalidRequestError,
    NotFoundError,
    ProxyError,
    RateLimitedError,
    RequestTooLargeError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from proxy.providers.anthropic import AnthropicAdapter
from proxy.providers.anthropic_reverse import (
    anthropic_error_event,
    count_tokens,
    decode_messages_request,
    messages_to_openai,
    openai_error_to_anthropic,
    openai_response_to_messages,
)
from proxy.providers.base import Operation, ParsedRequest
from proxy.settings import DeploymentParams

USER = {"role": "user", "content": "hi"}


def _openai(**fields: Any) -> dict[str, Any]:
    fields.setdefault("messages", [USER])
    fields.setdefault("max_tokens", 256)
    body, _ = messages_to_openai(orjson.dumps({"model": "claude-alias", **fields}), "gpt-4o")
    out: dict[str, Any] = orjson.loads(body)
    return out


def _messages(*messages: dict[str, Any], **fields: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = _openai(messages=list(messages), **fields)["messages"]
    return out


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [USER]}, "max_tokens"),
        ({"max_tokens": 5, "messages": [USER]}, "model"),
        ({"model": "m", "max_tokens": "5", "messages": [USER]}, "max_tokens"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]},
            "messages.0.role",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "video"}]}],
            },
            "messages.0.content.0.type",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [USER], "tool_choice": {"type": "tool"}},
            "tool_choice.name",
        ),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
    ],
)
def test_invalid_request_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    """A bad /v1/messages body is refused before any upstream call, naming the field."""
    with pytest.raises(InvalidRequestError) as info:
        decode_messages_request(orjson.dumps(body))
    assert info.value.param == param
    assert info.value.message.startswith(param)


@pytest.mark.parametrize("body", [b"", b"  ", b"{nope"])
def test_empty_or_broken_body_is_a_400(body: bytes) -> None:
    """An empty body or one that is not JSON is a 400 too."""
    with pytest.raises(InvalidRequestError):
        decode_messages_request(body)


# --------------------------------------------------------------------------- request


def test_basic_fields_map_one_to_one() -> None:
    """model, max_tokens, sampling, stop_sequences and metadata.user_id carry over."""
    out = _openai(
        temperature=0.2,
        top_p=0.8,
        top_k=5,
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
    )
    assert out == {
        "model": "gpt-4o",
        "messages": [USER],
        "max_tokens": 256,
        "temperature": 0.2,
        "top_p": 0.8,
        "stop": ["END"],
        "user": "u-1",
    }


def test_stream_asks_for_usage() -> None:
    """A streamed request streams upstream and asks for the usage chunk."""
    body, stream = messages_to_openai(
        orjson.dumps({"model": "m", "max_tokens": 5, "messages": [USER], "stream": True}), "x"
    )
    assert stream is True
    assert orjson.loads(body)["stream_options"] == {"include_usage": True}
    assert (
        messages_to_openai(orjson.dumps({"model": "m", "max_tokens": 5, "messages": [USER]}), "x")[
            1
        ]
        is False
    )


@pytest.mark.parametrize(
    "system", ["Be brief.", [{"type": "text", "text": "Be"}, {"type": "text", "text": "brief."}]]
)
def test_system_becomes_a_system_message(system: object) -> None:
    """The system prompt, a string or text blocks, becomes the first message."""
    first = _messages(USER, system=system)[0]
    assert first["role"] == "system"
    assert first["content"] in ("Be brief.", "Be\nbrief.")


def test_content_blocks_become_parts() -> None:
    """Text, image (base64 and url) and document blocks become OpenAI content parts."""
    content = [
        {"type": "text", "text": "Look:"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA="}},
        {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVB="},
        },
        {"type": "document", "source": {"type": "text", "data": "plain words"}},
    ]
    assert _messages({"role": "user", "content": content})[0]["content"] == [
        {"type": "text", "text": "Look:"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA="}},
        {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
        {
            "type": "file",
            "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVB="},
        },
        {"type": "text", "text": "plain words"},
    ]


def test_file_references_are_a_400() -> None:
    """Files API references cannot reach another provider: a 400 naming the block."""
    image = {"type": "image", "source": {"type": "file", "file_id": "file_1"}}
    with pytest.raises(InvalidRequestError) as info:
        _messages({"role": "user", "content": [image]})
    assert info.value.param == "messages.0.content.0.source"


def test_tool_use_and_tool_results() -> None:
    """tool_use becomes tool_calls; tool_results become tool messages before the user text."""
    assistant = {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hm", "signature": "s"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Oslo"}},
        ],
    }
    results = {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"},
            {
                "type": "tool_result",
                "tool_use_id": "toolu_2",
                "content": [
                    {"type": "text", "text": "map:"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/m.png"}},
                ],
                "is_error": False,
            },
            {"type": "text", "text": "So?"},
        ],
    }
    out = _messages(USER, assistant, results)
    assert out[1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "w", "arguments": '{"city":"Oslo"}'},
            }
        ],
    }
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "cold"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "map:"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x/m.png"}},
                {"type": "text", "text": "So?"},
            ],
        },
    ]


def test_tools_become_functions() -> None:
    """Custom tools become function tools; server tools are refused."""
    schema = {"type": "object", "properties": {}}
    tools = [{"name": "w", "description": "Weather", "input_schema": schema}]
    assert _openai(tools=tools)["tools"] == [
        {
            "type": "function",
            "function": {"name": "w", "parameters": schema, "description": "Weather"},
        }
    ]
    with pytest.raises(InvalidRequestError) as info:
        _openai(tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert info.value.param == "tools.0"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "w"},
            {"tool_choice": {"type": "function", "function": {"name": "w"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
    ],
)
def test_tool_choice_variants(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    """Each Anthropic tool_choice has its OpenAI counterpart."""
    out = _openai(tool_choice=choice)
    assert {k: out[k] for k in expected} == expected
    assert "parallel_tool_calls" in out or "parallel_tool_calls" not in expected


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 4096}, "medium"),
        ({"type": "enabled", "budget_tokens": 10000}, "medium"),
        ({"type": "enabled", "budget_tokens": 16384}, "high"),
        ({"type": "disabled"}, None),
        ({"type": "adaptive"}, None),
    ],
)
def test_thinking_becomes_reasoning_effort(thinking: dict[str, Any], effort: str | None) -> None:
    """A thinking budget maps to low / medium / high; no budget sends no effort."""
    assert _openai(thinking=thinking, max_tokens=20000).get("reasoning_effort") == effort


# --------------------------------------------------------------------------- round trip

_text = st.text(min_size=1, max_size=20)
_turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": _text})


def _meaning(messages: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """Role and texts per turn, with neighbouring same-role messages merged."""
    out: list[tuple[str, list[str]]] = []
    for message in messages:
        content = message["content"]
        texts = [content] if isinstance(content, str) else [p["text"] for p in content]
        if out and out[-1][0] == message["role"]:
            out[-1][1].extend(texts)
        else:
            out.append((message["role"], texts))
    return out


@given(system=st.none() | _text, turns=st.lists(_turn, min_size=1, max_size=6))
def test_openai_to_anthropic_and_back_keeps_the_conversation(
    system: str | None, turns: list[dict[str, Any]]
) -> None:
    """OpenAI -> Anthropic -> OpenAI keeps the system prompt and every turn's text in order."""
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    request = {"model": "alias", "messages": messages, "max_tokens": 64, "stop": ["x"]}
    params = DeploymentParams(model="anthropic/claude")
    adapter = AnthropicAdapter()
    req = ParsedRequest(Operation.CHAT, "alias", orjson.dumps(request), False, False)
    anthropic = adapter.build_request(req, params, "u", {}).body
    back = orjson.loads(messages_to_openai(anthropic, "gpt-4o")[0])
    assert _meaning(back["messages"]) == _meaning(messages)
    assert (back["max_tokens"], back["stop"]) == (64, ["x"])


def test_tool_conversation_round_trips() -> None:
    """Tool calls and results survive OpenAI -> Anthropic -> OpenAI unchanged."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    messages = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
    ]
    req = ParsedRequest(
        Operation.CHAT, "a", orjson.dumps({"model": "a", "messages": messages}), False, False
    )
    params = DeploymentParams(model="anthropic/claude")
    anthropic = AnthropicAdapter().build_request(req, params, "u", {}).body
    assert orjson.loads(messages_to_openai(anthropic, "gpt")[0])["messages"] == messages


# --------------------------------------------------------------------------- response


def _completion(message: dict[str, Any], finish: str = "stop", **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-abc",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            **fields,
        }
    )


def test_response_becomes_an_anthropic_message() -> None:
    """Text, reasoning and tool calls become blocks; usage splits out the cached tokens."""
    message = {
        "role": "assistant",
        "content": "Sunny.",
        "reasoning_content": "Look it up.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "w", "arguments": '{"c":"X"}'},
            }
        ],
    }
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 7,
        "total_tokens": 37,
        "prompt_tokens_details": {"cached_tokens": 10},
    }
    body, counted = openai_response_to_messages(
        _completion(message, "tool_calls", usage=usage), "claude-alias"
    )
    out = Message.model_validate_json(body)  # the official anthropic SDK's model accepts it
    assert out.id == "msg_abc"
    assert out.model == "claude-alias"
    assert out.stop_reason == "tool_use"
    assert [b.type for b in out.content] == ["thinking", "text", "tool_use"]
    assert orjson.loads(body)["content"][2] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "w",
        "input": {"c": "X"},
    }
    assert (out.usage.input_tokens, out.usage.output_tokens, out.usage.cache_read_input_tokens) == (
        20,
        7,
        10,
    )
    assert counted is not None
    assert counted.total_tokens == 37


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        ("new_reason", "end_turn"),
    ],
)
def test_finish_reasons_map_back(finish: str, stop_reason: str) -> None:
    """Each OpenAI finish_reason has an Anthropic stop_reason."""
    body, _ = openai_response_to_messages(_completion({"content": "x"}, finish), "m")
    assert orjson.loads(body)["stop_reason"] == stop_reason


def test_refusal_is_returned_as_text_and_no_usage_is_none() -> None:
    """A refusal message is the answer's text; an upstream without usage reports None."""
    body, usage = openai_response_to_messages(_completion({"content": None, "refusal": "No."}), "m")
    assert orjson.loads(body)["content"] == [{"type": "text", "text": "No."}]
    assert orjson.loads(body)["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert usage is None


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        orjson.dumps({"choices": []}),
        _completion({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{bad"}}]}),
    ],
)
def test_unusable_answers_are_protocol_errors(body: bytes) -> None:
    """Garbage, no choices, or tool arguments that are not a JSON object: a 502."""
    with pytest.raises(UpstreamProtocolError):
        openai_response_to_messages(body, "m")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (InvalidRequestError("bad"), "invalid_request_error"),
        (NotFoundError("none"), "not_found_error"),
        (RequestTooLargeError("big"), "request_too_large"),
        (RateLimitedError("slow"), "rate_limit_error"),
        (UpstreamStatusError("busy", status=503, type="x"), "overloaded_error"),
        (UpstreamTimeoutError("late"), "timeout_error"),
        (UpstreamProtocolError("odd"), "api_error"),
        (ProxyError("boom"), "api_error"),
    ],
)
def test_errors_render_in_anthropic_shape(err: ProxyError, kind: str) -> None:
    """Our errors become {"type": "error", "error": {type, message}} by status."""
    assert orjson.loads(openai_error_to_anthropic(err)) == {
        "type": "error",
        "error": {"type": kind, "message": err.message},
    }


def test_error_event_is_framed_for_sse() -> None:
    """Mid-stream, the error is an ``event: error`` SSE event."""
    event = anthropic_error_event(RateLimitedError("slow"))
    assert event.startswith(b"event: error\ndata: {")
    assert event.endswith(b"\n\n")


# --------------------------------------------------------------------------- count_tokens


def test_count_tokens_grows_with_the_prompt() -> None:
    """count_tokens answers {"input_tokens": N}, more for a longer prompt or with tools."""
    base = {"model": "claude-x", "messages": [USER]}
    short = orjson.loads(count_tokens(orjson.dumps(base)))["input_tokens"]
    longer = orjson.loads(
        count_tokens(orjson.dumps({**base, "system": "You are a very helpful assistant."}))
    )["input_tokens"]
    tool = {
        "name": "w",
        "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    with_tools = orjson.loads(count_tokens(orjson.dumps({**base, "tools": [tool]})))["input_tokens"]
    assert 0 < short < longer
    assert short < with_tools


def test_count_tokens_validates_its_body() -> None:
    """A count_tokens body without messages is a 400 naming the field."""
    with pytest.raises(InvalidRequestError) as info:
        count_tokens(b'{"model": "m"}')
    assert info.value.param == "messages"
