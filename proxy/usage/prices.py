"""Token prices and request cost. Pure apart from reading ``prices.json`` once.

``prices.json`` (package data) lists USD per million tokens for common OpenAI, Azure OpenAI
and Anthropic models, with the date and sources of the figures. A model name is looked up
as given, then without its provider prefix and date suffix, so ``openai/gpt-4o``,
``azure/gpt-4o`` and ``gpt-4o-2024-08-06`` all price as ``gpt-4o`` while a snapshot listed
on its own (``gpt-4o-2024-05-13``) keeps its own price.

An unknown model costs 0.0; the table remembers the name in ``unknown_models`` and calls
``on_unknown`` the first time it sees it, so the caller can warn once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from typing import Final

import msgspec

_DATE_SUFFIX: Final = re.compile(r"[-@](\d{4}-\d{2}-\d{2}|\d{8})$")
_TAG_SUFFIX: Final = re.compile(r"-(latest)$")
PER_TOKENS: Final = 1_000_000


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """USD per million tokens. ``cached_input`` None: cached prompt tokens cost ``input``."""

    input: float
    output: float = 0.0
    cached_input: float | None = None


class _PriceFile(msgspec.Struct, frozen=True):
    models: dict[str, Price]
    aliases: dict[str, str] = msgspec.field(default_factory=dict)


class PriceTable:
    def __init__(
        self,
        prices: Mapping[str, Price],
        aliases: Mapping[str, str] | None = None,
        *,
        on_unknown: Callable[[str], None] | None = None,
    ) -> None:
        self._prices = {name.lower(): price for name, price in prices.items()}
        self._aliases = {k.lower(): v.lower() for k, v in (aliases or {}).items()}
        self._resolved: dict[str, Price | None] = {}
        self.on_unknown = on_unknown
        self.unknown_models: set[str] = set()

    @classmethod
    def from_json(
        cls, data: bytes | str, *, on_unknown: Callable[[str], None] | None = None
    ) -> PriceTable:
        parsed = msgspec.json.decode(data, type=_PriceFile)
        return cls(parsed.models, parsed.aliases, on_unknown=on_unknown)

    def lookup(self, model: str) -> Price | None:
        """The price for a model name as clients and configs spell it; None if unknown."""
        try:
            return self._resolved[model]
        except KeyError:
            pass
        price = None
        for candidate in _candidates(model):
            name = self._aliases.get(candidate, candidate)
            if name in self._prices:
                price = self._prices[name]
                break
        if len(self._resolved) < 10_000:  # model names come from config, but stay bounded
            self._resolved[model] = price
        return price

    def cost_usd(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        override: Price | None = None,
    ) -> float:
        """USD for one request; ``prompt_tokens`` includes ``cached_tokens`` (OpenAI's usage).

        ``override`` (a deployment's configured price) wins over the table.
        """
        price = override or self.lookup(model)
        if price is None:
            if model not in self.unknown_models:
                self.unknown_models.add(model)
                if self.on_unknown is not None:
                    self.on_unknown(model)
            return 0.0
        cached = 0  # min(max(cached_tokens, 0), max(prompt_tokens, 0)), without three calls
        if cached_tokens > 0 and prompt_tokens > 0:
            cached = cached_tokens if cached_tokens < prompt_tokens else prompt_tokens
        cached_rate = price.input if price.cached_input is None else price.cached_input
        total = (
            (prompt_tokens - cached) * price.input
            + cached * cached_rate
            + completion_tokens * price.output
        )
        return total / PER_TOKENS


def _candidates(model: str) -> list[str]:
    """``model`` lower-cased, then without provider prefix, then without date or tag."""
    name = model.strip().lower()
    bare = name.rsplit("/", 1)[-1]
    undated = _TAG_SUFFIX.sub("", _DATE_SUFFIX.sub("", bare))
    return list(dict.fromkeys((name, bare, undated)))


@cache
def default_prices() -> PriceTable:
    """The table shipped in ``prices.json``, loaded once per process."""
    data = resources.files("proxy.usage").joinpath("prices.json").read_bytes()
    return PriceTable.from_json(data)


def cost_usd(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    override: Price | None = None,
) -> float:
    """``default_prices().cost_usd(...)``; see ``PriceTable.unknown_models`` for misses."""
    return default_prices().cost_usd(
        model, prompt_tokens, completion_tokens, cached_tokens, override
    )
