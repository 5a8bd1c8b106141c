"""Build the non-stream answer of a finished stream, so a stream miss can be stored.

``assemble_chat_completion`` reads the OpenAI-shaped SSE bytes a client was sent (any
framing: the bytes may be split anywhere) and returns the ``chat.completion`` (or, for the
legacy route, ``text_completion``) that the same request without ``stream`` would have
returned: the role, the text fields joined, tool calls merged by index with their argument
fragments concatenated, logprobs concatenated, the finish reason, the usage when the stream
carried it, and id/model/created from the chunks.

It returns None, and nothing is stored, unless the stream ended normally: ``data: [DONE]``
seen, every choice finished, no error event, every event valid JSON. A delta field it does
not know (audio, say) also means None: an entry that silently lost part of the answer would
be replayed as if it were whole.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
import orjson

from proxy.providers._sse import event_data, split_events
from proxy.wire.openai import Usage

# Delta fields whose string fragments are concatenated.
_TEXT_FIELDS: Final = ("content", "refusal", "reasoning_content", "reasoning")
_DELTA_FIELDS: Final = frozenset((*_TEXT_FIELDS, "role", "tool_calls", "function_call"))
_META_FIELDS: Final = ("id", "created", "model", "system_fingerprint", "service_tier")


class _IncompleteError(Exception):
    """The stream cannot be stored (truncated, failed, or carrying what we cannot rebuild)."""


class _Choice:
    __slots__ = ("finish_reason", "function_call", "logprobs", "role", "texts", "tool_calls")

    def __init__(self) -> None:
        self.role: str | None = None
        self.texts: dict[str, list[str]] = {}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, Any] | None = None
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def feed_delta(self, delta: dict[str, Any]) -> None:
        for name, value in delta.items():
            if value is None:
                continue
            if name not in _DELTA_FIELDS:
                raise _IncompleteError(f"delta field {name!r}")
            if name == "role":
                self.role = value
            elif name == "tool_calls":
                for call in value:
                    self._feed_tool_call(call)
            elif name == "function_call":
                self.function_call = _merge_function(self.function_call, value)
            else:
                self.texts.setdefault(name, []).append(value)

    def feed_text(self, text: Any) -> None:
        if isinstance(text, str):
            self.texts.setdefault("text", []).append(text)

    def feed_logprobs(self, logprobs: Any) -> None:
        """Concatenate each list of the chunk's logprobs (chat ``content``, legacy ``tokens``)."""
        if not isinstance(logprobs, dict):
            return
        merged = self.logprobs if self.logprobs is not None else {}
        for name, value in logprobs.items():
            if isinstance(value, list):
                merged.setdefault(name, []).extend(value)
            elif name not in merged:
                merged[name] = value
        self.logprobs = merged

    def _feed_tool_call(self, call: dict[str, Any]) -> None:
        index = call.get("index")
        if not isinstance(index, int):  # some compatible servers omit it: a new id, a new call
            index = len(self.tool_calls) - (0 if call.get("id") or not self.tool_calls else 1)
        merged = self.tool_calls.get(index)
        if merged is None:
            merged = self.tool_calls[index] = {"id": None, "type": "function", "function": None}
        if call.get("id"):
            merged["id"] = call["id"]
        if call.get("type"):
            merged["type"] = call["type"]
        if call.get("function") is not None:
            merged["function"] = _merge_function(merged["function"], call["function"])

    def message(self) -> dict[str, Any]:
        texts = {name: "".join(parts) for name, parts in self.texts.items()}
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        content = texts.pop("content", "")
        refusal = texts.pop("refusal", None) or None
        message: dict[str, Any] = {
            "role": self.role or "assistant",
            # OpenAI's answers carry null content beside tool calls or a refusal
            "content": content or (None if calls or self.function_call or refusal else ""),
            "refusal": refusal,
        }
        message.update(texts)
        if calls:
            message["tool_calls"] = [
                {"id": c["id"], "type": c["type"], "function": _joined(c["function"])}
                for c in calls
            ]
        if self.function_call is not None:
            message["function_call"] = _joined(self.function_call)
        return message


def assemble_chat_completion(chunks: list[bytes], *, usage: Usage | None = None) -> bytes | None:
    """The non-stream JSON answer of a completed stream, or None if it did not complete.

    ``usage`` fills in when the stream carried none (the proxy counted the tokens itself).
    """
    events, rest = split_events(b"".join(chunks))
    if rest.strip():
        events.append(rest)  # the final event may lack its blank line
    try:
        return _assemble(events, usage)
    except (_IncompleteError, orjson.JSONDecodeError, AttributeError, TypeError):
        return None  # AttributeError/TypeError: a chunk not shaped like OpenAI's; not stored


def _assemble(events: list[bytes], fallback_usage: Usage | None) -> bytes | None:
    meta: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    usage: Any = None
    legacy = False
    done = False
    for event in events:
        payload = event_data(event)
        if payload is None or done:
            continue
        if payload.strip() == b"[DONE]":
            done = True
            continue
        chunk = orjson.loads(payload)
        if not isinstance(chunk, dict) or chunk.get("error") is not None:
            raise _IncompleteError("error event")
        for name in _META_FIELDS:
            if chunk.get(name) is not None:
                meta.setdefault(name, chunk[name])
        legacy = legacy or chunk.get("object") == "text_completion"
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        for raw in chunk.get("choices") or ():
            index = raw.get("index", 0)
            choice = choices.get(index)
            if choice is None:
                choice = choices[index] = _Choice()
            if raw.get("delta") is not None:
                choice.feed_delta(raw["delta"])
            elif "text" in raw:
                legacy = True
                choice.feed_text(raw["text"])
            choice.feed_logprobs(raw.get("logprobs"))
            if raw.get("finish_reason") is not None:
                choice.finish_reason = raw["finish_reason"]
    if not done or not choices or any(c.finish_reason is None for c in choices.values()):
        return None
    if usage is None and fallback_usage is not None:
        usage = {k: v for k, v in msgspec.to_builtins(fallback_usage).items() if v is not None}
    return orjson.dumps(_answer(meta, choices, usage, legacy=legacy))


def _answer(
    meta: dict[str, Any], choices: dict[int, _Choice], usage: Any, *, legacy: bool
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": meta.get("id", ""),
        "object": "text_completion" if legacy else "chat.completion",
        "created": meta.get("created", 0),
        "model": meta.get("model", ""),
        "choices": [],
    }
    for index in sorted(choices):
        choice = choices[index]
        out: dict[str, Any] = {"index": index}
        if legacy:
            out["text"] = "".join(choice.texts.get("text", ()))
        else:
            out["message"] = choice.message()
        out["logprobs"] = choice.logprobs
        out["finish_reason"] = choice.finish_reason
        answer["choices"].append(out)
    if usage is not None:
        answer["usage"] = usage
    for name in ("system_fingerprint", "service_tier"):
        if name in meta:
            answer[name] = meta[name]
    return answer


def _merge_function(merged: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    """Name from the first fragment that has one (OpenAI sends it once); arguments joined."""
    if merged is None:
        merged = {"name": None, "arguments": []}
    if part.get("name") and not merged["name"]:
        merged["name"] = part["name"]
    if isinstance(part.get("arguments"), str):
        merged["arguments"].append(part["arguments"])
    return merged


def _joined(function: dict[str, Any] | None) -> dict[str, str]:
    if function is None:
        return {"name": "", "arguments": ""}
    return {"name": function["name"] or "", "arguments": "".join(function["arguments"])}
