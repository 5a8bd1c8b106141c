"""Replay a cached answer as the SSE stream a live upstream would have sent.

A stream request that hits the cache gets chunks shaped like OpenAI's own: per choice a role
chunk, the reasoning and content text in about eight pieces split at word boundaries, each
tool call as a header chunk (id, name) and its arguments in a few pieces, a finish chunk;
then, when the client asked for ``stream_options.include_usage``, a usage chunk with no
choices (and ``"usage": null`` on every chunk before it, as OpenAI does); then
``data: [DONE]``. Logprobs ride whole on the first text chunk. The legacy completions route
gets ``text_completion`` chunks the same way, ending with an empty-text finish chunk.

Joining the replayed deltas gives back exactly the cached text and tool calls.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from proxy.cache.entry import CachedEntry
from proxy.providers._sse import DONE, sse_event

TEXT_PIECES: Final = 8
ARGUMENT_PIECES: Final = 4
_WORD_START: Final = re.compile(r"(?<=\s)\S")  # a word start after whitespace
_REASONING_FIELDS: Final = ("reasoning_content", "reasoning")


def replay_as_stream(
    entry: CachedEntry, *, include_usage: bool, chat: bool, pieces: int = TEXT_PIECES
) -> list[bytes]:
    """The SSE events of ``entry`` replayed, ``data: [DONE]`` last."""
    answer: dict[str, Any] = orjson.loads(entry.body)
    base: dict[str, Any] = {
        "id": answer.get("id", ""),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": answer.get("created", int(entry.created_at)),
        "model": answer.get("model", ""),
    }
    for name in ("system_fingerprint", "service_tier"):
        if answer.get(name) is not None:
            base[name] = answer[name]
    tail: dict[str, Any] = {"usage": None} if include_usage else {}

    events: list[bytes] = []
    for raw in answer.get("choices") or ():
        choices = _chat_choice(raw, pieces) if chat else _text_choice(raw, pieces)
        events.extend(sse_event(orjson.dumps({**base, "choices": [c], **tail})) for c in choices)
    if include_usage:
        events.append(
            sse_event(orjson.dumps({**base, "choices": [], "usage": _usage(answer, entry)}))
        )
    events.append(DONE)
    return events


def split_words(text: str, pieces: int) -> list[str]:
    """``text`` in at most ``pieces`` parts of similar length, each cut just before a word.

    The parts join back to ``text``. Cuts are found by searching from each target length, so
    the cost grows with ``pieces``, not with the number of words.
    """
    if not text:
        return []
    size = -(-len(text) // max(1, pieces))
    parts: list[str] = []
    start = 0
    while start < len(text):
        found = _WORD_START.search(text, start + size)
        end = found.start() if found else len(text)
        parts.append(text[start:end])
        start = end
    return parts


def _chat_choice(raw: dict[str, Any], pieces: int) -> list[dict[str, Any]]:
    index = raw.get("index", 0)
    message: dict[str, Any] = raw.get("message") or {}
    content = message.get("content")
    logprobs = raw.get("logprobs")
    role_delta: dict[str, Any] = {
        "role": message.get("role", "assistant"),
        "content": "" if content is not None else None,
    }
    deltas = [role_delta]
    for name in _REASONING_FIELDS:
        if isinstance(message.get(name), str):
            deltas += [{name: part} for part in split_words(message[name], pieces)]
    text_deltas: list[dict[str, Any]] = [
        {"content": part} for part in split_words(content or "", pieces)
    ]
    text_deltas += [{"refusal": part} for part in split_words(message.get("refusal") or "", pieces)]
    for position, call in enumerate(message.get("tool_calls") or ()):
        text_deltas += _tool_call_deltas(position, call)
    if message.get("function_call"):
        function = message["function_call"]
        text_deltas.append({"function_call": {"name": function.get("name", ""), "arguments": ""}})
        text_deltas += [
            {"function_call": {"arguments": part}}
            for part in _split_even(function.get("arguments", ""), ARGUMENT_PIECES)
        ]
    chunks = [_delta_choice(index, d) for d in deltas + text_deltas]
    if logprobs is not None:
        chunks[len(deltas) if text_deltas else 0]["logprobs"] = logprobs
    chunks.append({**_delta_choice(index, {}), "finish_reason": raw.get("finish_reason", "stop")})
    return chunks


def _tool_call_deltas(position: int, call: dict[str, Any]) -> list[dict[str, Any]]:
    function = call.get("function") or {}
    header = {
        "index": position,
        "id": call.get("id"),
        "type": call.get("type", "function"),
        "function": {"name": function.get("name", ""), "arguments": ""},
    }
    parts = _split_even(function.get("arguments", ""), ARGUMENT_PIECES)
    return [{"tool_calls": [header]}] + [
        {"tool_calls": [{"index": position, "function": {"arguments": part}}]} for part in parts
    ]


def _delta_choice(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}


def _text_choice(raw: dict[str, Any], pieces: int) -> list[dict[str, Any]]:
    index = raw.get("index", 0)
    parts = split_words(raw.get("text") or "", pieces)
    chunks = [{"index": index, "text": p, "logprobs": None, "finish_reason": None} for p in parts]
    if raw.get("logprobs") is not None and chunks:
        chunks[0]["logprobs"] = raw["logprobs"]
    finish = raw.get("finish_reason", "stop")
    chunks.append({"index": index, "text": "", "logprobs": None, "finish_reason": finish})
    return chunks


def _split_even(text: str, pieces: int) -> list[str]:
    if not text:
        return []
    size = -(-len(text) // pieces)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _usage(answer: dict[str, Any], entry: CachedEntry) -> Any:
    if answer.get("usage") is not None:
        return answer["usage"]
    total = entry.prompt_tokens + entry.completion_tokens
    return {
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        "total_tokens": total,
    }
