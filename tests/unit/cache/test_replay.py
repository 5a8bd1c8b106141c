"""replay_as_stream: a cached answer as SSE chunks the official OpenAI SDK parses and joins."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from proxy.cache.assemble import assemble_chat_completion
from proxy.cache.entry import CachedEntry, make_entry
from proxy.cache.replay import TEXT_PIECES, replay_as_stream, split_words
from proxy.providers._sse import DONE, event_data

TEXT = (
    "Caching answers saves money. A replayed stream should look exactly like a live one, "
    "chunk by chunk, so that every client library parses it without noticing."
)
USAGE = {"prompt_tokens": 11, "completion_tokens": 29, "total_tokens": 40}


def chat_answer(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": USAGE,
        "system_fingerprint": "fp_1",
        **extra,
    }


def entry_of(answer: dict[str, Any]) -> CachedEntry:
    return make_entry(orjson.dumps(answer), created_at=1_700_000_001.0)


TEXT_ENTRY = entry_of(chat_answer({"role": "assistant", "content": TEXT, "refusal": None}))
TOOL_ENTRY = entry_of(
    chat_answer(
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
                },
            ],
        },
        finish="tool_calls",
    )
)


@contextmanager
def sdk_over(events: list[bytes]) -> Iterator[openai.OpenAI]:
    """An official SDK client whose every request is answered with ``events``."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(events)
        )

    http = httpx2.Client(transport=httpx2.MockTransport(answer))
    with openai.OpenAI(
        api_key="sk-test", base_url="http://proxy.test/v1", http_client=http, max_retries=0
    ) as client:
        yield client


def sdk_chunks(events: list[bytes]) -> list[ChatCompletionChunk]:
    payloads = [event_data(e.rstrip(b"\n")) for e in events[:-1]]
    return [ChatCompletionChunk.model_validate_json(p) for p in payloads if p is not None]


def test_sdk_stream_joins_back_to_the_cached_text() -> None:
    """The SDK's stream parser reads the replay; content joins to the cached text, usage last."""
    events = replay_as_stream(TEXT_ENTRY, include_usage=True, chat=True)
    with sdk_over(events) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 40
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {"chatcmpl-abc"}
    assert {c.system_fingerprint for c in chunks} == {"fp_1"}


def test_content_arrives_in_about_eight_word_pieces() -> None:
    """The text is split at word boundaries into at most TEXT_PIECES content chunks."""
    chunks = sdk_chunks(replay_as_stream(TEXT_ENTRY, include_usage=False, chat=True))
    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert 4 <= len(pieces) <= TEXT_PIECES
    assert all(p and not p.startswith(" ") for p in pieces)


def test_without_include_usage_no_chunk_carries_usage() -> None:
    """Without stream_options.include_usage there is no usage chunk and no usage key."""
    events = replay_as_stream(TEXT_ENTRY, include_usage=False, chat=True)
    assert events[-1] == DONE
    assert all(b'"usage"' not in e for e in events)


def test_tool_calls_replay_and_rebuild() -> None:
    """Tool calls arrive as header chunks then argument pieces; merging them rebuilds each."""
    chunks = sdk_chunks(replay_as_stream(TOOL_ENTRY, include_usage=False, chat=True))
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for tc in c.choices[0].delta.tool_calls or ():
            call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += tc.id or ""
            call["name"] += (tc.function and tc.function.name) or ""
            call["arguments"] += (tc.function and tc.function.arguments) or ""
    assert calls == {
        0: {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "call_2", "name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
    }
    assert chunks[0].choices[0].delta.content is None
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


REASONING_ENTRY = entry_of(
    chat_answer(
        {
            "role": "assistant",
            "content": "42.",
            "refusal": None,
            "reasoning_content": "The question is old. The answer is well known.",
        }
    )
)
REFUSAL_ENTRY = entry_of(
    chat_answer({"role": "assistant", "content": None, "refusal": "I can't help with that."})
)
FUNCTION_CALL_ENTRY = entry_of(
    chat_answer(
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "function_call": {"name": "lookup", "arguments": '{"q": "weather in Paris"}'},
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "ping", "arguments": ""}}
            ],
        },
        finish="function_call",
    )
)


@pytest.mark.parametrize(
    "entry",
    [TEXT_ENTRY, TOOL_ENTRY, REASONING_ENTRY, REFUSAL_ENTRY, FUNCTION_CALL_ENTRY],
    ids=["text", "tool-calls", "reasoning", "refusal", "function-call"],
)
def test_replay_then_assemble_gives_the_cached_answer(entry: CachedEntry) -> None:
    """Assembling a replay reproduces the cached answer, so a replayed stream is lossless."""
    events = replay_as_stream(entry, include_usage=True, chat=True)
    body = assemble_chat_completion(events)
    assert body is not None and orjson.loads(body) == orjson.loads(entry.body)


def test_several_choices_replay_each() -> None:
    """With n=2 both choices are replayed under their own index."""
    answer = chat_answer({"role": "assistant", "content": "one"})
    answer["choices"].append(
        {"index": 1, "message": {"role": "assistant", "content": "two"}, "finish_reason": "stop"}
    )
    chunks = sdk_chunks(replay_as_stream(entry_of(answer), include_usage=False, chat=True))
    texts = {0: "", 1: ""}
    for c in chunks:
        texts[c.choices[0].index] += c.choices[0].delta.content or ""
    assert texts == {0: "one", 1: "two"}


def test_logprobs_ride_on_the_first_content_chunk() -> None:
    """Cached logprobs are replayed once, on the first content chunk."""
    lp = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}]}
    answer = chat_answer({"role": "assistant", "content": "Hi"})
    answer["choices"][0]["logprobs"] = lp
    chunks = sdk_chunks(replay_as_stream(entry_of(answer), include_usage=False, chat=True))
    carrying = [c for c in chunks if c.choices[0].logprobs is not None]
    assert len(carrying) == 1 and carrying[0].choices[0].delta.content == "Hi"


def test_usage_chunk_falls_back_to_entry_tokens() -> None:
    """An answer stored without usage replays the entry's token counts."""
    answer = chat_answer({"role": "assistant", "content": "x"})
    del answer["usage"]
    entry = CachedEntry(1.0, orjson.dumps(answer), 5, 6)
    last = orjson.loads(
        event_data(replay_as_stream(entry, include_usage=True, chat=True)[-2]) or b""
    )
    assert last["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}


LEGACY_LOGPROBS = {
    "tokens": ["Ca"],
    "token_logprobs": [-0.1],
    "top_logprobs": None,
    "text_offset": [0],
}


def test_legacy_completions_replay_through_the_sdk() -> None:
    """A text_completion replays as text chunks the SDK's completions stream joins."""
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [
            {"index": 0, "text": TEXT, "logprobs": LEGACY_LOGPROBS, "finish_reason": "length"}
        ],
        "usage": USAGE,
    }
    events = replay_as_stream(entry_of(answer), include_usage=True, chat=False)
    with sdk_over(events) as client:
        chunks = list(
            client.completions.create(
                model="gpt-3.5-turbo-instruct",
                prompt="x",
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == TEXT
    assert chunks[0].choices[0].logprobs is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 11
    body = assemble_chat_completion(events)
    assert body is not None and orjson.loads(body) == answer


@given(st.text(), st.integers(min_value=1, max_value=12))
def test_split_words_joins_back(text: str, pieces: int) -> None:
    """The pieces join to the text exactly and are never more than asked for."""
    parts = split_words(text, pieces)
    assert "".join(parts) == text
    assert len(parts) <= pieces
    assert all(parts)
