"""Sticky routing: affinity keys from request bodies, rendezvous hashing, re-pinning."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.routing import Deployment, Router, affinity_key, affinity_key_of
from proxy.routing.affinity import PREFIX_CHARS, rendezvous
from proxy.settings import DeploymentParams, ModelEntry, RouterSettings, Settings


def _both(body: dict[str, Any]) -> str | None:
    """The key from the raw bytes, checked against the key from the decoded mapping."""
    from_bytes = affinity_key(msgspec.json.encode(body))
    assert from_bytes == affinity_key_of(body)
    return from_bytes


def test_prompt_cache_key_comes_first() -> None:
    """An explicit prompt_cache_key beats the user and the prompt."""
    body = {"prompt_cache_key": "conv-1", "user": "u", "messages": [{"content": "x"}]}
    assert _both(body) == "k:conv-1"


def test_user_comes_next() -> None:
    """Without a prompt_cache_key, requests of one user stick together."""
    assert _both({"user": "alice", "messages": [{"role": "user", "content": "x"}]}) == "u:alice"


def test_same_system_prompt_gives_the_same_key() -> None:
    """Two conversations with one system prompt share a key; another prompt does not."""
    system = {"role": "system", "content": "You are a helpful assistant. " * 10}
    one = _both({"messages": [system, {"role": "user", "content": "hi"}]})
    two = _both({"messages": [system, {"role": "user", "content": "bye"}]})
    other = _both({"messages": [{"role": "system", "content": "Be terse."}]})
    assert one is not None and one.startswith("p:")
    assert one == two != other


def test_content_parts_and_anthropic_system_are_read() -> None:
    """Content as a list of text parts, and Anthropic's top-level system, both count."""
    parts = [{"type": "text", "text": "Be "}, {"type": "text", "text": "terse."}]
    as_parts = _both({"messages": [{"role": "system", "content": parts}]})
    as_text = _both({"messages": [{"role": "system", "content": "Be terse."}]})
    anthropic = _both({"system": parts, "messages": [{"role": "user", "content": "q"}]})
    assert as_parts == as_text == anthropic


def test_completions_prompt_is_a_prefix_too() -> None:
    """A completions request sticks by its prompt, text or token ids."""
    assert _both({"prompt": "Once upon a time"}) == _both({"prompt": ["Once upon a time"]})
    assert _both({"prompt": [1, 2, 3]}) != _both({"prompt": [1, 2, 4]})


def test_only_a_bounded_prefix_is_hashed() -> None:
    """Prompts that differ only after PREFIX_CHARS characters share a key."""
    base = "x" * PREFIX_CHARS
    assert _both({"messages": [{"content": base + "a"}]}) == _both(
        {"messages": [{"content": base + "b"}]}
    )


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b"{}", b'{"messages": []}', b'{"messages": [{"content": 5}]}'],
)
def test_nothing_to_stick_by_gives_none(body: bytes) -> None:
    """Bad or empty bodies give no key (the pipeline reports bad input, not routing)."""
    assert affinity_key(body) is None


def test_non_string_identifiers_are_ignored() -> None:
    """A numeric user or empty prompt_cache_key is not an identity; the prompt is used."""
    key = _both({"user": 7, "prompt_cache_key": "", "messages": [{"content": "hi"}]})
    assert key is not None and key.startswith("p:")


def _deployments(*weights: float) -> list[Deployment]:
    settings = Settings(
        model_list=tuple(
            ModelEntry("a", DeploymentParams(model="mock/m", weight=w), {"id": f"d{i}"})
            for i, w in enumerate(weights)
        )
    )
    return Router(settings).deployments


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=40, unique=True))
def test_removing_a_deployment_moves_only_its_keys(keys: list[str]) -> None:
    """Keys that were not on the removed deployment stay where they were."""
    deps = _deployments(1, 2, 1, 3)
    before = {k: rendezvous(k, deps).id for k in keys}
    remaining = [d for d in deps if d.id != "d1"]
    for key, owner in before.items():
        if owner != "d1":
            assert rendezvous(key, remaining).id == owner


def test_adding_a_deployment_takes_only_its_share() -> None:
    """A fourth equal deployment takes about a quarter of the keys, from all the others."""
    three, four = _deployments(1, 1, 1), _deployments(1, 1, 1, 1)
    keys = [f"user-{i}" for i in range(4000)]
    moved = [k for k in keys if rendezvous(k, three).id != rendezvous(k, four).id]
    assert all(rendezvous(k, four).id == "d3" for k in moved)
    assert 0.21 < len(moved) / len(keys) < 0.29


def test_rendezvous_share_follows_weight() -> None:
    """Keys spread over deployments in proportion to their weights."""
    deps = _deployments(3, 1)
    owners = Counter(rendezvous(f"k{i}", deps).id for i in range(8000))
    assert 2.6 < owners["d0"] / owners["d1"] < 3.4


def _sticky_router(clock: list[float]) -> Router:
    settings = Settings(
        model_list=tuple(
            ModelEntry(alias, DeploymentParams(model="mock/m"), {"id": f"{alias}{i}"})
            for alias in ("a", "b")
            for i in range(3)
        ),
        router=RouterSettings(sticky_aliases=("a",), cooldown_seconds=10),
    )
    return Router(settings, rng=random.Random(5), clock=lambda: clock[0])


def _pick(router: Router, alias: str, key: str, exclude: tuple[str, ...] = ()) -> str:
    dep = router.pick(alias, exclude, affinity=key)
    assert dep is not None
    return dep.id


def test_sticky_alias_pins_each_key_to_one_deployment() -> None:
    """Every request of a key lands on one deployment; keys spread over all of them."""
    router = _sticky_router([0.0])
    assert router.sticky("a") and not router.sticky("b")
    for i in range(20):
        assert len({_pick(router, "a", f"u:{i}") for _ in range(10)}) == 1
    assert len({_pick(router, "a", f"u:{i}") for i in range(200)}) == 3


def test_non_sticky_alias_ignores_the_affinity_key() -> None:
    """An alias that did not opt in keeps its strategy for keyed requests."""
    router = _sticky_router([0.0])
    assert len({_pick(router, "b", "u:1") for _ in range(100)}) == 3


def test_a_cooling_or_excluded_deployment_re_pins_its_keys() -> None:
    """A key moves to its second choice while its deployment cools, and then back."""
    clock = [0.0]
    router = _sticky_router(clock)
    home = _pick(router, "a", "k:conv")
    second = _pick(router, "a", "k:conv", exclude=(home,))
    assert second != home
    (cooled,) = [d for d in router.deployments if d.id == home]
    router.failed(cooled, rate_limited=True, retry_after=None)
    assert {_pick(router, "a", "k:conv") for _ in range(10)} == {second}
    clock[0] = 11.0
    assert _pick(router, "a", "k:conv") == home
