"""The load-test provider answers the official SDK's shapes, on time, with injected faults."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from loadtests import fake_provider, replies
from tests.support.processes import (
    ManagedProcess,
    python_module_argv,
    start_process,
    stop_process,
    wait_for_line,
)

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there"}]


def _start(*args: str) -> tuple[ManagedProcess, openai.OpenAI]:
    proc = start_process(python_module_argv("loadtests.fake_provider", "--port", "0", *args))
    port = int(wait_for_line(proc, "LISTENING ", 15.0))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    return proc, client


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    """A provider with a 100 ms TTFT and 50 tokens/s, two processes."""
    proc, sdk = _start("--ttft-ms", "100", "--tokens-per-s", "50", "--processes", "2")
    try:
        yield sdk
    finally:
        stop_process(proc)


def test_chat_completion_has_usage_and_the_requested_length(client: openai.OpenAI) -> None:
    """A non-stream answer parses in the SDK, with max_tokens tokens and usage."""
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == replies.completion_text(5)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 5 and answer.usage.prompt_tokens > 0


def test_stream_sends_every_token_then_usage(client: openai.OpenAI) -> None:
    """Chunks parse in the SDK, the first carries the role, usage comes in the last chunk."""
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(text) == replies.completion_text(10)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10


def test_stamped_tokens_are_send_times_within_the_request() -> None:
    """With --stamp each token is the wall-clock time it was written: ordered, inside the call."""
    proc, sdk = _start("--stamp", "--ttft-ms", "0", "--tokens-per-s", "1000")
    try:
        before = time.time()
        stream = sdk.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, stream=True
        )
        stamps = [
            float(c.choices[0].delta.content or "")
            for c in stream
            if c.choices and c.choices[0].delta.content
        ]
        after = time.time()
    finally:
        stop_process(proc)
    assert len(stamps) == 5
    assert stamps == sorted(stamps)
    assert before <= stamps[0] and stamps[-1] <= after


def test_embeddings_answer_floats_and_base64(client: openai.OpenAI) -> None:
    """One vector per input, in float and in the SDK's default base64 encoding."""
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b", "c"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert len(floats.data[0].embedding) == 256
    packed = client.embeddings.create(model="text-embedding-3-small", input="a")
    assert packed.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)


def test_bad_json_and_unknown_routes_get_openai_errors(client: openai.OpenAI) -> None:
    """A body that is not JSON is a 400, an unknown path a 404, both in the error envelope."""
    with pytest.raises(openai.BadRequestError):
        client.post("/chat/completions", content=b"{", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        client.post("/nothing", body={}, cast_to=object)


def test_error_injection_fails_the_configured_share() -> None:
    """With --error-rate 1 every request fails with --error-status in OpenAI's envelope."""
    proc, sdk = _start("--error-rate", "1", "--error-status", "429", "--ttft-ms", "0")
    try:
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.code == "rate_limit_exceeded"
    finally:
        stop_process(proc)


def test_options_are_validated() -> None:
    """An error rate outside 0..1 or a non-positive rate is refused before serving."""
    parser = fake_provider._parser()
    with pytest.raises(SystemExit, match="error-rate"):
        fake_provider.config_from_args(parser.parse_args(["--error-rate", "1.5"]))
    with pytest.raises(SystemExit, match="must be positive"):
        fake_provider.config_from_args(parser.parse_args(["--tokens-per-s", "0"]))
    config = fake_provider.config_from_args(parser.parse_args(["--stamp", "--ttft-ms", "5"]))
    assert config.stamp and config.ttft_ms == 5


def test_replies_count_embedding_inputs_of_every_accepted_shape() -> None:
    """A string, a list of strings, a token list and a list of token lists."""
    view = replies.EmbeddingsView
    assert replies.embedding_inputs(view(input="a")) == 1
    assert replies.embedding_inputs(view(input=["a", "b"])) == 2
    assert replies.embedding_inputs(view(input=[1, 2, 3])) == 1
    assert replies.embedding_inputs(view(input=[[1], [2]])) == 2
    assert replies.output_tokens(replies.ChatView(max_tokens=3), 64) == 3
    assert replies.output_tokens(replies.ChatView(max_completion_tokens=100), 64) == 64
