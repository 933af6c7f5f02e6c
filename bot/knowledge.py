"""The nutrition knowledge shipped in `bot/content/`: foods, recipes, meals and advice topics.

Numbers are typical values after USDA FoodData Central (see each file's header). Grams are kept
as `Decimal` so totals print as they were written; energy is whole kcal.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from bot.errors import BotError

CONTENT_DIR = Path(__file__).with_name("content")
DIET_TAGS = ("vegetarian", "vegan", "gluten_free", "dairy_free", "low_carb", "high_protein")
SLOTS = ("breakfast", "lunch", "dinner", "snack")
_GRAMS_IN_SERVING = re.compile(r"\b([0-9]{1,4}) ?g\b")


class ContentError(BotError):
    """A content file is missing or malformed.

    Protects: skills never answer from half-read data.
    """


@dataclass(frozen=True)
class Food:
    """Nutrition facts of one serving of a common food (kcal; grams as Decimal)."""

    name: str
    aliases: tuple[str, ...]
    serving: str
    kcal: int
    protein_g: Decimal
    carbs_g: Decimal
    fat_g: Decimal
    fiber_g: Decimal
    sugar_g: Decimal
    tags: frozenset[str]
    tip: str

    @property
    def serving_grams(self) -> int | None:
        """The serving's weight in grams when the serving names one ("100 g, cooked",
        "1 large egg (50 g)"), else None."""
        match = _GRAMS_IN_SERVING.search(self.serving)
        return int(match.group(1)) if match and int(match.group(1)) > 0 else None


@dataclass(frozen=True)
class Recipe:
    """A short recipe; `kcal_per_serving` in kcal, `minutes` of total time."""

    name: str
    keywords: frozenset[str]
    tags: frozenset[str]
    meal: str
    minutes: int
    servings: int
    kcal_per_serving: int
    protein_g: Decimal
    ingredients: tuple[str, ...]
    steps: str


@dataclass(frozen=True)
class Meal:
    """One meal of a day plan, with the groceries it needs."""

    name: str
    slot: str
    kcal: int
    protein_g: Decimal
    tags: frozenset[str]
    groceries: tuple[str, ...]


@dataclass(frozen=True)
class AdviceTopic:
    """A piece of dietary advice selected by trigger words."""

    key: str
    triggers: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class Knowledge:
    """Everything in `bot/content/`, parsed."""

    foods: tuple[Food, ...]
    recipes: tuple[Recipe, ...]
    meals: tuple[Meal, ...]
    topics: tuple[AdviceTopic, ...]

    def topic(self, key: str) -> AdviceTopic:
        """The advice topic `key`. Raises `ContentError` if there is none."""
        for topic in self.topics:
            if topic.key == key:
                return topic
        raise ContentError(f"no advice topic {key!r}")


@functools.cache
def load_knowledge(directory: Path = CONTENT_DIR) -> Knowledge:
    """Parse the four content files once per process (the first skill call pays for it).

    Raises:
        ContentError: a file is missing, or an item lacks a field or has the wrong type.
    """
    try:
        return Knowledge(
            foods=tuple(_food(i) for i in _items(directory / "foods.yaml", "foods")),
            recipes=tuple(_recipe(i) for i in _items(directory / "recipes.yaml", "recipes")),
            meals=tuple(_meal(i) for i in _items(directory / "meals.yaml", "meals")),
            topics=tuple(_topic(i) for i in _items(directory / "advice.yaml", "topics")),
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise ContentError(f"{directory}: malformed content ({exc!r})") from exc


def _items(path: Path, key: str) -> list[dict[str, Any]]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ContentError(f"{path}: cannot read ({exc})") from exc
    items = raw.get(key) if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items:
        raise ContentError(f"{path}: a non-empty list under {key!r} is required")
    return items


def _grams(value: Any) -> Decimal:
    return Decimal(str(value))


def _food(item: dict[str, Any]) -> Food:
    return Food(
        name=str(item["name"]).lower(),
        aliases=tuple(str(a).lower() for a in item.get("aliases") or ()),
        serving=str(item["serving"]),
        kcal=int(item["kcal"]),
        protein_g=_grams(item["protein_g"]),
        carbs_g=_grams(item["carbs_g"]),
        fat_g=_grams(item["fat_g"]),
        fiber_g=_grams(item.get("fiber_g", 0)),
        sugar_g=_grams(item.get("sugar_g", 0)),
        tags=frozenset(item.get("tags") or ()),
        tip=str(item.get("tip", "")),
    )


def _recipe(item: dict[str, Any]) -> Recipe:
    return Recipe(
        name=str(item["name"]),
        keywords=frozenset(str(k).lower() for k in item.get("keywords") or ()),
        tags=frozenset(item.get("tags") or ()),
        meal=str(item["meal"]),
        minutes=int(item["minutes"]),
        servings=int(item["servings"]),
        kcal_per_serving=int(item["kcal_per_serving"]),
        protein_g=_grams(item.get("protein_g", 0)),
        ingredients=tuple(str(i) for i in item["ingredients"]),
        steps=str(item["steps"]),
    )


def _meal(item: dict[str, Any]) -> Meal:
    slot = str(item["slot"])
    if slot not in SLOTS:
        raise ValueError(f"meal {item.get('name')!r}: slot {slot!r} is not one of {SLOTS}")
    return Meal(
        name=str(item["name"]),
        slot=slot,
        kcal=int(item["kcal"]),
        protein_g=_grams(item.get("protein_g", 0)),
        tags=frozenset(item.get("tags") or ()),
        groceries=tuple(str(g).lower() for g in item["groceries"]),
    )


def _topic(item: dict[str, Any]) -> AdviceTopic:
    return AdviceTopic(
        key=str(item["key"]),
        triggers=tuple(str(t).lower() for t in item.get("triggers") or ()),
        text=str(item["text"]),
    )
