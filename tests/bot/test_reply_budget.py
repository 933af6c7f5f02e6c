"""Every reply the bot sends counts (issue #16, point 6): HELP, START and STOP confirmations,
throttle notices and refusals draw on one daily budget of free replies; an inbound flood
silences the person for the day and flags them; and over random message streams (any keyword
mix, any rate) the controllable cost never passes `levels.monthly_loss_ceiling_musd`."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from app.extensions import bot_settings as settings_of
from app.extensions import db
from bot.messages import InboundMessage
from bot.models import Contact
from bot.router import BotSettings, Outcome, handle_inbound
from tokens import costs, levels
from tokens.costs import CostEntry, LlmUsage

NOW = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
ANA = "+15551234567"


def bot_settings(app: Flask, **level_changes: int) -> BotSettings:
    """The app's settings, with the catalog's `levels` changed as given."""
    settings_: BotSettings = settings_of(app)
    if not level_changes:
        return settings_
    catalog = settings_.catalog
    changed = dataclasses.replace(catalog,
                                  levels=dataclasses.replace(catalog.levels, **level_changes))
    return dataclasses.replace(settings_, catalog=changed)


def say(app: Flask, text: str, now: datetime, *, channel: str = "sms",
        bot: BotSettings | None = None) -> Outcome:
    message = InboundMessage(channel=channel, sender=ANA, text=text,
                             message_sid=f"SM{uuid.uuid4().hex}")
    outcome = handle_inbound(db.session, message, bot or settings_of(app),
                             now=now)
    db.session.commit()
    return outcome


def account_of_ana() -> int:
    return db.session.scalar(select(Contact.account_id).where(Contact.address == ANA))


def test_help_is_full_once_a_day_then_one_line_then_silent(llm_app):
    catalog = settings_of(llm_app).catalog
    budget = catalog.levels.free_replies_per_day
    helps = [say(llm_app, "HELP", NOW + timedelta(minutes=i)) for i in range(budget + 3)]
    assert all(o.kind == "help" and o.tokens_charged == 0 for o in helps)
    full, *rest = [o.replies for o in helps]
    assert "Prices in tokens" in full[0] and "Reply STOP" in full[0]
    short = [r for r in rest if r]
    assert len(short) == budget - 1  # the budget holds the full answer and the short ones
    assert all(len(r) == 1 and "STOP" in r[0] and "Prices" not in r[0] for r in short)
    assert not any(rest[budget - 1:])  # then silence
    # The next UTC day: the full answer again.
    assert "Prices in tokens" in say(llm_app, "HELP", NOW + timedelta(days=1)).replies[0]


def test_confirmations_and_refusals_share_the_budget_and_stop_still_works(llm_app):
    catalog = settings_of(llm_app).catalog
    for i in range(catalog.levels.free_replies_per_day):  # spend the day's budget
        assert say(llm_app, "HELP", NOW + timedelta(minutes=i), channel="whatsapp").replies
    stop = say(llm_app, "STOP", NOW + timedelta(hours=1), channel="whatsapp")
    assert stop.kind == "opt_out" and not stop.replies  # opted out, no confirmation
    contact = db.session.scalar(select(Contact).where(Contact.address == ANA))
    assert contact.opted_out_at("whatsapp") is not None
    start = say(llm_app, "START", NOW + timedelta(hours=2), channel="whatsapp")
    assert start.kind == "opt_in" and not start.replies
    db.session.refresh(contact)
    assert contact.opted_out_at("whatsapp") is None
    # The next day, confirmations come back (WhatsApp: the app confirms opt-outs).
    later = NOW + timedelta(days=1)
    assert say(llm_app, "STOP", later, channel="whatsapp").replies
    assert say(llm_app, "START", later + timedelta(minutes=1), channel="whatsapp").replies


def test_an_inbound_flood_silences_for_the_day_and_flags(llm_app):
    bot = bot_settings(llm_app, inbound_flood_per_day=6)
    outcomes = [say(llm_app, text, NOW + timedelta(seconds=7 * i), bot=bot)
                for i, text in enumerate(["HELP", "BALANCE", "thanks", "BUY", "MORE", "HELP",
                                          "HELP", "BALANCE", "what is a good snack?"])]
    assert all(o.replies for o in outcomes[:6])
    assert [o.kind for o in outcomes[6:]] == ["flooded"] * 3
    assert not any(o.replies for o in outcomes[6:])
    state = db.session.get(levels.LevelState, account_of_ana())
    assert state.flooded_day == "2026-11-10"
    # STOP still opts out during the flood (no confirmation), and HELP gets nothing.
    assert say(llm_app, "HELP", NOW + timedelta(minutes=4), bot=bot).kind == "flooded"
    stop = say(llm_app, "STOP", NOW + timedelta(minutes=5), bot=bot)
    assert stop.kind == "opt_out" and not stop.replies
    contact = db.session.scalar(select(Contact).where(Contact.address == ANA))
    assert contact.opted_out_at("sms") is not None
    # START too changes consent during the flood, silently.
    start = say(llm_app, "START", NOW + timedelta(minutes=6), bot=bot)
    assert start.kind == "opt_in" and not start.replies
    db.session.refresh(contact)
    assert contact.opted_out_at("sms") is None
    # The next day the person is heard again.
    assert say(llm_app, "BALANCE", NOW + timedelta(days=1, minutes=1), bot=bot).replies


def test_the_admin_pages_flag_a_flooded_person(llm_app):
    from testing.admin import logged_in

    bot = bot_settings(llm_app, inbound_flood_per_day=2)
    moment = datetime.now(UTC)
    for i in range(4):
        say(llm_app, "BALANCE", moment + timedelta(seconds=i), bot=bot)
    client = logged_in(llm_app)
    people = client.get("/admin/people").get_data(as_text=True)
    assert f"inbound flood {moment:%Y-%m-%d}" in people
    person = client.get(f"/admin/people/{account_of_ana()}").get_data(as_text=True)
    assert "silenced that day" in person


# --- the loss bound over random streams ------------------------------------------------------

KEYWORDS = ("HELP", "AYUDA", "INFO", "STOP", "START", "yes", "UNSTOP", "BUY", "BALANCE",
            "BUY PREMIUM", "MORE", "IDIOMA", "LANGUAGE ES", "thanks", "ok", "",
            "stop sending me messages", "cancel my subscription")
REQUESTS = ("what is a good snack?", "meal plan", "recipe for soup", "calories in an egg",
            "grocery list for the week", "hola")
message = st.tuples(
    st.one_of(st.sampled_from(KEYWORDS), st.sampled_from(REQUESTS)),
    st.sampled_from(("sms", "whatsapp")),
    # Gaps from a burst (0 s) to days, so the daily budgets and rate limits are crossed.
    st.one_of(st.integers(0, 5), st.integers(5, 900), st.integers(3600, 2 * 86400)),
)


def controllable_musd(account: int) -> int:
    """What the person cost that they can be refused: all COGS but their own inbound
    messages and the platform's per-inbound cost, less revenue (none here), µUSD."""
    total = db.session.scalar(select(func.coalesce(func.sum(CostEntry.amount_musd), 0)).where(
        CostEntry.account_id == account, CostEntry.kind != "platform",
        ~((CostEntry.kind == "messaging") & (CostEntry.direction == "in"))))
    return int(total)


