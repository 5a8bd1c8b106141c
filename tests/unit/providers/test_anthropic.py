"""The Anthropic adapter: OpenAI chat requests out, Anthropic messages and errors back."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion

from proxy.errors import (
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    RequestTooLargeError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from proxy.providers import adapter_for
from proxy.providers.anthropic import AnthropicAdapter
from proxy.providers.base import Operation, ParsedRequest, UpstreamRequest
from proxy.settings import DeploymentParams

ADAPTER = AnthropicAdapter()
PARAMS = DeploymentParams(model="anthropic/claude-sonnet-4", api_key="sk-ant")
USER = {"role": "user", "content": "hi"}


def _req(data: dict[str, Any], *, stream: bool = False, wants_usage: bool = False) -> ParsedRequest:
    body = orjson.dumps({"model": "alias", **data})
    return ParsedRequest(Operation.CHAT, "alias", body, stream, wants_usage)


def _build(params: DeploymentParams = PARAMS, **data: Any) -> UpstreamRequest:
    data.setdefault("messages", [USER])
    return ADAPTER.build_request(_req(data), params, ADAPTER.url(Operation.CHAT, params), {})


def _sent(params: DeploymentParams = PARAMS, **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(_build(params, **data).body)
    return body


def _message(**fields: Any) -> bytes:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
        **fields,
    }
    return orjson.dumps(message)


def _answer(body: bytes, **data: Any) -> dict[str, Any]:
    data.setdefault("messages", [USER])
    parsed = ADAPTER.parse_response(_req(data), body)
    ChatCompletion.model_validate_json(parsed.body)  # the official SDK's model accepts it
    out: dict[str, Any] = orjson.loads(parsed.body)
    return out


# --------------------------------------------------------------------------- deployment


def test_registered_under_its_provider_name() -> None:
    """``anthropic/...`` deployments get this adapter from the registry."""
    assert isinstance(adapter_for("anthropic"), AnthropicAdapter)


def test_headers_carry_key_and_version() -> None:
    """Every request sends x-api-key, the configured anthropic-version and a JSON type."""
    params = DeploymentParams(model="anthropic/c", api_key="k", anthropic_version="2024-01-01")
    headers = ADAPTER.prepare(params)
    assert headers["x-api-key"] == "k"
    assert headers["anthropic-version"] == "2024-01-01"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers


@pytest.mark.parametrize(
    ("api_base", "url"),
    [
        (None, "https://api.anthropic.com/v1/messages"),
        ("http://h:1", "http://h:1/v1/messages"),
        ("http://h:1/v1", "http://h:1/v1/messages"),
        ("http://h:1/v1/", "http://h:1/v1/messages"),
    ],
)
def test_url_with_or_without_trailing_v1(api_base: str | None, url: str) -> None:
    """api_base defaults to Anthropic's and may end in /v1, which is not doubled."""
    params = DeploymentParams(model="anthropic/c", api_base=api_base)
    assert ADAPTER.url(Operation.CHAT, params) == url


@pytest.mark.parametrize("op", [Operation.COMPLETION, Operation.EMBEDDING])
def test_only_chat_is_supported(op: Operation) -> None:
    """Legacy completions and embeddings are a 400 naming the unsupported operation."""
    req = ParsedRequest(op, "alias", b'{"model": "alias", "prompt": "x"}', False, False)
    with pytest.raises(InvalidRequestError, match="only supports /v1/chat/completions"):
        ADAPTER.build_request(req, PARAMS, ADAPTER.url(op, PARAMS), {})


# --------------------------------------------------------------------------- request


def test_model_and_default_max_tokens() -> None:
    """The upstream model name is sent, and max_tokens defaults to the deployment's value."""
    sent = _sent(DeploymentParams(model="anthropic/claude-x", default_max_tokens=77))
    assert sent == {"model": "claude-x", "messages": [USER], "max_tokens": 77}


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    """max_completion_tokens, OpenAI's newer name, is preferred to max_tokens."""
    assert _sent(max_tokens=10)["max_tokens"] == 10
    assert _sent(max_tokens=10, max_completion_tokens=20)["max_tokens"] == 20


def test_sampling_parameters_pass_through() -> None:
    """temperature, top_p and top_k are sent as they came."""
    sent = _sent(temperature=0.5, top_p=0.9, top_k=40)
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.5, 0.9, 40)


@pytest.mark.parametrize(("stop", "sequences"), [("END", ["END"]), (["a", "b"], ["a", "b"])])
def test_stop_becomes_stop_sequences(stop: str | list[str], sequences: list[str]) -> None:
    """stop, a string or a list, becomes the stop_sequences list."""
    assert _sent(stop=stop)["stop_sequences"] == sequences


