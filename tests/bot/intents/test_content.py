"""The shipped content is consistent: diet tags agree with the ingredient lists (composites
expanded), every item has its Spanish text and a way to be bought, the diets of the content are
the diets recognised, and every major allergen can be left out of a plan and a recipe."""

from __future__ import annotations

import pytest

from bot.errors import SkillFailed
from bot.intents import SkillRequest, skill_for
from bot.intents.constraints import DIETS
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


def test_the_diets_of_the_content_are_the_diets_recognised():
    # bot.intents.constraints.DIETS is the one list of diet words; ingredients.yaml says what
    # the rule diets leave out. Each side names only diets of the other.
    keys = {d.key for d in DIETS}
    assert set(KNOWLEDGE.diet_families) <= keys
    assert set(KNOWLEDGE.diet_pairs) <= set(KNOWLEDGE.diet_families)
    for diet in DIETS:
        if diet.kind == "rule":
            # A rule is checked by a content tag or by the families it rules out.
            assert diet.tag or KNOWLEDGE.diet_families.get(diet.key), diet.key
        if diet.kind == "unsupported":
            assert diet.key not in KNOWLEDGE.diet_families, diet.key
        for implied in diet.implies:
            assert implied in keys, (diet.key, implied)
        if diet.topic:
            KNOWLEDGE.topic(diet.topic)  # raises if missing


@pytest.mark.parametrize("diet", ["pescatarian", "halal", "kosher", "paleo", "keto",
                                  "lacto_vegetarian", "ovo_vegetarian", "pollotarian"])
def test_every_rule_diet_has_a_plan_and_a_recipe(diet):
    phrase = next(d.phrases[0] for d in DIETS if d.key == diet)
    plan = skill_for("meal_plan").answer(
        SkillRequest("meal_plan", f"{phrase} meal plan for 2 days", "sms")).text
    assert len(plan_meals(KNOWLEDGE, plan)) == 2, plan
    recipe = skill_for("recipe_search").answer(
        SkillRequest("recipe_search", f"{phrase} recipe", "sms")).text
    assert shown_recipes(KNOWLEDGE, recipe), recipe


def test_every_grocery_item_is_bought_in_some_amount():
    items = {g for meal in KNOWLEDGE.meals for g in meal.groceries}
    assert items <= set(KNOWLEDGE.shopping)
    for item, purchase in KNOWLEDGE.shopping.items():
        assert purchase.each > 0, item
        assert purchase.unit in ("", "g", "ml", "cup", "tbsp", "tsp", "can"), item
        assert not purchase.pack or purchase.holds > 0, item
    for meal in KNOWLEDGE.meals:
        for item, amount in meal.amounts:
            assert item in meal.groceries and amount > 0, (meal.name, item)


def test_composites_are_read_in_ingredient_lines():
    # Every composite names ingredients the families or other composites know, and a dish
    # that holds one is checked for what it contains.
    for name, parts in KNOWLEDGE.composites.items():
        assert parts and name == name.lower(), name
    caesar = next(m for m in KNOWLEDGE.meals if m.name == "Chicken Caesar salad")
    for family in ("fish", "egg", "dairy", "garlic", "gluten"):
        assert [g for g in caesar.groceries if contains(KNOWLEDGE, g, family)], family
    cobb = next(m for m in KNOWLEDGE.meals if m.name == "Chicken Cobb salad")
    for family in ("pork", "egg", "dairy"):
        assert [g for g in cobb.groceries if contains(KNOWLEDGE, g, family)], family
    assert "dairy_free" not in cobb.tags
