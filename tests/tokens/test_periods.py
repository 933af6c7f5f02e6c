"""tokens.periods: the UTC month "YYYY-MM" and the day (issue #18: one home for periods)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tokens.periods import Month, day_of, next_month_start


def test_parse_and_str_round_trip():
    month = Month.parse("2026-11")
    assert month == Month(2026, 11)
    assert str(month) == "2026-11"
    assert f"key:{month}" == "key:2026-11"
    assert str(Month(987, 3)) == "0987-03"


@pytest.mark.parametrize("bad", ["2026-13", "2026-00", "2026-1", "26-01", "2026-01-01", "x", "",
                                 " 2026-11", "2026-11 ", "2026/11", "٢٠٢٦-11"])
def test_parse_refuses_anything_but_yyyy_mm(bad):
    with pytest.raises(ValueError, match="month must be YYYY-MM, e.g. 2026-11"):
        Month.parse(bad)


def test_parse_within_years():
    years = range(2000, 9999)
    assert Month.parse("2000-01", years=years) == Month(2000, 1)
    assert Month.parse("9998-12", years=years) == Month(9998, 12)
    for bad in ("1999-12", "9999-01"):
        with pytest.raises(ValueError, match="between 2000-01 and 9998-12"):
            Month.parse(bad, years=years)


def test_a_month_number_is_one_to_twelve():
    with pytest.raises(ValueError):
        Month(2026, 13)


def test_bounds_are_utc_and_half_open():
    month = Month.parse("2026-12")
    assert (month.start, month.end) == (datetime(2026, 12, 1, tzinfo=UTC),
                                        datetime(2027, 1, 1, tzinfo=UTC))
    assert Month.parse("2024-02").end - Month.parse("2024-02").start == timedelta(days=29)


def test_neighbours():
    assert (Month(2026, 1).previous, Month(2026, 1).next) == (Month(2025, 12), Month(2026, 2))
    assert (Month(2026, 12).previous, Month(2026, 12).next) == (Month(2026, 11), Month(2027, 1))
    assert Month(2026, 5) < Month(2026, 6) < Month(2027, 1)


def test_of_a_moment_is_its_utc_month():
    assert Month.of(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)) == Month(2026, 11)
    assert Month.of(datetime(2026, 12, 1, tzinfo=UTC)) == Month(2026, 12)
    # 19:00 on 30 November in New York (UTC-5) is already December in UTC.
    assert Month.of(datetime(2026, 11, 30, 19, tzinfo=timezone(timedelta(hours=-5)))) == \
        Month(2026, 12)
    assert Month.of(datetime(2026, 3, 31, 23, 59)) == Month(2026, 3)  # naive: taken as UTC


def test_days():
    assert Month(2026, 2).days[0] == "2026-02-01" and Month(2026, 2).days[-1] == "2026-02-28"
    assert len(Month(2028, 2).days) == 29 and len(Month(2026, 12).days) == 31
    assert (Month(2026, 2).day_count, Month(2028, 2).day_count, Month(2026, 4).day_count) == \
        (28, 29, 30)


def test_day_of_and_next_month_start():
    assert day_of(datetime(2026, 11, 30, 19, tzinfo=timezone(timedelta(hours=-5)))) == \
        "2026-12-01"
    assert next_month_start(datetime(2026, 12, 15, 8, 30, tzinfo=UTC)) == \
        datetime(2027, 1, 1, tzinfo=UTC)
    assert next_month_start(datetime(2026, 2, 28, 23, 59, tzinfo=UTC)) == \
        datetime(2026, 3, 1, tzinfo=UTC)
