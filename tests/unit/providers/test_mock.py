"""The mock provider's payloads have OpenAI's exact shapes."""

from __future__ import annotations

import base64
import struct

import orjson

from proxy.providers._sse import DONE
from proxy.providers.base import Operation
from proxy.providers.mock import build_response, build_stream


def test_chat_response_shape() -> None:
    """A mock chat answer is a chat.completion with usage."""
    body = orjson.loads(build_response(Operation.CHAT, "m", {"messages": []}, "one two"))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "one two",
        "refusal": None,
    }
    assert body["usage"]["completion_tokens"] == 2


def test_stream_spells_the_reply_and_ends_with_done() -> None:
    """The streamed deltas join to the reply; usage only when asked."""
    events = build_stream(Operation.CHAT, "m", {}, "a b c d", 3)
    assert events[-1] == DONE
    deltas = [orjson.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
    assert "".join(deltas) == "a b c d"
    with_usage = build_stream(
        Operation.CHAT, "m", {"stream_options": {"include_usage": True}}, "a", 1
    )
    last = orjson.loads(with_usage[-2][6:])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 1


def test_embeddings_base64_and_dimensions() -> None:
    """Embeddings honour encoding_format base64 and dimensions, one vector per input."""
    body = orjson.loads(
        build_response(
            Operation.EMBEDDING,
            "e",
            {"input": ["a", "b"], "encoding_format": "base64", "dimensions": 4},
            "",
        )
    )
    assert [d["index"] for d in body["data"]] == [0, 1]
    vector = struct.unpack("<4f", base64.b64decode(body["data"][0]["embedding"]))
    assert len(vector) == 4


def test_completion_stream_uses_text() -> None:
    """Legacy completions stream text_completion chunks."""
    events = build_stream(Operation.COMPLETION, "m", {}, "x y", 2)
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == "x y"
