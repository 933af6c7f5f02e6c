"""A heavy free user's month, message by message: the levels, the notices, the loss ceiling,
and the rollups against the events (issue #6's "done")."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.extensions import bot_settings, db
from bot.messages import InboundMessage
from bot.models import Contact, Message
from bot.router import Outcome, handle_inbound
from testing.openai_standin import OpenAIStandIn
from tests.tokens.ledger_checks import assert_consistent
from tokens import costs, ledger, levels
from tokens.costs import CostEntry, RevenueEntry
from tokens.levels import LEVELS, NORMAL, PAYMENT_REQUIRED

START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
ANA = "+15551234567"
RANK = {level: rank for rank, level in enumerate(LEVELS)}


@pytest.fixture
def llm_app(llm_app: Flask, openai_api: OpenAIStandIn) -> Flask:
    """tests/bot/conftest.py's app on the OpenAI stand-in (inline answers), which answers
    with a long snack tip."""
    openai_api.reply = ("A handful of almonds and an apple make a good snack: fibre, protein "
                        "and healthy fats keep you full until dinner. " * 3)
    return llm_app


def say(app: Flask, text: str, now: datetime, sender: str = ANA) -> tuple[Outcome, Message]:
    sid = f"SM{uuid.uuid4().hex}"
    message = InboundMessage(channel="sms", sender=sender, text=text, message_sid=sid)
    outcome = handle_inbound(db.session, message, bot_settings(app), now=now)
    db.session.commit()
    stored = db.session.scalar(select(Message).where(Message.message_sid == sid))
    return outcome, stored


def exposure(account: int, now: datetime) -> int:
    return costs.month(db.session, account, now).exposure_musd


def test_a_heavy_free_users_month(llm_app: Flask):
    catalog = bot_settings(llm_app).catalog
    bounds = levels.upper_bounds(catalog)
    now = START
    seen: list[str] = []
    replies: list[str] = []
    refusal_inbound_cost = 0
    account = None
    for i in range(400):
        now += timedelta(minutes=20)
        text = "meal plan" if i % 10 == 9 else "what is a good snack?"
        outcome, message = say(llm_app, text, now)
        account = account or db.session.scalar(
            select(Contact.account_id).where(Contact.address == ANA))
        if message.level is None:  # ran out of tokens: a free refusal with a pay link
            assert outcome.kind == "insufficient"
            continue
        seen.append(message.level)
        replies.extend(outcome.replies)
        after = exposure(account, now)
        if message.level != PAYMENT_REQUIRED:
            # Rule 1: an answer at a level never carries exposure past that level's bound.
            assert after < bounds[message.level], (i, message.level, after)
        else:
            rate = catalog.costs.messaging["sms"].inbound_musd + catalog.costs.platform_musd
            refusal_inbound_cost += rate
        if seen.count(PAYMENT_REQUIRED) == 1:
            # Refusals share a daily budget with "not enough tokens" replies, which a free
            # user out of tokens may have used up today: go on the next morning.
            now = (now + timedelta(days=1)).replace(hour=8, minute=0)
        if len(seen) > 3 and seen[-4:] == [PAYMENT_REQUIRED] * 4:
            break
    # NORMAL -> REDUCED -> BASIC -> AFFILIATE -> PAYMENT_REQUIRED, never better again.
    assert all(RANK[a] <= RANK[b] for a, b in zip(seen, seen[1:], strict=False))
    assert [level for level in LEVELS if level in seen] == list(LEVELS)
    assert account is not None
    # The loss ceiling, beyond what the person's own inbound messages cost once refused.
    loss = exposure(account, now) - refusal_inbound_cost
    assert loss <= levels.monthly_loss_ceiling_musd(catalog)
    # Plain words: every restricted level was explained, with the balance and how to restore
    # full service; nothing ever claims "unlimited".
    text = "\n".join(replies)
    assert "Free service is reduced this month" in text
    assert "most of this month's free service" in text
    assert f"{catalog.affiliates.disclosure} Partners for your meal plan:" in text
    assert "/r/" in text
    # The cutoff says why in plain words (the cost budget, not the tokens) and what BUY gives.
    assert "this month's free service has reached its cost limit" in text
    assert "BUY gets 120 tokens for $5.00 and full answers at once" in text
    assert "unlimited" not in text.lower()
    assert "Text BUY for 120 tokens ($5.00)" in text

    # Refusals draw on the daily budget of free replies, then silence.
    day = now.replace(hour=23, minute=0)
    silent = [say(llm_app, "what is a good snack?", day + timedelta(minutes=m))[0]
              for m in range(6)]
    assert sum(1 for o in silent if o.replies) <= catalog.levels.free_replies_per_day
    assert all(o.kind == "refused" and o.tokens_charged == 0 for o in silent)

    # Buying a pack restores NORMAL at once.
    ledger.purchase(db.session, account, 100, 20, key="checkout:cs_month", now=day)
    costs.record_revenue(db.session, account, "pack", 5_000_000, key="revenue:cs_month",
                         now=day)
    db.session.commit()
    _, message = say(llm_app, "what is a good snack?", day + timedelta(minutes=30))
    assert message.level == NORMAL
    assert_consistent(db.session, account)
    assert_rollups_match_events(account, f"{now:%Y-%m}")


def assert_rollups_match_events(account: int, label: str) -> None:
    """Every µUSD of the month's rollup is the sum of the events behind it."""
    month = costs.month(db.session, account, label)
    for kind, column in (("llm", "cost_llm_musd"), ("messaging", "cost_messaging_musd"),
                         ("platform", "cost_platform_musd")):
        total = db.session.scalar(select(func.coalesce(func.sum(CostEntry.amount_musd), 0))
                                  .where(CostEntry.account_id == account,
                                         CostEntry.month == label, CostEntry.kind == kind))
        assert getattr(month, column) == total, kind
    for kind in ("pack", "subscription", "affiliate"):
        total = db.session.scalar(select(func.coalesce(func.sum(RevenueEntry.amount_musd), 0))
                                  .where(RevenueEntry.account_id == account,
                                         RevenueEntry.month == label,
                                         RevenueEntry.kind == kind))
        assert getattr(month, f"revenue_{kind}_musd") == total, kind
    charged = sum(-e.entry.amount for e in ledger.history(db.session, account, 10_000)
                  if e.entry.kind == "debit") - sum(
        e.entry.amount for e in ledger.history(db.session, account, 10_000)
        if e.entry.kind == "reversal")
    assert month.tokens_charged == charged
    assert month.tokens_charged == (month.tokens_free + month.tokens_subscription
                                    + month.tokens_bonus + month.tokens_paid)
    by_intent = costs.intents_of(db.session, account, label)
    assert sum(row.tokens_charged for row in by_intent) == month.tokens_charged
    assert sum(row.cost_llm_musd for row in by_intent) == month.cost_llm_musd


