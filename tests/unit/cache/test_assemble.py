"""assemble_chat_completion: a finished stream's chunks back into the non-stream answer."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from proxy.cache.assemble import assemble_chat_completion
from proxy.providers import mock
from proxy.providers._sse import DONE, sse_event
from proxy.providers.base import Operation
from proxy.wire.openai import Usage

REPLY = "The quick brown fox jumps over the lazy dog."
WITH_USAGE = {"messages": [], "stream_options": {"include_usage": True}}
BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "gpt-x"}


def chunk(*choices: dict[str, Any], **extra: Any) -> bytes:
    return sse_event(orjson.dumps({**BASE, "choices": list(choices), **extra}))


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "finish_reason": finish}


def assembled(chunks: list[bytes]) -> dict[str, Any]:
    body = assemble_chat_completion(chunks)
    assert body is not None
    result: dict[str, Any] = orjson.loads(body)
    return result


def test_mock_stream_assembles_to_the_non_stream_answer() -> None:
    """The mock's stream assembles into its non-stream answer: text, finish, usage, ids."""
    events = mock.build_stream(Operation.CHAT, "gpt-x", WITH_USAGE, REPLY, 5)
    answer = assembled(events)
    live = orjson.loads(mock.build_response(Operation.CHAT, "gpt-x", WITH_USAGE, REPLY))
    assert answer["object"] == "chat.completion"
    assert answer["choices"] == [{**live["choices"][0]}]
    assert answer["usage"]["completion_tokens"] == live["usage"]["completion_tokens"]
    assert answer["model"] == "gpt-x" and answer["id"].startswith("chatcmpl-")
    assert answer["system_fingerprint"] == "fp_mock"


@given(st.lists(st.integers(min_value=1, max_value=60), max_size=40))
def test_assembly_is_independent_of_framing(sizes: list[int]) -> None:
    """However the bytes were split on the wire, the answer is the same."""
    data = b"".join(mock.build_stream(Operation.CHAT, "m", WITH_USAGE, REPLY, 8))
    pieces, pos = [], 0
    for size in sizes:
        pieces.append(data[pos : pos + size])
        pos += size
    pieces.append(data[pos:])
    assert assemble_chat_completion(pieces) == assemble_chat_completion([data])


def test_crlf_framing_is_read() -> None:
    """Events separated by CRLF blank lines assemble the same way."""
    events = mock.build_stream(Operation.CHAT, "m", WITH_USAGE, REPLY, 3)
    crlf = [e.replace(b"\n\n", b"\r\n\r\n") for e in events]
    assert assemble_chat_completion(crlf) == assemble_chat_completion(events)


def call(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> Any:
    """A tool-call delta fragment; the first fragment of a call carries its id and name."""
    fragment: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        fragment.update(id=call_id, type="function")
        fragment["function"]["name"] = name
    return delta(tool_calls=[fragment])


def test_tool_calls_merge_by_index() -> None:
    """Two interleaved tool calls keep their ids and names; argument fragments concatenate."""
    events = [
        chunk(delta(role="assistant", content=None)),
        chunk(call(0, "", "call_a", "weather")),
        chunk(call(0, '{"city": ')),
        chunk(call(1, '{"tz"', "call_b", "time")),
        chunk(call(0, '"Oslo"}')),
        chunk(call(1, ': "CET"}')),
        chunk(delta(finish="tool_calls")),
        DONE,
    ]
    choice = assembled(events)["choices"][0]
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "time", "arguments": '{"tz": "CET"}'},
        },
    ]
    assert choice["finish_reason"] == "tool_calls"