def test_user_becomes_metadata_user_id() -> None:
    """OpenAI's user identifier is Anthropic's metadata.user_id."""
    assert _sent(user="u-42")["metadata"] == {"user_id": "u-42"}


def test_stream_flag_is_sent() -> None:
    """A streaming request asks Anthropic for a stream; stream_options are ours to handle."""
    sent = _sent(stream=True, stream_options={"include_usage": True})
    assert sent["stream"] is True
    assert "stream_options" not in sent


def test_system_and_developer_messages_become_system() -> None:
    """System and developer messages, parts flattened, are joined into the system field."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use"}, {"text": "French."}]},
        USER,
    ]
    sent = _sent(messages=messages)
    assert sent["system"] == "Be brief.\n\nUse\nFrench."
    assert sent["messages"] == [USER]


def test_consecutive_same_role_messages_are_merged() -> None:
    """Anthropic needs alternating roles: neighbours with the same role become one turn."""
    messages = [USER, {"role": "user", "content": "there"}, {"role": "assistant", "content": "a"}]
    sent = _sent(messages=messages)
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}],
        },
        {"role": "assistant", "content": "a"},
    ]


def test_empty_messages_are_left_out() -> None:
    """Empty text is not sent (Anthropic refuses empty blocks), so neighbours merge."""
    messages = [USER, {"role": "assistant", "content": ""}, {"role": "user", "content": "x"}]
    sent = _sent(messages=messages)
    assert len(sent["messages"]) == 1
    assert [b["text"] for b in sent["messages"][0]["content"]] == ["hi", "x"]


def test_image_parts_become_image_blocks() -> None:
    """A base64 data URL becomes a base64 source, an http(s) URL a url source."""
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]
    blocks = _sent(messages=[{"role": "user", "content": content}])["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_inline_pdf_file_becomes_a_document_block() -> None:
    """A file part with base64 file_data becomes a document block."""
    part = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "x": 1}}
    blocks = _sent(messages=[{"role": "user", "content": [part]}])["messages"][0]["content"]
    source = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}
    assert blocks == [{"type": "document", "source": source}]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_audio", "input_audio": {}}, "messages[0].content[0].type"),
        (
            {"type": "image_url", "image_url": {"url": "ftp://x"}},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png,raw"}},
            "messages[0].content[0].image_url.url",
        ),
        ({"type": "file", "file": {"file_id": "file-1"}}, "messages[0].content[0].file.file_data"),
    ],
)
def test_unsupported_parts_are_a_400_naming_them(part: dict[str, Any], param: str) -> None:
    """Audio, odd image URLs and uploaded-file references are refused with their path."""
    with pytest.raises(InvalidRequestError) as info:
        _build(messages=[{"role": "user", "content": [part]}])
    assert info.value.param == param


def test_tool_calls_and_results_round_the_conversation() -> None:
    """Assistant tool_calls become tool_use blocks; tool messages become tool_result blocks."""
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    messages = [
        USER,
        {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "7"}]},
        {"role": "user", "content": "thanks"},
    ]
    sent = _sent(messages=messages)["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
        ],
    }
    assert sent[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "42"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "7"},
            {"type": "text", "text": "thanks"},
        ],
    }


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_invalid_tool_call_arguments_are_a_400(arguments: str) -> None:
    """Arguments that are not a JSON object cannot become tool input: 400 naming them."""
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(InvalidRequestError) as info:
        _build(messages=[USER, {"role": "assistant", "tool_calls": [call]}])
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tool_message_without_call_id_is_a_400() -> None:
    """A tool message must say which call it answers."""
    with pytest.raises(InvalidRequestError) as info:
        _build(messages=[USER, {"role": "tool", "content": "x"}])
    assert info.value.param == "messages[1].tool_call_id"


def test_tools_become_anthropic_tools() -> None:
    """Function definitions become name / description / input_schema."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [
        {
            "type": "function",
            "function": {"name": "w", "description": "Weather", "parameters": schema},
        },
        {"type": "function", "function": {"name": "now"}},
    ]
    assert _sent(tools=tools)["tools"] == [
        {"name": "w", "input_schema": schema, "description": "Weather"},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]


@pytest.mark.parametrize(
    ("choice", "mapped"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "w"}}, {"type": "tool", "name": "w"}),
    ],
)
def test_tool_choice_variants(choice: object, mapped: dict[str, str]) -> None:
    """Each OpenAI tool_choice has its Anthropic counterpart."""
    assert _sent(tool_choice=choice)["tool_choice"] == mapped


