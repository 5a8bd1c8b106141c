"""The fake upstream's Anthropic mode speaks the Messages API, as judged by the anthropic SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import MessageParam, ToolParam

from tests.support.fake_upstream import REPLY_PREFIX, THINKING_SIGNATURE, Fault, parse_fault
from tests.support.processes import FakeUpstream, run_fake_upstream

KEY = "sk-ant-fake"
MESSAGES: list[MessageParam] = [{"role": "user", "content": "Say hello to the tests."}]
REPLY = REPLY_PREFIX + "alpha bravo charlie delta echo foxtrot golf hotel"
TOOLS: list[ToolParam] = [
    {
        "name": "get_weather",
        "description": "Weather for a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    }
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    """One fake upstream process, demanding a key, shared by the module."""
    with run_fake_upstream("--require-key", KEY) as upstream:
        yield upstream


@pytest.fixture
def client(fake: FakeUpstream) -> anthropic.Anthropic:
    """An anthropic SDK client pointed at the fake, without retries."""
    return anthropic.Anthropic(base_url=fake.root_url, api_key=KEY, max_retries=0)


def _raw(fake: FakeUpstream, body: dict[str, Any], **headers: str) -> httpx.Response:
    sent = {"x-api-key": KEY, "anthropic-version": "2023-06-01", **headers}
    return httpx.post(f"{fake.root_url}/v1/messages", json=body, headers=sent, timeout=10)


def test_new_fault_names_are_recognised() -> None:
    """midstream-error and unknown-event are word faults like the others."""
    assert parse_fault("midstream-error") == Fault("midstream-error")
    assert parse_fault("unknown-event-case2") == Fault("unknown-event")
    assert parse_fault("midstream") == Fault()


def test_plain_message(client: anthropic.Anthropic) -> None:
    """A non-stream request answers a text message with end_turn and usage."""
    message = client.messages.create(model="claude-x", max_tokens=100, messages=MESSAGES)
    assert message.id.startswith("msg_")
    assert message.model == "claude-x"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].type == "text"
    assert message.content[0].text == REPLY
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == len("Say hello to the tests.") // 4 + 1
    assert message.usage.output_tokens == 8


def test_tool_use_when_the_model_name_says_tool(client: anthropic.Anthropic) -> None:
    """With tools and 'tool' in the model name the answer calls the first tool."""
    message = client.messages.create(
        model="claude-tool", max_tokens=100, messages=MESSAGES, tools=TOOLS
    )
    assert [b.type for b in message.content] == ["text", "tool_use"]
    call = message.content[1]
    assert call.type == "tool_use"
    assert (call.name, call.input) == ("get_weather", {"city": "alpha", "days": 1})
    assert message.stop_reason == "tool_use"
    plain = client.messages.create(model="claude-x", max_tokens=100, messages=MESSAGES, tools=TOOLS)
    assert plain.stop_reason == "end_turn"


def test_forced_tool_choice_calls_that_tool(client: anthropic.Anthropic) -> None:
    """tool_choice type tool makes any model call the named tool, with no text."""
    message = client.messages.create(
        model="claude-x",
        max_tokens=100,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert [b.type for b in message.content] == ["tool_use"]


def test_thinking_block_when_asked(client: anthropic.Anthropic) -> None:
    """A request with thinking gets a signed thinking block before the text."""
    message = client.messages.create(
        model="claude-x",
        max_tokens=2000,
        messages=MESSAGES,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    thinking = message.content[0]
    assert thinking.type == "thinking"
    assert thinking.signature == THINKING_SIGNATURE
    assert thinking.thinking
    assert message.usage.output_tokens == 3 + 8


def test_stream_has_every_event_type(client: anthropic.Anthropic) -> None:
    """A stream with thinking and a tool call sends every event and delta type."""
    with client.messages.stream(
        model="claude-tool",
        max_tokens=2000,
        messages=MESSAGES,
        tools=TOOLS,
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        kinds = []
        for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta":
                kinds.append(event.delta.type)
        final = stream.get_final_message()
    for kind in (
        "message_start",
        "content_block_start",
        "thinking_delta",
        "signature_delta",
        "text_delta",
        "input_json_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ):
        assert kind in kinds
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[2].type == "tool_use"
    assert final.content[2].input == {"city": "alpha", "days": 1}


def test_stream_framing_is_anthropics(fake: FakeUpstream) -> None:
    """Each event is ``event: <type>`` then ``data: <json>``, with a ping after message_start."""
    body = {"model": "claude-x", "max_tokens": 50, "messages": MESSAGES, "stream": True}
    response = _raw(fake, body)
    events = response.text.split("\n\n")
    assert events[0].startswith('event: message_start\ndata: {"type":"message_start"')
    assert events[1] == 'event: ping\ndata: {"type":"ping"}'
    assert events[-2] == 'event: message_stop\ndata: {"type":"message_stop"}'
    assert response.headers["content-type"].startswith("text/event-stream")


def test_midstream_error_event(client: anthropic.Anthropic) -> None:
    """midstream-error sends some text, then an overloaded error event, and ends."""
    stream = client.messages.stream(model="midstream-error", max_tokens=50, messages=MESSAGES)
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"), stream as events:
        events.get_final_message()


def test_unknown_event_types_are_inserted(fake: FakeUpstream, client: anthropic.Anthropic) -> None:
    """unknown-event adds made-up events, which the SDK skips."""
    body = {"model": "unknown-event", "max_tokens": 50, "messages": MESSAGES, "stream": True}
    assert "event: made_up_event\n" in _raw(fake, body).text
    with client.messages.stream(model="unknown-event", max_tokens=50, messages=MESSAGES) as stream:
        assert stream.get_final_text() == REPLY


@pytest.mark.parametrize(
    ("status", "exception", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.InternalServerError, "overloaded_error"),
    ],
)
def test_scripted_errors_are_anthropic_shaped(
    client: anthropic.Anthropic, status: int, exception: type[Exception], kind: str
) -> None:
    """error-<status> answers with Anthropic's error type for that status."""
    with pytest.raises(exception) as info:
        client.messages.create(model=f"error-{status}", max_tokens=10, messages=MESSAGES)
    assert isinstance(info.value, anthropic.APIStatusError)
    assert info.value.status_code == status
    assert info.value.body == {
        "type": "error",
        "error": {"type": kind, "message": info.value.body["error"]["message"]},  # type: ignore[index]
        "request_id": info.value.body["request_id"],  # type: ignore[index]
    }