def test_tool_calls_without_index_are_told_apart_by_id() -> None:
    """A compatible server that omits the index still gets one call per id."""
    events = [
        chunk(delta(tool_calls=[{"id": "a", "function": {"name": "f", "arguments": "{"}}])),
        chunk(delta(tool_calls=[{"function": {"arguments": "}"}}])),
        chunk(delta(tool_calls=[{"id": "b", "function": {"name": "g", "arguments": "[]"}}])),
        chunk(delta(finish="tool_calls")),
        DONE,
    ]
    calls = assembled(events)["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [("a", "{}"), ("b", "[]")]


def test_several_choices_and_reasoning_assemble_separately() -> None:
    """With n=2 each choice keeps its own text; reasoning_content is joined too."""
    events = [
        chunk(delta(0, role="assistant", content=""), delta(1, role="assistant", content="")),
        chunk(delta(0, reasoning_content="think "), delta(1, content="B1 ")),
        chunk(delta(0, reasoning_content="hard", content="A"), delta(1, content="B2")),
        chunk(delta(0, finish="stop"), delta(1, finish="length")),
        DONE,
    ]
    choices = assembled(events)["choices"]
    assert choices[0]["message"]["content"] == "A"
    assert choices[0]["message"]["reasoning_content"] == "think hard"
    assert choices[1]["message"] == {"role": "assistant", "content": "B1 B2", "refusal": None}
    assert [c["finish_reason"] for c in choices] == ["stop", "length"]


def test_logprobs_concatenate() -> None:
    """Per-chunk logprobs content lists join into one list."""
    lp = [{"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -0.2}]
    events = [
        chunk({**delta(content="a"), "logprobs": {"content": lp[:1], "refusal": None}}),
        chunk({**delta(content="b"), "logprobs": {"content": lp[1:], "refusal": None}}),
        chunk(delta(finish="stop")),
        DONE,
    ]
    assert assembled(events)["choices"][0]["logprobs"] == {"content": lp, "refusal": None}


def test_legacy_completion_stream_assembles_to_text_completion() -> None:
    """The completions route's stream becomes a text_completion with the text joined."""
    events = mock.build_stream(Operation.COMPLETION, "m", WITH_USAGE, REPLY, 4)
    answer = assembled(events)
    assert answer["object"] == "text_completion"
    assert answer["choices"] == [
        {"index": 0, "text": REPLY, "logprobs": None, "finish_reason": "stop"}
    ]
    assert answer["usage"]["total_tokens"] > 0


def test_fallback_usage_fills_in() -> None:
    """Usage the proxy counted itself goes in when the stream carried none."""
    events = mock.build_stream(Operation.CHAT, "m", {"messages": []}, REPLY, 4)
    body = assemble_chat_completion(events, usage=Usage(3, 9, 12))
    assert body is not None
    assert orjson.loads(body)["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 9,
        "total_tokens": 12,
    }
    assert "usage" not in assembled(events)


def test_truncated_streams_are_not_assembled() -> None:
    """No [DONE], no finish reason, an error event, bad JSON or no choices: nothing to store."""
    full = mock.build_stream(Operation.CHAT, "m", WITH_USAGE, REPLY, 4)
    error = sse_event(b'{"error": {"message": "upstream went away", "type": "server_error"}}')
    cases = {
        "no-done": full[:-1],
        "no-finish": [e for e in full if b'"finish_reason":"stop"' not in e],
        "error-event": [*full[:3], error, DONE],
        "bad-json": [*full[:3], b"data: {not json\n\n", *full[3:]],
        "empty": [DONE],
        "nothing": [],
    }
    for name, events in cases.items():
        assert assemble_chat_completion(events) is None, name


def test_unknown_delta_fields_are_not_assembled() -> None:
    """A delta field we cannot rebuild (audio) means the stream is not stored."""
    events = [chunk(delta(audio={"data": "AAA"})), chunk(delta(finish="stop")), DONE]
    assert assemble_chat_completion(events) is None


def test_events_after_done_and_comments_are_ignored() -> None:
    """SSE comments and anything after [DONE] do not change the answer."""
    events = mock.build_stream(Operation.CHAT, "m", WITH_USAGE, REPLY, 4)
    noisy = [b": keep-alive\n\n", *events, chunk(delta(content="late"))]
    assert assemble_chat_completion(noisy) == assemble_chat_completion(events)
