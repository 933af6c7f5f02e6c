"""The LLM classification for messages the rules are unsure of (issue #15, point 4), wired into
`answer_message`: asked before the turn with no transaction open, never cheaper than the
rules, its cost recorded once per MessageSid, and at most `llm.classify_per_day` calls a day
per sender address."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from flask import Flask
from sqlalchemy import select

from app.extensions import bot_settings, db
from bot.messages import InboundMessage
from bot.router import answer_message
from testing.openai_standin import OpenAIStandIn
from tokens.costs import CostEntry

NOW = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
VAGUE = "can you help me figure out what to feed my kids this week, they hate broccoli"


def ask(app: Flask, text: str, now: datetime = NOW, sender: str = "+15551234567"):
    msg = InboundMessage(channel="sms", sender=sender, text=text,
                         message_sid=f"SM{uuid.uuid4().hex}")
    outcome = answer_message(db.session, msg, bot_settings(app),
                             transport="twiml", now=now)
    return msg, outcome


def classify_calls(openai_api: OpenAIStandIn) -> int:
    return sum(1 for body in openai_api.bodies if body.get("max_tokens") == 8)


def test_an_unsure_message_is_priced_as_the_llm_names_it(llm_app, openai_api):
    openai_api.script("meal_plan", "Monday: lentil soup. Tuesday: rice and beans.")
    msg, outcome = ask(llm_app, VAGUE)
    assert outcome.intent == "meal_plan" and outcome.tokens_charged == 5
    assert classify_calls(openai_api) == 1
    keys = set(db.session.scalars(select(CostEntry.idempotency_key).where(
        CostEntry.kind == "llm")))
    assert keys == {f"llm-classify:{msg.message_sid}", f"llm:{msg.message_sid}"}


def test_never_cheaper_than_the_rules_and_not_for_what_the_rules_know(llm_app, openai_api):
    openai_api.reply = "chat"
    _, plan = ask(llm_app, "vegetarian meal plan for 3 days")
    assert plan.intent == "meal_plan" and classify_calls(openai_api) == 0  # the rules are sure
    _, thanks = ask(llm_app, "thanks", NOW + timedelta(minutes=1))
    assert thanks.kind == "small_talk" and classify_calls(openai_api) == 0
    _, stop = ask(llm_app, "HELP", NOW + timedelta(minutes=2))
    assert stop.kind == "help" and classify_calls(openai_api) == 0


def test_a_bad_answer_keeps_the_rules_intent(llm_app, openai_api):
    openai_api.script("meal_plan and recipe", "Eat your greens.")
    _, outcome = ask(llm_app, VAGUE)
    assert outcome.intent == "chat" and classify_calls(openai_api) == 1


def test_at_most_the_daily_budget_of_calls_per_sender(llm_app, openai_api):
    catalog = bot_settings(llm_app).catalog
    openai_api.reply = "chat"
    for i in range(catalog.llm.classify_per_day + 3):
        ask(llm_app, f"{VAGUE} {i}", NOW + timedelta(minutes=7 * i))
    assert classify_calls(openai_api) == catalog.llm.classify_per_day
    ask(llm_app, VAGUE, NOW + timedelta(days=1))
    assert classify_calls(openai_api) == catalog.llm.classify_per_day + 1