def test_key_and_version_are_required(fake: FakeUpstream) -> None:
    """A wrong x-api-key is a 401 and a missing anthropic-version a 400."""
    body = {"model": "claude-x", "max_tokens": 10, "messages": MESSAGES}
    wrong = _raw(fake, body, **{"x-api-key": "nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"
    no_version = httpx.post(
        f"{fake.root_url}/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=10
    )
    assert no_version.status_code == 400
    assert "anthropic-version" in no_version.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m", "messages": MESSAGES}, "max_tokens: Field required"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "at least one message"),
        (
            {"model": "m", "max_tokens": 5, "messages": [*MESSAGES, *MESSAGES]},
            "roles must alternate",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}
                ],
            },
            "unexpected `tool_use_id`",
        ),
        (
            {
                "model": "m",
                "max_tokens": 1000,
                "messages": MESSAGES,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
            "greater than `thinking.budget_tokens`",
        ),
    ],
)
def test_requests_are_validated_like_the_api(
    fake: FakeUpstream, body: dict[str, Any], message: str
) -> None:
    """Rules the real API enforces (and a translator can break) are 400s here too."""
    response = _raw(fake, body)
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert message in response.json()["error"]["message"]


def test_max_tokens_cuts_the_reply(client: anthropic.Anthropic) -> None:
    """A reply longer than max_tokens pieces stops with max_tokens."""
    message = client.messages.create(model="claude-x", max_tokens=3, messages=MESSAGES)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
