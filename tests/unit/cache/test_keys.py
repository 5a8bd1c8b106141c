"""Cache keys: canonical, blind to delivery fields, sensitive to everything that shapes output."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.cache.keys import IGNORED_FIELDS, cache_key, embedding_inputs, embedding_keys

OUTPUT_FIELDS = (
    "messages",
    "prompt",
    "input",
    "tools",
    "tool_choice",
    "functions",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "seed",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "dimensions",
    "encoding_format",
)
DELIVERY_FIELDS = ("stream", "stream_options", "user", "metadata", "cache", "timeout")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**6), max_value=10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.dictionaries(st.sampled_from(OUTPUT_FIELDS), json_values, max_size=6)


def _reordered(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}


@given(bodies)
def test_key_is_independent_of_key_order(body: dict[str, Any]) -> None:
    """Reordering the keys of the body and of every nested object gives the same key."""
    assert cache_key("m", body, namespace=None) == cache_key("m", _reordered(body), namespace=None)


@given(bodies, st.dictionaries(st.sampled_from(DELIVERY_FIELDS), json_values, min_size=1))
def test_key_ignores_delivery_fields(body: dict[str, Any], extra: dict[str, Any]) -> None:
    """Adding stream, user, metadata, cache controls or timeout does not change the key."""
    assert cache_key("m", body, namespace=None) == cache_key("m", {**body, **extra}, namespace=None)


@given(bodies, st.sampled_from(OUTPUT_FIELDS), json_values)
def test_key_changes_with_any_output_field(body: dict[str, Any], field: str, value: Any) -> None:
    """Changing or adding any output-shaping field gives another key."""
    assume(field not in body or body[field] != value)
    changed = {**body, field: value}
    assert cache_key("m", body, namespace=None) != cache_key("m", changed, namespace=None)


def test_key_ignores_the_model_field_but_not_the_alias() -> None:
    """The alias names the model group; the body's model field is not read again."""
    assert cache_key("a", CHAT, namespace=None) == cache_key(
        "a", {**CHAT, "model": "x"}, namespace=None
    )
    assert cache_key("a", CHAT, namespace=None) != cache_key("b", CHAT, namespace=None)


def test_unknown_fields_count() -> None:
    """A field the proxy does not know (a provider option) may change the answer, so it counts."""
    assert cache_key("m", CHAT, namespace=None) != cache_key(
        "m", {**CHAT, "top_k": 5}, namespace=None
    )


def test_integral_sampling_values_equal_their_float() -> None:
    """temperature 1 and 1.0 ask for the same thing."""
    one = cache_key("m", {**CHAT, "temperature": 1}, namespace=None)
    assert one == cache_key("m", {**CHAT, "temperature": 1.0}, namespace=None)


def test_namespace_prefixes_the_key() -> None:
    """A namespace is a readable prefix in front of the SHA-256 hex digest."""
    plain = cache_key("m", CHAT, namespace=None)
    assert len(plain) == 64 and int(plain, 16) >= 0
    assert cache_key("m", CHAT, namespace="team-a") == "team-a:" + plain


def test_delivery_fields_are_all_ignored() -> None:
    """Every documented non-output field is in the ignored set."""
    assert set(DELIVERY_FIELDS) <= IGNORED_FIELDS
    assert not set(OUTPUT_FIELDS) & IGNORED_FIELDS


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("one", ["one"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
    ids=["string", "strings", "token-array", "token-arrays"],
)
def test_embedding_inputs_splits_batches_only(value: Any, items: list[Any]) -> None:
    """A string or one token array is one item; a list of them is one item each."""
    assert embedding_inputs(value) == items


def test_embedding_keys_are_per_item_and_position_free() -> None:
    """An input embedded alone or inside a batch has the same key."""
    body = {"model": "e", "input": ["a", "b", "c"], "dimensions": 8}
    keys = embedding_keys("e", body, None)
    assert len(set(keys)) == 3
    assert embedding_keys("e", {"input": "b", "dimensions": 8}, None) == [keys[1]]
    assert embedding_keys("e", {"input": ["c", "a"], "dimensions": 8}, None) == [keys[2], keys[0]]


@pytest.mark.parametrize("change", [{"dimensions": 16}, {"encoding_format": "base64"}])
def test_embedding_keys_change_with_vector_options(change: dict[str, Any]) -> None:
    """Dimensions and encoding format shape every vector, so they change every item's key."""
    body = {"input": ["a", "b"], "dimensions": 8}
    before = embedding_keys("e", body, None)
    after = embedding_keys("e", {**body, **change}, None)
    assert not set(before) & set(after)


def test_embedding_item_key_differs_from_request_key() -> None:
    """A whole-request key and a per-item key of the same body never collide."""
    body = {"input": "a"}
    assert embedding_keys("e", body, "ns") != [cache_key("e", body, namespace="ns")]
    assert embedding_keys("e", body, "ns")[0].startswith("ns:")
