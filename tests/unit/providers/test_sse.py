"""The OpenAI stream relay: forwarding, usage capture, usage stripping, counting."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from proxy.providers._sse import DONE, OpenAIStreamRelay, event_data, split_events, sse_event


def _chunk(
    content: str | None, usage: dict[str, int] | None = None, *, empty: bool = False
) -> bytes:
    choices = [] if empty else [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    return sse_event(
        orjson.dumps({"object": "chat.completion.chunk", "choices": choices, "usage": usage})
    )


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
STREAM = _chunk("Hel") + _chunk("lo") + _chunk(None, USAGE, empty=True) + DONE


def _relay(data: bytes, sizes: list[int], *, strip: bool) -> tuple[bytes, OpenAIStreamRelay]:
    relay = OpenAIStreamRelay(strip_usage=strip)
    out, pos = [], 0
    for size in sizes:
        out.append(relay.feed(data[pos : pos + size]))
        pos += size
    out.append(relay.feed(data[pos:]))
    out.append(relay.finish())
    return b"".join(out), relay


def test_passthrough_forwards_bytes_unchanged_and_reads_usage() -> None:
    """Without stripping, the client gets the upstream's bytes and usage is read at the end."""
    out, relay = _relay(STREAM, [10, 100, 7], strip=False)
    assert out == STREAM
    assert relay.account.usage is not None
    assert relay.account.usage.total_tokens == 7


def test_strip_removes_only_the_usage_chunk() -> None:
    """When the proxy asked for usage itself, the usage-only chunk is held back."""
    out, relay = _relay(STREAM, [3, 50, 200], strip=True)
    assert out == _chunk("Hel") + _chunk("lo") + DONE
    assert relay.account.usage is not None
    assert relay.account.usage.prompt_tokens == 5


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=30))
def test_strip_is_independent_of_chunk_boundaries(sizes: list[int]) -> None:
    """However the upstream splits its bytes, the client sees the same events."""
    out, relay = _relay(STREAM, sizes, strip=True)
    assert out == _chunk("Hel") + _chunk("lo") + DONE
    assert relay.account.usage is not None


def test_completion_text_joins_the_deltas() -> None:
    """With no usage reported, the relay can give the generated text for counting."""
    data = _chunk("Hel") + _chunk("lo") + DONE
    _, relay = _relay(data, [5], strip=False)
    assert relay.account.usage is None
    assert relay.completion_text() == "Hello"


def test_crlf_framing_is_understood() -> None:
    """Servers that end events with CRLF pairs are split correctly."""
    events, rest = split_events(b"data: a\r\n\r\ndata: b\n\ndata: c")
    assert events == [b"data: a", b"data: b"]
    assert rest == b"data: c"
    assert event_data(b": comment\ndata: x\ndata: y") == b"x\ny"
    assert event_data(b": keep-alive") is None
