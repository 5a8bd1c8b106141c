"""The load test's traffic model: mix, prompt sizes, repeated prompts, SSE reading, keys."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtests import traffic


def test_parse_mix_normalises_weights_and_fills_missing_kinds() -> None:
    """Weights are scaled to sum to 1 and a kind left out gets 0."""
    mix = traffic.parse_mix("chat=3, stream=1")
    assert mix == {"chat": 0.75, "stream": 0.25, "embeddings": 0.0}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("chat=1,images=1", "kind=weight"),
        ("chat", "kind=weight"),
        ("chat=abc", "not a number"),
        ("chat=-1", ">= 0"),
        ("chat=0,stream=0", "positive"),
        ("chat=inf", "finite"),
    ],
)
def test_parse_mix_rejects_bad_input_with_a_clear_message(text: str, fragment: str) -> None:
    """Unknown kinds, non-numbers, negative or all-zero weights are refused by name."""
    with pytest.raises(ValueError, match=fragment):
        traffic.parse_mix(text)


def test_choose_kind_follows_the_mix() -> None:
    """Over many draws each kind's share is close to its weight; a zero weight never appears."""
    rng = random.Random(7)
    mix = traffic.parse_mix("chat=0.6,stream=0.4,embeddings=0")
    draws = [traffic.choose_kind(mix, rng) for _ in range(5000)]
    assert "embeddings" not in draws
    assert abs(draws.count("chat") / len(draws) - 0.6) < 0.03


@given(
    median=st.floats(10, 2000),
    sigma=st.floats(0, 2.5),
    seed=st.integers(0, 2**32),
)
def test_prompt_sizes_stay_within_their_bounds(median: float, sigma: float, seed: int) -> None:
    """Every drawn size is an int within [low, high], whatever the spread."""
    sizes = traffic.PromptSizes(median=median, sigma=sigma, low=8, high=4000)
    rng = random.Random(seed)
    assert all(8 <= sizes.draw(rng) <= 4000 for _ in range(50))


def test_prompt_sizes_are_lognormal_around_the_median() -> None:
    """The sample median is near the configured median and the tail is long (mean > median)."""
    sizes = traffic.PromptSizes(median=200, sigma=1.0, low=1, high=100_000)
    rng = random.Random(3)
    sample = [sizes.draw(rng) for _ in range(20_000)]
    assert 185 <= statistics.median(sample) <= 215
    assert statistics.mean(sample) > 1.4 * statistics.median(sample)


def test_prompt_sizes_reject_inconsistent_bounds() -> None:
    """A median outside [low, high] or a negative sigma is a configuration error."""
    with pytest.raises(ValueError, match="median"):
        traffic.PromptSizes(median=5, low=8)
    with pytest.raises(ValueError, match="sigma"):
        traffic.PromptSizes(sigma=-1)


def test_make_prompt_has_about_the_requested_tokens() -> None:
    """The word count follows the token budget at ~1.3 tokens per word."""
    words = traffic.make_prompt(1300, random.Random(1)).split()
    assert len(words) == 1000
    assert set(words) <= set(traffic.VOCABULARY)


def test_prompt_source_repeats_the_configured_share_from_a_shared_pool() -> None:
    """About repeat_share of prompts are repeats; two sources with one seed share the pool."""
    sizes = traffic.PromptSizes(median=50)
    a = traffic.PromptSource(sizes, repeat_share=0.3, pool_size=5, seed=11)
    b = traffic.PromptSource(sizes, repeat_share=1.0, pool_size=5, seed=11)
    rng = random.Random(5)
    draws = [a.next(rng) for _ in range(4000)]
    share = sum(repeat for _, repeat in draws) / len(draws)
    assert 0.27 < share < 0.33
    pool = {prompt for prompt, repeat in draws if repeat}
    assert len(pool) == 5
    assert {b.next(rng)[0] for _ in range(200)} == pool


def test_prompt_source_with_no_repeats_never_repeats() -> None:
    """repeat_share 0 means every prompt is fresh."""
    source = traffic.PromptSource(traffic.PromptSizes(), repeat_share=0.0)
    rng = random.Random(2)
    assert not any(source.next(rng)[1] for _ in range(500))


def test_chat_body_has_the_official_shape() -> None:
    """Streamed requests ask for usage in the stream, as the SDK's stream_options does."""
    plain = traffic.chat_body("gpt-4o-mini", "hi", 32, stream=False)
    assert plain["messages"][-1] == {"role": "user", "content": "hi"}
    assert plain["max_tokens"] == 32 and "stream" not in plain
    streamed = traffic.chat_body("gpt-4o-mini", "hi", 32, stream=True)
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}
    assert traffic.embeddings_body("m", "x") == {
        "model": "m",
        "input": "x",
        "encoding_format": "float",
    }


def _event(obj: object) -> list[bytes]:
    return [b"data: " + json.dumps(obj).encode() + b"\n", b"\n"]


def _chunk(content: str | None, usage: dict[str, int] | None = None) -> dict[str, object]:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    return {"object": "chat.completion.chunk", "choices": choices, "usage": usage}


def test_sse_accumulator_reads_content_usage_and_done() -> None:
    """A whole OpenAI stream: text joined, usage kept, complete after [DONE]."""
    sse = traffic.SseAccumulator()
    lines = [
        b": keep-alive comment\n",
        *_event({"object": "chat.completion.chunk", "choices": [{"delta": {"role": "assistant"}}]}),
        *_event(_chunk("Hel")),
        *_event(_chunk("lo")),
        *_event(_chunk(None, {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})),
        b"data: [DONE]\n",
        b"\n",
    ]
    kinds = [kind for line in lines if (kind := sse.feed(line)) is not None]
    assert kinds == ["chunk", "content", "content", "chunk", "done"]
    assert "".join(sse.text) == "Hello" and sse.content_chunks == 2
    assert sse.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert sse.complete


def test_sse_accumulator_joins_multi_line_data_and_handles_crlf() -> None:
    """Several data: lines form one event; CRLF line ends work like LF."""
    sse = traffic.SseAccumulator()
    payload = json.dumps(_chunk("x"), indent=1).split("\n")
    for part in payload:
        assert sse.feed(f"data: {part}\r\n") is None
    assert sse.feed("\r\n") == "content"
    assert sse.text == ["x"]


def test_sse_accumulator_reports_an_error_event_and_a_missing_done() -> None:
    """An error event makes the stream incomplete; so does a body that ends before [DONE]."""
    failed = traffic.SseAccumulator()
    for line in _event({"error": {"message": "upstream timed out", "type": "timeout"}}):
        failed.feed(line)
    assert failed.error == "upstream timed out" and not failed.complete
    cut = traffic.SseAccumulator()
    cut.feed(b"data: " + json.dumps(_chunk("a")).encode() + b"\n")
    assert cut.finish() == "content"
    assert not cut.done and not cut.complete
    garbage = traffic.SseAccumulator()
    garbage.feed("data: {not json\n")
    assert garbage.feed("\n") == "error" and garbage.error is not None


def test_load_keys_reads_lines_or_json(tmp_path: Path) -> None:
    """Keys come one per line (comments skipped) or as a JSON list of strings or objects."""
    lines = tmp_path / "keys.txt"
    lines.write_text("# loadtest keys\nsk-a\n\nsk-b\n")
    assert traffic.load_keys(lines) == ["sk-a", "sk-b"]
    objects = tmp_path / "keys.json"
    objects.write_text(json.dumps([{"key": "sk-c"}, "sk-d"]))
    assert traffic.load_keys(objects) == ["sk-c", "sk-d"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no keys"):
        traffic.load_keys(empty)
