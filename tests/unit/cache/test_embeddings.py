"""Embeddings per input item: the upstream subset request, splitting and merging answers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.cache.embeddings import merge_embeddings, missing_input_body, split_embeddings
from proxy.cache.entry import CachedEntry
from proxy.providers import mock
from proxy.providers.base import Operation


def answer_for(inputs: list[str], **options: Any) -> bytes:
    return mock.build_response(
        Operation.EMBEDDING, "text-embedding-3-small", {"input": inputs, **options}, ""
    )


def vectors(body: bytes) -> list[Any]:
    return [d["embedding"] for d in orjson.loads(body)["data"]]


def test_missing_input_body_asks_only_for_missing_items() -> None:
    """The upstream request carries just the missing items, in order, and no cache field."""
    body = {"model": "e", "input": ["a", "b", "c", "d"], "dimensions": 4, "cache": {"ttl": 9}}
    sent = orjson.loads(missing_input_body(body, [1, 3]))
    assert sent == {"model": "e", "input": ["b", "d"], "dimensions": 4}


@pytest.mark.parametrize("value", ["one", [1, 2, 3], ["a", "b"]])
def test_missing_input_body_forwards_input_as_sent_when_all_missing(value: Any) -> None:
    """When nothing was cached the client's input goes upstream unchanged."""
    body = {"model": "e", "input": value}
    count = 2 if value == ["a", "b"] else 1
    assert orjson.loads(missing_input_body(body, list(range(count)))) == body


def test_split_keeps_raw_vectors_and_shares_tokens() -> None:
    """Each item's entry holds its embedding as JSON; prompt tokens are shared out evenly."""
    response = answer_for(["a", "b", "c"])
    entries = split_embeddings(response, created_at=5.0)
    assert [orjson.loads(e.body) for e in entries] == vectors(response)
    total = orjson.loads(response)["usage"]["prompt_tokens"]
    assert sum(e.prompt_tokens for e in entries) == total
    assert {e.created_at for e in entries} == {5.0}


def test_merge_reassembles_input_order() -> None:
    """Cached and fresh vectors come back in input order with their input index."""
    full = answer_for(["a", "b", "c", "d"])
    cached = split_embeddings(full)
    hits: list[CachedEntry | None] = [cached[0], None, cached[2], None]
    fresh = answer_for(["b", "d"])
    merged = orjson.loads(merge_embeddings(hits, fresh, [1, 3]))
    assert [d["index"] for d in merged["data"]] == [0, 1, 2, 3]
    assert [d["embedding"] for d in merged["data"]] == vectors(full)
    assert {d["object"] for d in merged["data"]} == {"embedding"}
    assert merged["model"] == "text-embedding-3-small"
    assert merged["usage"] == orjson.loads(fresh)["usage"]


def test_all_hits_report_zero_usage() -> None:
    """An answer made only of cached vectors costs no tokens and names the given model."""
    cached = split_embeddings(answer_for(["a", "b"], encoding_format="base64"))
    merged = orjson.loads(merge_embeddings(list(cached), None, [], model="embed-alias"))
    assert merged["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    assert merged["model"] == "embed-alias"
    assert all(isinstance(d["embedding"], str) for d in merged["data"])


def test_merge_refuses_gaps() -> None:
    """An item neither cached nor fetched is a bug the caller must hear about."""
    with pytest.raises(ValueError, match=r"\[1\]"):
        merge_embeddings([CachedEntry(0.0, b"[0.5]"), None], None, [])
