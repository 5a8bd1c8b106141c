"""Anthropic answers -> OpenAI: the message, its usage, and error statuses.

Usage: Anthropic's ``input_tokens`` leaves out the tokens read from and written to the
prompt cache, so OpenAI's ``prompt_tokens`` is the sum of the three;
``prompt_tokens_details.cached_tokens`` is the cache reads, and
``prompt_tokens_details.cache_creation_input_tokens`` (our extension, named as Anthropic
names it) the cache writes, which Anthropic bills at a higher rate than plain input.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from proxy.errors import (
    InvalidRequestError,
    NotFoundError,
    ProxyError,
    RateLimitedError,
    RequestTooLargeError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from proxy.providers.base import ParsedResponse
from proxy.wire.anthropic import AnthropicUsage, ErrorResponse, Message
from proxy.wire.openai import PromptTokensDetails, Usage

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server tool paused the turn; the client may continue it
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_message_decoder = msgspec.json.Decoder(Message)
_error_decoder = msgspec.json.Decoder(ErrorResponse)


def finish_reason(stop_reason: str | None, json_tool: str | None) -> str | None:
    if stop_reason is None:
        return None
    if stop_reason == "tool_use" and json_tool is not None:
        return "stop"  # the forced response_format tool: its call is the answer
    return FINISH_REASONS.get(stop_reason, "stop")


def openai_usage(usage: AnthropicUsage) -> Usage:
    cached = usage.cache_read_input_tokens or 0
    prompt = (usage.input_tokens or 0) + cached + (usage.cache_creation_input_tokens or 0)
    completion = usage.output_tokens or 0
    return Usage(prompt, completion, prompt + completion, PromptTokensDetails(cached))


def usage_json(usage: AnthropicUsage) -> dict[str, Any]:
    counted = openai_usage(usage)
    return {
        "prompt_tokens": counted.prompt_tokens,
        "completion_tokens": counted.completion_tokens,
        "total_tokens": counted.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cache_read_input_tokens or 0,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens or 0,
        },
    }


def to_chat_completion(body: bytes, json_tool: str | None) -> ParsedResponse:
    try:
        msg = _message_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamProtocolError(
            f"the upstream answered 200 with a body that is not an Anthropic message: {exc}"
        ) from exc
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in msg.content:
        if block.type == "text" and block.text:
            texts.append(block.text)
        elif block.type == "thinking" and block.thinking:
            thinking.append(block.thinking)
        elif block.type == "tool_use" and json_tool is not None and block.name == json_tool:
            texts.append(orjson.dumps(block.input or {}).decode())
        elif block.type == "tool_use":
            arguments = orjson.dumps(block.input or {}).decode()
            function = {"name": block.name or "", "arguments": arguments}
            calls.append({"id": block.id or "", "type": "function", "function": function})
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(msg.stop_reason, json_tool) or "stop",
    }
    completion = {
        "id": "chatcmpl-" + msg.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": msg.model,
        "choices": [choice],
        "usage": usage_json(msg.usage),
    }
    return ParsedResponse(orjson.dumps(completion), openai_usage(msg.usage))


def parse_anthropic_error(
    status: int, headers: Mapping[str, str], body: bytes, deployment: str
) -> ProxyError:
    """Map an Anthropic error answer to what our client sees.

    As with OpenAI upstreams, a 401/403 means the proxy's own key is wrong: 502. Anthropic's
    529 (overloaded) becomes a retryable 503, which OpenAI clients know how to back off from.
    """
    kind, message = _error_fields(body)
    retry_after = _retry_after(headers)
    if status == 429:
        return RateLimitedError(message or "upstream rate limit reached", retry_after=retry_after)
    if status in (401, 403):
        return UpstreamStatusError(
            f"deployment {deployment}: the upstream rejected the proxy's credentials "
            f"({status} {kind}: {message or 'no message'})",
            status=502,
            type="upstream_auth_error",
            code="upstream_auth_error",
            retryable=True,
        )
    if status == 404:
        return NotFoundError(message or "not found upstream")
    if status == 413:
        return RequestTooLargeError(message or "request too large for the upstream")
    if 400 <= status < 500 and status != 408:
        return InvalidRequestError(message or f"upstream answered {status}")
    if status == 529 or kind == "overloaded_error":
        return UpstreamStatusError(
            f"the upstream is overloaded: {message or 'no message'}",
            status=503,
            type="service_unavailable",
            code="upstream_overloaded",
            retry_after=retry_after,
            retryable=True,
        )
    mapped = {503: 503, 504: 504, 408: 504}.get(status, 502)
    return UpstreamStatusError(
        f"upstream error {status}: {message or 'no message'}",
        status=mapped,
        type="timeout" if mapped == 504 else "upstream_error",
        code=kind,
        retry_after=retry_after,
        retryable=True,
    )


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    try:
        detail = _error_decoder.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = body[:300].decode("utf-8", "replace").strip()
        return None, text or None
    return detail.type, detail.message or None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
