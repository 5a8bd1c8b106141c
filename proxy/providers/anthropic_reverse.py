"""Anthropic Messages request -> OpenAI chat, for ``/v1/messages`` on OpenAI-compatible models.

The reverse of ``providers/anthropic.py``: the ``system`` prompt becomes a system message,
content blocks become content parts, ``tool_use`` blocks become ``tool_calls``, and each
``tool_result`` block becomes a ``tool`` message placed before the rest of its user turn.
Generation knobs map one to one (``stop_sequences`` -> ``stop``, ``metadata.user_id`` ->
``user``, a thinking budget -> ``reasoning_effort``); ``top_k``, which OpenAI lacks, is left
out. Thinking blocks of earlier turns are not sent on: their signatures mean nothing to
another model. A ``tool_result``'s ``is_error`` flag has no OpenAI counterpart and is lost.

The answer goes back the same way (``openai_response_to_messages``), streams through
``OpenAIToAnthropicStream``, and errors render in Anthropic's shape
(``openai_error_to_anthropic``).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import orjson

from proxy import tokens
from proxy.errors import InvalidRequestError, UpstreamProtocolError
from proxy.providers._anthropic_reverse_blocks import openai_messages, openai_tools
from proxy.providers._anthropic_reverse_stream import (
    STOP_REASONS,
    OpenAIToAnthropicStream,
    anthropic_error_event,
    anthropic_usage,
    message_id,
    openai_error_to_anthropic,
)
from proxy.wire.anthropic import (
    CountTokensRequest,
    MessagesRequest,
    ThinkingConfig,
    ToolChoice,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
)
from proxy.wire.openai import Usage

__all__ = [
    "OpenAIToAnthropicStream",
    "anthropic_error_event",
    "count_tokens",
    "decode_messages_request",
    "messages_to_openai",
    "openai_error_to_anthropic",
    "openai_response_to_messages",
]

_T = TypeVar("_T")
_request_decoder = msgspec.json.Decoder(MessagesRequest)
_count_decoder = msgspec.json.Decoder(CountTokensRequest)


class _Function(msgspec.Struct):
    name: str
    arguments: str = ""


class _ToolCall(msgspec.Struct):
    id: str
    function: _Function


class _Message(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    id: str = ""
    usage: Usage | None = None


_completion_decoder = msgspec.json.Decoder(_Completion)


def decode_messages_request(body: bytes) -> MessagesRequest:
    """Validate a ``/v1/messages`` body; a 400 names the bad field."""
    request = _decode(_request_decoder, body)
    if not request.messages:
        raise InvalidRequestError("messages: at least one message is required", param="messages")
    return request


def messages_to_openai(body: bytes, upstream_model: str) -> tuple[bytes, bool]:
    """The OpenAI chat body for an Anthropic request, and whether it streams."""
    req = decode_messages_request(body)
    out: dict[str, Any] = {
        "model": upstream_model,
        "messages": openai_messages(req.system, req.messages),
        "max_tokens": req.max_tokens,
    }
    if req.temperature is not None:
        out["temperature"] = req.temperature
    if req.top_p is not None:
        out["top_p"] = req.top_p
    if req.stop_sequences:
        out["stop"] = req.stop_sequences
    if req.metadata is not None and req.metadata.user_id:
        out["user"] = req.metadata.user_id
    if req.tools:
        out["tools"] = openai_tools(req.tools)
    if req.tool_choice is not None:
        out.update(_tool_choice(req.tool_choice))
    effort = _reasoning_effort(req.thinking)
    if effort is not None:
        out["reasoning_effort"] = effort
    stream = bool(req.stream)
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return orjson.dumps(out), stream


def openai_response_to_messages(body: bytes, model: str) -> tuple[bytes, Usage | None]:
    """An Anthropic ``message`` for an OpenAI ``chat.completion``, and the usage to account."""
    try:
        completion = _completion_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamProtocolError(
            f"the upstream answered 200 with a body that is not a chat completion: {exc}"
        ) from exc
    if not completion.choices:
        raise UpstreamProtocolError("the upstream answered a chat completion with no choices")
    choice = completion.choices[0]
    msg = choice.message
    content: list[dict[str, Any]] = []
    if msg.reasoning_content:
        content.append({"type": "thinking", "thinking": msg.reasoning_content, "signature": ""})
    text = msg.content or msg.refusal
    if text:
        content.append({"type": "text", "text": text})
    for call in msg.tool_calls or ():
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.function.name, "input": _input(call)}
        )
    message = {
        "id": message_id(completion.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.finish_reason or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(completion.usage),
    }
    return orjson.dumps(message), completion.usage


def count_tokens(body: bytes, model: str | None = None) -> bytes:
    """``/v1/messages/count_tokens``: ``{"input_tokens": N}``, counted with tiktoken.

    An estimate for Claude models (their tokenizer is not public); exact for OpenAI models
    reached through ``/v1/messages``.
    """
    req = _decode(_count_decoder, body)
    messages = openai_messages(req.system, req.messages)
    tools = openai_tools(req.tools) if req.tools else None
    count = tokens.count_chat_prompt_tokens(messages, model or req.model, tools)
    return orjson.dumps({"input_tokens": count})


def _input(call: _ToolCall) -> dict[str, Any]:
    try:
        value = orjson.loads(call.function.arguments or "{}")
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamProtocolError(
            f"the upstream's tool call {call.id} has arguments that are not a JSON object"
        )
    return value


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    if isinstance(choice, ToolChoiceNone):
        return {"tool_choice": "none"}
    out: dict[str, Any]
    if isinstance(choice, ToolChoiceAuto):
        out = {"tool_choice": "auto"}
    elif isinstance(choice, ToolChoiceAny):
        out = {"tool_choice": "required"}
    else:
        out = {"tool_choice": {"type": "function", "function": {"name": choice.name}}}
    if choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def _reasoning_effort(thinking: ThinkingConfig | None) -> str | None:
    """Budgets up to the forward mapping's (1024 / 4096 / 16384) map to low / medium / high."""
    if thinking is None or thinking.type != "enabled" or thinking.budget_tokens is None:
        return None
    if thinking.budget_tokens < 4096:
        return "low"
    return "medium" if thinking.budget_tokens < 16384 else "high"


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    if not body.strip():
        raise InvalidRequestError("The request body is empty; expected a JSON object.")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, param = _describe(str(exc))
        raise InvalidRequestError(message, param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from exc


def _describe(text: str) -> tuple[str, str | None]:
    """msgspec's ``<what> - at `$.a[0].b``` as Anthropic words it: ``a.0.b: <what>``."""
    what, sep, path = text.partition(" - at `$")
    param = path.rstrip("`").lstrip(".").replace("[", ".").replace("]", "") if sep else ""
    if what.startswith("Object missing required field `"):
        name = what.split("`")[1]
        param = f"{param}.{name}" if param else name
        return f"{param}: Field required", param
    if not param:
        return f"Invalid request: {what}", None
    return f"{param}: {what}", param
