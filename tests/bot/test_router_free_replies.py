"""Free replies that must always be there: BUY, BUY PREMIUM and BALANCE past the cutoff
(issue #16, point 1), and honest, cheap small talk (issue #15, point 6)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.extensions import bot_settings
from bot.messages import InboundMessage
from bot.models import Contact
from bot.router import Outcome, handle_inbound
from tokens import costs, ledger
from tokens.costs import LlmUsage
from tokens.payments import Subscription

NOW = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
ANA = "+15551234567"


@pytest.fixture
def say(app, session):
    """`say(text, ...)` routes one message as Ana and commits, like the webhook does."""

    def _say(text: str, *, now: datetime = NOW, channel: str = "sms") -> Outcome:
        message = InboundMessage(channel=channel, sender=ANA, text=text,
                                 message_sid=f"SM{uuid.uuid4().hex}")
        outcome = handle_inbound(session, message, bot_settings(app), now=now)
        session.commit()
        return outcome

    return _say


def account_of(session) -> int:
    return session.scalars(select(Contact.account_id).where(Contact.address == ANA)).one()


def past_the_cutoff(app, session, say) -> int:
    """Ana has cost $2.10 this month and paid nothing: past the $2.00 cutoff."""
    say("HELP")
    account = account_of(session)
    price = bot_settings(app).catalog.costs.model("gpt-4o-mini")
    costs.record_llm(session, account, LlmUsage("gpt-4o-mini", 14_000_000, 0), price,
                     key="llm:preload", now=NOW)
    session.commit()
    assert costs.month(session, account, NOW).exposure_musd >= 2_000_000
    return account


def test_buy_balance_and_premium_answer_past_the_cutoff_after_three_refusals(app, session, say):
    past_the_cutoff(app, session, say)
    refusals = [say("what is a good snack?", now=NOW + timedelta(minutes=i)) for i in range(5)]
    assert [bool(o.replies) for o in refusals] == [True, True, True, False, False]
    assert all(o.kind == "refused" and o.tokens_charged == 0 for o in refusals)
    assert say("MORE", now=NOW + timedelta(minutes=6)).replies == ()  # MORE shares the budget
    assert say("ALLERGIES", now=NOW + timedelta(minutes=7)).replies == ()  # so does ALLERGIES
    later = NOW + timedelta(minutes=10)
    buy = say("BUY", now=later)
    assert buy.kind == "buy" and "https://bot.example.com/pay/" in buy.replies[0]
    balance = say("BALANCE", now=later)
    assert balance.kind == "balance" and balance.replies[0].startswith("You have")
    premium = say("BUY PREMIUM", now=later)
    assert premium.kind == "premium" and "Subscribe: https://" in premium.replies[0]
    # They have a daily budget of their own (5, `billing_replies_per_day`): the refusals did
    # not use it up, and it bounds what they cost too.
    assert all(say(text, now=later).replies for text in ("BUY", "BALANCE"))
    assert say("BUY", now=later).replies == ()  # the sixth today
    assert say("what is a good snack?", now=later).replies == ()
    # IDIOMA shares the refusal budget (no reply now), but the choice is kept: the next day
    # BUY answers, in Spanish.
    assert say("IDIOMA ES", now=later).replies == ()
    tomorrow = later + timedelta(days=1)
    assert say("COMPRAR", now=tomorrow).replies[0].startswith("Consigue 120 tokens")


def test_the_cutoff_reply_says_why_and_what_buy_gives(app, session, say):
    past_the_cutoff(app, session, say)
    [text] = say("what is a good snack?").replies
    assert "this month's free service has reached its cost limit" in text
    assert "You have 100 tokens, but" in text  # the tokens are not the reason
    assert "BUY gets 120 tokens for $5.00 and full answers at once: https://" in text
    assert "free answers pause until Dec 1" in text and "Nothing was charged." in text


def test_the_cutoff_reply_in_spanish(app, session, say):
    past_the_cutoff(app, session, say)
    say("IDIOMA ES")
    [text] = say("¿qué merienda es buena?").replies
    assert text.startswith("Tienes 100 tokens, pero el servicio gratis del mes llego a su "
                           "limite de costo")
    assert "vuelve el 1 de diciembre" in text
    assert "COMPRAR te da 120 tokens por $5.00 y respuestas completas ya: https://" in text


@pytest.mark.parametrize("text", ["thanks", "Thank you so much!", "ok", "OK \U0001f44d",
                                  "\U0001f44d", "gracias!", "muchas gracias", "vale"])
def test_small_talk_gets_a_short_free_reply(say, session, text):
    outcome = say(text)
    assert outcome.kind == "small_talk" and outcome.tokens_charged == 0
    [reply] = outcome.replies
    assert len(reply) <= 70 and "HELP" in reply
    assert ledger.balance(session, account_of(session), NOW).available == 100


def test_a_greeting_is_still_the_one_token_chat(say):
    outcome = say("hi")
    assert outcome.kind == "answered" and outcome.tokens_charged == 1


@pytest.mark.parametrize(("text", "start"), [
    ("stop sending me messages", "To stop all messages from NutriBot, reply with the single "
                                 "word STOP."),
    ("deja de enviarme mensajes", "Para no recibir mas mensajes de NutriBot, responde solo con "
                                  "la palabra STOP."),
])
def test_asking_in_words_to_stop_points_to_stop_and_opts_nothing_out(say, session, text, start):
    outcome = say(text)
    assert outcome.kind == "small_talk" and outcome.tokens_charged == 0
    assert outcome.replies[0].startswith(start)
    contact = session.scalars(select(Contact)).one()
    assert contact.opted_out_at("sms") is None  # only the STOP keyword opts out
    assert say("meal plan").kind == "answered"
    assert say("STOP").kind == "opt_out"


@pytest.mark.parametrize(("text", "start"), [
    ("cancel my subscription", "You have no Premium subscription, so there is nothing to "
                               "cancel"),
    ("cancelar mi suscripción", "No tienes suscripcion Premium, asi que no hay nada que "
                                "cancelar"),
])
def test_cancelling_without_a_subscription_says_there_is_none(say, text, start):
    outcome = say(text)
    assert outcome.kind == "small_talk" and outcome.tokens_charged == 0
    assert outcome.replies[0].startswith(start)
    assert "http" not in outcome.replies[0]


def test_a_subscriber_cancelling_gets_the_billing_portal(say, session):
    say("HELP")
    session.add(Subscription(account_id=account_of(session), provider="sandbox",
                             external_id="sub_ana", status="active", updated_at=NOW))
    session.commit()
    outcome = say("how do I cancel my subscription?")
    assert outcome.kind == "small_talk" and outcome.tokens_charged == 0
    assert outcome.replies[0].startswith("You have Premium. Manage or cancel it here: https://")
    assert outcome.replies == say("BUY PREMIUM").replies  # the same link BUY PREMIUM gives
    say("IDIOMA ES")
    spanish = say("quiero cancelar la suscripción premium").replies[0]
    assert spanish.startswith("Tienes Premium. Gestionalo o cancélalo aqui: https://")


def test_account_answers_past_the_cutoff_from_the_billing_budget(app, session, say):
    """ACCOUNT is a way to pay (the page buys packs and premium), so past the cutoff it draws
    on the billing replies' own budget, not the spent budget of free replies (docs/account.md,
    "The link")."""
    account = past_the_cutoff(app, session, say)
    for i in range(5):  # the free replies' budget (HELP took one) runs out
        say("what is a good snack?", now=NOW + timedelta(minutes=i))
    assert say("MORE", now=NOW + timedelta(minutes=6)).replies == ()
    outcome = say("ACCOUNT", now=NOW + timedelta(minutes=7))
    assert outcome.kind == "account" and outcome.tokens_charged == 0
    assert "https://bot.example.com/account/link/" in outcome.replies[0]
    assert "15 minutes" in outcome.replies[0]
    assert ledger.balance(session, account, NOW).available > 0
    cuenta = say("CUENTA", now=NOW + timedelta(minutes=8))
    assert cuenta.kind == "account" and cuenta.replies
