"""Anthropic SSE -> OpenAI chunk SSE: every event type, any chunking, errors mid-stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from proxy.errors import UpstreamProtocolError, UpstreamStatusError
from proxy.providers._anthropic_stream import AnthropicStreamTranslator
from proxy.providers._sse import event_data, split_events
from proxy.providers.anthropic import AnthropicAdapter
from proxy.providers.base import Operation, ParsedRequest

TOOL_JSON = '{"city": "Paris"}'


def _event(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\n".encode() + b"data: " + orjson.dumps(payload) + b"\n\n"


def _start(index: int, block: dict[str, Any]) -> bytes:
    return _event({"type": "content_block_start", "index": index, "content_block": block})


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event({"type": "content_block_delta", "index": index, "delta": delta})


def _stop(index: int) -> bytes:
    return _event({"type": "content_block_stop", "index": index})


MESSAGE_START = _event(
    {
        "type": "message_start",
        "message": {
            "id": "msg_9",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 20,
                "cache_read_input_tokens": 4,
                "cache_creation_input_tokens": 2,
                "output_tokens": 1,
            },
        },
    }
)
THINKING = [
    _start(0, {"type": "thinking", "thinking": "", "signature": ""}),
    _delta(0, {"type": "thinking_delta", "thinking": "Let me "}),
    _delta(0, {"type": "thinking_delta", "thinking": "think."}),
    _delta(0, {"type": "signature_delta", "signature": "EqQBCkY="}),
    _stop(0),
]
TEXT = [
    _start(1, {"type": "text", "text": ""}),
    _delta(1, {"type": "text_delta", "text": "Hello"}),
    _delta(1, {"type": "text_delta", "text": " there"}),
    _stop(1),
]
TOOL = [
    _start(2, {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}),
    _delta(2, {"type": "input_json_delta", "partial_json": ""}),
    _delta(2, {"type": "input_json_delta", "partial_json": '{"city": '}),
    _delta(2, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
    _stop(2),
]


def _end(stop_reason: str = "tool_use", output_tokens: int = 15) -> list[bytes]:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return [
        _event(
            {"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}}
        ),
        _event({"type": "message_stop"}),
    ]


FULL = b"".join([MESSAGE_START, _event({"type": "ping"}), *THINKING, *TEXT, *TOOL, *_end()])


def _translator(*, usage: bool = False, json_tool: str | None = None) -> AnthropicStreamTranslator:
    return AnthropicStreamTranslator(json_tool=json_tool, include_usage=usage)


def _run(stream: bytes, translator: AnthropicStreamTranslator, cuts: Sequence[int] = ()) -> bytes:
    pieces, last = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(stream[last:cut])
        last = cut
    pieces.append(stream[last:])
    return b"".join(translator.feed(p) for p in pieces) + translator.finish()


def _payloads(out: bytes) -> list[bytes]:
    events, rest = split_events(out)
    assert rest == b""
    return [p for p in (event_data(e) for e in events) if p is not None]


def _chunks(out: bytes) -> list[dict[str, Any]]:
    payloads = _payloads(out)
    assert payloads[-1] == b"[DONE]"
    for payload in payloads[:-1]:
        ChatCompletionChunk.model_validate_json(payload)  # the official SDK's model accepts it
    return [orjson.loads(p) for p in payloads[:-1]]


def _deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def test_role_chunk_comes_first_with_ids_from_message_start() -> None:
    """message_start gives the assistant role chunk, with the message's id and model."""
    chunks = _chunks(_run(FULL, _translator()))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["id"] for c in chunks} == {"chatcmpl-msg_9"}
    assert {c["model"] for c in chunks} == {"claude-sonnet-4"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


def test_text_deltas_become_content() -> None:
    """Each text_delta is one content chunk."""
    contents = [d["content"] for d in _deltas(_chunks(_run(FULL, _translator()))) if "content" in d]
    assert contents == ["", "Hello", " there"]


def test_thinking_deltas_become_reasoning_content() -> None:
    """thinking_delta becomes reasoning_content; the signature is not sent."""
    deltas = _deltas(_chunks(_run(FULL, _translator())))
    assert [d["reasoning_content"] for d in deltas if "reasoning_content" in d] == [
        "Let me ",
        "think.",
    ]
    assert not any("EqQBCkY" in str(d) for d in deltas)


def test_tool_use_streams_as_tool_call_deltas() -> None:
    """A tool_use start opens a tool call; input_json_delta pieces are its arguments."""
    calls = [
        d["tool_calls"][0] for d in _deltas(_chunks(_run(FULL, _translator()))) if "tool_calls" in d
    ]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    assert [c["function"]["arguments"] for c in calls[1:]] == ['{"city": ', '"Paris"}']
    assert all(c["index"] == 0 for c in calls)


def test_second_tool_call_gets_the_next_index() -> None:
    """Tool calls are numbered from 0 in order, whatever their block index."""
    second = [
        _start(3, {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}}),
        _delta(3, {"type": "input_json_delta", "partial_json": "{}"}),
        _stop(3),
    ]
    stream = b"".join([MESSAGE_START, *TOOL, *second, *_end()])
    calls = [
        d["tool_calls"][0]
        for d in _deltas(_chunks(_run(stream, _translator())))
        if "tool_calls" in d
    ]
    assert [(c["index"], c.get("id")) for c in calls] == [
        (0, "toolu_1"),
        (0, None),
        (0, None),
        (1, "toolu_2"),
        (1, None),
    ]


