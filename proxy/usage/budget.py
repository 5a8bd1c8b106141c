"""Budget periods: parse ``budget_duration`` and work out when a budget next resets. Pure.

Durations are LiteLLM's: a whole number and a unit, ``s`` ``m`` (minutes) ``h`` ``d`` ``w``
or ``mo`` (calendar months): "30s", "5m", "1h", "30d", "1mo". When the spend counter
resets follows LiteLLM's documented rules, so migrated keys behave the same:

=====================================  =================================================
duration                               next reset
=====================================  =================================================
under a day, or not whole days         ``now + duration``
"1d" or "24h"                          the next midnight
"7d" or "1w"                           the next Monday, midnight
"30d"                                  the 1st of next month, midnight
other whole days ("2d", "14d")         midnight, that many days after today's
"Nmo"                                  the 1st of the month N months on, midnight
=====================================  =================================================

Midnight is in ``tz`` (default UTC); the result is an aware UTC datetime.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final, NamedTuple

_PATTERN: Final = re.compile(r"\s*(\d+)\s*(mo|s|m|h|d|w)\s*")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DAY: Final = 86400


class Duration(NamedTuple):
    """A span of calendar months plus seconds; ``datetime + Duration`` works like relativedelta."""

    months: int = 0
    seconds: int = 0

    def __radd__(self, other: datetime) -> datetime:
        return add_months(other, self.months) + timedelta(seconds=self.seconds)


def parse_duration(text: str) -> Duration:
    """``Duration`` for "30s", "5m", "1h", "30d", "2w", "1mo"; ``ValueError`` otherwise."""
    match = _PATTERN.fullmatch(text)
    if not match or int(match[1]) == 0:
        raise ValueError(
            "budget_duration: expected a positive whole number and a unit"
            f' (s, m, h, d, w, mo) such as "30d", got {text!r}'
        )
    amount, unit = int(match[1]), match[2]
    if unit == "mo":
        return Duration(months=amount)
    return Duration(seconds=amount * _UNIT_SECONDS[unit])


def add_months(value: datetime, months: int) -> datetime:
    """The same day and time ``months`` later, the day clamped to the month's last."""
    if not months:
        return value
    index = value.year * 12 + value.month - 1 + months
    year, month = divmod(index, 12)
    day = min(value.day, calendar.monthrange(year, month + 1)[1])
    return value.replace(year=year, month=month + 1, day=day)


def next_reset(now: datetime, duration: str | Duration, tz: tzinfo = UTC) -> datetime:
    """When a budget with this duration, checked at ``now``, next resets (aware UTC)."""
    span = parse_duration(duration) if isinstance(duration, str) else duration
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    local = now.astimezone(tz)
    midnight = datetime(local.year, local.month, local.day, tzinfo=tz)
    first_of_month = midnight.replace(day=1)
    seconds = span.seconds
    if span.months:
        result = add_months(first_of_month, span.months) + timedelta(seconds=seconds)
    elif seconds < DAY or seconds % DAY:
        return now.astimezone(UTC) + timedelta(seconds=seconds)
    elif seconds == DAY:
        result = midnight + timedelta(days=1)
    elif seconds == 7 * DAY:
        result = midnight + timedelta(days=7 - local.weekday())
    elif seconds == 30 * DAY:
        result = add_months(first_of_month, 1)
    else:
        result = midnight + timedelta(days=seconds // DAY)
    # Wall-clock arithmetic above; re-attach tz so a DST change in between lands on midnight.
    return result.replace(tzinfo=tz).astimezone(UTC)
