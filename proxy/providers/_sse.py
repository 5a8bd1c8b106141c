"""Server-sent events: framing for every adapter, and the OpenAI-compatible stream relay.

The relay forwards each upstream chunk as it arrives. Accounting reads a side copy: the raw
chunks are kept (references, no copying) and only parsed at the end, and then only the one
event that carries ``usage``; every event is parsed only when the upstream sent no usage and
the completion has to be counted. The one exception is a stream where the proxy asked for
usage that the client did not: then complete events are scanned as they pass so that the
usage-only chunk can be held back.
"""

from __future__ import annotations

import re

import msgspec

from proxy.providers.base import StreamAccount
from proxy.wire.openai import ChunkView, Usage

DONE = b"data: [DONE]\n\n"
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_chunk_decoder = msgspec.json.Decoder(ChunkView)


def sse_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def split_events(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete events (without their blank-line terminator) and the unfinished rest."""
    events: list[bytes] = []
    start = 0
    for m in _EVENT_END.finditer(data):
        events.append(data[start : m.start()])
        start = m.end()
    return events, data[start:]


def event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one event, or None for comments and other fields."""
    parts = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(parts) if parts else None


def decode_chunk(payload: bytes) -> ChunkView | None:
    try:
        return _chunk_decoder.decode(payload)
    except msgspec.DecodeError:
        return None


class OpenAIStreamRelay:
    """Relays an OpenAI-compatible SSE stream, optionally holding back the usage chunk."""

    __slots__ = ("_pending", "_strip_usage", "account")

    def __init__(self, *, strip_usage: bool) -> None:
        self.account = StreamAccount()
        self._strip_usage = strip_usage
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        self.account.raw.append(chunk)
        if not self._strip_usage:
            return chunk
        events, self._pending = split_events(self._pending + chunk)
        if not events:
            return b""
        out = [e for e in events if not self._is_usage_only(e)]
        return b"".join(e + b"\n\n" for e in out)

    def finish(self) -> bytes:
        rest, self._pending = self._pending, b""
        if self.account.usage is None:
            self.account.usage = self._find_usage()
        return rest

    def completion_text(self) -> str:
        events, _ = split_events(b"".join(self.account.raw) + b"\n\n")
        pieces: list[str] = []
        for event in events:
            payload = event_data(event)
            chunk = decode_chunk(payload) if payload and payload != b"[DONE]" else None
            for choice in chunk.choices if chunk else ():
                if choice.delta is not None:
                    pieces.append(choice.delta.content or "")
                    pieces.append(choice.delta.reasoning_content or "")
                elif choice.text:
                    pieces.append(choice.text)
        return "".join(pieces)

    def _is_usage_only(self, event: bytes) -> bool:
        if not _USAGE_OBJECT.search(event):
            return False
        payload = event_data(event)
        chunk = decode_chunk(payload) if payload else None
        if chunk is None or chunk.usage is None:
            return False
        self.account.usage = chunk.usage
        return not chunk.choices

    def _find_usage(self) -> Usage | None:
        """The usage of the last event that reports one (usually the final chunk)."""
        data = b"".join(self.account.raw)
        last = None
        for last in _USAGE_OBJECT.finditer(data):  # noqa: B007 - we want the last match
            pass
        if last is None:
            return None
        begin = max(data.rfind(b"\n\n", 0, last.start()), data.rfind(b"\r\n\r\n", 0, last.start()))
        end_match = _EVENT_END.search(data, last.end())
        event = data[begin + 2 if begin >= 0 else 0 : end_match.start() if end_match else len(data)]
        payload = event_data(event.lstrip(b"\r\n"))
        chunk = decode_chunk(payload) if payload else None
        return chunk.usage if chunk else None
