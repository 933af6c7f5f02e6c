"""Intent classification: the precedence cases of docs/economy.md and its neighbours."""

from __future__ import annotations

import pytest

from bot.intents.classifier import classify, normalise_text
from tokens.catalog import load_catalog

CATALOG = load_catalog()


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        # docs/economy.md, "Intent classification must not be fooled by substrings"
        ("recipes for pancakes", "recipe_search"),
        ("I ate a cookie", "chat"),
        ("chicken recipe", "recipe_search"),
        ("this week's meal plan", "meal_plan"),
        ("This week’s meal-plan!", "meal_plan"),
        # neighbours
        ("vegetarian meal plan 1800 calories", "meal_plan"),
        ("1800 calorie diet", "meal_plan"),
        ("plan my meals for the week", "meal_plan"),
        ("grocery list for my meal plan", "grocery_list"),
        ("shopping list", "grocery_list"),
        ("how do I make hummus", "recipe_search"),
        ("dinner ideas", "recipe_search"),
        ("calories in 2 eggs", "nutrition_analysis"),
        ("how much protein in tofu", "nutrition_analysis"),
        ("gluten free", "dietary_advice"),
        ("tips to lose weight", "dietary_advice"),
        ("is it ok to eat eggs every day", "dietary_advice"),
        ("hello", "chat"),
        ("what can you do?", "chat"),
        ("I ate a plate of pasta", "chat"),
        ("complete", "chat"),  # contains "plete", "eat"-like substrings
        ("", "chat"),
    ],
)
def test_classification(text, intent):
    assert classify(text, CATALOG).name == intent


def test_buy_tokens_is_a_command_not_an_intent():
    # Commands are matched on the whole message before classification (router.free_commands).
    assert "BUYTOKENS" in CATALOG.commands["buy"]


def test_normalise_text():
    assert normalise_text("This week’s Meal-Plan!  Ça va?") == "this weeks meal plan ca va"
