"""Money: the units, their conversions and how an amount is shown (docs/economy.md, Units).

Amounts are integers everywhere they are stored or added: US cents (`cents`, what a payment
provider charges) and millionths of a US dollar (µUSD, `musd`: costs, revenue, exposure).
A conversion that can leave a fraction (µUSD to cents or dollars, dollars to µUSD) returns a
`Decimal`, exact; money is never a float. The one place a dollar amount becomes a float is a
chart's plotting (`app/admin/charts.py`), after `musd_to_usd`.
"""

from __future__ import annotations

from decimal import Decimal

CENTS_PER_USD = 100
MUSD_PER_USD = 1_000_000
MUSD_PER_CENT = MUSD_PER_USD // CENTS_PER_USD  # 10,000


def cents_to_musd(cents: int) -> int:
    """US cents (int) as µUSD (int), exactly: 999 -> 9_990_000."""
    return cents * MUSD_PER_CENT


def musd_to_cents(musd: int) -> Decimal:
    """µUSD (int) as US cents, a `Decimal` since it may be a fraction: 15_800 -> 1.58."""
    return Decimal(musd) / MUSD_PER_CENT


def musd_to_usd(musd: int) -> Decimal:
    """µUSD (int) as US dollars, a `Decimal`: 12_345 -> Decimal("0.012345")."""
    return Decimal(musd) / MUSD_PER_USD


def usd_to_musd(usd: Decimal) -> Decimal:
    """US dollars (`Decimal`) as µUSD, a `Decimal` (whole when `usd` has at most six
    decimals; the caller decides what a fraction of a µUSD means): Decimal("0.05") -> 50000."""
    return usd * MUSD_PER_USD


def cents_to_usd(cents: int) -> Decimal:
    """US cents (int) as US dollars, a `Decimal`: 1234 -> Decimal("12.34")."""
    return Decimal(cents) / CENTS_PER_USD


def format_usd(musd: int, places: int | None = None, *, trim: bool = False,
               grouping: bool = False, minus_after_symbol: bool = False) -> str:
    """µUSD (int) as dollars for a person to read, with `Decimal` arithmetic only.

    Args:
        musd: the amount, µUSD.
        places: decimals shown, rounded half even: `format_usd(9_486_410, 2)` -> "$9.49".
            None: exact, two decimals when the amount is whole cents ("$1.25"), else all six
            ("$0.015800").
        trim: with `places` None, drop the trailing zeros of six decimals ("$0.0158"; whole
            cents keep two: "$5.00").
        grouping: thousands separated by commas ("$1,234.50").
        minus_after_symbol: a negative amount as "$-1.00" rather than "-$1.00".

    Returns:
        e.g. "$12.50", "-$0.012345", "$1,234.50".
    """
    value = musd_to_usd(abs(musd))
    if places is None:
        places = 2 if musd % MUSD_PER_CENT == 0 else 6
        value = value.quantize(Decimal(1).scaleb(-places))
        if trim and places == 6:
            value = value.normalize()
    else:
        value = value.quantize(Decimal(1).scaleb(-places))
    number = f"{value:,f}" if grouping else f"{value:f}"
    if musd >= 0:
        return f"${number}"
    return f"$-{number}" if minus_after_symbol else f"-${number}"


def format_cents(cents: int, currency: str | None = "usd", *, symbol: bool = True) -> str:
    """An amount in a currency's minor unit (int, e.g. US cents) with two decimals, a
    negative one with a leading "-".

    Args:
        cents: the amount in the minor unit.
        currency: its lower-case ISO code; None for the bare number ("12.34").
        symbol: "$12.34" for "usd" (the only currency with a symbol here); False, or another
            currency, writes the code after the number ("12.34 USD", "12.34 EUR").

    Returns:
        e.g. "$5.00", "-$2.50", "10.00 EUR", "12.34".
    """
    number = f"{cents_to_usd(abs(cents)):.2f}"
    sign = "-" if cents < 0 else ""
    if currency is None:
        return f"{sign}{number}"
    if symbol and currency == "usd":
        return f"{sign}${number}"
    return f"{sign}{number} {currency.upper()}"
