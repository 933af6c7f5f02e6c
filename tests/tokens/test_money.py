"""tokens.money: the units, exact conversions and the formatters (issue #18: one home for
money)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tokens.money import (
    CENTS_PER_USD,
    MUSD_PER_CENT,
    MUSD_PER_USD,
    cents_to_musd,
    cents_to_usd,
    format_cents,
    format_usd,
    musd_to_cents,
    musd_to_usd,
    usd_to_musd,
)


def test_the_units():
    assert (CENTS_PER_USD, MUSD_PER_USD, MUSD_PER_CENT) == (100, 1_000_000, 10_000)


def test_conversions_are_exact():
    assert cents_to_musd(999) == 9_990_000 and type(cents_to_musd(999)) is int
    assert cents_to_musd(-250) == -2_500_000
    assert musd_to_cents(15_800) == Decimal("1.58")
    assert musd_to_usd(12_345) == Decimal("0.012345")
    assert musd_to_usd(10**17 + 1) == Decimal("100000000000.000001")
    assert usd_to_musd(Decimal("0.05")) == 50_000
    assert usd_to_musd(Decimal("0.0000005")) == Decimal("0.5")  # the caller decides
    assert cents_to_usd(1234) == Decimal("12.34")


@pytest.mark.parametrize(("musd", "kwargs", "text"), [
    (12_500_000, {}, "$12.50"),
    (12_345, {}, "$0.012345"),
    (15_800, {}, "$0.015800"),
    (-250_000, {}, "-$0.25"),
    (0, {}, "$0.00"),
    (10**17 + 10_000, {}, "$100000000000.01"),
    (15_800, {"trim": True}, "$0.0158"),
    (32, {"trim": True}, "$0.000032"),
    (5_000_000, {"trim": True}, "$5.00"),
    (1_234_500_000, {"trim": True, "grouping": True}, "$1,234.50"),
    (-15_800, {"trim": True, "grouping": True}, "-$0.0158"),
    (9_486_410, {"places": 2}, "$9.49"),
    (9_485_000, {"places": 2}, "$9.48"),  # half even
    (9_495_000, {"places": 2}, "$9.50"),
    (-9_486_410, {"places": 2, "grouping": True}, "-$9.49"),
    (5_000_000, {"places": 0}, "$5"),
    (12_345, {"places": 6, "minus_after_symbol": True}, "$0.012345"),
    (-12_345, {"places": 6, "minus_after_symbol": True}, "$-0.012345"),
    (0, {"places": 6, "minus_after_symbol": True}, "$0.000000"),
])
def test_format_usd(musd, kwargs, text):
    assert format_usd(musd, **kwargs) == text


def test_format_cents():
    assert format_cents(500) == "$5.00"
    assert format_cents(5, "usd") == "$0.05"
    assert format_cents(-250) == "-$2.50"
    assert format_cents(1000, "eur") == "10.00 EUR"
    assert format_cents(1234, "usd", symbol=False) == "12.34 USD"
    assert format_cents(1234, None) == "12.34"
    assert format_cents(123_456_789) == "$1234567.89"
