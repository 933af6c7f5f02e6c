"""The check of an LLM's answer against the person's exclusions and rule diets
(bot.intents.answer_check): ingredient words and their families, English and Spanish, plurals,
and negated mentions that are not violations."""

from __future__ import annotations

import pytest

from bot.intents.answer_check import (
    Violation,
    find_violation,
    mentions,
    readable_terms,
    tokens,
    word_key,
)
from bot.intents.constraints import family_exclusion, parse_constraints
from bot.knowledge import load_knowledge

KNOWLEDGE = load_knowledge()


def said(key: str, text: str, advice: bool = False) -> str | None:
    return mentions(text, KNOWLEDGE, family_exclusion(KNOWLEDGE, key), advice=advice)


@pytest.mark.parametrize(("key", "text", "found"), [
    # mentions that break the exclusion, singular or plural, English or Spanish
    ("egg", "Breakfast: 2 eggs on spinach.", "eggs"),
    ("egg", "Lunch: an omelette with herbs.", "omelette"),
    ("egg", "Desayuno: 2 huevos revueltos.", "huevos revueltos"),
    ("peanut", "Snack: apple with peanut butter.", "peanut butter"),
    ("peanut", "Dinner: chicken satay.", "satay"),
    ("peanut", "Merienda: un puñado de cacahuetes.", "cacahuetes"),
    ("peanut", "Postre: fruta con maní tostado.", "mani"),
    ("nuts", "Top it with walnuts.", "walnuts"),
    ("nuts", "peanut-free granola with almonds", "almonds"),
    ("dairy", "Add grated cheddar cheese.", "cheddar"),
    ("dairy", "Cena: pasta con queso y mantequilla.", "queso"),
    ("dairy", "Una taza de leche de vaca.", "leche de vaca"),
    ("fish", "Lunch: chicken salad, Caesar dressing.", "caesar dressing"),  # anchovy
    ("fish", "Cena: salmón al horno.", "salmon al horno"),
    ("shellfish", "Camarones al ajillo.", "camarones"),
    ("gluten", "Dinner: whole wheat spaghetti.", "whole wheat"),
    ("gluten", "Cena: pan integral.", "pan integral"),
    ("meat", "Dinner: beef stir fry.", "beef"),
    ("egg", "Without eggs, use 2 eggs worth of flax.", "eggs"),  # "use" ends the negation
    ("peanut", "No, peanuts are fine for you.", "peanuts"),  # "No," answers; it negates nothing
    ("dairy", "Feel free to add cream.", "cream"),
    # negated or qualified mentions: not violations
    ("peanut", "No peanuts in this plan.", None),
    ("peanut", "Todo sin maní.", None),
    ("peanut", "A peanut-free granola.", None),
    ("peanut", "Safe for a peanut allergy.", None),
    ("egg", "Use flaxseed instead of eggs.", None),
    ("egg", "Pancakes without eggs, with banana.", None),
    ("egg", "This recipe doesn't use eggs.", None),
    ("egg", "No lleva huevo.", None),
    ("egg", "Add a flax egg.", None),
    ("egg", "Try an egg substitute.", None),
    ("meat", "No meat, fish or eggs.", None),
    ("fish", "No meat, fish or eggs.", None),
    ("egg", "Sin carne, pescado ni huevo.", None),
    ("dairy", "Use almond milk and vegan cheese.", None),
    ("dairy", "Leche de avena con canela.", None),
    ("dairy", "dairy-free milk and cheese", None),
    ("dairy", "Snack: apple with peanut butter.", None),  # peanut butter is not dairy
    ("gluten", "gluten-free bread and pasta", None),
    ("gluten", "Pan sin gluten con aguacate.", None),
    ("gluten", "Cook it in a non-stick pan.", None),  # "pan" is Spanish only in Spanish
    ("gluten", "Serve over cauliflower rice.", None),
    ("sugar", "Check your blood sugar.", None),
])
def test_mentions(key: str, text: str, found: str | None):
    assert said(key, text) == found


def test_a_negation_ends_at_the_clause():
    assert said("egg", "No peanuts. Breakfast: eggs.") == "eggs"
    assert said("egg", "Skip the cheese, add eggs.") == "eggs"
    assert said("egg", "Avoid eggs; they are not in this plan.") is None


def test_advice_may_name_a_food_to_warn_about_it():
    warning = "Satay sauce and many granolas contain peanuts, so check the labels."
    assert said("peanut", warning) == "satay"  # as food served, it would count
    assert said("peanut", warning, advice=True) is None
    # A suggestion without a warning still counts in advice.
    assert said("peanut", "A good snack is peanut butter on toast.", advice=True) == \
        "peanut butter"
    assert said("peanut", "Evita la salsa satay: lleva maní.", advice=True) is None


