"""Reading the offline skills' answers back, for the tests: which meals, recipes and grocery items
an answer shows, and whether an ingredient belongs to a family.

The family check is written here again, independently of `bot.intents.constraints` (plain
regular expressions over the content's family terms, and over what the composites of
ingredients.yaml contain), so a test of "no excluded ingredient" does not trust the code it
tests.
"""

from __future__ import annotations

import re
import unicodedata

from bot.knowledge import Knowledge, Meal, Recipe


def fold(text: str) -> str:
    """Lower case without accents."""
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if not unicodedata.combining(ch)).lower()


def family_terms(knowledge: Knowledge, key: str) -> tuple[set[str], set[str]]:
    """(terms, exceptions) of a family with the families it includes."""
    terms: set[str] = set()
    exceptions: set[str] = set()
    pending, seen = [key], set()
    while pending:
        family = knowledge.family(pending.pop())
        if family.key in seen:
            continue
        seen.add(family.key)
        terms |= set(family.terms)
        exceptions |= set(family.exceptions)
        pending += list(family.includes)
    return terms, exceptions - terms


def _has_word(text: str, term: str) -> bool:
    stem = term[:-1] if term.endswith("y") else term
    return re.search(rf"\b{re.escape(stem)}(y|ies|e?s)?\b", text) is not None


def parts_of(knowledge: Knowledge, line: str) -> list[str]:
    """The line and everything the composites named in it contain, recursively
    ("3 tbsp caesar dressing" -> ..., "anchovy", "parmesan", "worcestershire sauce", ...)."""
    parts, pending, seen = [fold(line)], [fold(line)], set()
    while pending:
        text = pending.pop()
        for name, inside in knowledge.composites.items():
            if name not in seen and _has_word(text, name):
                seen.add(name)
                parts += [fold(p) for p in inside]
                pending += [fold(p) for p in inside]
    return parts


def contains(knowledge: Knowledge, line: str, key: str) -> bool:
    """Whether an ingredient line holds the family `key` (or, for a key that is no family, the
    word itself), as a whole word, singular or plural, in the line or in what a composite it
    names contains."""
    if any(f.key == key for f in knowledge.families):
        terms, exceptions = family_terms(knowledge, key)
    else:
        terms, exceptions = {key}, set()
    for text in parts_of(knowledge, line):
        for exception in sorted(exceptions, key=len, reverse=True):
            text = re.sub(rf"\b{re.escape(exception)}(e?s)?\b", " ", text)
        if any(_has_word(text, term) for term in terms):
            return True
    return False


def meat_with_dairy(knowledge: Knowledge, lines: list[str]) -> bool:
    """Whether one meal's lines hold both meat and dairy (what kosher never allows)."""
    return (any(contains(knowledge, line, "meat") for line in lines)
            and any(contains(knowledge, line, "dairy") for line in lines))


def _labels(knowledge: Knowledge) -> dict[str, Meal]:
    return {fold(label): meal for meal in knowledge.meals for label in (meal.name, meal.name_es)}


def plan_meals(knowledge: Knowledge, answer: str) -> list[list[Meal]]:
    """The meals of each day of a meal plan answer (one list per day)."""
    labels = _labels(knowledge)
    days: list[list[Meal]] = []
    single: list[Meal] = []
    for line in answer.splitlines():
        day = re.match(r"^(?:Day|D[ií]a) \d+: (.+) \(\d+ kcal\)$", line)
        if day:
            days.append([labels[fold(name)] for name in day.group(1).split("; ")])
            continue
        slot = re.match(r"^(?:Breakfast|Lunch|Dinner|Snack|Desayuno|Almuerzo|Cena|Merienda): "
                        r"(.+) \(\d+ kcal\)$", line)
        if slot:
            single.append(labels[fold(slot.group(1))])
    if single:
        days.append(single)
    return days


def day_totals(answer: str) -> list[int]:
    """The daily kcal an answer states ("Total 1995 kcal" or each day's "(1995 kcal)")."""
    totals = [int(n) for n in re.findall(r"^Total (\d+) kcal", answer, re.M)]
    totals += [int(n) for n in re.findall(r"^(?:Day|D[ií]a) \d+: .+ \((\d+) kcal\)$", answer,
                                          re.M)]
    return totals


def recipe_by_label(knowledge: Knowledge, label: str) -> Recipe:
    """The recipe called `label` (English or Spanish)."""
    for recipe in knowledge.recipes:
        if fold(label) in (fold(recipe.name), fold(recipe.name_es)):
            return recipe
    raise KeyError(label)


def shown_recipes(knowledge: Knowledge, answer: str) -> list[Recipe]:
    """The recipe of a recipe answer and the ones it suggests ("Also try: A; B.")."""
    first = answer.splitlines()[0].split(" (")[0]
    recipes = [recipe_by_label(knowledge, first)]
    also = re.search(r"^(?:Also try|Prueba también): (.+)\.$", answer, re.M)
    if also:
        recipes += [recipe_by_label(knowledge, name) for name in also.group(1).split("; ")]
    return recipes


# A quantity at the end of a grocery item: "12", "360 g", "1,2 kg", "1 bottle", "2 latas".
QUANTITY = re.compile(r" [0-9]+(?:[.,][0-9]+)?(?: [a-záéíóúñ]+)?$")


def grocery_items(knowledge: Knowledge, answer: str) -> list[str]:
    """The English grocery items of a list answer (Spanish names mapped back, quantities
    dropped), or the ingredient lines of a recipe's list."""
    head = answer.splitlines()[0]
    recipe = re.match(r"^(?:Grocery list for|Lista de compras para) (.+) \(\d+ (?:servings?|"
                      r"porci[oó]n(?:es)?)\):", head)
    if recipe:
        return list(recipe_by_label(knowledge, recipe.group(1)).ingredients)
    english = {fold(es): en for en, es in knowledge.items_es.items()}
    listed = head.split("): ", 1)[1] if "): " in head else head.split(": ", 1)[1]
    items = []
    for item in listed.rstrip(".").split(", "):
        name = QUANTITY.sub("", item)
        items.append(english.get(fold(name), name))
    return items


def grocery_quantities(answer: str) -> dict[str, str]:
    """Each item of a list answer (as shown) with its quantity as shown ("360 g")."""
    head = answer.splitlines()[0]
    listed = head.split("): ", 1)[1] if "): " in head else head.split(": ", 1)[1]
    found = {}
    for item in listed.rstrip(".").split(", "):
        match = QUANTITY.search(item)
        found[item[:match.start()] if match else item] = match.group(0).strip() if match else ""
    return found
