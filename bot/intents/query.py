"""What a person asked for, read from their words: diet, calorie target, days, foods, keywords.

The offline skills choose their answer from this, so "vegetarian meal plan 1800 calories" and
"keto meal plan for the week" get different plans.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from bot.intents.classifier import normalise_text
from bot.knowledge import Food, Knowledge

# Phrases (normalised) that select a diet tag of the content files.
DIET_PHRASES: dict[str, tuple[str, ...]] = {
    "vegan": ("vegan", "plant based", "no animal"),
    "vegetarian": ("vegetarian", "veggie", "meatless", "no meat", "meat free"),
    "gluten_free": ("gluten free", "no gluten", "without gluten", "celiac", "coeliac", "gf"),
    "dairy_free": ("dairy free", "no dairy", "without dairy", "lactose", "non dairy"),
    "low_carb": ("low carb", "keto", "ketogenic", "no carb", "low carbohydrate"),
    "high_protein": ("high protein", "protein rich", "muscle", "bulking", "more protein"),
}
NUMBER_WORDS: dict[str, int] = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7,
}
_CALORIES = re.compile(r"\b([1-4][0-9]{3}|[5-9][0-9]{2}) ?(?:k?cals?|calories?|calorie)\b")
_DAYS = re.compile(r"\b([1-7]|one|two|three|four|five|six|seven) ?days?\b")
_WEEK = re.compile(r"\b(week|weekly|7 days)\b")
_GRAMS_WORD = re.compile(r"([0-9]{1,4})(?:g|gr|grams?)")
_GRAM_UNITS = frozenset({"g", "gr", "gram", "grams"})
STOPWORDS = frozenset(
    [
        "a", "an", "the", "for", "me", "my", "i", "some", "with", "and", "or", "of", "to",
        "in", "on", "please", "give", "want", "need", "can", "you", "how", "what", "is",
        "are", "any", "good", "ideas", "idea", "make", "cook", "recipe", "recipes", "find",
        "show", "send", "quick", "easy", "grocery", "groceries", "list", "shopping", "meal",
        "meals", "plan", "plans", "menu", "day", "days", "week", "weekly", "calorie",
        "calories", "kcal", "cal", "free", "low", "high", "rich", "based", "no"
    ]
)
# Words of the diet phrases: they select by tag, not by keyword.
DIET_WORDS = frozenset(
    word for phrases in DIET_PHRASES.values() for p in phrases for word in p.split()
)


@dataclass(frozen=True)
class FoodMention:
    """A food named in the message and how many servings of it (Decimal, e.g. 2 or 0.5)."""

    food: Food
    servings: Decimal


@dataclass(frozen=True)
class Query:
    """The parsed request.

    Attributes:
        text: the normalised message.
        words: its words, in order.
        diets: diet tags asked for (see `DIET_PHRASES`); vegan implies vegetarian and dairy free.
        calories: a daily calorie target in kcal, when one was named (500-4999).
        days: how many days a plan should cover (1-7), when named ("week" is 7).
        foods: foods named, longest names matched first, with their servings.
    """

    text: str
    words: tuple[str, ...]
    diets: frozenset[str]
    calories: int | None
    days: int | None
    foods: tuple[FoodMention, ...]

    def keywords(self) -> frozenset[str]:
        """Content words of the message, singular and plural forms both."""
        found: set[str] = set()
        for word in self.words:
            if word in STOPWORDS or word in DIET_WORDS or len(word) < 3 or word.isdigit():
                continue
            found.add(word)
            found.update(_singulars(word))
        return frozenset(found)


def parse_query(text: str, knowledge: Knowledge) -> Query:
    """Read `text` into a `Query`, using the food names of `knowledge`."""
    normalised = normalise_text(text)
    padded = f" {normalised} "
    diets = {tag for tag, phrases in DIET_PHRASES.items()
             if any(f" {p} " in padded for p in phrases)}
    if "vegan" in diets:
        diets |= {"vegetarian", "dairy_free"}

    calories = None
    if match := _CALORIES.search(normalised):
        calories = int(match.group(1))
    days = None
    if match := _DAYS.search(normalised):
        raw = match.group(1)
        days = int(raw) if raw.isdigit() else NUMBER_WORDS[raw]
    elif _WEEK.search(normalised):
        days = 7
    return Query(
        text=normalised,
        words=tuple(normalised.split()),
        diets=frozenset(diets),
        calories=calories,
        days=days,
        foods=_foods(normalised, knowledge),
    )


def _singulars(word: str) -> tuple[str, ...]:
    if word.endswith("ies"):
        return (word[:-3] + "y",)
    if word.endswith("oes") or word.endswith("ches") or word.endswith("shes"):
        return (word[:-2],)
    if word.endswith("s") and not word.endswith("ss"):
        return (word[:-1],)
    return (word + "s",)


# The food names and aliases of a knowledge, normalised and split into words, longest first
# (by characters): worked out once per `Knowledge`, not on every request.
_FOOD_NAMES: dict[int, tuple[Knowledge, tuple[tuple[tuple[str, ...], Food], ...]]] = {}


def _food_names(knowledge: Knowledge) -> tuple[tuple[tuple[str, ...], Food], ...]:
    cached = _FOOD_NAMES.get(id(knowledge))
    # The entry holds the knowledge it was made from, so that id cannot be reused meanwhile.
    if cached is None or cached[0] is not knowledge:
        names: list[tuple[str, Food]] = []
        for food in knowledge.foods:
            for name in (food.name, *food.aliases):
                names.append((normalise_text(name), food))
        names.sort(key=lambda pair: -len(pair[0]))
        if len(_FOOD_NAMES) >= 16:
            _FOOD_NAMES.clear()
        cached = _FOOD_NAMES[id(knowledge)] = (
            knowledge, tuple((tuple(name.split()), food) for name, food in names if name))
    return cached[1]


def _foods(normalised: str, knowledge: Knowledge) -> tuple[FoodMention, ...]:
    """Foods named in the text with their quantities, each text span used once; the longest
    name wins where names overlap."""
    words = normalised.split()
    present = set(words)
    taken = [False] * len(words)
    found: list[tuple[int, FoodMention]] = []
    seen: set[str] = set()
    for name, food in _food_names(knowledge):
        if name[0] not in present:
            continue
        size = len(name)
        for start in range(len(words) - size + 1):
            if tuple(words[start:start + size]) != name:
                continue
            if any(taken[start:start + size]):
                continue
            for i in range(start, start + size):
                taken[i] = True
            if food.name in seen:
                continue
            seen.add(food.name)
            found.append((start, FoodMention(food, _servings(words[:start], food))))
    found.sort(key=lambda pair: pair[0])
    return tuple(mention for _, mention in found)


def _servings(before: list[str], food: Food) -> Decimal:
    """Servings from the words just before a food: "2 eggs", "half an avocado", "200 g of rice"."""
    if before and before[-1] == "of":
        before = before[:-1]
    tail = before[-2:]
    if "half" in tail:
        return Decimal("0.5")
    grams = None
    if tail and (match := _GRAMS_WORD.fullmatch(tail[-1])):
        grams = match.group(1)
    elif len(tail) == 2 and tail[0].isdigit() and tail[1] in _GRAM_UNITS:
        grams = tail[0]
    if grams is not None:
        if food.serving_grams and int(grams) > 0:
            return (Decimal(grams) / food.serving_grams).quantize(Decimal("0.01"))
        return Decimal(1)  # grams of a food counted per piece: one serving
    for word in reversed(tail):
        if word.isdigit() and 0 < int(word) <= 20:
            return Decimal(word)
        if word in NUMBER_WORDS:
            return Decimal(NUMBER_WORDS[word])
    return Decimal(1)