def test_the_tokens_and_keys_meet_across_plurals_and_accents():
    assert tokens("Peanut-free, ¡sin MANÍ!") == ("peanut", "free", ",", "sin", "mani", "!")
    assert word_key("cheeses") == word_key("cheese")
    assert word_key("camarones") == word_key("camarón".replace("ó", "o"))
    assert word_key("huevos") == word_key("huevo")
    assert word_key("tea") == "tea"


def test_find_violation_names_the_person_s_exclusion_first_then_the_diet():
    c = parse_constraints("vegetarian meal plan for 3 days, I am allergic to peanuts",
                          KNOWLEDGE)
    clean = "Day 1: oats with berries; lentil soup; tofu curry, no peanuts."
    assert find_violation(clean, c, KNOWLEDGE) is None
    own = find_violation("Snack: satay tofu and a salmon wrap.", c, KNOWLEDGE)
    assert isinstance(own, Violation)
    assert (own.exclusion.key, own.said, own.diet) == ("peanut", "satay", None)
    diet = find_violation("Dinner: salmon with rice.", c, KNOWLEDGE)
    assert diet is not None and (diet.exclusion.key, diet.diet) == ("fish", "vegetarian")
    rennet = find_violation("Pasta with parmesan.", c, KNOWLEDGE)
    assert rennet is not None and rennet.exclusion.key == "animal_rennet"


def test_a_spanish_request_is_checked_in_spanish():
    c = parse_constraints("plan de comidas sin gluten", KNOWLEDGE)
    violation = find_violation("Desayuno: pan tostado con aguacate.", c, KNOWLEDGE)
    assert violation is not None and violation.said == "pan"
    assert find_violation("Desayuno: pan sin gluten con aguacate.", c, KNOWLEDGE) is None
    english = parse_constraints("gluten free meal plan", KNOWLEDGE)
    assert find_violation("Sear it in a pan.", english, KNOWLEDGE) is None


def test_an_ingredient_that_is_no_family_is_matched_by_its_name():
    c = parse_constraints("meal plan for 2 people, no mushrooms", KNOWLEDGE)
    violation = find_violation("Lunch: mushroom risotto.", c, KNOWLEDGE)
    assert violation is not None and violation.said == "mushroom"
    assert find_violation("Lunch: risotto, without mushrooms.", c, KNOWLEDGE) is None


def test_no_constraints_no_violation():
    c = parse_constraints("meal plan", KNOWLEDGE)
    assert find_violation("Breakfast: 2 eggs and bacon.", c, KNOWLEDGE) is None


def test_readable_terms_come_from_the_family_data():
    peanut = readable_terms(KNOWLEDGE, family_exclusion(KNOWLEDGE, "peanut"))
    assert peanut[:5] == ("peanut", "peanut butter", "groundnut", "satay", "nut butter")
    nuts = readable_terms(KNOWLEDGE, family_exclusion(KNOWLEDGE, "nuts"))
    assert {"walnut", "peanut", "pesto"} <= set(nuts)  # included families, and composites


@pytest.mark.parametrize(("question", "answer", "found"), [
    ("Can I eat bananas on keto?",
     "Bananas are high in sugar (about 14 g), so keep them small on keto.", None),
    ("calories in bacon, I'm halal", "2 slices of bacon have about 86 kcal.", None),
    ("is cheese vegan?", "No, cheese is made from milk, so it isn't vegan.", None),
    ("I'm allergic to peanuts, what should I avoid?",
     "Avoid peanut butter, satay sauce and peanut oil, and check granola labels.", None),
    ("soy alérgico al maní, ¿qué debo evitar?",
     "Evita la mantequilla de maní y la salsa satay; revisa las etiquetas.", None),
    # what the person asked to leave out is no subject they asked about
    ("I'm allergic to peanuts, what should I avoid?", "Peanuts make a great snack.", "peanuts"),
    ("I'm allergic to peanuts, what should I avoid?", "A great snack is peanut butter toast.",
     "peanut butter"),
    ("vegetarian protein ideas", "Good sources: lentils, tofu, eggs and chicken.", "chicken"),
])
def test_an_advice_answer(question: str, answer: str, found: str | None):
    c = parse_constraints(question, KNOWLEDGE)
    violation = find_violation(answer, c, KNOWLEDGE, advice=True)
    assert (violation.said if violation else None) == found


def test_what_was_asked_about_counts_when_food_is_served():
    c = parse_constraints("caesar salad recipe, allergic to fish", KNOWLEDGE)
    violation = find_violation("Toss romaine with caesar dressing.", c, KNOWLEDGE)
    assert violation is not None and violation.exclusion.key == "fish"
