"""Each person's language, message by message: detected, chosen with LANGUAGE / IDIOMA, and
every reply the bot writes in it (issue #15, point 5)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from app.extensions import bot_settings
from bot import intents
from bot.contacts import clear_language
from bot.intents import SkillAnswer, SkillRequest, skill_for
from bot.messages import InboundMessage
from bot.models import Contact
from bot.router import Outcome, handle_inbound
from bot.segments import count_segments
from tests.support.statements import counted

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ANA = "+15551234567"
ALLERGY_ES = "plan de comidas vegetariano para 3 días, soy alérgico al maní"
PANCAKES = "how do I make pancakes without eggs"
HINT_ES = "(Responde MAS para ver el resto)"
HINT_EN = "(Reply MORE for the rest)"


@pytest.fixture
def say(app, session):
    """`say(text, ...)` routes one message as Ana and commits, like the webhook does."""

    def _say(text: str, *, sender: str = ANA, channel: str = "sms",
             now: datetime = NOV) -> Outcome:
        message = InboundMessage(channel=channel, sender=sender, text=text,
                                 message_sid=f"SM{uuid.uuid4().hex}")
        outcome = handle_inbound(session, message, bot_settings(app), now=now)
        session.commit()
        return outcome

    return _say


def contact(session, sender: str = ANA) -> Contact:
    found = session.scalars(select(Contact).where(Contact.address == sender)).one()
    session.refresh(found)
    return found


@pytest.mark.parametrize(("text", "expected"), [
    (ALLERGY_ES, "es"), (PANCAKES, "en"), ("receta de pollo", "es"), ("calories in 2 eggs", "en"),
    ("ok", None), ("gracias", None), ("BALANCE", None), ("\U0001f44d", None),
    ("what is arroz con pollo", None),  # English words and a Spanish dish: not clear
])
def test_which_messages_are_clearly_in_a_language(text, expected):
    assert clear_language(text) == expected


def test_the_first_clear_message_sets_the_language_and_short_texts_change_nothing(say, session):
    assert say("ok").kind == "small_talk"
    assert contact(session).language is None
    plan = say(ALLERGY_ES)
    assert plan.kind == "answered"
    assert contact(session).language == "es"
    assert "Dia 1" in " ".join(plan.replies)  # the offline plan, in Spanish (SMS: no í)
    for text in ("ok", "BALANCE", "\U0001f44d", "thanks"):
        say(text)
        assert contact(session).language == "es", text
    assert say("BALANCE").replies[0].startswith("Tienes 95 tokens.")


def test_two_clear_messages_in_a_row_in_the_other_language_switch_it(say, session):
    say(ALLERGY_ES)
    say(PANCAKES)  # one English message: still Spanish
    assert (contact(session).language, contact(session).language_candidate) == ("es", "en")
    say("receta de pollo")  # back to Spanish: the streak is broken
    assert (contact(session).language, contact(session).language_candidate) == ("es", None)
    say(PANCAKES)
    say("ok")  # not clear: changes nothing, breaks nothing
    say("calories in 2 eggs")
    assert (contact(session).language, contact(session).language_candidate) == ("en", None)
    assert say("BALANCE").replies[0].startswith("You have")


def test_idioma_and_language_choose_and_the_choice_sticks(say, session):
    chosen = say("LANGUAGE ES")
    assert chosen.kind == "language" and chosen.tokens_charged == 0
    assert chosen.replies[0].startswith("Listo, te escribiré en español.")
    ana = contact(session)
    assert ana.language == "es" and ana.language_chosen_at == NOV
    say(PANCAKES)
    say("calories in 2 eggs")  # detection leaves a chosen language alone
    assert contact(session).language == "es"
    assert say("idioma inglés").replies[0].startswith("OK, I will write to you in English.")
    assert contact(session).language == "en"
    assert say("Español").kind == "language" and contact(session).language == "es"
    assert say("ENGLISH").kind == "language" and contact(session).language == "en"
    bare = say("IDIOMA")
    assert bare.kind == "language" and "LANGUAGE ES" in bare.replies[0]
    assert contact(session).language == "en"  # a bare IDIOMA only explains


def test_help_balance_buy_and_premium_in_spanish(say, session):
    say("LANGUAGE ES")
    help_ = say("AYUDA")
    assert help_.kind == "help"
    text = help_.replies[0]
    for part in ("Precios en tokens: plan de comidas 5", "100 tokens gratis al mes",
                 "1 de diciembre", "SALDO", "COMPRAR", "$5.00", "STOP", "HELP"):
        assert part in text, part
    assert say("SALDO").replies[0].startswith("Tienes 100 tokens. Precios: plan de comidas 5")
    buy = say("COMPRAR").replies[0]
    assert buy.startswith("Consigue 120 tokens (100 + 20 de regalo) por $5.00: https://")
    premium = say("BUY PREMIUM").replies[0]
    assert premium.startswith(
        "Premium: respuestas completas y 120 tokens cada mes, $5.00 al mes. Suscribete: ")
    assert "HELP" in say("HELP").replies[0]  # the English keyword, answered in Spanish too


def test_help_and_balance_in_english(say):
    say(PANCAKES)
    assert say("HELP").replies[0].startswith("NutriBot: a nutrition assistant")
    assert "Free tokens renew on Dec 1" in say("BALANCE").replies[0]


def test_until_the_language_is_known_a_reply_follows_the_message(say, session):
    assert say("hola").replies[0].startswith("¡Hola!")  # the chat answer, in Spanish
    assert contact(session).language is None
    assert say("saldo, por favor").kind != "balance"  # a sentence, not the command
    assert say("MAS").replies[0].startswith("No hay nada mas")


def test_a_spanish_refusal_below_the_price(say, session):
    say("LANGUAGE ES")
    for _ in range(20):
        assert say("plan de comidas").tokens_charged == 5
    refused = say("plan de comidas vegetariano")
    assert refused.kind == "insufficient" and refused.tokens_charged == 0
    text = refused.replies[0]
    assert text.startswith("Plan de comidas: 5 tokens, y tienes 0. No se cobro nada.")
    assert "Consigue 120 tokens por $5.00: https://bot.example.com/pay/" in text
    assert "Los tokens gratis se renuevan el 1 de diciembre." in text


def test_stop_and_start_confirmations_in_spanish_on_whatsapp(say):
    say(ALLERGY_ES, channel="whatsapp")
    stop = say("PARAR", channel="whatsapp")
    assert stop.kind == "opt_out" and "Te diste de baja de NutriBot" in stop.replies[0]
    assert "START" in stop.replies[0]
    back = say("START", channel="whatsapp")
    assert back.replies[0].startswith("Bienvenido de nuevo a NutriBot")


LONG_ES = " ".join(
    f"Paso {i}: cociná la avena con leche, añadí plátano y mézclalo todo." for i in range(1, 30))


class LongSpanishRecipes:
    """A recipe skill whose answers are long Spanish texts with á, í, ó, ú, é and ñ."""

    intent = "recipe_search"

    def __init__(self) -> None:
        self.requests: list[SkillRequest] = []

    def answer(self, request: SkillRequest) -> SkillAnswer:
        self.requests.append(request)
        return SkillAnswer(LONG_ES)


@pytest.fixture
def long_spanish(monkeypatch):
    skill_for("recipe_search")  # the offline skills are registered first
    skill = LongSpanishRecipes()
    monkeypatch.setitem(intents._SKILLS, "recipe_search", skill)
    return skill


def test_a_long_spanish_sms_is_gsm7_cut_on_a_sentence_with_a_spanish_more(say, session,
                                                                          long_spanish):
    say("LANGUAGE ES")
    first = say("receta de avena")
    [head] = first.replies
    assert long_spanish.requests[-1].language == "es"  # the skill gets the contact's language
    counted_head = count_segments(head)
    assert counted_head.encoding == "GSM-7" and counted_head.segments == 2
    assert head.endswith("." + "\n" + HINT_ES)  # a sentence end, then the hint
    assert len(head) > 250  # GSM-7: far more than the ~100 characters of UCS-2
    assert "platano" in head and "mézclalo" in head and "añadi" in head  # é, ñ stay
    words = head.removesuffix(HINT_ES).split()
    reply = say("MAS").replies[0]
    while True:
        words += reply.removesuffix(HINT_ES).split()
        if not reply.endswith(HINT_ES):
            break
        reply = say("MAS").replies[0]
    folded = LONG_ES.translate(str.maketrans("áíóú", "aiou"))
    assert words == folded.split()  # every word once, none split


def test_whatsapp_keeps_the_accents_and_the_hint_is_spanish(say, long_spanish):
    say(ALLERGY_ES, channel="whatsapp")
    outcome = say("receta de avena " * 3, channel="whatsapp")
    assert " ".join(outcome.replies) == LONG_ES  # one message, accents kept, no cut


def test_an_english_sms_cut_keeps_the_english_hint(say, long_spanish):
    say(PANCAKES)
    [head] = say("recipe for oats").replies
    assert head.endswith(HINT_EN)


def test_the_language_adds_no_statement_to_a_turn(say, session):
    """The contact is loaded for the turn anyway: knowing its language costs nothing, and
    only a change of it may add a statement (its UPDATE)."""
    say(ALLERGY_ES)  # Ana: Spanish
    say("ok", sender="+15550000002")  # Bea: not known
    say(PANCAKES, sender="+15550000003")  # Cara: English
    with counted() as ana:
        say("BALANCE")
    with counted() as bea:
        say("BALANCE", sender="+15550000002")
    assert len(ana) == len(bea), (ana, bea)
    with counted() as staying:
        say(PANCAKES, sender="+15550000003")  # Cara stays English
    with counted() as switching:
        say(PANCAKES, sender="+15550000002")  # sets Bea's language
    assert len(switching) <= len(staying) + 1, (staying, switching)
    assert contact(session, "+15550000002").language == "en"