def test_parallel_tool_calls_false_disables_parallel_use() -> None:
    """parallel_tool_calls: false sets disable_parallel_tool_use on the (default) choice."""
    assert _sent(parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert _sent(parallel_tool_calls=False, tool_choice="required")["tool_choice"] == {
        "type": "any",
        "disable_parallel_tool_use": True,
    }
    assert "tool_choice" not in _sent(parallel_tool_calls=True)


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("tool_choice", "sometimes", "tool_choice"),
        ("tools", [{"type": "code_interpreter"}], "tools[0].type"),
        ("stop", 5, "stop"),
        ("max_tokens", "10", "max_tokens"),
        ("reasoning_effort", "extreme", "reasoning_effort"),
        ("response_format", {"type": "yaml"}, "response_format.type"),
    ],
)
def test_malformed_fields_are_a_400_naming_them(field: str, value: object, param: str) -> None:
    """Fields the adapter translates are checked, and a bad one is named in the 400."""
    with pytest.raises(InvalidRequestError) as info:
        _build(**{field: value})
    assert info.value.param == param


def test_json_schema_response_format_forces_a_tool() -> None:
    """response_format json_schema becomes a tool named after the schema, forced."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    sent = _sent(response_format=fmt)
    assert sent["tools"] == [
        {
            "name": "answer",
            "description": "Answer with the response object.",
            "input_schema": schema,
        }
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "answer"}


def test_json_object_response_format_adds_a_system_instruction() -> None:
    """response_format json_object asks for JSON in the system prompt."""
    sent = _sent(
        messages=[{"role": "system", "content": "Be kind."}, USER],
        response_format={"type": "json_object"},
    )
    assert sent["system"].startswith("Be kind.\n\n")
    assert "JSON" in sent["system"]
    assert "system" not in _sent(response_format={"type": "text"})


@pytest.mark.parametrize(("effort", "budget"), [("low", 1024), ("medium", 4096), ("high", 16384)])
def test_reasoning_effort_enables_thinking(effort: str, budget: int) -> None:
    """reasoning_effort becomes a thinking budget, and max_tokens stays above it."""
    sent = _sent(reasoning_effort=effort, max_tokens=1000)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert sent["max_tokens"] == 1000 + budget
    assert _sent(reasoning_effort=effort, max_tokens=50_000)["max_tokens"] == 50_000


def test_unsupported_parameters_are_dropped_and_reported() -> None:
    """With drop_params (the default) unsupported parameters vanish and are listed."""
    out = _build(logit_bias={"1": 2}, seed=7, presence_penalty=0.5, n=2, logprobs=True)
    sent = orjson.loads(out.body)
    assert out.dropped == ("logit_bias", "seed", "presence_penalty", "n", "logprobs")
    assert not {"logit_bias", "seed", "presence_penalty", "n", "logprobs"} & sent.keys()


def test_neutral_values_of_unsupported_parameters_are_not_reported() -> None:
    """Defaults sent explicitly (n=1, penalties 0, logprobs false, nulls) are not drops."""
    out = _build(n=1, presence_penalty=0, frequency_penalty=0.0, logprobs=False, seed=None)
    assert out.dropped == ()


def test_unsupported_parameter_is_a_400_without_drop_params() -> None:
    """With drop_params: false an unsupported parameter is refused and named."""
    params = DeploymentParams(model="anthropic/c", drop_params=False)
    with pytest.raises(InvalidRequestError) as info:
        _build(params, frequency_penalty=1.0)
    assert info.value.param == "frequency_penalty"
    assert info.value.code == "unsupported_parameter"


# --------------------------------------------------------------------------- response


def test_text_answer_becomes_a_chat_completion() -> None:
    """Text blocks are joined into the message content, with ids and model carried over."""
    body = _message(content=[{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}])
    out = _answer(body)
    assert out["id"] == "chatcmpl-msg_1"
    assert out["object"] == "chat.completion"
    assert out["model"] == "claude-sonnet-4"
    assert isinstance(out["created"], int)
    assert out["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello",
        "refusal": None,
    }
    assert out["choices"][0]["finish_reason"] == "stop"


def test_tool_use_blocks_become_tool_calls() -> None:
    """tool_use blocks become tool_calls with the input as a JSON string."""
    content = [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}]
    out = _answer(_message(content=content, stop_reason="tool_use"))
    message = out["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "w", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_thinking_blocks_become_reasoning_content() -> None:
    """Thinking is returned as reasoning_content; redacted thinking is left out."""
    content = [
        {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xx"},
        {"type": "text", "text": "Yes."},
    ]
    message = _answer(_message(content=content))["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("Hmm.", "Yes.")


def test_forced_json_tool_comes_back_as_content() -> None:
    """With response_format json_schema, the forced tool's input is the message content."""
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {}}}
    content = [{"type": "tool_use", "id": "t", "name": "answer", "input": {"n": 3}}]
    out = _answer(_message(content=content, stop_reason="tool_use"), response_format=fmt)
    message = out["choices"][0]["message"]
    assert orjson.loads(message["content"]) == {"n": 3}
    assert "tool_calls" not in message
    assert out["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish: str) -> None:
    """Every Anthropic stop_reason has an OpenAI finish_reason."""
    out = _answer(_message(stop_reason=stop_reason))
    assert out["choices"][0]["finish_reason"] == finish


def test_usage_counts_cache_tokens_in_the_prompt() -> None:
    """prompt_tokens adds cache reads and writes to input_tokens; details keep both apart."""
    usage = {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
    }
    req = _req({"messages": [USER]})
    parsed = ADAPTER.parse_response(req, _message(usage=usage))
    out = orjson.loads(parsed.body)
    assert out["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_creation_input_tokens": 20},
    }
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (130, 5)
    assert parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 100


