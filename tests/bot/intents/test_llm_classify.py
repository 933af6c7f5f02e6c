"""The bounded LLM classification call (bot.intents.llm_classify): asked only when the rules are
unsure, answered with one intent name or ignored, never cheaper than the rules, its usage kept
for COGS. The real `openai` client talks to the local stand-in over loopback."""

from __future__ import annotations

import dataclasses

import pytest

from bot.intents.classifier import classify
from bot.intents.llm_classify import (
    CLASSIFY_MAX_INPUT_CHARS,
    CLASSIFY_MAX_TOKENS,
    cheapest_tier,
    classification_ceiling_musd,
    classify_with_llm,
    parse_intent,
    unsure,
)
from bot.llm import CachedChat, MemoryCache, OpenAIChat
from testing.openai_standin import (
    estimate_tokens,
    last_user_text,
    prompt_tokens,
    system_text,
)
from tokens.catalog import load_catalog
from tokens.costs import LlmUsage

CATALOG = load_catalog()
VAGUE = "can you help me figure out what to feed my kids this week"
VAGUE_ES = "me ayudas a organizar lo que comemos en casa esta semana"


def rules(text: str, catalog=CATALOG):
    return classify(text, catalog)


@pytest.mark.parametrize(("text", "expected"), [
    ("hello", False),  # small talk, and short: the rules are sure
    ("ok cool", False),
    ("what's up", False),
    ("I ate a cookie", True),  # names a food
    ("salmon tonight?", True),
    ("halal?", True),  # names a diet
    ("breakfast?", True),  # names a meal
    (VAGUE, True),  # long enough that "chat" is a guess
    (VAGUE_ES, True),
    ("thanks so much, that was really helpful yesterday", True),
    ("meal plan 1800 calories vegetarian", False),  # the rules found an intent
    ("calories in an avocado", False),
])
def test_unsure(text, expected):
    assert unsure(text, rules(text), CATALOG) is expected


def test_a_sure_message_makes_no_call(standin, chat):
    for text in ("hello", "meal plan for 3 days", "receta de pollo"):
        result = classify_with_llm(text, rules(text), CATALOG, chat)
        assert result.spec == rules(text)
        assert (result.asked, result.usage, result.unbilled) == (False, None, False)
    assert standin.requests == []


def test_an_unsure_message_asks_once_the_cheapest_model_for_one_name(standin, chat):
    standin.reply = "meal_plan"
    result = classify_with_llm(VAGUE, rules(VAGUE), CATALOG, chat)
    assert result.spec.name == "meal_plan" and result.spec.price == 5
    (body,) = standin.bodies
    assert body["model"] == cheapest_tier(CATALOG).model == "gpt-4.1-nano"
    assert body["max_tokens"] == CLASSIFY_MAX_TOKENS == 8
    system = system_text(body)
    for spec in CATALOG.intents:
        assert spec.name in system
    assert "Reply with the intent name only." in system
    assert last_user_text(body) == VAGUE
    # Its usage is an ordinary LLM usage, priced by the catalog like any call (COGS).
    assert result.usage == LlmUsage("gpt-4.1-nano", prompt_tokens(body["messages"]),
                                    estimate_tokens("meal_plan"))
    assert CATALOG.costs.model(result.usage.model).cost_musd(
        result.usage.prompt_tokens, result.usage.completion_tokens) > 0
    assert (result.asked, result.unbilled, result.answer) == (True, False, "meal_plan")


def test_the_message_sent_is_bounded(standin, chat):
    long_text = "please help me with food " * 60
    classify_with_llm(long_text, rules(long_text), CATALOG, chat)
    assert len(last_user_text(standin.bodies[0])) == CLASSIFY_MAX_INPUT_CHARS


@pytest.mark.parametrize(("answer", "intent"), [
    ("recipe_search", "recipe_search"),
    ("  Recipe_Search.\n", "recipe_search"),  # case, a period and spaces aside
    ("`dietary_advice`", "dietary_advice"),
    ("chat", "chat"),
    ("recipe search", "chat"),  # not a catalog name: the rules' answer
    ("I think recipe_search", "chat"),
    ("recipe_search, meal_plan", "chat"),
    ("pizza", "chat"),
    ("buy", "chat"),  # a free command is no intent
])
def test_anything_but_one_catalog_name_keeps_the_rules(standin, chat, answer, intent):
    standin.reply = answer
    result = classify_with_llm("I ate a cookie", rules("I ate a cookie"), CATALOG, chat)
    assert result.spec.name == intent
    assert result.usage is not None  # asked and paid for, whatever it said