@pytest.mark.backends("sqlite")
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(start_exposure=st.integers(0, 2_000_000),
       stream=st.lists(message, min_size=20, max_size=120))
def test_no_stream_costs_more_than_the_bound(llm_app, openai_api, start_exposure, stream):
    openai_api.reply = "Eat more beans and greens today. " * 20  # several segments: MORE
    catalog = settings_of(llm_app).catalog
    sender = f"+1555{uuid.uuid4().int % 10_000_000:07d}"
    now = NOW
    first = InboundMessage(channel="sms", sender=sender, text="hi",
                           message_sid=f"SM{uuid.uuid4().hex}")
    handle_inbound(db.session, first, settings_of(llm_app), now=now)
    account = db.session.scalar(select(Contact.account_id).where(Contact.address == sender))
    if start_exposure:
        price = catalog.costs.model("gpt-4o-mini")
        usage = LlmUsage("gpt-4o-mini", int(start_exposure / price.input_usd_per_million), 0)
        costs.record_llm(db.session, account, usage, price, key=f"preload:{account}", now=now)
    db.session.commit()
    days = {now.date()}
    for text, channel, gap in stream:
        now += timedelta(seconds=gap)
        if now.month != NOW.month:
            break
        days.add(now.date())
        msg = InboundMessage(channel=channel, sender=sender, text=text,
                             message_sid=f"SM{uuid.uuid4().hex}")
        handle_inbound(db.session, msg, settings_of(llm_app), now=now)
        db.session.commit()
    spent = controllable_musd(account)
    bound = levels.monthly_loss_ceiling_musd(catalog, days_in_month=len(days))
    assert spent <= bound, (spent, bound, len(days))
