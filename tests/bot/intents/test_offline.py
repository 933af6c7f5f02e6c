"""The offline skills answer what was asked, from the shipped content."""

from __future__ import annotations

import re

import pytest

from bot.errors import SkillFailed
from bot.intents import SkillRequest, skill_for
from bot.intents.constraints import parse_constraints
from bot.intents.offline import MAX_ANSWER, plan_days
from bot.knowledge import DIET_TAGS, load_knowledge

KNOWLEDGE = load_knowledge()


def ask(intent: str, text: str, channel: str = "sms") -> str:
    return skill_for(intent).answer(SkillRequest(intent=intent, text=text, channel=channel)).text


def meal_names(answer: str) -> list[str]:
    return re.findall(r"^(?:Breakfast|Lunch|Dinner|Snack): (.+?) \(\d+ kcal\)$", answer, re.M)


def test_content_loads_and_covers_every_diet_in_every_slot():
    assert len(KNOWLEDGE.foods) >= 40 and len(KNOWLEDGE.recipes) >= 20
    for tag in DIET_TAGS:
        for slot in ("breakfast", "lunch", "dinner", "snack"):
            assert any(m.slot == slot and tag in m.tags for m in KNOWLEDGE.meals), (tag, slot)


def test_vegetarian_1800_meal_plan_is_vegetarian_and_near_1800():
    answer = ask("meal_plan", "vegetarian meal plan 1800 calories")
    assert answer.startswith("Vegetarian meal plan, about 1800 kcal")
    names = meal_names(answer)
    by_name = {m.name: m for m in KNOWLEDGE.meals}
    assert len(names) >= 3
    assert all("vegetarian" in by_name[n].tags for n in names)
    total = sum(by_name[n].kcal for n in names)
    assert abs(total - 1800) <= 150
    assert f"Total {total} kcal" in answer


def test_different_requests_get_different_plans():
    plain = meal_names(ask("meal_plan", "meal plan"))
    vegan = meal_names(ask("meal_plan", "vegan meal plan"))
    keto = meal_names(ask("meal_plan", "keto meal plan 1500 calories"))
    assert len({tuple(plain), tuple(vegan), tuple(keto)}) == 3
    by_name = {m.name: m for m in KNOWLEDGE.meals}
    assert all("vegan" in by_name[n].tags for n in vegan)
    assert all("low_carb" in by_name[n].tags for n in keto)


def test_a_week_plan_has_seven_days_and_varies():
    answer = ask("meal_plan", "gluten free meal plan for the week")
    assert len(re.findall(r"^Day \d: ", answer, re.M)) == 7
    assert len(answer) <= MAX_ANSWER
    plans = plan_days(KNOWLEDGE, frozenset({"gluten_free"}), 2000, 7)
    assert len({p.meals[0].name for p in plans}) >= 3  # breakfasts vary across the week


def test_recipes_follow_the_ingredient_and_the_diet():
    pancakes = ask("recipe_search", "recipes for pancakes")
    assert "pancake" in pancakes.splitlines()[0].lower()
    chicken = ask("recipe_search", "chicken recipe")
    assert "chicken" in chicken.splitlines()[0].lower()
    assert "Ingredients:" in chicken and "Steps:" in chicken
    gluten_free = ask("recipe_search", "gluten free dinner recipe")
    name = gluten_free.splitlines()[0].split(" (")[0]
    recipe = next(r for r in KNOWLEDGE.recipes if r.name == name)
    assert "gluten_free" in recipe.tags


def test_an_unmatched_recipe_is_refused_without_charge():
    with pytest.raises(SkillFailed) as failed:
        ask("recipe_search", "recipe for dragon fruit sushi burritos")
    assert "Nothing was charged" in (failed.value.reply or "")


def test_nutrition_facts_scale_with_quantities():
    answer = ask("nutrition_analysis", "calories in 2 eggs")
    assert "144 kcal" in answer  # 2 x 72 kcal per large egg (USDA)
    assert "protein 12.6 g" in answer
    two = ask("nutrition_analysis", "calories in 2 eggs and half an avocado")
    assert "Total:" in two
    rice = ask("nutrition_analysis", "calories in 316 g of rice")
    assert rice.startswith("white rice, 2 x")


def test_unknown_food_is_refused_without_charge():
    with pytest.raises(SkillFailed):
        ask("nutrition_analysis", "calories in a zorblax from mars")


def test_grocery_list_follows_the_diet_and_aggregates():
    answer = ask("grocery_list", "vegan grocery list for 3 days")
    assert answer.startswith("Grocery list for 3 vegan days")
    assert "chicken" not in answer and "greek yogurt" not in answer
    # Items are totalled in what is bought: grams, pieces, or whole packs for pantry items.
    assert re.search(r"olive oil 1 bottle|soy sauce 1 bottle", answer), answer
    assert re.search(r"\b[a-z ]+ [0-9]+ g\b", answer), answer
    assert " x" not in answer


def test_grocery_list_for_a_named_recipe():
    answer = ask("grocery_list", "grocery list for lemon garlic chicken")
    assert answer.startswith("Grocery list for Lemon garlic chicken")


def test_dietary_advice_picks_the_topic():
    gluten = ask("dietary_advice", "gluten free")
    assert "wheat" in gluten.lower()
    diabetes = ask("dietary_advice", "advice for diabetes")
    assert "doctor or dietitian" in diabetes
    assert gluten != diabetes
    general = ask("dietary_advice", "any advice?")
    assert general == KNOWLEDGE.topic("general").text


def test_chat_answers_greetings_and_food_mentions():
    assert ask("chat", "hi there, 2+3=4").startswith("Hi!")
    cookie = ask("chat", "I ate a cookie")
    assert "cookie" in cookie and "kcal" in cookie


def test_query_reads_diet_calories_days_and_foods():
    query = parse_constraints("Vegan 1,800 calories plan for 3 days with tofu", KNOWLEDGE)
    assert {"vegan", "vegetarian", "dairy_free"} <= query.diets
    assert query.days == 3
    assert [m.food.name for m in query.foods] == ["tofu"]
    assert parse_constraints("1800 kcal", KNOWLEDGE).calories == 1800


@pytest.mark.parametrize(
    ("intent", "text"),
    [
        ("meal_plan", "high protein meal plan 3000 calories for 7 days"),
        ("grocery_list", "grocery list for the week"),
        ("recipe_search", "recipe"),
        ("dietary_advice", "vegan keto gluten free diabetes pregnancy tips"),
        ("chat", "yo"),
    ],
)
def test_every_answer_fits_one_message(intent, text):
    answer = ask(intent, text)
    assert 0 < len(answer) <= MAX_ANSWER
    assert answer.isascii()


def test_the_grocery_list_asks_the_router_for_the_conversation():
    # bot.router.answer passes history only to skills with `uses_history`: "grocery list for
    # my plan" must see the plan just sent.
    assert getattr(skill_for("grocery_list"), "uses_history", False) is True