def test_parse_intent_is_exact():
    assert parse_intent("meal_plan", CATALOG) == CATALOG.intent("meal_plan")
    assert parse_intent("meal_plans", CATALOG) is None
    assert parse_intent("", CATALOG) is None


def test_the_price_never_drops_below_the_rules(standin, chat):
    """In a catalog where small talk costs more than a grocery list, an LLM that says
    "grocery_list" does not make the Spanish (or English) message cheaper."""
    intents = tuple(dataclasses.replace(s, price=3) if s.name == "chat" else s
                    for s in CATALOG.intents)
    catalog = dataclasses.replace(CATALOG, intents=intents)
    assert catalog.intent("chat").price > catalog.intent("grocery_list").price
    standin.reply = "grocery_list"
    for text in (VAGUE_ES, VAGUE):
        result = classify_with_llm(text, rules(text, catalog), catalog, chat)
        assert result.spec.name == "chat" and result.spec.price == 3
    standin.reply = "meal_plan"  # dearer: accepted
    result = classify_with_llm(VAGUE_ES, rules(VAGUE_ES, catalog), catalog, chat)
    assert result.spec.name == "meal_plan"


def test_a_spanish_message_is_classified_like_its_english_twin(standin, chat):
    standin.responder = lambda body: "meal_plan" if "semana" in last_user_text(body) \
        or "week" in last_user_text(body) else "chat"
    english = classify_with_llm(VAGUE, rules(VAGUE), CATALOG, chat)
    spanish = classify_with_llm(VAGUE_ES, rules(VAGUE_ES), CATALOG, chat)
    assert english.spec == spanish.spec == CATALOG.intent("meal_plan")
    # The same instructions in both languages: only the message differs.
    first, second = standin.bodies
    assert system_text(first) == system_text(second)


@pytest.mark.parametrize("status", [500, 429, 401])
def test_an_llm_error_keeps_the_rules(standin, chat, status):
    standin.fail_next(status)
    result = classify_with_llm(VAGUE, rules(VAGUE), CATALOG, chat)
    assert result.spec.name == "chat"
    assert (result.asked, result.usage, result.unbilled) == (True, None, False)


def test_an_empty_answer_keeps_the_rules_and_its_usage(standin, chat):
    standin.reply = ""
    result = classify_with_llm(VAGUE, rules(VAGUE), CATALOG, chat)
    assert result.spec.name == "chat"
    assert result.usage is not None and result.usage.completion_tokens == 0


def test_a_timeout_keeps_the_rules_and_is_marked_unbilled(openai_api):
    openai_api.delay_seconds = 5.0
    slow = OpenAIChat("sk-test", base_url=openai_api.base_url, timeout_seconds=0.3)
    result = classify_with_llm(VAGUE, rules(VAGUE), CATALOG, slow)
    assert result.spec.name == "chat"
    assert (result.asked, result.usage, result.unbilled) == (True, None, True)


def test_a_repeated_message_is_answered_from_the_cache_for_free(standin, chat):
    standin.reply = "recipe_search"
    cached = CachedChat(chat, MemoryCache(), ttl_seconds=60)
    first = classify_with_llm(VAGUE, rules(VAGUE), CATALOG, cached)
    again = classify_with_llm(VAGUE, rules(VAGUE), CATALOG, cached)
    assert first.spec == again.spec == CATALOG.intent("recipe_search")
    assert first.usage is not None and again.usage is None
    assert len(standin.requests) == 1


def test_a_given_tier_is_used(standin, chat):
    classify_with_llm(VAGUE, rules(VAGUE), CATALOG, chat, tier=CATALOG.llm.tier("normal"))
    assert standin.bodies[0]["model"] == "gpt-4o-mini"


def test_the_ceiling_bounds_what_a_call_costs(standin, chat):
    standin.reply = "x" * 400  # cut at max_tokens
    text = "ñandú ñu " * 250  # accents are two bytes; beyond the input cap
    result = classify_with_llm(text, rules(text), CATALOG, chat)
    assert result.usage is not None
    price = CATALOG.costs.model(result.usage.model)
    ceiling = classification_ceiling_musd(CATALOG)
    assert 0 < price.cost_musd(result.usage.prompt_tokens, result.usage.completion_tokens) \
        <= ceiling
    assert ceiling < 1_000  # well under a tenth of a cent
