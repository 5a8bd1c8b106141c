"""The pure parts of the load test: traffic mix, prompt sizes, repeated prompts, SSE reading.

No locust and no sockets here, so the locustfile stays a thin shell and all of this is
unit-tested (tests/loadtests/test_traffic.py).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["chat", "stream", "embeddings"]
KINDS: tuple[Kind, ...] = ("chat", "stream", "embeddings")
DEFAULT_MIX = "chat=0.45,stream=0.4,embeddings=0.15"
# Plain words, about 1.3 tokens each with OpenAI's encodings.
VOCABULARY = (
    "the", "proxy", "routes", "each", "request", "to", "a", "deployment", "and", "streams",
    "tokens", "back", "while", "usage", "records", "flow", "into", "database", "batches",
    "so", "latency", "stays", "low", "under", "load", "operators", "size", "replicas",
    "from", "measured", "capacity", "rather", "than", "guesses", "about", "traffic",
)  # fmt: skip
TOKENS_PER_WORD = 1.3


def parse_mix(text: str) -> dict[Kind, float]:
    """``"chat=0.5,stream=0.3,embeddings=0.2"`` -> weights summing to 1; unknown kinds fail."""
    weights: dict[Kind, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in KINDS:
            raise ValueError(f"mix: expected kind=weight with kind in {KINDS}, got {part!r}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"mix: weight of {name!r} is not a number: {value!r}") from None
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"mix: weight of {name!r} must be a finite number >= 0")
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("mix: at least one weight must be positive")
    return {kind: weights.get(kind, 0.0) / total for kind in KINDS}


def choose_kind(mix: Mapping[Kind, float], rng: random.Random) -> Kind:
    kinds = list(mix)
    return rng.choices(kinds, weights=[mix[k] for k in kinds])[0]


@dataclass(frozen=True, slots=True)
class PromptSizes:
    """Prompt lengths in tokens: lognormal around ``median`` (spread ``sigma``), clipped."""

    median: float = 200.0
    sigma: float = 1.0
    low: int = 8
    high: int = 8000

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.median <= self.high or self.sigma < 0:
            raise ValueError("prompt sizes: need 0 < low <= median <= high and sigma >= 0")

    def draw(self, rng: random.Random) -> int:
        value = rng.lognormvariate(math.log(self.median), self.sigma)
        return int(min(self.high, max(self.low, round(value))))


def make_prompt(tokens: int, rng: random.Random) -> str:
    """Text of roughly ``tokens`` tokens (words from VOCABULARY, in random order)."""
    words = max(1, round(tokens / TOKENS_PER_WORD))
    return " ".join(rng.choices(VOCABULARY, k=words))


@dataclass(slots=True)
class PromptSource:
    """Fresh prompts, except a ``repeat_share`` drawn from a small fixed pool (cache hits)."""

    sizes: PromptSizes
    repeat_share: float = 0.2
    pool_size: int = 20
    seed: int = 1
    _pool: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 <= self.repeat_share <= 1.0 or self.pool_size < 1:
            raise ValueError("repeat share must be within 0..1 and the pool non-empty")
        pool_rng = random.Random(self.seed)  # the same pool in every process of a run
        self._pool = [
            make_prompt(self.sizes.draw(pool_rng), pool_rng) for _ in range(self.pool_size)
        ]

    def next(self, rng: random.Random) -> tuple[str, bool]:
        """A prompt and whether it is a repeat."""
        if rng.random() < self.repeat_share:
            return rng.choice(self._pool), True
        return make_prompt(self.sizes.draw(rng), rng), False


def chat_body(model: str, prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    """A request as the official SDK sends it (system + user message)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,  # deterministic requests are the cacheable ones
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def embeddings_body(model: str, prompt: str) -> dict[str, Any]:
    return {"model": model, "input": prompt, "encoding_format": "float"}


@dataclass(slots=True)
class SseAccumulator:
    """Reads an OpenAI SSE stream line by line: content, usage, a final error, ``[DONE]``."""

    text: list[str] = field(default_factory=list)
    content_chunks: int = 0
    usage: dict[str, Any] | None = None
    error: str | None = None
    done: bool = False
    _data: list[str] = field(default_factory=list)

    def feed(self, line: bytes | str) -> str | None:
        """One line (with or without its newline); returns the event kind it completed.

        Kinds: ``content`` (a chunk with text), ``chunk`` (a chunk without text), ``done``,
        ``error``; None while an event is still being read or for comments.
        """
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        line = line.rstrip("\r\n")
        if line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
            return None
        if line or not self._data:
            return None  # comments, other fields, or a blank line between events
        data, self._data = "\n".join(self._data), []
        return self._event(data)

    def finish(self) -> str | None:
        """The end of the body: an event not followed by a blank line still counts."""
        return self.feed("") if self._data else None

    def _event(self, data: str) -> str:
        if data == "[DONE]":
            self.done = True
            return "done"
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            self.error = f"undecodable event: {data[:80]!r}"
            return "error"
        if not isinstance(chunk, dict):
            self.error = f"unexpected event: {data[:80]!r}"
            return "error"
        if "error" in chunk:
            self.error = str(chunk["error"].get("message", chunk["error"]))
            return "error"
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        kind = "chunk"
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.text.append(content)
                kind = "content"
        if kind == "content":
            self.content_chunks += 1
        return kind

    @property
    def complete(self) -> bool:
        return self.done and self.error is None


def load_keys(path: Path) -> list[str]:
    """Virtual keys from a file: one per line, or a JSON list (of strings or {"key": ...})."""
    text = path.read_text().strip()
    if text.startswith("["):
        items = json.loads(text)
        keys = [item["key"] if isinstance(item, dict) else str(item) for item in items]
    else:
        keys = [line.strip() for line in text.splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise ValueError(f"{path}: no keys")
    return keys
