"""The built-in ``mock`` provider: deterministic OpenAI-shaped answers made in-process.

For demos, smoke tests and load tests with no provider key. The payloads are built here
(pure); ``upstream.MockTransport`` adds the configured latency and streaming pace. Usage is
estimated cheaply (4 bytes of request per prompt token), as the mock stands in for an
upstream that reports usage, and a load test should not spend proxy CPU on it.
"""

from __future__ import annotations

import hashlib
import struct
import time
from base64 import b64encode
from typing import Any

import orjson

from proxy.providers._sse import DONE, sse_event
from proxy.providers.base import Operation

DEFAULT_REPLY = "This is a mock response from llm-proxy. No provider was called."
EMBEDDING_DIMENSIONS = 16


def _words(text: str, pieces: int) -> list[str]:
    words = text.split(" ")
    if pieces <= 1 or len(words) <= 1:
        return [text]
    size = max(1, -(-len(words) // pieces))
    groups = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return [g if i == 0 else " " + g for i, g in enumerate(groups)]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def build_response(op: Operation, model: str, request: dict[str, Any], reply: str) -> bytes:
    """A complete non-stream answer for ``op``."""
    prompt_tokens = max(1, len(orjson.dumps(request)) // 4)
    created = int(time.time())
    if op is Operation.EMBEDDING:
        return _embeddings(model, request, prompt_tokens)
    completion_tokens = len(reply.split())
    rid = "mock-" + hashlib.sha1(reply.encode() + str(created).encode()).hexdigest()[:24]
    if op is Operation.CHAT:
        body: dict[str, Any] = {
            "id": "chatcmpl-" + rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(prompt_tokens, completion_tokens),
            "system_fingerprint": "fp_mock",
        }
    else:
        body = {
            "id": "cmpl-" + rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": reply, "logprobs": None, "finish_reason": "stop"}],
            "usage": _usage(prompt_tokens, completion_tokens),
        }
    return orjson.dumps(body)


def build_stream(
    op: Operation, model: str, request: dict[str, Any], reply: str, pieces: int
) -> list[bytes]:
    """The SSE events of a streamed answer, ``data: [DONE]`` last."""
    prompt_tokens = max(1, len(orjson.dumps(request)) // 4)
    created = int(time.time())
    options = request.get("stream_options")
    with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    chat = op is Operation.CHAT
    base: dict[str, Any] = {
        "id": ("chatcmpl-" if chat else "cmpl-") + "mock" + str(created),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
    }
    if chat:
        base["system_fingerprint"] = "fp_mock"

    def chunk(choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> bytes:
        body = {**base, "choices": [choice] if choice is not None else []}
        if with_usage:
            body["usage"] = usage
        return sse_event(orjson.dumps(body))

    def choice(text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {}
        if role:
            delta = {"role": "assistant", "content": ""}
        elif text is not None:
            delta = {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    events = [chunk(choice(None, None, role=True))] if chat else []
    parts = _words(reply, pieces)
    events += [chunk(choice(p, None)) for p in parts]
    events.append(chunk(choice(None if chat else "", "stop")))
    if with_usage:
        events.append(chunk(None, _usage(prompt_tokens, len(reply.split()))))
    events.append(DONE)
    return events


def _embeddings(model: str, request: dict[str, Any], prompt_tokens: int) -> bytes:
    raw = request.get("input")
    inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    dims = request.get("dimensions")
    size = dims if isinstance(dims, int) and 0 < dims <= 4096 else EMBEDDING_DIMENSIONS
    as_base64 = request.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(inputs):
        seed = hashlib.sha256(orjson.dumps(item)).digest()
        vector = [((seed[j % 32] + j) % 255) / 255.0 - 0.5 for j in range(size)]
        embedding: Any = (
            b64encode(struct.pack(f"<{size}f", *vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body)
