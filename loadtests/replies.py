"""What the fake provider answers, as bytes: pure functions, no I/O, no clock.

Bodies follow OpenAI's object shapes (``chat.completion``, ``chat.completion.chunk``,
``list`` of ``embedding``, the ``error`` envelope) closely enough for the official SDK and
the proxy to parse them. Usage is an estimate (4 bytes of prompt per token), which is what
the proxy records; nothing here needs a tokenizer.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

import msgspec

MODEL_SUFFIX = "-loadtest"
FINGERPRINT = "fp_loadtest"
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatView(msgspec.Struct):
    """The fields of a chat request the fake acts on; everything else is ignored."""

    model: str = "gpt-4o-mini"
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream_options: StreamOptions | None = None


class EmbeddingsView(msgspec.Struct):
    model: str = "text-embedding-3-small"
    input: str | list[str | int | list[int]] = ""
    encoding_format: str = "float"


CHAT_DECODER = msgspec.json.Decoder(ChatView)
EMBEDDINGS_DECODER = msgspec.json.Decoder(EmbeddingsView)
ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }


def prompt_tokens(body: bytes) -> int:
    """A cheap estimate: one token per 4 bytes of request body, at least 1."""
    return max(1, len(body) // 4)


def output_tokens(view: ChatView, default: int) -> int:
    """How many tokens to generate: the request's cap if lower than ``default``."""
    cap = view.max_completion_tokens or view.max_tokens
    return max(1, min(default, cap) if cap else default)


def token_text(index: int) -> str:
    return WORDS[index % len(WORDS)] + " "


def completion_text(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


def chat_completion(ident: str, model: str, created: int, usage: Usage) -> bytes:
    return ENCODER.encode(
        {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model + MODEL_SUFFIX,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": completion_text(usage.completion_tokens),
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage.as_dict(),
        }
    )


def _chunk(ident: str, model: str, created: int, choices: list[object], usage: object) -> bytes:
    body = ENCODER.encode(
        {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model + MODEL_SUFFIX,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            "usage": usage,
        }
    )
    return b"data: " + body + b"\n\n"


def content_event(ident: str, model: str, created: int, text: str, first: bool) -> bytes:
    """One SSE event carrying ``text``; the first also carries the assistant role."""
    delta: dict[str, object] = {"content": text}
    if first:
        delta = {"role": "assistant", **delta}
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    return _chunk(ident, model, created, [choice], None)


def finish_event(ident: str, model: str, created: int) -> bytes:
    choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    return _chunk(ident, model, created, [choice], None)


def usage_event(ident: str, model: str, created: int, usage: Usage) -> bytes:
    return _chunk(ident, model, created, [], usage.as_dict())


DONE_EVENT = b"data: [DONE]\n\n"


def embedding_inputs(view: EmbeddingsView) -> int:
    """How many embeddings the request asks for (a list of strings or of token lists)."""
    item = view.input
    if isinstance(item, str):
        return 1
    if item and isinstance(item[0], list):
        return len(item)
    return 1 if item and isinstance(item[0], int) else len(item)


def embedding_vector(dims: int) -> list[float]:
    """A fixed unit-length vector: the same for every input (the fake does not embed)."""
    value = (1.0 / dims) ** 0.5
    return [value] * dims


def embeddings(view: EmbeddingsView, vector: list[float], usage_tokens: int) -> bytes:
    count = embedding_inputs(view)
    if view.encoding_format == "base64":
        packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        item: object = packed
    else:
        item = vector
    data = [{"object": "embedding", "index": i, "embedding": item} for i in range(count)]
    return ENCODER.encode(
        {
            "object": "list",
            "data": data,
            "model": view.model + MODEL_SUFFIX,
            "usage": {"prompt_tokens": usage_tokens, "total_tokens": usage_tokens},
        }
    )


def error_body(status: int, message: str) -> bytes:
    """OpenAI's error envelope for an injected failure."""
    kind = "rate_limit_exceeded" if status == 429 else "server_error"
    return ENCODER.encode(
        {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    )
