"""Real requests through the LLM path: `LlmSkill` with the real `OpenAIChat` against the OpenAI
stand-in over loopback, for every utterance of the offline table
(tests/bot/intents/test_utterances.py: English and Spanish, typos included).

For each utterance:

- what the offline skills refuse on principle (a target below the safe minimum, a diet the
  content cannot honour or does not know, something to leave out it cannot check) is refused
  the same way, with the same reply, and the LLM is never called;
- otherwise the prompt the stand-in received carries the constraints clause: every family the
  table says must be left out (or one that includes it), the days, the calorie target, and the
  language to answer in; a clean answer comes back as it was written;
- an answer that names something left out is asked for again with the violation named, and a
  clean second answer is sent; a second violation is refused, free, in the person's language,
  with the usage of both calls.

The stand-in's replies are scripted: a clean plan that breaks nothing in the table (checked
first), and a violating one naming an ingredient of the first family the table excludes.
"""

from __future__ import annotations

import functools

import pytest

from bot.errors import SkillFailed
from bot.intents import SkillAnswer, SkillRequest, skill_for
from bot.intents.answer_check import find_violation, tokens, word_key
from bot.intents.classifier import detect_language
from bot.intents.constraints import parse_constraints
from bot.intents.llm import PLAN_INTENTS, LlmSkill
from bot.intents.offline import DEFAULT_DAILY_KCAL
from bot.knowledge import load_knowledge
from bot.llm import OpenAIChat
from testing.openai_standin import (
    OpenAIStandIn,
    estimate_tokens,
    prompt_tokens,
    system_text,
)
from tests.bot.intents.answers import family_terms, fold
from tests.bot.intents.test_utterances import CASES, Case, previous_turn
from tokens.catalog import load_catalog
from tokens.costs import LlmUsage

CATALOG = load_catalog()
SETTINGS = CATALOG.llm
KNOWLEDGE = load_knowledge()
CHANNEL = "whatsapp"  # replies keep their accents, so the language is plain to read
CLEAN = {
    "en": "Breakfast: avocado and spinach salad. Lunch: roasted broccoli with olive oil. "
          "Dinner: cauliflower and carrots from the oven.",
    "es": "Desayuno: ensalada de aguacate y espinaca. Almuerzo: brócoli asado con aceite de "
          "oliva. Cena: coliflor y zanahoria al horno.",
}
# Offline refusals on principle (bot.intents.offline: daily_target, unhonourable_reply), which
# the LLM path gives too; the other offline refusals are the content's limits (no recipe for
# that, an unknown food), which the LLM can answer.
PRINCIPLE_MARKERS = (
    "kcal a day is below", "kcal al día está por debajo", "I can't follow the",
    "Aún no puedo seguir la dieta", "I don't know the \"", "No conozco la dieta",
    "I don't know which ingredients", "No sé qué ingredientes",
)


@functools.cache
def history_of(case: Case) -> tuple[tuple[str, str], ...]:
    return previous_turn(case.history) if case.history else ()


def request_of(case: Case) -> SkillRequest:
    return SkillRequest(case.intent, case.text, CHANNEL, history=history_of(case))


@functools.cache
def offline_refusal(case: Case) -> str | None:
    """The offline skill's reply when it refuses the case on principle, else None."""
    if case.outcome != "free":
        return None
    try:
        skill_for(case.intent).answer(request_of(case))
    except SkillFailed as failed:
        reply = failed.reply or ""
        return reply if any(m in reply for m in PRINCIPLE_MARKERS) else None
    raise AssertionError(f"the table says {case.text!r} is refused")


def skill(chat: OpenAIChat, case: Case) -> LlmSkill:
    return LlmSkill(CATALOG.intent(case.intent), SETTINGS, chat, skill_for(case.intent))


def violating_word(case: Case) -> str:
    """An ingredient of the first family (or ingredient) the case excludes, in its language."""
    key = case.exclude[0]
    if any(f.key == key for f in KNOWLEDGE.families):
        family = KNOWLEDGE.family(key)
        if case.lang == "es" and family.names_es:
            return family.names_es[0]
        terms, _ = family_terms(KNOWLEDGE, key)
        return sorted(terms)[0]
    return key


def violating(case: Case) -> str:
    word = violating_word(case)
    if case.lang == "es":
        return f"Desayuno: tostada de aguacate con 2 {word}. Cena: sopa."
    return f"Breakfast: avocado on crackers with 2 {word}. Dinner: soup."


def clean(case: Case) -> str:
    return CLEAN[case.lang]


ANSWERED = [c for c in CASES if offline_refusal(c) is None]
REFUSED = [c for c in CASES if offline_refusal(c) is not None]
WITH_EXCLUSIONS = [c for c in ANSWERED if c.exclude]


def ids(cases: list[Case]) -> list[str]:
    return [c.text for c in cases]


def test_the_suite_is_large_and_in_both_languages():
    assert len(CASES) >= 150
    assert sum(1 for c in CASES if c.lang == "es") >= 50
    assert len(WITH_EXCLUSIONS) >= 100 and len(REFUSED) >= 20


