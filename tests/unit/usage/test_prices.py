"""Token prices: name normalisation, cost arithmetic, unknown models, the shipped table."""

from __future__ import annotations

import msgspec
import pytest

from proxy.usage import Price, PriceTable, cost_usd, default_prices

REQUIRED = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "o3",
    "o4-mini",
    "gpt-5",
    "gpt-5-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "claude-opus-4",
    "claude-sonnet-4",
    "claude-3-5-haiku",
    "claude-3-7-sonnet",
]


def test_shipped_table_prices_the_common_models() -> None:
    """Every model the gateway is commonly configured with has a positive input price."""
    table = default_prices()
    for model in REQUIRED:
        price = table.lookup(model)
        assert price is not None, model
        assert price.input > 0


def test_shipped_table_states_its_date_and_sources() -> None:
    """prices.json carries the date and sources of its figures."""
    from importlib import resources

    raw = msgspec.json.decode(resources.files("proxy.usage").joinpath("prices.json").read_bytes())
    assert raw["about"]["as_of"] and raw["about"]["sources"]
    assert raw["about"]["unit"] == "USD per 1,000,000 tokens"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("openai/gpt-4o", "gpt-4o"),
        ("azure/gpt-4o-mini", "gpt-4o-mini"),
        ("GPT-4.1-2025-04-14", "gpt-4.1"),
        ("anthropic/claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("vertex_ai/claude-3-5-haiku@20241022", "claude-3-5-haiku"),
        ("azure/gpt-35-turbo", "gpt-3.5-turbo"),
    ],
)
def test_lookup_strips_provider_prefixes_and_dates(name: str, canonical: str) -> None:
    """Prefixed, dated and aliased spellings price as their family name."""
    table = default_prices()
    assert table.lookup(name) == table.lookup(canonical) is not None


def test_a_snapshot_listed_on_its_own_keeps_its_price() -> None:
    """gpt-4o-2024-05-13 is priced as listed, not as gpt-4o."""
    table = default_prices()
    assert table.lookup("gpt-4o-2024-05-13") == Price(input=5.0, output=15.0)
    assert table.lookup("gpt-4o-2024-05-13") != table.lookup("gpt-4o")


def test_cost_counts_input_cached_and_output_tokens() -> None:
    """cost = uncached prompt x input + cached x cached_input + completion x output, per 1M."""
    table = PriceTable({"m": Price(input=2.0, output=8.0, cached_input=0.5)})
    assert table.cost_usd("m", 1_000_000, 0) == pytest.approx(2.0)
    assert table.cost_usd("m", 0, 1_000_000) == pytest.approx(8.0)
    assert table.cost_usd("m", 1000, 500, cached_tokens=400) == pytest.approx(
        (600 * 2.0 + 400 * 0.5 + 500 * 8.0) / 1e6
    )


def test_cached_tokens_without_a_cached_price_cost_the_input_price() -> None:
    """A model with no cached_input bills cached prompt tokens at the input price."""
    table = PriceTable({"m": Price(input=1.0, output=1.0)})
    assert table.cost_usd("m", 100, 0, cached_tokens=100) == table.cost_usd("m", 100, 0)


def test_cached_tokens_are_clamped_to_the_prompt() -> None:
    """More cached than prompt tokens (a confused upstream) never lowers cost below zero."""
    table = PriceTable({"m": Price(input=1.0, cached_input=0.1)})
    assert table.cost_usd("m", 10, 0, cached_tokens=50) == pytest.approx(10 * 0.1 / 1e6)
    assert table.cost_usd("m", 10, 0, cached_tokens=-5) == pytest.approx(10 / 1e6)


def test_override_wins_over_the_table() -> None:
    """A deployment's configured price is used even for a model the table knows."""
    override = Price(input=100.0, output=0.0)
    assert cost_usd("gpt-4o", 1_000_000, 0, override=override) == pytest.approx(100.0)
    assert cost_usd("my-finetune", 1_000_000, 0, override=override) == pytest.approx(100.0)


def test_unknown_model_costs_nothing_and_is_reported_once() -> None:
    """An unknown model prices at 0.0, lands in unknown_models, and calls on_unknown once."""
    seen: list[str] = []
    table = PriceTable({"m": Price(input=1.0)}, on_unknown=seen.append)
    assert table.cost_usd("mystery", 1000, 1000) == 0.0
    assert table.cost_usd("mystery", 1000, 1000) == 0.0
    assert seen == ["mystery"] and table.unknown_models == {"mystery"}


def test_embedding_models_have_no_output_price() -> None:
    """Embeddings bill input tokens only."""
    assert cost_usd("text-embedding-3-small", 1_000_000, 0) == pytest.approx(0.02)
    assert default_prices().lookup("text-embedding-3-large") == Price(input=0.13)


def test_price_table_loads_from_json() -> None:
    """PriceTable.from_json reads the prices.json layout, aliases included."""
    table = PriceTable.from_json(
        b'{"models": {"x": {"input": 1, "output": 2}}, "aliases": {"y": "x"}}'
    )
    assert table.lookup("provider/y") == Price(input=1.0, output=2.0)
    with pytest.raises(msgspec.ValidationError):
        PriceTable.from_json(b'{"models": {"x": {"inptu": 1}}}')
