"""Anthropic's SSE stream -> OpenAI ``chat.completion.chunk`` events.

Anthropic frames each event as ``event: <type>`` plus ``data: <json>``; the JSON repeats the
type, so only the data line is read. Each complete event is translated as soon as its blank
line arrives, whatever the chunk boundaries: ``message_start`` gives the role chunk, each
content delta one chunk (text -> ``content``, thinking -> ``reasoning_content``, a tool
call's start and argument pieces -> ``tool_calls``), ``message_delta`` the ``finish_reason``
chunk, and ``message_stop`` the usage chunk (when the client asked for it) and ``[DONE]``.
``ping``, ``signature_delta`` and event or block types this code does not know are skipped.

An ``error`` event mid-stream becomes OpenAI's ``data: {"error": {...}}`` and ends the
stream without ``[DONE]``, as OpenAI itself does (the official SDK raises ``APIError`` on it
and stops reading). A stream that ends before ``message_stop`` ends the same way with a 502
error. Either way ``translator.error`` keeps the error for the caller's accounting.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import orjson

from proxy.errors import ProxyError, UpstreamProtocolError
from proxy.providers._anthropic_response import (
    finish_reason,
    openai_usage,
    parse_anthropic_error,
    usage_json,
)
from proxy.providers._sse import DONE, event_data, split_events, sse_event
from proxy.providers.base import StreamAccount
from proxy.wire.anthropic import (
    AnthropicUsage,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ErrorEvent,
    MessageDeltaEvent,
    MessageStartEvent,
    MessageStopEvent,
    StreamEvent,
)

_event_decoder = msgspec.json.Decoder(StreamEvent)
# Anthropic's error types by the HTTP status the same error has outside a stream.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicStreamTranslator:
    __slots__ = (
        "_blocks",
        "_created",
        "_ended",
        "_id",
        "_include_usage",
        "_json_tool",
        "_model",
        "_pending",
        "_pieces",
        "_tool_index",
        "_usage",
        "account",
        "error",
    )

    def __init__(self, *, json_tool: str | None, include_usage: bool) -> None:
        self.account = StreamAccount()
        self.error: ProxyError | None = None
        self._json_tool = json_tool
        self._include_usage = include_usage
        self._pending = b""
        self._id = "chatcmpl-anthropic"
        self._model = ""
        self._created = int(time.time())
        self._blocks: dict[int, str] = {}  # block index -> text | thinking | tool | json
        self._tool_index: dict[int, int] = {}  # block index -> OpenAI tool_calls index
        self._usage = AnthropicUsage()
        self._pieces: list[str] = []
        self._ended = False

    def feed(self, chunk: bytes) -> bytes:
        if self._ended:
            return b""
        events, self._pending = split_events(self._pending + chunk)
        out: list[bytes] = []
        for event in events:
            payload = event_data(event)
            if payload is not None:
                out.extend(self._translate(payload))
            if self._ended:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        out = self.feed(b"\n\n") if self._pending.strip() else b""  # a last unterminated event
        if self._ended:
            return out
        self._ended = True
        self.error = UpstreamProtocolError("the upstream stream ended before message_stop")
        return out + sse_event(self.error.to_json())

    def completion_text(self) -> str:
        return "".join(self._pieces)

    def _translate(self, payload: bytes) -> list[bytes]:
        try:
            event = _event_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return []  # an event type added after this code was written, or noise
        if isinstance(event, ContentBlockDeltaEvent):
            return self._delta(event)
        if isinstance(event, ContentBlockStartEvent):
            return self._block_start(event)
        if isinstance(event, MessageStartEvent):
            self._id = "chatcmpl-" + event.message.id
            self._model = event.message.model
            self._add_usage(event.message.usage)
            return [self._chunk({"role": "assistant", "content": ""})]
        if isinstance(event, MessageDeltaEvent):
            self._add_usage(event.usage)
            reason = finish_reason(event.delta.stop_reason, self._json_tool)
            return [self._chunk({}, reason)] if reason else []
        if isinstance(event, MessageStopEvent):
            self._ended = True
            if not self._include_usage:
                return [DONE]
            final = self._envelope([])
            final["usage"] = usage_json(self._usage)
            return [sse_event(orjson.dumps(final)), DONE]
        if isinstance(event, ErrorEvent):
            self._ended = True
            status = _ERROR_STATUS.get(event.error.type, 500)
            self.error = parse_anthropic_error(status, {}, payload, "(stream)")
            return [sse_event(self.error.to_json())]
        return []  # ping, content_block_stop

    def _block_start(self, event: ContentBlockStartEvent) -> list[bytes]:
        block = event.content_block
        if block.type == "text":
            self._blocks[event.index] = "text"
            return self._content("content", block.text)
        if block.type == "thinking":
            self._blocks[event.index] = "thinking"
            return self._content("reasoning_content", block.thinking)
        if block.type != "tool_use":
            return []  # redacted_thinking, server tool blocks: nothing an OpenAI client reads
        if self._json_tool is not None and block.name == self._json_tool:
            self._blocks[event.index] = "json"
            return []
        self._blocks[event.index] = "tool"
        index = self._tool_index[event.index] = len(self._tool_index)
        function = {"name": block.name or "", "arguments": ""}
        call = {"index": index, "id": block.id or "", "type": "function", "function": function}
        return [self._chunk({"tool_calls": [call]})]

    def _delta(self, event: ContentBlockDeltaEvent) -> list[bytes]:
        kind, delta = self._blocks.get(event.index), event.delta
        if delta.type == "text_delta" and kind == "text":
            return self._content("content", delta.text)
        if delta.type == "thinking_delta" and kind == "thinking":
            return self._content("reasoning_content", delta.thinking)
        if delta.type != "input_json_delta" or not delta.partial_json:
            return []
        if kind == "json":
            return self._content("content", delta.partial_json)
        if kind != "tool":
            return []
        self._pieces.append(delta.partial_json)
        call = {
            "index": self._tool_index[event.index],
            "function": {"arguments": delta.partial_json},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _content(self, field: str, text: str | None) -> list[bytes]:
        if not text:
            return []
        self._pieces.append(text)
        return [self._chunk({field: text})]

    def _add_usage(self, usage: AnthropicUsage) -> None:
        """Anthropic's counts are cumulative: a later event's count replaces the earlier one."""
        for name in AnthropicUsage.__struct_fields__:
            value = getattr(usage, name)
            if value is not None:
                setattr(self._usage, name, value)
        self.account.usage = openai_usage(self._usage)

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse_event(orjson.dumps(self._envelope([choice])))
