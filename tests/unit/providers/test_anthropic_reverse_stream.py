"""OpenAI chunk SSE -> Anthropic SSE events, in Anthropic's order, for any chunking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anthropic
import orjson
import pytest
from anthropic.types import RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from proxy.errors import UpstreamProtocolError, UpstreamStatusError
from proxy.providers._sse import DONE, split_events
from proxy.providers.anthropic_reverse import OpenAIToAnthropicStream

try:  # anthropic SDK 2.x speaks httpx2 and refuses httpx objects
    import httpx2 as http
except ImportError:  # pragma: no cover - older SDKs
    import httpx as http  # type: ignore[no-redef]

_events = TypeAdapter(RawMessageStreamEvent)


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **fields: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    payload = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "choices": choices, **fields}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _call(
    index: int, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


USAGE = {
    "prompt_tokens": 30,
    "completion_tokens": 9,
    "total_tokens": 39,
    "prompt_tokens_details": {"cached_tokens": 10},
}
FULL = b"".join(
    [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"reasoning_content": "Think"}),
        _chunk({"reasoning_content": "ing."}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk(_call(0, "", "call_1", "weather")),
        _chunk(_call(0, '{"city":')),
        _chunk(_call(0, '"Oslo"}')),
        _chunk(_call(1, "{}", "call_2", "time")),
        _chunk({}, "tool_calls"),
        _chunk(None, usage=USAGE),
        DONE,
    ]
)


def _run(
    stream: bytes, cuts: Sequence[int] = (), **kwargs: Any
) -> tuple[bytes, OpenAIToAnthropicStream]:
    translator = OpenAIToAnthropicStream(model="claude-alias", **kwargs)
    out, last = [], 0
    for cut in sorted(set(cuts)):
        out.append(translator.feed(stream[last:cut]))
        last = cut
    out.append(translator.feed(stream[last:]))
    out.append(translator.finish())
    return b"".join(out), translator


def _parsed(out: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs, each data checked against the anthropic SDK's event model."""
    events, rest = split_events(out)
    assert rest == b""
    parsed = []
    for event in events:
        name_line, data_line = event.split(b"\n")
        name = name_line.removeprefix(b"event: ").decode()
        data = orjson.loads(data_line.removeprefix(b"data: "))
        assert data["type"] == name
        if name != "error":
            _events.validate_python(data)
        parsed.append((name, data))
    return parsed


def test_events_come_in_anthropic_order() -> None:
    """message_start, then each block's start/deltas/stop, then message_delta and stop."""
    names = [name for name, _ in _parsed(_run(FULL)[0])]
    assert names == [
        "message_start",
        *("content_block_start", "content_block_delta", "content_block_delta"),
        "content_block_stop",
        *("content_block_start", "content_block_delta", "content_block_delta"),
        "content_block_stop",
        *("content_block_start", "content_block_delta", "content_block_delta"),
        "content_block_stop",
        *("content_block_start", "content_block_delta", "content_block_stop"),
        "message_delta",
        "message_stop",
    ]


def test_blocks_carry_thinking_text_and_tool_calls() -> None:
    """Reasoning is a thinking block, content a text block, each tool call a tool_use block."""
    events = _parsed(_run(FULL)[0])
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}},
        {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
    ]
    deltas = [(d["index"], d["delta"]) for n, d in events if n == "content_block_delta"]
    assert deltas == [
        (0, {"type": "thinking_delta", "thinking": "Think"}),
        (0, {"type": "thinking_delta", "thinking": "ing."}),
        (1, {"type": "text_delta", "text": "Hel"}),
        (1, {"type": "text_delta", "text": "lo"}),
        (2, {"type": "input_json_delta", "partial_json": '{"city":'}),
        (2, {"type": "input_json_delta", "partial_json": '"Oslo"}'}),
        (3, {"type": "input_json_delta", "partial_json": "{}"}),
    ]


def test_message_delta_has_stop_reason_and_usage() -> None:
    """The final message_delta maps finish_reason and splits cached tokens out of the input."""
    events = dict(_parsed(_run(FULL)[0]))
    assert events["message_delta"] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "input_tokens": 20,
            "output_tokens": 9,
            "cache_read_input_tokens": 10,
            "cache_creation_input_tokens": 0,
        },
    }
    start = events["message_start"]["message"]
    assert (start["id"], start["model"], start["role"]) == ("msg_7", "claude-alias", "assistant")