def test_refusals_on_principle_are_told_apart_from_the_content_s_limits():
    refused = {c.text for c in REFUSED}
    assert {"800 calorie meal plan", "low FODMAP meal plan", "zorblax diet meal plan",
            "zorblax-free meal plan", "plan de comidas de 800 calorías",
            "renal diet recipe"} <= refused
    # The content's limits: the LLM can answer these.
    assert not {"calories in a zorblax", "is kombucha healthy?", "meal plan for 14 days",
                "keto vegan meal plan"} & refused


@pytest.mark.parametrize("case", list(CLEAN), ids=list(CLEAN))
def test_the_clean_answers_break_nothing_the_table_excludes(case: str):
    for row in CASES:
        c = parse_constraints(row.text, KNOWLEDGE)
        assert find_violation(CLEAN[case], c, KNOWLEDGE) is None, row.text


@pytest.mark.parametrize("case", REFUSED, ids=ids(REFUSED))
def test_a_refusal_on_principle_is_the_offline_one_and_never_calls_the_llm(
    standin: OpenAIStandIn, chat: OpenAIChat, case: Case
):
    with pytest.raises(SkillFailed) as failed:
        skill(chat, case).answer(request_of(case))
    assert failed.value.reply == offline_refusal(case)
    assert failed.value.usage is None
    assert standin.requests == []


def family_covered(key: str, system: str) -> bool:
    """Whether the prompt names `key`, or a family that includes it (pescatarian: "no meat"
    covers poultry), or, for an ingredient, the ingredient (singular or plural)."""
    words = {word_key(t) for t in tokens(system)}
    if not any(f.key == key for f in KNOWLEDGE.families):
        return word_key(key) in words
    folded = fold(system)
    for family in KNOWLEDGE.families:
        if fold(family.label) not in folded:
            continue
        if family.key == key or family_terms(KNOWLEDGE, key)[0] <= \
                family_terms(KNOWLEDGE, family.key)[0]:
            return True
    return False


def assert_clause(case: Case, system: str) -> None:
    assert "The person's requirements, to follow strictly:" in system or not case.exclude
    assert ("Answer in Spanish." if case.lang == "es" else "Answer in English.") in system
    for key in case.exclude:
        assert family_covered(key, system), (key, system)
    if case.days is not None and case.days <= 7:
        assert f"Days: {case.days}." in system, system
    # (2,000 kcal is the offline plans' default, which the LLM is not told)
    if case.kcal not in (None, DEFAULT_DAILY_KCAL) and case.intent in PLAN_INTENTS:
        assert f"Calories: about {case.kcal} kcal a day." in system, system


@pytest.mark.parametrize("case", ANSWERED, ids=ids(ANSWERED))
def test_a_clean_answer_is_returned_as_is_with_the_constraints_in_the_prompt(
    standin: OpenAIStandIn, chat: OpenAIChat, case: Case
):
    standin.reply = clean(case)
    answer = skill(chat, case).answer(request_of(case))
    assert isinstance(answer, SkillAnswer)
    assert (answer.text, answer.source) == (clean(case), "llm")
    (body,) = standin.bodies
    assert body["model"] == "gpt-4o-mini"
    assert answer.usage == LlmUsage("gpt-4o-mini", prompt_tokens(body["messages"]),
                                    estimate_tokens(clean(case)))
    assert_clause(case, system_text(body))


@pytest.mark.parametrize("case", WITH_EXCLUSIONS, ids=ids(WITH_EXCLUSIONS))
def test_a_violating_answer_is_retried_once_and_the_clean_one_sent(
    standin: OpenAIStandIn, chat: OpenAIChat, case: Case
):
    standin.script(violating(case), clean(case))
    answer = skill(chat, case).answer(request_of(case))
    assert answer.text == clean(case)
    first, second = standin.bodies
    assert "Your previous answer included" not in system_text(first)
    retry = system_text(second)
    assert "Your previous answer included \"" in retry
    assert retry.startswith(system_text(first).split(" Keep the answer under")[0])
    assert answer.usage == LlmUsage(
        "gpt-4o-mini", prompt_tokens(first["messages"]) + prompt_tokens(second["messages"]),
        estimate_tokens(violating(case)) + estimate_tokens(clean(case)))


@pytest.mark.parametrize("case", WITH_EXCLUSIONS, ids=ids(WITH_EXCLUSIONS))
def test_a_second_violation_is_refused_free_in_the_person_s_language(
    standin: OpenAIStandIn, chat: OpenAIChat, case: Case
):
    standin.reply = violating(case)
    with pytest.raises(SkillFailed) as failed:
        skill(chat, case).answer(request_of(case))
    reply = failed.value.reply or ""
    assert detect_language(reply) == case.lang, reply
    assert ("No se cobró nada." if case.lang == "es" else "Nothing was charged.") in reply
    assert reply != violating(case)  # a refusal, not the answer
    first, second = standin.bodies
    assert failed.value.usage == LlmUsage(
        "gpt-4o-mini", prompt_tokens(first["messages"]) + prompt_tokens(second["messages"]),
        2 * estimate_tokens(violating(case)))
