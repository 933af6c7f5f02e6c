"""The shipped content is consistent: diet tags agree with the ingredient lists, every item has
its Spanish text, and every major allergen can be left out of a plan and a recipe."""

from __future__ import annotations

import pytest

from bot.errors import SkillFailed
from bot.intents import SkillRequest, skill_for
from bot.knowledge import load_knowledge
from tests.bot.intents.answers import contains, plan_meals, shown_recipes

KNOWLEDGE = load_knowledge()
MAJOR_ALLERGENS = ("peanut", "tree_nut", "nuts", "dairy", "egg", "gluten", "fish", "shellfish",
                   "soy", "sesame")


@pytest.mark.parametrize("diet", sorted(KNOWLEDGE.diet_families))
def test_diet_tags_agree_with_ingredient_lists(diet):
    for key in KNOWLEDGE.diet_families[diet]:
        for meal in KNOWLEDGE.meals:
            if diet in meal.tags:
                assert not [g for g in meal.groceries if contains(KNOWLEDGE, g, key)], (
                    meal.name, key)
        for recipe in KNOWLEDGE.recipes:
            if diet in recipe.tags:
                assert not [i for i in recipe.ingredients if contains(KNOWLEDGE, i, key)], (
                    recipe.name, key)


def test_everything_has_its_spanish_text():
    for food in KNOWLEDGE.foods:
        assert food.name_es and food.serving_es and food.tip_es, food.name
    for meal in KNOWLEDGE.meals:
        assert meal.name_es, meal.name
        for item in meal.groceries:
            assert item in KNOWLEDGE.items_es, item
    for recipe in KNOWLEDGE.recipes:
        assert recipe.name_es and recipe.steps_es, recipe.name
        assert len(recipe.ingredients_es) == len(recipe.ingredients), recipe.name
    for topic in KNOWLEDGE.topics:
        assert topic.text_es, topic.key
        names = {f.name for f in KNOWLEDGE.foods}
        assert set(topic.foods) <= names, topic.key


@pytest.mark.parametrize("allergen", MAJOR_ALLERGENS)
def test_every_major_allergen_can_be_left_out(allergen):
    name = KNOWLEDGE.family(allergen).names[0]
    plan = skill_for("meal_plan").answer(
        SkillRequest("meal_plan", f"meal plan for 3 days, allergic to {name}", "sms")).text
    for day in plan_meals(KNOWLEDGE, plan):
        for meal in day:
            assert not [g for g in meal.groceries if contains(KNOWLEDGE, g, allergen)]
    recipe = skill_for("recipe_search").answer(
        SkillRequest("recipe_search", f"dinner recipe, allergic to {name}", "sms")).text
    for shown in shown_recipes(KNOWLEDGE, recipe):
        assert not [i for i in shown.ingredients if contains(KNOWLEDGE, i, allergen)]


def test_a_request_the_content_cannot_meet_is_refused_free():
    with pytest.raises(SkillFailed) as failed:
        skill_for("recipe_search").answer(SkillRequest(
            "recipe_search", "vegan recipe without soy, legumes, oats, lentils, chickpeas, "
            "beans, quinoa, flour, peanuts, banana, hummus or carrots", "sms"))
    assert "Nothing was charged" in (failed.value.reply or "")