def test_garbage_answer_is_a_protocol_error() -> None:
    """A 200 whose body is not an Anthropic message is a bad upstream response."""
    with pytest.raises(UpstreamProtocolError):
        ADAPTER.parse_response(_req({"messages": [USER]}), b"<html>")


# --------------------------------------------------------------------------- errors


def _error(kind: str, message: str = "boom") -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def test_invalid_request_keeps_the_upstream_message() -> None:
    """A 400 stays a 400 with Anthropic's message, so the client sees what was wrong."""
    err = ADAPTER.parse_error(400, {}, _error("invalid_request_error", "prompt is too long"), "d")
    assert isinstance(err, InvalidRequestError)
    assert (err.status, err.message) == (400, "prompt is too long")


@pytest.mark.parametrize(
    ("status", "kind"), [(401, "authentication_error"), (403, "permission_error")]
)
def test_credential_errors_are_gateway_errors(status: int, kind: str) -> None:
    """A rejected proxy key is the proxy's fault: a retryable 502 naming the deployment."""
    err = ADAPTER.parse_error(status, {}, _error(kind), "dep-1")
    assert isinstance(err, UpstreamStatusError)
    assert (err.status, err.retryable) == (502, True)
    assert "dep-1" in err.message


def test_not_found_and_too_large() -> None:
    """404 becomes NotFoundError and 413 RequestTooLargeError."""
    assert isinstance(ADAPTER.parse_error(404, {}, _error("not_found_error"), "d"), NotFoundError)
    too_large = ADAPTER.parse_error(413, {}, _error("request_too_large"), "d")
    assert isinstance(too_large, RequestTooLargeError)
    assert too_large.status == 413


def test_rate_limit_keeps_retry_after() -> None:
    """A 429 stays a 429 with the upstream's retry-after."""
    err = ADAPTER.parse_error(429, {"retry-after": "12"}, _error("rate_limit_error"), "d")
    assert isinstance(err, RateLimitedError)
    assert err.headers()["retry-after"] == "12"


def test_overloaded_is_a_retryable_503() -> None:
    """Anthropic's 529 overloaded_error becomes a retryable 503."""
    err = ADAPTER.parse_error(529, {"retry-after": "3"}, _error("overloaded_error"), "d")
    assert isinstance(err, UpstreamStatusError)
    assert (err.status, err.retryable, err.retry_after) == (503, True, 3.0)
    assert "x-should-retry" not in err.headers()


@pytest.mark.parametrize(("status", "mapped"), [(500, 502), (502, 502), (503, 503), (504, 504)])
def test_server_errors_are_retryable_gateway_errors(status: int, mapped: int) -> None:
    """api_error and other 5xx become retryable 502/503/504."""
    err = ADAPTER.parse_error(status, {}, _error("api_error"), "d")
    assert (err.status, err.retryable) == (mapped, True)


def test_non_json_error_body_keeps_its_text() -> None:
    """An error body that is not Anthropic JSON (a proxy's HTML page) is still reported."""
    err = ADAPTER.parse_error(502, {}, b"Bad Gateway", "d")
    assert err.status == 502
    assert "Bad Gateway" in err.message
