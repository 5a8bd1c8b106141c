"""Budget durations and reset times (LiteLLM's documented calendar rules)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from proxy.usage import Duration, next_reset, parse_duration
from proxy.usage.budget import add_months

# A Friday afternoon at the end of a 31-day month.
NOW = datetime(2025, 1, 31, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", Duration(seconds=30)),
        ("5m", Duration(seconds=300)),
        ("1h", Duration(seconds=3600)),
        ("30d", Duration(seconds=30 * 86400)),
        ("2w", Duration(seconds=14 * 86400)),
        ("1mo", Duration(months=1)),
        ("12mo", Duration(months=12)),
        (" 7d ", Duration(seconds=7 * 86400)),
    ],
)
def test_parse_duration_reads_litellm_spellings(text: str, expected: Duration) -> None:
    """Number plus unit (s, m, h, d, w, mo) parses to months and seconds."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "1y", "0d", "-1d", "1.5h", "1 month"])
def test_parse_duration_refuses_anything_else(text: str) -> None:
    """Other spellings are a ValueError naming budget_duration."""
    with pytest.raises(ValueError, match="budget_duration"):
        parse_duration(text)


def test_duration_adds_to_a_datetime_like_relativedelta() -> None:
    """datetime + Duration adds calendar months (clamped to the month's end), then seconds."""
    assert NOW + parse_duration("1mo") == datetime(2025, 2, 28, 15, 30, tzinfo=UTC)
    assert NOW + parse_duration("13mo") == datetime(2026, 2, 28, 15, 30, tzinfo=UTC)
    assert NOW + parse_duration("90s") == NOW + timedelta(seconds=90)
    assert add_months(datetime(2024, 3, 31), -1) == datetime(2024, 2, 29)


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        ("30s", datetime(2025, 1, 31, 15, 30, 30, tzinfo=UTC)),
        ("1h", datetime(2025, 1, 31, 16, 30, tzinfo=UTC)),
        ("36h", datetime(2025, 2, 2, 3, 30, tzinfo=UTC)),
        ("1d", datetime(2025, 2, 1, tzinfo=UTC)),
        ("24h", datetime(2025, 2, 1, tzinfo=UTC)),
        ("2d", datetime(2025, 2, 2, tzinfo=UTC)),
        ("7d", datetime(2025, 2, 3, tzinfo=UTC)),  # the next Monday
        ("1w", datetime(2025, 2, 3, tzinfo=UTC)),
        ("30d", datetime(2025, 2, 1, tzinfo=UTC)),  # the 1st of next month
        ("1mo", datetime(2025, 2, 1, tzinfo=UTC)),
        ("3mo", datetime(2025, 4, 1, tzinfo=UTC)),
        ("12mo", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_next_reset_follows_calendar_boundaries(duration: str, expected: datetime) -> None:
    """Sub-day spans roll forward from now; days, weeks and months land on midnights."""
    assert next_reset(NOW, duration) == expected


def test_next_reset_on_a_monday_is_the_following_monday() -> None:
    """A weekly budget checked on a Monday resets a week later, not today."""
    monday = datetime(2025, 2, 3, 9, 0, tzinfo=UTC)
    assert next_reset(monday, "7d") == datetime(2025, 2, 10, tzinfo=UTC)


def test_next_reset_uses_the_given_timezone_across_dst() -> None:
    """Midnight is local: across the US spring-forward the UTC offset changes from 5 to 4 h."""
    eastern = ZoneInfo("America/New_York")
    saturday = datetime(2025, 3, 8, 12, 0, tzinfo=UTC)
    assert next_reset(saturday, "1d", eastern) == datetime(2025, 3, 9, 5, 0, tzinfo=UTC)
    assert next_reset(saturday, "2d", eastern) == datetime(2025, 3, 10, 4, 0, tzinfo=UTC)


def test_next_reset_accepts_a_parsed_duration_and_naive_now() -> None:
    """A Duration works like its text; a naive ``now`` is taken as UTC."""
    naive = NOW.replace(tzinfo=None)
    assert next_reset(naive, Duration(months=1)) == next_reset(NOW, "1mo")
    assert next_reset(NOW, "1mo").tzinfo == UTC