def test_message_delta_gives_the_finish_reason_then_done() -> None:
    """message_delta's stop_reason is the last choice chunk's finish_reason; then [DONE]."""
    out = _run(FULL, _translator())
    chunks = _chunks(out)
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert out.endswith(b"data: [DONE]\n\n")


def test_usage_chunk_only_when_the_client_asked() -> None:
    """With include_usage a final chunk has no choices and the usage, cache tokens counted."""
    assert all("usage" not in c for c in _chunks(_run(FULL, _translator())))
    last = _chunks(_run(FULL, _translator(usage=True)))[-1]
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 26,
        "completion_tokens": 15,
        "total_tokens": 41,
        "prompt_tokens_details": {"cached_tokens": 4, "cache_creation_input_tokens": 2},
    }


def test_account_usage_from_message_start_and_delta() -> None:
    """The side account has input from message_start and output from message_delta."""
    translator = _translator()
    translator.feed(MESSAGE_START)
    assert translator.account.usage is not None
    assert translator.account.usage.prompt_tokens == 26
    _run(b"".join([*TEXT, *_end()]), translator)
    usage = translator.account.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (26, 15, 41)


def test_completion_text_holds_everything_generated() -> None:
    """completion_text has the thinking, the text and the tool arguments, for counting."""
    translator = _translator()
    _run(FULL, translator)
    assert translator.completion_text() == "Let me think.Hello there" + TOOL_JSON


def test_forced_json_tool_streams_as_content() -> None:
    """With response_format json_schema, the forced tool's input streams as content."""
    tool = [
        _start(0, {"type": "tool_use", "id": "toolu_1", "name": "answer", "input": {}}),
        _delta(0, {"type": "input_json_delta", "partial_json": '{"n":'}),
        _delta(0, {"type": "input_json_delta", "partial_json": " 3}"}),
        _stop(0),
    ]
    out = _run(b"".join([MESSAGE_START, *tool, *_end()]), _translator(json_tool="answer"))
    deltas = _deltas(_chunks(out))
    assert "".join(d.get("content") or "" for d in deltas) == '{"n": 3}'
    assert not any("tool_calls" in d for d in deltas)
    assert _chunks(out)[-1]["choices"][0]["finish_reason"] == "stop"


def test_unknown_events_and_blocks_are_skipped() -> None:
    """Event, block and delta types added to the API later pass without output or crash."""
    stream = b"".join(
        [
            MESSAGE_START,
            _event({"type": "made_up_event", "detail": {"x": [1]}}),
            _start(0, {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}}),
            _delta(0, {"type": "input_json_delta", "partial_json": '{"q": 1}'}),
            _stop(0),
            _start(1, {"type": "text", "text": ""}),
            _delta(1, {"type": "citations_delta", "citation": {}}),
            _delta(1, {"type": "text_delta", "text": "ok"}),
            _stop(1),
            b": a comment line\n\n",
            b"event: something\ndata: not json\n\n",
            *_end("end_turn"),
        ]
    )
    deltas = _deltas(_chunks(_run(stream, _translator())))
    assert [d for d in deltas if d] == [{"role": "assistant", "content": ""}, {"content": "ok"}]


