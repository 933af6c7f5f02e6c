"""What keeps a non-paying person's loss bounded beyond the answers themselves: MORE and free
commands past the cutoff, replies still on their way, and LLM calls that report no usage."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select

from app.extensions import bot_settings, db
from bot.messages import InboundMessage
from bot.models import Contact, Message
from bot.router import Outcome, handle_inbound
from testing.openai_standin import OpenAIStandIn
from tokens import costs, levels
from tokens.costs import CostEntry, LlmUsage

NOW = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
ANA = "+15551234567"


@pytest.fixture
def impatient_app(make_app: Callable[..., Flask], openai_api: OpenAIStandIn) -> Flask:
    """The app on the OpenAI stand-in with a 0.3 s timeout, for a stand-in made slow (the
    patient one is tests/bot/conftest.py's `llm_app`)."""
    return make_app(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=openai_api.base_url,
                    OPENAI_TIMEOUT_SECONDS="0.3")


def say(app: Flask, text: str, now: datetime) -> Outcome:
    message = InboundMessage(channel="sms", sender=ANA, text=text,
                             message_sid=f"SM{uuid.uuid4().hex}")
    outcome = handle_inbound(db.session, message, bot_settings(app), now=now)
    db.session.commit()
    return outcome


def account_with_exposure(app: Flask, exposure_musd: int) -> int:
    say(app, "HELP", NOW)
    account = db.session.scalar(select(Contact.account_id).where(Contact.address == ANA))
    price = bot_settings(app).catalog.costs.model("gpt-4o-mini")
    needed = exposure_musd - costs.month(db.session, account, NOW).exposure_musd
    usage = LlmUsage("gpt-4o-mini", int(needed / price.input_usd_per_million), 0)
    costs.record_llm(db.session, account, usage, price, key="llm:preload", now=NOW)
    db.session.commit()
    return account


def test_free_replies_past_the_cutoff_share_the_daily_budget(llm_app):
    """MORE, IDIOMA, small talk past the cutoff and HELP draw on one daily budget of free
    replies (`free_replies_per_day`), then silence; BUY, BALANCE and BUY PREMIUM always
    answer (within their own budget): the one message that brings money in is never
    silenced."""
    catalog = bot_settings(llm_app).catalog
    account_with_exposure(llm_app, 2_100_000)  # its HELP took one reply from the budget
    outcomes = [say(llm_app, text, NOW + timedelta(minutes=i))
                for i, text in enumerate(["MORE", "IDIOMA", "thanks"] * 5)]
    answered = [o for o in outcomes if o.replies]
    assert len(answered) == catalog.levels.free_replies_per_day - 1
    assert all(o.kind == "refused" for o in outcomes if not o.replies)
    assert not say(llm_app, "HELP", NOW + timedelta(hours=1)).replies  # the budget is spent
    assert all(say(llm_app, text, NOW + timedelta(minutes=30 + i)).replies
               for i, text in enumerate(["BUY", "BALANCE", "BUY PREMIUM"]))
    assert "Reply STOP" in say(llm_app, "HELP", NOW + timedelta(days=1)).replies[0]
    # The next day the budget is back.
    assert say(llm_app, "BALANCE", NOW + timedelta(days=1)).replies


def test_a_long_answers_continuation_stops_at_the_cutoff(llm_app, openai_api):
    """MORE is free, but never carries a person past the cutoff: past it, the continuation
    takes from the daily budget of free replies, then stops."""
    catalog = bot_settings(llm_app).catalog
    cutoff = catalog.levels.payment_required_musd
    account = account_with_exposure(llm_app, cutoff - 200_000)
    openai_api.reply = "Eat more beans and greens today. " * 60  # about 13 SMS segments
    first = say(llm_app, "what is a good snack?", NOW + timedelta(minutes=1))
    assert first.kind == "answered" and first.replies[0].endswith("(Reply MORE for the rest)")
    reply = levels.reply_ceiling_musd(catalog, "sms")
    sent = 0
    for i in range(40):
        outcome = say(llm_app, "MORE", NOW + timedelta(minutes=2 + i))
        sent += bool(outcome.replies)
    exposure = costs.month(db.session, account, NOW).exposure_musd
    inbound = 41 * (catalog.costs.messaging["sms"].inbound_musd + catalog.costs.platform_musd)
    assert exposure - inbound < cutoff + catalog.levels.free_replies_per_day * reply
    assert sent < 40  # it stopped


def test_replies_on_their_way_count_as_exposure(llm_app):
    """A stored reply not yet accepted by Twilio (pending, submitting, unknown) is not costed
    yet; the next decision counts it anyway."""
    catalog = bot_settings(llm_app).catalog
    bounds = levels.upper_bounds(catalog)
    ceiling = levels.ceilings(catalog, catalog.intent("chat"), "sms", llm_enabled=True)
    account_with_exposure(llm_app, bounds["NORMAL"] - ceiling["NORMAL"] - 30_000)
    contact = db.session.scalar(select(Contact).where(Contact.address == ANA))
    for status in ("pending", "submitting", "unknown"):
        db.session.add(Message(contact_id=contact.id, direction="out", channel="sms",
                               body="x", units=2, status=status, created_at=NOW))
    db.session.commit()
    say(llm_app, "what is a good snack?", NOW + timedelta(minutes=1))
    level = db.session.scalar(select(Message.level).where(Message.level.is_not(None)))
    assert level == levels.REDUCED  # 6 segments on their way (47,400 µUSD) tipped it over


def test_an_llm_call_that_timed_out_is_costed_at_its_ceiling(impatient_app, openai_api):
    """The provider may bill a call whose answer never came back: its ceiling is recorded."""
    catalog = bot_settings(impatient_app).catalog
    openai_api.delay_seconds = 5.0
    outcome = say(impatient_app, "meal plan", NOW)
    assert outcome.kind == "failed" and outcome.tokens_charged == 0
    account = db.session.scalar(select(Contact.account_id).where(Contact.address == ANA))
    [entry] = db.session.scalars(select(CostEntry).where(
        CostEntry.account_id == account, CostEntry.kind == "llm")).all()
    tier = catalog.llm.tier("normal")
    assert entry.amount_musd == levels.llm_ceiling_musd(catalog, tier, catalog.intent("meal_plan"))
    assert entry.prompt_tokens is None


def test_the_llm_ceiling_counts_the_constraints_clause_and_the_retry():
    """tokens/ cannot import bot/, so the bound's copy of the clause's cap is checked here; an
    answer is at most two calls (a violating answer is asked for once more)."""
    from bot.llm import MAX_CONSTRAINTS_CHARS

    assert levels.CONSTRAINTS_MAX_CHARS == MAX_CONSTRAINTS_CHARS
    assert levels.CALLS_PER_ANSWER == 2
