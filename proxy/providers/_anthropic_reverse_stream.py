"""An OpenAI chunk stream -> Anthropic's SSE events, and errors in Anthropic's shape.

Events come out in the order Anthropic emits them: ``message_start``; per content block a
``content_block_start``, its ``content_block_delta``s and a ``content_block_stop``; then
``message_delta`` (stop reason and usage) and ``message_stop``. A block opens when the kind
of delta changes (reasoning -> ``thinking``, content -> ``text``, a new tool call ->
``tool_use``) and closes when the next one opens. The final ``message_delta`` waits for
``[DONE]``, because OpenAI sends the usage after the ``finish_reason``; as
``message_start`` goes out before any count is known, its ``input_tokens`` is the caller's
estimate (or 0) and ``message_delta`` carries the real counts.

An upstream ``{"error": ...}`` event becomes Anthropic's ``event: error`` and ends the
stream; so does an upstream stream that ends with neither ``finish_reason`` nor ``[DONE]``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from proxy.errors import ProxyError, UpstreamProtocolError, UpstreamStatusError
from proxy.providers._sse import event_data, split_events
from proxy.providers.base import StreamAccount
from proxy.wire.openai import Usage

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# What an Anthropic client expects for each of our statuses (Anthropic's error types).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _ChoiceDelta(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _StreamError(msgspec.Struct):
    message: str | None = None


class _Chunk(msgspec.Struct):
    id: str = ""
    choices: list[_ChoiceDelta] = []
    usage: Usage | None = None
    error: _StreamError | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


def message_id(openai_id: str) -> str:
    return "msg_" + (openai_id.removeprefix("chatcmpl-") or "proxy")


def anthropic_usage(usage: Usage | None) -> dict[str, int]:
    """OpenAI's prompt count includes cache reads; Anthropic's ``input_tokens`` does not."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details else 0
    return {
        "input_tokens": usage.prompt_tokens - cached,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def openai_error_to_anthropic(err: ProxyError) -> bytes:
    """``{"type": "error", "error": {"type": ..., "message": ...}}`` for any of our errors."""
    kind = ERROR_TYPES.get(err.status)
    if kind is None:
        kind = "invalid_request_error" if err.status < 500 else "api_error"
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": err.message}})


def anthropic_error_event(err: ProxyError) -> bytes:
    """The error as a stream event, for errors after the stream's headers went out."""
    return b"event: error\ndata: " + openai_error_to_anthropic(err) + b"\n\n"


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return (
        b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"
    )


class OpenAIToAnthropicStream:
    __slots__ = (
        "_block",
        "_ended",
        "_input_tokens",
        "_model",
        "_next_index",
        "_pending",
        "_pieces",
        "_started",
        "_stop_reason",
        "_tools",
        "account",
        "error",
    )

    def __init__(self, *, model: str, input_tokens: int = 0) -> None:
        self.account = StreamAccount()
        self.error: ProxyError | None = None
        self._model = model
        self._input_tokens = input_tokens
        self._pending = b""
        self._started = False
        self._ended = False
        self._block: tuple[str, int] | None = None  # the open block: kind, index
        self._next_index = 0
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> block index
        self._stop_reason: str | None = None
        self._pieces: list[str] = []

    def feed(self, chunk: bytes) -> bytes:
        if self._ended:
            return b""
        events, self._pending = split_events(self._pending + chunk)
        out: list[bytes] = []
        for event in events:
            payload = event_data(event)
            if payload == b"[DONE]":
                out.extend(self._end())
            elif payload:
                out.extend(self._translate(payload))
            if self._ended:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        out = self.feed(b"\n\n") if self._pending.strip() else b""  # a last unterminated event
        if self._ended:
            return out
        if self._stop_reason is not None:  # some servers end without [DONE]
            return out + b"".join(self._end())
        self._ended = True
        self.error = UpstreamProtocolError("the upstream stream ended before its last chunk")
        return out + anthropic_error_event(self.error)

    def completion_text(self) -> str:
        return "".join(self._pieces)

    def _translate(self, payload: bytes) -> list[bytes]:
        try:
            chunk = _chunk_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return []
        if chunk.error is not None:
            self._ended = True
            self.error = UpstreamStatusError(
                chunk.error.message or "the upstream failed mid-stream",
                status=502,
                type="upstream_error",
                retryable=True,
            )
            return [anthropic_error_event(self.error)]
        out = self._start(chunk.id)
        if chunk.usage is not None:
            self.account.usage = chunk.usage
        for choice in chunk.choices[:1]:
            delta = choice.delta
            if delta is not None:
                out.extend(self._text("thinking", "thinking_delta", delta.reasoning_content))
                out.extend(self._text("text", "text_delta", delta.content))
                for call in delta.tool_calls or ():
                    out.extend(self._tool_call(call))
            if choice.finish_reason is not None:
                self._stop_reason = STOP_REASONS.get(choice.finish_reason, "end_turn")
        return out

    def _start(self, openai_id: str) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": message_id(openai_id),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        return [_event("message_start", {"message": message})]

    def _open(self, kind: str, block: dict[str, Any]) -> tuple[list[bytes], int]:
        """Close the open block and start the next; the events, and the new block's index."""
        out = self._close()
        index = self._next_index
        self._next_index += 1
        self._block = (kind, index)
        out.append(_event("content_block_start", {"index": index, "content_block": block}))
        return out, index

    def _close(self) -> list[bytes]:
        if self._block is None:
            return []
        _, index = self._block
        self._block = None
        return [_event("content_block_stop", {"index": index})]

    def _text(self, kind: str, delta_type: str, text: str | None) -> list[bytes]:
        if not text:
            return []
        self._pieces.append(text)
        out: list[bytes] = []
        if self._block is not None and self._block[0] == kind:
            index = self._block[1]
        else:
            empty = {"type": "thinking", "thinking": "", "signature": ""}
            block = empty if kind == "thinking" else {"type": "text", "text": ""}
            out, index = self._open(kind, block)
        delta = {"type": delta_type, kind: text}
        out.append(_event("content_block_delta", {"index": index, "delta": delta}))
        return out

    def _tool_call(self, call: _ToolCallDelta) -> list[bytes]:
        out: list[bytes] = []
        function = call.function or _FunctionDelta()
        index = self._tools.get(call.index)
        if index is None:  # the first piece of a call names it
            block = {
                "type": "tool_use",
                "id": call.id or f"toolu_{call.index}",
                "name": function.name or "",
                "input": {},
            }
            out, index = self._open("tool", block)
            self._tools[call.index] = index
        if function.arguments:
            self._pieces.append(function.arguments)
            delta = {"type": "input_json_delta", "partial_json": function.arguments}
            out.append(_event("content_block_delta", {"index": index, "delta": delta}))
        return out

    def _end(self) -> list[bytes]:
        self._ended = True
        out = [*self._start(""), *self._close()]
        usage = anthropic_usage(self.account.usage)
        if self.account.usage is None:
            usage["input_tokens"] = self._input_tokens
        delta = {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}
        out.append(_event("message_delta", {"delta": delta, "usage": usage}))
        out.append(_event("message_stop", {}))
        return out