def test_error_event_ends_the_stream_with_an_openai_error() -> None:
    """An error event mid-stream becomes data: {"error": ...} and nothing follows it."""
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    translator = _translator()
    stream = b"".join([MESSAGE_START, *TEXT[:2], _event(error), *TEXT[2:], *_end()])
    out = _run(stream, translator)
    payloads = _payloads(out)
    assert b"[DONE]" not in payloads
    last = orjson.loads(payloads[-1])
    assert last["error"]["message"].endswith("Overloaded")
    assert last["error"]["type"] == "service_unavailable"
    assert isinstance(translator.error, UpstreamStatusError)
    assert (translator.error.status, translator.error.retryable) == (503, True)
    assert translator.feed(b"".join(TEXT)) == b""


def test_stream_cut_before_message_stop_ends_with_an_error() -> None:
    """An upstream stream that ends early is reported as an error event, not [DONE]."""
    translator = _translator()
    out = _run(b"".join([MESSAGE_START, *TEXT]), translator)
    assert b"[DONE]" not in out
    assert orjson.loads(_payloads(out)[-1])["error"]["code"] == "upstream_bad_response"
    assert isinstance(translator.error, UpstreamProtocolError)


def test_last_event_without_blank_line_is_still_read() -> None:
    """A final message_stop missing its terminating blank line is translated at finish."""
    out = _run(FULL.removesuffix(b"\n\n"), _translator())
    assert out.endswith(b"data: [DONE]\n\n")


def _without_created(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for chunk in chunks:
        chunk.pop("created")
    return chunks


def test_crlf_framing_is_understood() -> None:
    """Events separated with CRLF line ends translate the same."""
    crlf = _chunks(_run(FULL.replace(b"\n", b"\r\n"), _translator()))
    assert _without_created(crlf) == _without_created(_chunks(_run(FULL, _translator())))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(FULL)), max_size=40))
def test_any_chunk_boundaries_give_the_same_output(cuts: list[int]) -> None:
    """Splitting the upstream bytes anywhere (mid-line, mid-UTF-8) changes nothing."""
    whole = _chunks(_run(FULL, _translator(usage=True)))
    split = _chunks(_run(FULL, _translator(usage=True), cuts))
    assert _without_created(split) == _without_created(whole)


def test_adapter_builds_the_translator_from_the_request() -> None:
    """The adapter passes include_usage and the json_schema tool name to the translator."""
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {}}}
    body = orjson.dumps({"model": "a", "messages": [], "stream": True, "response_format": fmt})
    translator = AnthropicAdapter().stream_translator(
        ParsedRequest(Operation.CHAT, "a", body, True, True)
    )
    tool = [
        _start(0, {"type": "tool_use", "id": "toolu_1", "name": "answer", "input": {}}),
        _delta(0, {"type": "input_json_delta", "partial_json": "{}"}),
        _stop(0),
    ]
    chunks = _chunks(_run(b"".join([MESSAGE_START, *tool, *_end()]), translator))
    assert _deltas(chunks)[1] == {"content": "{}"}
    assert chunks[-1]["usage"]["completion_tokens"] == 15


@pytest.mark.parametrize("error", [False, True])
def test_official_sdk_reads_the_translated_stream(error: bool) -> None:
    """The openai SDK accumulates the translated stream, and raises APIError on an error."""
    failure = {"type": "error", "error": {"type": "api_error", "message": "Internal"}}
    stream = b"".join([MESSAGE_START, *TEXT[:2], _event(failure)]) if error else FULL
    translated = _run(stream, _translator(usage=True))

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=translated, headers={"content-type": "text/event-stream"}
        )

    http = httpx.Client(transport=httpx.MockTransport(reply))
    client = openai.OpenAI(api_key="x", base_url="http://proxy/v1", http_client=http)
    chunks = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    if error:
        with pytest.raises(openai.APIError, match="Internal"):
            list(chunks)
        return
    received = list(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == "Hello there"
    tool_call = next(
        c.choices[0].delta.tool_calls
        for c in received
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert tool_call[0].function is not None
    assert tool_call[0].function.name == "weather"
    assert received[-1].usage is not None
    assert received[-1].usage.total_tokens == 41
