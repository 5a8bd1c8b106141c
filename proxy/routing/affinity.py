"""Prompt-cache-aware sticky routing: an affinity key per request, rendezvous hashing.

Providers cache prompt prefixes per deployment, so requests that share a prefix are cheaper
and faster on the deployment that saw it last. For the aliases in ``router.sticky_aliases``
the Router sends requests with the same affinity key to the same deployment:

- ``affinity_key`` names the request's "conversation": its ``prompt_cache_key``, else its
  ``user``, else a hash of the first ``PREFIX_CHARS`` characters of its system prompt
  (Anthropic's ``system``, else the first message, which is the system prompt where there is
  one, else the completions ``prompt``).
- ``rendezvous`` (highest random weight hashing) ranks deployments per key, weighted by
  ``weight``: removing a deployment moves only the keys it held, adding one takes only its
  share, and a key whose deployment is cooling or excluded goes to its second choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from proxy.routing.router import Deployment

PREFIX_CHARS = 4096  # enough to tell system prompts apart; bounds the hashing cost
_SPAN = float(1 << 64)


class _Message(msgspec.Struct):
    content: Any = None


class _Request(msgspec.Struct):
    """The fields an affinity key is made from; the rest of the body is skipped."""

    prompt_cache_key: Any = None
    user: Any = None
    system: Any = None  # Anthropic's top-level system prompt
    messages: list[msgspec.Raw] | None = None  # only the first is decoded
    prompt: msgspec.Raw = msgspec.Raw()  # empty when absent


_request = msgspec.json.Decoder(_Request)
_message = msgspec.json.Decoder(_Message)


def affinity_key(body: bytes) -> str | None:
    """The affinity key of a JSON request body, or None when it has nothing to stick by.

    A body that is not a JSON object gives None: validation is the caller's job.
    """
    try:
        request = _request.decode(body)
        named = _named(request.prompt_cache_key, request.user)
        if named is not None:
            return named
        if request.system is not None:
            return _prefix(request.system)
        if request.messages:
            return _prefix(_message.decode(request.messages[0]).content)
        if request.prompt:
            return _prefix(msgspec.json.decode(request.prompt))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return None


def affinity_key_of(request: Mapping[str, Any]) -> str | None:
    """``affinity_key`` for a request already decoded into a mapping."""
    named = _named(request.get("prompt_cache_key"), request.get("user"))
    if named is not None:
        return named
    if request.get("system") is not None:
        return _prefix(request["system"])
    messages = request.get("messages")
    if isinstance(messages, list) and messages:
        first = messages[0]
        return _prefix(first.get("content") if isinstance(first, Mapping) else None)
    return _prefix(request.get("prompt"))


def _named(cache_key: Any, user: Any) -> str | None:
    if isinstance(cache_key, str) and cache_key:
        return "k:" + cache_key
    if isinstance(user, str) and user:
        return "u:" + user
    return None


def _prefix(content: Any) -> str | None:
    text = _text(content)[:PREFIX_CHARS]
    if not text:
        return None
    return "p:" + blake2b(text.encode(), digest_size=16).hexdigest()


def _text(content: Any) -> str:
    """The text of a message content, system prompt or prompt: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        size = 0
        for part in content:
            text = part.get("text") if isinstance(part, Mapping) else part
            if isinstance(text, str):
                parts.append(text)
                size += len(text)
            elif isinstance(text, int):  # a completions prompt given as token ids
                parts.append(f"{text} ")
                size += 1
            if size >= PREFIX_CHARS:
                break
        return "".join(parts)
    return ""


def rendezvous(key: str, deps: Sequence[Deployment]) -> Deployment:
    """The deployment ``key`` belongs to: highest ``weight / -ln(hash(key, id))`` wins.

    Each score depends only on the key and that one deployment, so the winner among the
    others does not change when a deployment joins or leaves (or cools down).
    """
    if len(deps) == 1:
        return deps[0]
    equal = all(d.weight <= 0 for d in deps)
    best = deps[0]
    best_score = -1.0
    seed = key.encode() + b"\x00"
    for dep in deps:
        digest = blake2b(seed + dep.id.encode(), digest_size=8).digest()
        uniform = (int.from_bytes(digest, "big") + 0.5) / _SPAN  # in (0, 1)
        score = (1.0 if equal else max(dep.weight, 0.0)) / -math.log(uniform)
        if score > best_score:
            best, best_score = dep, score
    return best
