"""``/v1/messages`` routed to an Anthropic deployment: passed through with minimal parsing.

The client's body goes upstream as it came (only ``model`` is renamed when the alias differs);
the answer comes back byte for byte. Usage is read on the side: from the body of a
non-stream answer, and for a stream from its ``message_start`` (input and cache tokens) and
``message_delta`` (output tokens) events once the stream is over.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from proxy.errors import UpstreamProtocolError
from proxy.providers._anthropic_response import openai_usage
from proxy.providers._sse import event_data, split_events
from proxy.providers.base import StreamAccount
from proxy.wire.anthropic import AnthropicUsage
from proxy.wire.openai import Usage


class _MessageView(msgspec.Struct):
    usage: AnthropicUsage | None = None


class _DeltaText(msgspec.Struct):
    text: str | None = None
    thinking: str | None = None


class _EventView(msgspec.Struct):
    type: str = ""
    message: _MessageView | None = None
    usage: AnthropicUsage | None = None
    delta: _DeltaText | None = None


_message_decoder = msgspec.json.Decoder(_MessageView)
_event_decoder = msgspec.json.Decoder(_EventView)


def rename_model(body: bytes, alias: str, upstream_model: str) -> bytes:
    if alias == upstream_model:
        return body
    data: dict[str, Any] = orjson.loads(body)
    data["model"] = upstream_model
    return orjson.dumps(data)


def response_usage(body: bytes) -> Usage | None:
    try:
        view = _message_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamProtocolError(
            f"the upstream answered 200 with a body that is not a valid message: {exc}"
        ) from exc
    return openai_usage(view.usage) if view.usage else None


class AnthropicPassthrough:
    """Forwards an Anthropic event stream unchanged; reads usage when it is over."""

    __slots__ = ("account",)

    def __init__(self) -> None:
        self.account = StreamAccount()

    def feed(self, chunk: bytes) -> bytes:
        self.account.raw.append(chunk)
        return chunk

    def finish(self) -> bytes:
        start: AnthropicUsage | None = None
        output = 0
        for event in self._events():
            if event.type == "message_start" and event.message and event.message.usage:
                start = event.message.usage
            elif event.type == "message_delta" and event.usage:
                output = event.usage.output_tokens or output
        if start is not None:
            merged = msgspec.structs.replace(start, output_tokens=output or start.output_tokens)
            self.account.usage = openai_usage(merged)
        return b""

    def completion_text(self) -> str:
        pieces = [
            (e.delta.text or "") + (e.delta.thinking or "")
            for e in self._events()
            if e.type == "content_block_delta" and e.delta is not None
        ]
        return "".join(pieces)

    def _events(self) -> list[_EventView]:
        events, _ = split_events(b"".join(self.account.raw) + b"\n\n")
        out = []
        for event in events:
            payload = event_data(event)
            if not payload:
                continue
            try:
                out.append(_event_decoder.decode(payload))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # an event type from the future: not ours to judge
        return out
