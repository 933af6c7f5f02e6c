"""Calendar periods in UTC: the month (rollups, allowances, reports) and the day
(docs/economy.md, Units).

A month is written "YYYY-MM" wherever it is stored, keyed or shown (`str(Month)`); `Month`
parses that text, gives its bounds as UTC instants and its neighbours.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime

_MONTH_TEXT = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month in UTC, [start, end).

    Attributes:
        year: e.g. 2026.
        number: 1 (January) to 12.
    """

    year: int
    number: int

    def __post_init__(self) -> None:
        if not 1 <= self.number <= 12:
            raise ValueError(f"a month number is 1 to 12, not {self.number!r}")

    @classmethod
    def parse(cls, text: str, *, years: range | None = None) -> Month:
        """The month `text` names, exactly "YYYY-MM" (four digits, a dash, 01 to 12).

        Args:
            text: e.g. "2026-11" (no spaces; strip them first if a person typed it).
            years: when given, the years allowed (e.g. range(2000, 9999)).

        Raises:
            ValueError: `text` is not "YYYY-MM", or its year is outside `years`; the message
                says so ("month must be YYYY-MM, e.g. 2026-11: ...").
        """
        if not isinstance(text, str) or not _MONTH_TEXT.fullmatch(text):
            raise ValueError(f"month must be YYYY-MM, e.g. 2026-11: {text!r}")
        month = cls(int(text[:4]), int(text[5:]))
        if years is not None and month.year not in years:
            raise ValueError(f"month must be between {years.start:04d}-01 and "
                             f"{years.stop - 1:04d}-12: {text!r}")
        return month

    @classmethod
    def of(cls, moment: datetime) -> Month:
        """The month (UTC) of `moment`; an aware time in another zone is converted to UTC
        first, a naive one is taken as UTC."""
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return cls(moment.year, moment.month)

    def __str__(self) -> str:
        """The month as "YYYY-MM", e.g. "2026-03"."""
        return f"{self.year:04d}-{self.number:02d}"

    @property
    def start(self) -> datetime:
        """The month's first instant, UTC."""
        return datetime(self.year, self.number, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """The first instant after the month (the next month's start), UTC."""
        return self.next.start

    @property
    def previous(self) -> Month:
        """The month before."""
        if self.number == 1:
            return Month(self.year - 1, 12)
        return Month(self.year, self.number - 1)

    @property
    def next(self) -> Month:
        """The month after."""
        if self.number == 12:
            return Month(self.year + 1, 1)
        return Month(self.year, self.number + 1)

    @property
    def day_count(self) -> int:
        """How many days the month has (28 to 31)."""
        return calendar.monthrange(self.year, self.number)[1]

    @property
    def days(self) -> list[str]:
        """Every day of the month as "YYYY-MM-DD", in order."""
        return [f"{self}-{day:02d}" for day in range(1, self.day_count + 1)]


def day_of(moment: datetime) -> str:
    """The calendar day (UTC) of `moment` as "YYYY-MM-DD"; an aware time in another zone is
    converted to UTC first."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%d}"


def next_month_start(moment: datetime) -> datetime:
    """The first instant of the month after `moment`'s, in `moment`'s own zone (UTC for every
    caller); when monthly grants expire."""
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if moment.month == 12:
        return start.replace(year=moment.year + 1, month=1)
    return start.replace(month=moment.month + 1)