def test_a_paying_person_keeps_normal_service(llm_app: Flask):
    """A person holding purchased tokens gets NORMAL service whatever their exposure, also
    while their free tokens (spent first) last: the levels' rules never degrade or refuse what
    was paid for (rule 3). The loss that allows is bounded by the free allowance."""
    catalog = bot_settings(llm_app).catalog
    now = START
    say(llm_app, "BALANCE", now)
    account = db.session.scalar(select(Contact.account_id).where(Contact.address == ANA))
    ledger.purchase(db.session, account, 100, 20, key="checkout:cs_paid", now=now)
    # This month they have cost $3 and paid nothing yet (their pack was bought earlier).
    price = catalog.costs.model("gpt-4o-mini")
    costs.record_llm(db.session, account, costs.LlmUsage("gpt-4o-mini", 20_000_000, 0), price,
                     key="llm:heavy", now=now)
    db.session.commit()
    start = exposure(account, now)
    for minute in range(1, 101):  # the free tokens, spent first
        _, message = say(llm_app, "what is a good snack?", now + timedelta(minutes=minute))
        assert message.level == NORMAL
    assert ledger.balance(db.session, account, now).by_bucket == {"bonus": 20, "paid": 100}
    inbound = 100 * (catalog.costs.messaging["sms"].inbound_musd + catalog.costs.platform_musd)
    spent = exposure(account, now) - start - inbound
    assert spent <= levels.monthly_loss_ceiling_musd(catalog, holds_purchased_tokens=True) - \
        levels.monthly_loss_ceiling_musd(catalog)
    for minute in range(101, 120):  # then their purchased tokens
        _, message = say(llm_app, "what is a good snack?", now + timedelta(minutes=minute))
        assert message.level == NORMAL
    assert ledger.balance(db.session, account, now).by_bucket == {"bonus": 1, "paid": 100}
