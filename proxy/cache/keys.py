"""Cache keys: SHA-256 over the model alias and every request field that changes the answer.

The key is built from the decoded body minus the fields that cannot change the output
(delivery, accounting, cache controls). Every other field counts, including ones this module
does not know: a provider option we have never heard of may well change the answer, and a
wrong hit is worse than a miss. The body is serialised as canonical JSON (keys sorted at
every depth), so the client's key order does not matter, and integral sampling values are
read as floats (``temperature: 1`` and ``1.0`` ask for the same thing).

The alias (the ``model`` the client named) stands for every deployment behind it, so all of
a model group's deployments share entries. The key does not include the caller's API key:
identical prompts share entries across tenants unless a namespace separates them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

# Fields that cannot change what the model answers. ``model`` is replaced by the alias.
IGNORED_FIELDS: Final = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "cache",  # our per-request cache controls (and LiteLLM's)
        "caching",  # LiteLLM's per-request on/off switch
        "timeout",
        "request_timeout",
        "store",  # OpenAI's "keep this completion for evals", not an input
    }
)
# Fields read as numbers: 1 and 1.0 must give the same key.
_FLOAT_FIELDS: Final = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
# Domain tags, so a whole-request key can never equal a per-input embedding key.
_REQUEST: Final = b"request\x00"
_EMBEDDING_ITEM: Final = b"embedding-item\x00"


def cache_key(alias: str, body: Mapping[str, Any], *, namespace: str | None) -> str:
    """The key of a whole request (chat, completions, or an embeddings request as a unit)."""
    return _key(_REQUEST, alias, _significant(body), namespace)


def embedding_keys(alias: str, body: Mapping[str, Any], namespace: str | None) -> list[str]:
    """One key per input item of an embeddings request, in input order.

    An item's key depends on the item, the alias and the options that shape every vector
    (``dimensions``, ``encoding_format``, ...), not on the other items or the item's position:
    ``"a"`` embedded alone or as the third input of a batch shares one entry.
    """
    fields = _significant(body)
    items = embedding_inputs(fields.pop("input", None))
    keys = []
    for item in items:
        fields["input"] = item
        keys.append(_key(_EMBEDDING_ITEM, alias, fields, namespace))
    return keys


def embedding_inputs(value: Any) -> list[Any]:
    """The items of an embeddings ``input``: a string and a token array are one item each."""
    if isinstance(value, list) and value and not _is_token_array(value):
        return value
    return [value]


def _is_token_array(value: list[Any]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _significant(body: Mapping[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    for name in _FLOAT_FIELDS:
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            fields[name] = float(value)
    return fields


def _key(domain: bytes, alias: str, fields: Mapping[str, Any], namespace: str | None) -> str:
    digest = hashlib.sha256(domain)
    digest.update(alias.encode())
    digest.update(b"\x00")
    digest.update(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))
    hexdigest = digest.hexdigest()
    return f"{namespace}:{hexdigest}" if namespace else hexdigest
