"""The level policy as a pure function: thresholds, ceilings, and docs/economy.md's rules 1-3."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokens import levels
from tokens.catalog import load_catalog
from tokens.levels import AFFILIATE, BASIC, LEVELS, NORMAL, PAYMENT_REQUIRED, REDUCED

CATALOG = load_catalog()
MEAL_PLAN = CATALOG.intent("meal_plan")
ZERO = dict.fromkeys(LEVELS, 0)


def usd(text: str) -> int:
    """Decimal dollars as µUSD."""
    dollars, _, cents = text.partition(".")
    return int(dollars) * 1_000_000 + int(cents.ljust(6, "0"))


@pytest.mark.parametrize(
    ("exposure", "level"),
    [("0.19", NORMAL), ("0.20", REDUCED), ("0.39", REDUCED), ("0.40", BASIC),
     ("0.59", BASIC), ("0.60", AFFILIATE), ("1.99", AFFILIATE), ("2.00", PAYMENT_REQUIRED)],
)
def test_the_default_thresholds_of_economy_md(exposure, level):
    """With a zero-cost answer, the level is exactly docs/economy.md's table."""
    assert levels.decide(usd(exposure), ZERO, CATALOG, paying=False) == level


def test_the_answer_ceiling_counts_before_the_threshold():
    """$0.19 plus an answer that may cost $0.02 would cross $0.20: REDUCED already."""
    ceiling = dict.fromkeys(LEVELS, usd("0.02"))
    assert levels.decide(usd("0.17"), ceiling, CATALOG, paying=False) == NORMAL
    assert levels.decide(usd("0.19"), ceiling, CATALOG, paying=False) == REDUCED
    assert levels.decide(usd("1.98"), ceiling, CATALOG, paying=False) == PAYMENT_REQUIRED


def test_a_paying_person_is_never_degraded():
    assert levels.decide(usd("50.00"), ZERO, CATALOG, paying=True) == NORMAL


def test_ceilings_follow_the_catalog():
    """SMS: 2 segments out at $0.0079; WhatsApp: 2 messages at $0.0075; the LLM only where
    the level uses it, and the cheaper tier at REDUCED."""
    sms = levels.ceilings(CATALOG, MEAL_PLAN, "sms", llm_enabled=True)
    whatsapp = levels.ceilings(CATALOG, MEAL_PLAN, "whatsapp", llm_enabled=False)
    assert sms[BASIC] == sms[AFFILIATE] == sms[PAYMENT_REQUIRED] == 2 * 7900
    assert whatsapp == dict.fromkeys(LEVELS, 2 * 7500)
    normal_llm = sms[NORMAL] - 2 * 7900
    reduced_llm = sms[REDUCED] - 2 * 7900
    assert normal_llm > reduced_llm > 0
    tier = CATALOG.llm.tier("normal")
    price = CATALOG.costs.model(tier.model)
    # At least max_tokens of output and the input cap, priced.
    assert normal_llm >= price.cost_musd(tier.max_input_chars, tier.max_tokens)


def test_the_monthly_loss_ceiling_is_computable():
    ceiling = levels.monthly_loss_ceiling_musd(CATALOG)
    # the cutoff, then 4 free replies and 5 BALANCE/BUY replies a day at the dearer reply cap
    assert ceiling == 2_000_000 + (4 + 5) * 31 * max(2 * 7900, 2 * 7500)


LEVEL_RANK = {level: rank for rank, level in enumerate(LEVELS)}
money = st.integers(min_value=-5_000_000, max_value=5_000_000)
ceiling_values = st.integers(min_value=0, max_value=200_000)


@settings(max_examples=300, deadline=None)
@given(money, money, st.lists(ceiling_values, min_size=5, max_size=5))
def test_more_exposure_never_gives_a_better_level(first, second, values):
    """Rule 2 (monotonic), over any ceilings that do not fall with the level's service."""
    ceiling = dict(zip(LEVELS, sorted(values, reverse=True), strict=True))
    low, high = sorted((first, second))
    better = levels.decide(low, ceiling, CATALOG, paying=False)
    worse = levels.decide(high, ceiling, CATALOG, paying=False)
    assert LEVEL_RANK[worse] >= LEVEL_RANK[better]


@settings(max_examples=300, deadline=None)
@given(money, st.lists(ceiling_values, min_size=5, max_size=5))
def test_an_answer_never_crosses_the_cutoff(exposure, values):
    """Rule 1 (bounded loss): whatever level answers, exposure + its ceiling stays under the
    cutoff; past it, only PAYMENT_REQUIRED (a refusal)."""
    ceiling = dict(zip(LEVELS, values, strict=True))
    level = levels.decide(exposure, ceiling, CATALOG, paying=False)
    if level != PAYMENT_REQUIRED:
        assert exposure + ceiling[level] < CATALOG.levels.payment_required_musd
        assert exposure + ceiling[level] < levels.upper_bounds(CATALOG)[level]
