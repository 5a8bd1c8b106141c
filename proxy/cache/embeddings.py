"""Embeddings cached per input item: a batch reuses every vector any earlier request made.

The flow for one request (``ResponseCache`` does the storage half)::

    found = await cache.lookup_embeddings(alias, body, controls)
    if found.missing:                       # some items are not cached
        upstream_body = missing_input_body(body, found.missing)
        fresh = <send upstream_body>
        await cache.store_embeddings(alias, body, controls, fresh, found.missing)
    answer = merge_embeddings(found.hits, fresh or None, found.missing, model=alias)

A per-item entry's body is the item's ``embedding`` value as raw JSON (a float array or a
base64 string, per the request's ``encoding_format``, which is part of the key), so merging
splices stored bytes without decoding them.

Usage in a merged answer counts only the tokens sent upstream in this request: cached items
cost nothing, and an all-hit answer reports zero tokens. A per-item entry's token count is
the fresh request's prompt tokens split evenly over its items: an estimate, used only to
report tokens saved.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from proxy.cache.entry import CachedEntry
from proxy.cache.keys import embedding_inputs


class EmbeddingLookup(NamedTuple):
    keys: list[str]  # one per input item, in input order
    hits: list[CachedEntry | None]  # the cached entry of each item, None where missing
    missing: list[int]  # indexes of the items to ask the upstream for, ascending


def missing_input_body(body: Mapping[str, Any], missing: Sequence[int]) -> bytes:
    """The upstream request for just the ``missing`` items (and without ``cache``)."""
    fields = {k: v for k, v in body.items() if k != "cache"}
    items = embedding_inputs(body.get("input"))
    if len(missing) != len(items):  # all missing: forward the input as the client sent it
        fields["input"] = [items[i] for i in missing]
    return orjson.dumps(fields)


def split_embeddings(response: bytes, *, created_at: float | None = None) -> list[CachedEntry]:
    """One entry per ``data`` item of an embeddings answer, in ``index`` order."""
    answer = orjson.loads(response)
    data = sorted(answer["data"], key=lambda d: d.get("index", 0))
    usage = answer.get("usage") or {}
    prompt_tokens = usage.get("prompt_tokens") or 0
    share, extra = divmod(prompt_tokens, len(data)) if data else (0, 0)
    now = time.time() if created_at is None else created_at
    return [
        CachedEntry(now, orjson.dumps(item["embedding"]), share + (1 if i < extra else 0), 0)
        for i, item in enumerate(data)
    ]


def merge_embeddings(
    hits: Sequence[CachedEntry | None],
    fresh_response: bytes | None,
    missing_indexes: Sequence[int],
    *,
    model: str = "",
) -> bytes:
    """One OpenAI embeddings answer in input order, from cached items and the fresh answer.

    ``fresh_response`` answers the ``missing_indexes`` items, in that order; it is None when
    nothing was missing. ``model`` names the model when nothing was fetched (the fresh
    answer's model wins otherwise). Usage is the fresh answer's: cached items cost nothing.
    """
    data: list[Any] = [
        None if hit is None else _item(i, orjson.Fragment(hit.body)) for i, hit in enumerate(hits)
    ]
    usage: Any = {"prompt_tokens": 0, "total_tokens": 0}
    if fresh_response is not None:
        fresh = orjson.loads(fresh_response)
        for position, item in enumerate(fresh["data"]):
            index = missing_indexes[item.get("index", position)]
            data[index] = {**item, "index": index}
        model = fresh.get("model", model)
        usage = fresh.get("usage") or usage
    absent = [i for i, item in enumerate(data) if item is None]
    if absent:
        raise ValueError(f"embeddings for inputs {absent} are neither cached nor fetched")
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})


def _item(index: int, embedding: orjson.Fragment) -> dict[str, Any]:
    return {"object": "embedding", "index": index, "embedding": embedding}
