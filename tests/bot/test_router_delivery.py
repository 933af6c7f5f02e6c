"""What a reply looks like on each channel, what it costs, and LLM answers given inline."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from flask import Flask
from sqlalchemy import select

from app.extensions import bot_settings, db
from bot import intents
from bot.intents import SkillAnswer, SkillRequest, skill_for
from bot.messages import InboundMessage
from bot.models import Contact, Message
from bot.router import Outcome, handle_inbound
from bot.segments import MAX_MESSAGE_CHARS, count_segments
from tokens import costs, ledger

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ANA = "+15551234567"
LONG = " ".join(f"Step {i}: stir the pot gently and taste it." for i in range(1, 80))


def route(app: Flask, text: str, *, channel: str = "sms", sid: str | None = None,
          sender: str = ANA) -> Outcome:
    message = InboundMessage(channel=channel, sender=sender, text=text,
                             message_sid=sid or f"SM{uuid.uuid4().hex}")
    outcome = handle_inbound(db.session, message, bot_settings(app), now=NOV)
    db.session.commit()
    return outcome


def account(session, sender: str = ANA) -> int:
    return session.scalars(select(Contact).where(Contact.address == sender)).one().account_id


class LongRecipes:
    """A recipe skill whose answers are long (3,000+ characters) and typographic."""

    intent = "recipe_search"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        return SkillAnswer("\u201cPancakes\u201d \u2014 " + LONG)


@pytest.fixture
def long_answers(monkeypatch):
    skill_for("recipe_search")  # the offline skills are registered first
    monkeypatch.setitem(intents._SKILLS, "recipe_search", LongRecipes())


def test_a_long_sms_answer_is_cut_with_a_free_more(app, session, long_answers):
    first = route(app, "recipe for pancakes")
    assert first.kind == "answered" and first.tokens_charged == 2
    [head] = first.replies
    assert count_segments(head).segments <= 2 and count_segments(head).encoding == "GSM-7"
    assert head.startswith('"Pancakes" - Step 1') and head.endswith("(Reply MORE for the rest)")
    balance = ledger.balance(session, account(session)).available

    more = route(app, "MORE")
    assert more.kind == "more" and more.tokens_charged == 0
    assert more.replies[0].startswith("Step ")
    assert ledger.balance(session, account(session)).available == balance
    # Reading on to the end, every word arrives once, then there is nothing more.
    text = head.removesuffix("(Reply MORE for the rest)")
    reply = more.replies[0]
    for _ in range(40):
        text += " " + reply.removesuffix("(Reply MORE for the rest)")
        if not reply.endswith("(Reply MORE for the rest)"):
            break
        reply = route(app, "more").replies[0]
    assert text.split() == ('"Pancakes" - ' + LONG).split()
    assert "nothing more" in route(app, "MORE").replies[0]


def test_a_long_whatsapp_answer_is_split_below_1600_characters(app, session, long_answers):
    """Split on sentence boundaries below 1,600 characters, at most `whatsapp_max_messages`
    messages (the cap bounds a reply's cost); the rest waits for the free MORE."""
    hint = "(Reply MORE for the rest)"
    outcome = route(app, "recipe for pancakes", channel="whatsapp")
    assert len(outcome.replies) == 2
    assert all(len(part) <= MAX_MESSAGE_CHARS for part in outcome.replies)
    first, last = outcome.replies
    assert first.rstrip().endswith(".")  # a sentence boundary
    assert last.endswith(hint)
    words = " ".join(outcome.replies).removesuffix(hint).split()
    more = route(app, "MORE", channel="whatsapp")
    assert more.kind == "more" and more.tokens_charged == 0
    words += " ".join(more.replies).removesuffix(hint).split()
    assert words == ("\u201cPancakes\u201d \u2014 " + LONG).split()
    contact = session.scalars(select(Contact)).one()
    assert contact.more_text is None


def test_what_each_message_costs_is_recorded_once(app, session):
    outcome = route(app, "meal plan", sid="SMcost1")
    route(app, "meal plan", sid="SMcost1")  # Twilio's repeat delivery
    acct = account(session)
    month = costs.month(session, acct, NOV)
    [reply] = outcome.replies
    segments = count_segments(reply).segments
    assert month.messages_in == 1 and month.units_in == 1
    assert month.messages_out == 1 and month.units_out == segments
    assert month.cost_messaging_musd == 7900 * (1 + segments)
    assert month.cost_platform_musd == 200
    assert month.cost_llm_musd == 0 and month.llm_calls == 0  # offline skills cost nothing
    assert month.tokens_charged == 5
    replies = session.scalars(select(Message).where(Message.direction == "out")).all()
    assert [r.units for r in replies] == [segments] and replies[0].status is None


def test_whatsapp_is_billed_per_message(app, session):
    route(app, "HELP", channel="whatsapp")
    month = costs.month(session, account(session), NOV)
    assert month.cost_messaging_musd == 7500 * 2 and month.units_out == 1


def test_an_inline_llm_answer_is_charged_and_its_cost_recorded(llm_app, openai_api):
    session = db.session
    openai_api.reply = "Try overnight oats with berries & yogurt <3"
    outcome = route(llm_app, "meal plan")
    assert outcome.kind == "answered" and outcome.tokens_charged == 5
    assert outcome.replies == ("Try overnight oats with berries & yogurt <3",)
    acct = account(session)
    [entry] = [e for e in costs.entries(session, acct, "2026-11") if e.kind == "llm"]
    [body] = openai_api.bodies
    assert entry.model == body["model"] == "gpt-4o-mini"
    assert entry.amount_musd > 0 and costs.month(session, acct, NOV).llm_calls == 1

    # The next message carries the conversation so far as context, oldest first.
    route(llm_app, "recipe for dinner")
    context = [(m["role"], m["content"]) for m in openai_api.bodies[1]["messages"][1:]]
    assert context == [("user", "meal plan"), ("assistant", outcome.replies[0]),
                       ("user", "recipe for dinner")]


def test_an_inline_llm_failure_gives_the_offline_answer_free(llm_app, openai_api):
    session = db.session
    openai_api.fail_next(503)
    outcome = route(llm_app, "meal plan")
    assert outcome.kind == "failed" and outcome.tokens_charged == 0
    assert "Nothing was charged" in outcome.replies[0] and "Breakfast" in outcome.replies[0]
    assert ledger.balance(session, account(session), NOV).available == 100


def test_an_identical_request_is_answered_from_the_cache(llm_app, openai_api):
    session = db.session
    route(llm_app, "calories in an avocado", sender="+15550000001")
    route(llm_app, "calories in an avocado", sender="+15550000002")
    assert len(openai_api.requests) == 1  # the second came from the cache, at no LLM cost
    second = account(session, "+15550000002")
    assert costs.month(session, second, NOV).cost_llm_musd == 0
    assert ledger.balance(session, second, NOV).available == 97  # still a paid answer
