"""Allergies a person states are remembered (`bot.allergies`): every later answer leaves them
out, an LLM answer that does not is never charged, ALLERGIES lists them and FORGET ALLERGIES
clears them, in English and Spanish."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from app.extensions import bot_settings
from bot import allergies
from bot.errors import SkillFailed
from bot.intents import SkillRequest, skill_for
from bot.intents.constraints import parse_constraints
from bot.intents.llm import LlmSkill
from bot.knowledge import load_knowledge
from bot.llm import OpenAIChat
from bot.messages import InboundMessage
from bot.models import Contact, Message, OutcomeKind
from bot.router import Outcome, handle_inbound
from testing.openai_standin import OpenAIStandIn
from tokens.catalog import load_catalog

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ANA = "+15551234567"
KNOWLEDGE = load_knowledge()
CATALOG = load_catalog()


@pytest.fixture
def say(app, session):
    """`say(text)` routes one message as Ana and commits, like the webhook does."""

    def _say(text: str, sender: str = ANA) -> Outcome:
        message = InboundMessage(channel="sms", sender=sender, text=text,
                                 message_sid=f"SM{uuid.uuid4().hex}")
        outcome = handle_inbound(session, message, bot_settings(app), now=NOV)
        session.commit()
        return outcome

    return _say


def remembered(session, sender: str = ANA) -> str | None:
    session.expire_all()
    return session.scalar(select(Contact.allergies).where(Contact.address == sender))


def mentions(text: str, word: str) -> list[str]:
    """The lines of `text` that name `word`, but not to say it is left out."""
    return [line for line in text.lower().splitlines()
            if word in line and "without" not in line and "sin " not in line]


@pytest.mark.parametrize(("text", "keys"), [
    ("I'm allergic to peanuts", ("peanut",)),
    ("my son is allergic to eggs and milk", ("egg", "dairy")),
    ("I have a shellfish allergy", ("shellfish",)),
    ("soy alérgica al maní", ("peanut",)),
    ("tengo alergia a los mariscos", ("shellfish",)),
    ("I'm celiac", ("diet:gluten_free",)),
    ("soy intolerante a la lactosa", ("diet:dairy_free",)),
    ("I'm sensitive to gluten", ("gluten",)),
    ("I'm anaphylactic to peanuts, meal plan", ("peanut",)),
    ("peanut anaphylaxis", ("peanut",)),
    ("Im alergic to shellfish", ("shellfish",)),  # the common misspelling
    ("alérgico a los frutos secos", ("nuts",)),
    # Only what the allergy is to: the clause after "but", a request's own "without".
    ("I'm allergic to shrimp but not crab", ("shrimp",)),
    ("I'm allergic to peanuts. Meal plan without eggs this week", ("peanut",)),
    ("I'm allergic to peanuts, what should I watch out for?", ("peanut",)),
    ("meal plan without gluten, I'm celiac", ("diet:gluten_free",)),
    ("plan sin gluten, soy celíaca", ("diet:gluten_free",)),
    ("no nuts please, I'm allergic", ("nuts",)),
    ("What can I eat, I'm allergic to peanuts?", ("peanut",)),
    ("soy alérgica al maní, ¿qué puedo comer?", ("peanut",)),
    # Nothing to remember: negated, past, a question, no allergy stated, nothing the content
    # can check, or a word the typo correction would read as a food.
    ("I'm not allergic to peanuts", ()),
    ("no tengo alergia a los mariscos", ()),
    ("ya no tengo alergia a la leche", ()),
    ("I don't have a peanut allergy", ()),
    ("no nut allergies here", ()),
    ("no soy alérgico al maní", ()),
    ("I used to be allergic to eggs", ()),
    ("I outgrew my egg allergy", ()),
    ("is my son allergic to eggs?", ()),
    ("what foods cause a peanut allergy?", ()),
    ("am I allergic to milk?", ()),
    ("¿soy alérgico al huevo?", ()),
    ("meal plan without peanuts", ()),
    ("I'm allergic to penicillin", ()),
    ("I'm allergic to cats", ()),
    ("allergic to bees", ()),
    ("what is an allergy?", ()),
])
def test_what_a_message_states_is_what_is_remembered(text, keys):
    assert allergies.stated(text, KNOWLEDGE) == keys


@pytest.mark.parametrize("text", ["I'm anaphylactic to peanuts, meal plan",
                                  "meal plan, Im alergic to peanuts", "peanut anaphylaxis tips"])
def test_the_message_itself_leaves_out_what_it_is_anaphylactic_or_misspelt_allergic_to(text):
    assert [e.key for e in parse_constraints(text, KNOWLEDGE).exclusions] == ["peanut"]


def test_remembered_keys_are_added_to_a_request_that_does_not_name_them():
    c = parse_constraints("meal plan", KNOWLEDGE)
    merged = allergies.with_allergies(c, ("peanut", "diet:gluten_free"), KNOWLEDGE)
    assert [e.key for e in merged.exclusions] == ["peanut"]
    assert "gluten_free" in merged.diets
    assert "gluten" in {e.key for e in merged.diet_exclusions}
    assert merged.violation(["2 tbsp peanut butter"]) is not None
    assert merged.violation(["200 g wheat pasta"]) is not None
    assert merged.violation(["1 cup rice"]) is None
    assert allergies.with_allergies(c, (), KNOWLEDGE) is c
    # Stored in order (what was remembered first), once each, NULL for none.
    assert allergies.encode(["shellfish", "peanut", "peanut"]) == "shellfish,peanut"
    assert allergies.encode([]) is None
    many = allergies.encode(f"diet:an_unusually_long_key_{i:02d}" for i in range(40))
    assert many is not None and len(many) <= 300 and len(allergies.decode(many)) >= 9
    assert allergies.decode(many)[0] == "diet:an_unusually_long_key_00"  # the first ones stay
    assert allergies.decode(None) == ()
    assert allergies.labels(("peanut", "diet:gluten_free"), KNOWLEDGE, "es") == "maní y gluten"


def test_a_stated_allergy_is_noted_and_left_out_of_every_later_answer(say, session):
    before = say("meal plan for 7 days").replies[0]
    assert mentions(before, "peanut"), "the plan without the allergy names peanuts"

    noted = say("I'm allergic to peanuts")
    assert noted.replies[0].startswith("Noted: I'll leave out peanuts")
    assert remembered(session) == "peanut"

    plan = say("meal plan for 7 days")
    assert plan.kind == OutcomeKind.ANSWERED and plan.tokens_charged == 5
    assert not any(mentions(reply, "peanut") for reply in plan.replies)
    assert "without peanuts" in plan.replies[0]
    assert not plan.replies[0].startswith("Noted")  # said once

    listed = say("allergies")
    assert (listed.kind, listed.tokens_charged) == (OutcomeKind.ALLERGIES, 0)
    assert listed.replies == ("I leave out: peanuts. FORGET ALLERGIES clears it.",)

    forgot = say("Forget allergies")
    assert (forgot.kind, forgot.tokens_charged) == (OutcomeKind.ALLERGIES, 0)
    assert remembered(session) is None
    assert say("ALLERGIES").replies[0].startswith("I have no allergies noted")
    stored = session.scalars(select(Message.outcome).where(Message.direction == "in")).all()
    assert stored.count(OutcomeKind.ALLERGIES) == 3


def test_spanish_statements_add_up_and_are_forgotten_in_spanish(say, session):
    first = say("tengo alergia a los mariscos")
    assert first.replies[0].startswith("Anotado: dejo fuera mariscos")
    say("soy alérgica al maní")
    assert remembered(session) == "shellfish,peanut"
    again = say("soy alérgica al maní")  # again: nothing new, no note
    assert not again.replies[0].startswith("Anotado")
    assert remembered(session) == "shellfish,peanut"
    # By SMS, í loses its accent (GSM-7).
    assert say("MIS ALERGIAS").replies == ("Dejo fuera: mariscos y mani. OLVIDA MIS ALERGIAS "
                                           "lo borra.",)
    assert say("olvida mis alergias").replies[0].startswith("Listo")
    assert remembered(session) is None


def test_someone_else_s_allergy_is_theirs_alone(say, session):
    say("I'm allergic to peanuts")
    say("hello", sender="+15557654321")
    assert remembered(session, "+15557654321") is None


PEANUT_PLAN = ("Breakfast: peanut butter toast. Lunch: satay chicken. "
               "Dinner: peanut noodles.")


def test_an_llm_answer_that_ignores_a_remembered_allergy_is_not_charged(
        standin: OpenAIStandIn, chat: OpenAIChat):
    standin.reply = PEANUT_PLAN
    skill = LlmSkill(CATALOG.intent("meal_plan"), CATALOG.llm, chat, skill_for("meal_plan"))
    request = SkillRequest("meal_plan", "meal plan", "sms", allergies=("peanut",))
    with pytest.raises(SkillFailed) as failed:
        skill.answer(request)
    # Asked twice (the second time with the violation named), then refused: a SkillFailed
    # is never charged (`bot.router.answer.settle_ledger` voids the hold).
    assert len(standin.requests) == 2
    assert "peanut" in failed.value.reply.lower()
    # The prompt told the LLM what to leave out although the message did not say it.
    assert "peanut" in str(standin.bodies[0]).lower()
    standin.reset()
    standin.reply = PEANUT_PLAN
    # Without the remembered allergy the same answer is sent (and would be charged).
    assert skill.answer(SkillRequest("meal_plan", "meal plan", "sms")).text == PEANUT_PLAN


def test_the_allergy_commands_and_a_remembered_allergy_through_the_llm_deployment(
        llm_app, openai_api):
    """With an LLM configured: the commands cost no classification call, and a stated
    allergy reaches the LLM's prompt of a later request."""
    from app.extensions import db
    from bot.router import answer_message

    def ask(text: str) -> Outcome:
        msg = InboundMessage(channel="sms", sender=ANA, text=text,
                             message_sid=f"SM{uuid.uuid4().hex}")
        return answer_message(db.session, msg, bot_settings(llm_app), transport="twiml",
                              now=NOV)

    openai_api.reply = "Use sunflower seed butter instead, and read every label."
    noted = ask("I'm allergic to peanuts, what should I watch out for?")
    assert noted.replies[0].startswith("Noted: I'll leave out peanuts")
    openai_api.reset()
    assert ask("ALLERGIES").kind == OutcomeKind.ALLERGIES
    assert ask("olvida mis alergias").kind == OutcomeKind.ALLERGIES
    assert openai_api.requests == []  # neither asked the LLM anything
    ask("I'm allergic to shellfish")
    openai_api.reset()
    openai_api.reply = "Monday: lentil soup. Tuesday: rice and beans."
    plan = ask("meal plan")
    assert plan.kind == OutcomeKind.ANSWERED
    assert "shellfish" in str(openai_api.bodies[-1]).lower()