def test_message_start_uses_the_estimate_until_usage_arrives() -> None:
    """message_start carries the caller's input estimate; without usage so does the end."""
    stream = b"".join([_chunk({"content": "x"}), _chunk({}, "length"), DONE])
    out, translator = _run(stream, input_tokens=12)
    events = dict(_parsed(out))
    assert events["message_start"]["message"]["usage"]["input_tokens"] == 12
    assert events["message_delta"]["usage"]["input_tokens"] == 12
    assert events["message_delta"]["delta"]["stop_reason"] == "max_tokens"
    assert translator.account.usage is None


def test_account_and_completion_text() -> None:
    """The side account has the upstream's usage; completion_text everything generated."""
    _, translator = _run(FULL)
    assert translator.account.usage is not None
    assert translator.account.usage.total_tokens == 39
    assert translator.completion_text() == 'Thinking.Hello{"city":"Oslo"}{}'


def test_upstream_error_event_becomes_an_anthropic_error() -> None:
    """An OpenAI error event mid-stream becomes ``event: error`` and ends the stream."""
    error = b'data: {"error": {"message": "model crashed", "type": "server_error"}}\n\n'
    out, translator = _run(
        b"".join([_chunk({"content": "Hi"}), error, _chunk({"content": "!"}), DONE])
    )
    events = _parsed(out)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "model crashed"}},
    )
    assert isinstance(translator.error, UpstreamStatusError)
    assert "message_stop" not in [name for name, _ in events]


def test_stream_cut_short_ends_with_an_error() -> None:
    """An upstream stream that stops mid-answer ends with an error event."""
    out, translator = _run(_chunk({"content": "Hi"}))
    assert _parsed(out)[-1][0] == "error"
    assert isinstance(translator.error, UpstreamProtocolError)


def test_missing_done_after_finish_reason_is_tolerated() -> None:
    """Some servers omit [DONE]: a finish_reason is enough to end the message properly."""
    out, translator = _run(b"".join([_chunk({"content": "Hi"}), _chunk({}, "stop")]))
    assert [n for n, _ in _parsed(out)][-2:] == ["message_delta", "message_stop"]
    assert translator.error is None


def test_empty_answer_still_makes_a_message() -> None:
    """[DONE] with no content still yields message_start, message_delta and message_stop."""
    names = [n for n, _ in _parsed(_run(DONE)[0])]
    assert names == ["message_start", "message_delta", "message_stop"]


def test_noise_is_skipped() -> None:
    """Comments, keep-alives and undecodable events produce nothing."""
    stream = b": keep-alive\n\n" + b"data: {oops\n\n" + b"event: x\n\n" + FULL
    assert _run(stream)[0] == _run(FULL)[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(FULL)), max_size=40))
def test_any_chunk_boundaries_give_the_same_events(cuts: list[int]) -> None:
    """Splitting the upstream bytes anywhere changes nothing in the output."""
    assert _run(FULL, cuts)[0] == _run(FULL)[0]


@pytest.mark.parametrize("fail", [False, True])
def test_official_sdk_accumulates_the_translated_stream(fail: bool) -> None:
    """The anthropic SDK builds the final message from the events, or raises on an error."""
    error = b'data: {"error": {"message": "gone"}}\n\n'
    stream = _chunk({"content": "Hi"}) + error if fail else FULL
    translated = _run(stream)[0]

    def reply(request: http.Request) -> http.Response:
        return http.Response(200, content=translated, headers={"content-type": "text/event-stream"})

    client = anthropic.Anthropic(
        api_key="x",
        base_url="http://proxy",
        http_client=http.Client(transport=http.MockTransport(reply)),
        max_retries=0,
    )
    manager = client.messages.stream(
        model="claude-alias", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    if fail:
        with pytest.raises(anthropic.APIStatusError, match="gone"), manager as stream_:
            stream_.get_final_message()
        return
    with manager as stream_:
        message = stream_.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[1].type == "text"
    assert message.content[1].text == "Hello"
    assert message.content[2].type == "tool_use"
    assert message.content[2].input == {"city": "Oslo"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 9)