def test_fixed_advice_never_names_what_the_person_leaves_out(say, session):
    """The offline advice texts are fixed: one that names a remembered allergen (or one this
    message excludes) is left out of the answer, which is then charged as usual."""
    before = say("what are healthy snacks?")
    assert mentions(before.replies[0], "nut"), "the snack advice names nuts"
    say("I'm allergic to nuts")
    after = say("what are healthy snacks?")
    # Either advice without nuts, charged, or a refusal that says why, free.
    assert not any(mentions(r, "nut") for r in after.replies), after.replies
    assert (after.kind, after.tokens_charged) in ((OutcomeKind.ANSWERED, 4),
                                                  (OutcomeKind.FAILED, 0)), after
    assert after.replies and "leave out foods with" not in after.replies[0]
    water = say("how much water should I drink?")
    assert water.kind == OutcomeKind.ANSWERED and not any(mentions(r, "nut")
                                                          for r in water.replies)
    # What was said once is honoured without being explained in every answer.
    assert "leave out foods with" not in water.replies[0]
    own = say("what are healthy snacks without eggs?", sender="+15557654321")
    assert not any(mentions(r, "egg") for r in own.replies), own.replies


def test_a_full_memory_keeps_what_it_had_and_says_nothing_it_did_not_keep(say, session):
    say("hello")
    contact = session.scalars(select(Contact).where(Contact.address == ANA)).one()
    keys = [f.key for f in KNOWLEDGE.families if f.key != "sesame"][:allergies.MAX_REMEMBERED]
    contact.allergies = allergies.encode(keys)
    session.commit()
    full = remembered(session)
    outcome = say("I'm allergic to sesame")
    assert remembered(session) == full  # nothing remembered before was dropped
    assert not outcome.replies[0].startswith("Noted")
    listed = say("ALLERGIES").replies[0]
    assert listed.endswith(f"and {len(keys) - allergies.LISTED} more. FORGET ALLERGIES "
                           "clears it.")


def test_the_grocery_list_still_lists_the_plan_just_sent(say, session):
    say("I'm allergic to peanuts")
    plan = say("meal plan for 5 days")
    assert "without peanuts" in plan.replies[0]
    grocery = say("grocery list")
    assert grocery.intent == "grocery_list"
    assert "5 days" in grocery.replies[0] or "meal plan" in grocery.replies[0].lower(), \
        grocery.replies
