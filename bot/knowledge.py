"""The nutrition knowledge shipped in `bot/content/`: foods, recipes, meals, advice topics, and the
ingredient families (allergens) that requests can exclude.

Numbers are typical values after USDA FoodData Central (see each file's header). Grams are kept
as `Decimal` so totals print as they were written; energy is whole kcal. Every item has an English
text and a Spanish one (`*_es`); matching is done on the English ingredient lists.

The energy-needs rules used to set a plan's calories (Mifflin-St Jeor, the 500 kcal/day deficit,
the safe minimum) live here too, with their sources, so that every skill quotes the same numbers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from bot.errors import BotError

CONTENT_DIR = Path(__file__).with_name("content")
# The tags meals, recipes and foods carry. The diets people name (and which tag, if any, each
# requires) are `bot.intents.constraints.DIETS`; ingredients.yaml `diets` says what they rule out.
DIET_TAGS = ("vegetarian", "vegan", "gluten_free", "dairy_free", "low_carb", "high_protein")
SLOTS = ("breakfast", "lunch", "dinner", "snack")
LANGUAGES = ("en", "es")
_GRAMS_IN_SERVING = re.compile(r"\b([0-9]{1,4}) ?g\b")

# --- Energy needs -----------------------------------------------------------------------------

REFERENCE_DAILY_KCAL = 2000
"""The reference daily intake printed on US nutrition labels (FDA, 21 CFR 101.9), in kcal: the
target of a plan when nothing else is known."""

DEFICIT_KCAL = 500
"""kcal a day below needs for losing weight: NIH/NHLBI "Clinical Guidelines on the
Identification, Evaluation, and Treatment of Overweight and Obesity in Adults" (1998) recommend a
500-1,000 kcal/day deficit for 0.5-1 kg (1-2 lb) a week; we use the gentler end."""

SURPLUS_KCAL = 500
"""kcal a day above needs for gaining weight: the mirror of `DEFICIT_KCAL`, at the top of the
300-500 kcal/day surplus usually advised for gradual gain."""

MIN_SAFE_KCAL = 1200
"""The lowest daily target offered without medical supervision: Harvard Health Publishing
("Calorie counting made easy") advises not going below 1,200 kcal a day for women or 1,500 for men
except under a health professional's care; NIH/NHLBI's 1998 guidelines put low-calorie diets at
1,000-1,200 kcal for women and 1,200-1,600 for men."""

MIN_SAFE_KCAL_MEN = 1500
"""The same floor for men (Harvard Health Publishing, as `MIN_SAFE_KCAL`)."""

ACTIVITY_FACTORS: Mapping[str, Decimal] = {
    "sedentary": Decimal("1.2"),
    "light": Decimal("1.375"),
    "moderate": Decimal("1.55"),
    "very": Decimal("1.725"),
}
"""Multipliers of the basal metabolic rate for daily needs, the standard physical-activity
factors used with Mifflin-St Jeor (sedentary 1.2 ... very active 1.725)."""


@dataclass(frozen=True)
class Body:
    """What a person said about themselves, for an energy estimate.

    Attributes:
        weight_kg: body weight in kg (Decimal), or None.
        height_cm: height in cm (Decimal), or None.
        age: age in years, or None.
        sex: "female" or "male", or None.
        activity: a key of `ACTIVITY_FACTORS`; "sedentary" when nothing was said.
    """

    weight_kg: Decimal | None = None
    height_cm: Decimal | None = None
    age: int | None = None
    sex: str | None = None
    activity: str = "sedentary"

    @property
    def complete(self) -> bool:
        """Whether Mifflin-St Jeor can be computed (weight, height, age and sex all known)."""
        return None not in (self.weight_kg, self.height_cm, self.age, self.sex)


def mifflin_st_jeor_bmr(body: Body) -> int:
    """Basal metabolic rate in kcal/day by Mifflin-St Jeor (Mifflin et al., Am J Clin Nutr 1990;
    51:241-7): 10 x kg + 6.25 x cm - 5 x age, + 5 for men or - 161 for women.

    Raises:
        ValueError: `body` is not `complete`.
    """
    if body.weight_kg is None or body.height_cm is None or body.age is None or not body.sex:
        raise ValueError("Mifflin-St Jeor needs weight, height, age and sex")
    value = (10 * body.weight_kg + Decimal("6.25") * body.height_cm - 5 * body.age
             + (5 if body.sex == "male" else -161))
    return int(value.to_integral_value())


def maintenance_kcal(body: Body) -> int:
    """Daily needs in kcal: `mifflin_st_jeor_bmr` x the activity factor. Raises ValueError when
    `body` is not complete."""
    factor = ACTIVITY_FACTORS.get(body.activity, ACTIVITY_FACTORS["sedentary"])
    return int((mifflin_st_jeor_bmr(body) * factor).to_integral_value())


def safe_minimum_kcal(sex: str | None) -> int:
    """The floor of a daily target: 1,500 kcal for men, else 1,200 (see `MIN_SAFE_KCAL`)."""
    return MIN_SAFE_KCAL_MEN if sex == "male" else MIN_SAFE_KCAL


class ContentError(BotError):
    """A content file is missing or malformed.

    Protects: skills never answer from half-read data.
    """


@dataclass(frozen=True)
class Food:
    """Nutrition facts of one serving of a common food (kcal; grams as Decimal).

    `piece_servings` is how many servings one whole item is ("an avocado" is 2 servings of
    "1/2 medium"); 1 when the serving is already one piece or is a weight or a cup.
    """

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
    name_es: str = ""
    aliases_es: tuple[str, ...] = ()
    serving_es: str = ""
    tip_es: str = ""
    piece_servings: Decimal = Decimal(1)

    @property
    def serving_grams(self) -> int | None:
        """The serving's weight in grams when the serving names one ("100 g, cooked",
        "1 large egg (50 g)"), else None."""
        match = _GRAMS_IN_SERVING.search(self.serving)
        return int(match.group(1)) if match and int(match.group(1)) > 0 else None

    def label(self, language: str) -> str:
        """The food's name in `language` ("en" or "es")."""
        return self.name_es if language == "es" and self.name_es else self.name

    def serving_text(self, language: str) -> str:
        """The serving described in `language`."""
        return self.serving_es if language == "es" and self.serving_es else self.serving

    def tip_text(self, language: str) -> str:
        """The tip in `language` ("" when there is none)."""
        return self.tip_es if language == "es" and self.tip_es else self.tip


@dataclass(frozen=True)
class Recipe:
    """A short recipe; `kcal_per_serving` in kcal, `minutes` of total time.

    `ingredients` (English) is what exclusions are checked against; `ingredients_es` is the same
    list, line for line, in Spanish.
    """

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
    name_es: str = ""
    ingredients_es: tuple[str, ...] = ()
    steps_es: str = ""

    def label(self, language: str) -> str:
        """The recipe's name in `language`."""
        return self.name_es if language == "es" and self.name_es else self.name

    def ingredient_lines(self, language: str) -> tuple[str, ...]:
        """The ingredient lines in `language`."""
        return self.ingredients_es if language == "es" and self.ingredients_es \
            else self.ingredients

    def steps_text(self, language: str) -> str:
        """The steps in `language`."""
        return self.steps_es if language == "es" and self.steps_es else self.steps


@dataclass(frozen=True)
class Meal:
    """One meal of a day plan; `groceries` is its ingredient list (lower case, English), what
    exclusions are checked against and what a grocery list is made of."""

    name: str
    slot: str
    kcal: int
    protein_g: Decimal
    tags: frozenset[str]
    groceries: tuple[str, ...]
    name_es: str = ""
    amounts: tuple[tuple[str, Decimal], ...] = ()

    def label(self, language: str) -> str:
        """The meal's name in `language`."""
        return self.name_es if language == "es" and self.name_es else self.name

    def amount(self, item: str) -> Decimal | None:
        """What one portion uses of `item` when the meal says (in the item's `Purchase.unit`),
        else None (the item's usual `Purchase.each`)."""
        return next((value for name, value in self.amounts if name == item), None)


@dataclass(frozen=True)
class AdviceTopic:
    """A piece of dietary advice selected by trigger phrases or by the foods it is about."""

    key: str
    triggers: tuple[str, ...]
    text: str
    text_es: str = ""
    foods: tuple[str, ...] = ()

    def text_in(self, language: str) -> str:
        """The advice in `language`."""
        return self.text_es if language == "es" and self.text_es else self.text


@dataclass(frozen=True)
class Family:
    """An ingredient family a person can exclude by name (an allergen, meat, added sugar).

    Attributes:
        key: e.g. "peanut", "dairy".
        label, label_es: how a reply names it ("peanuts", "maní").
        names, names_es: what people call it, lower case without accents.
        terms: words matched (whole words, singular or plural) in ingredient lines.
        exceptions: compounds removed before matching ("peanut butter" is not dairy).
        includes: keys of families whose terms this one also excludes ("nuts": tree nuts and
            peanuts).
    """

    key: str
    label: str
    label_es: str
    names: tuple[str, ...]
    names_es: tuple[str, ...]
    terms: tuple[str, ...]
    exceptions: tuple[str, ...]
    includes: tuple[str, ...]

    def label_in(self, language: str) -> str:
        """The family's name in `language`."""
        return self.label_es if language == "es" else self.label


@dataclass(frozen=True)
class Purchase:
    """How a grocery item is bought.

    Attributes:
        each: what one portion of a meal uses, in `unit`.
        unit: "g", "ml", "cup", "tbsp", "tsp", "can", or "" for a count of pieces.
        pack: what a pantry item is sold in ("bottle", "jar", ...), or "" when it is bought by
            the amount (grams, pieces).
        holds: how many `unit` one pack holds (0 without a pack).
    """

    each: Decimal
    unit: str = ""
    pack: str = ""
    holds: Decimal = Decimal(0)


@dataclass(frozen=True)
class Knowledge:
    """Everything in `bot/content/`, parsed.

    Attributes:
        diet_families: diet key -> keys of the families that diet rules out (vegan: meat, fish,
            shellfish, dairy, egg, honey). The diets themselves (their words, tags, notes) are
            `bot.intents.constraints.DIETS`.
        diet_pairs: diet key -> pairs of family keys never together in one meal or recipe
            (kosher: meat and dairy).
        composites: composite ingredient (lower case, e.g. "caesar dressing") -> what it
            contains (ingredient phrases, which may be composites too).
        items_es: grocery item (as in `Meal.groceries`) -> its Spanish name.
        shopping: grocery item -> how it is bought (for a grocery list's quantities).
    """

    foods: tuple[Food, ...]
    recipes: tuple[Recipe, ...]
    meals: tuple[Meal, ...]
    topics: tuple[AdviceTopic, ...]
    families: tuple[Family, ...] = ()
    diet_families: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    items_es: Mapping[str, str] = field(default_factory=dict)
    diet_pairs: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    composites: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    shopping: Mapping[str, Purchase] = field(default_factory=dict)

    def topic(self, key: str) -> AdviceTopic:
        """The advice topic `key`. Raises `ContentError` if there is none."""
        for topic in self.topics:
            if topic.key == key:
                return topic
        raise ContentError(f"no advice topic {key!r}")

    def family(self, key: str) -> Family:
        """The ingredient family `key`. Raises `ContentError` if there is none."""
        for family in self.families:
            if family.key == key:
                return family
        raise ContentError(f"no ingredient family {key!r}")

    def item_label(self, item: str, language: str) -> str:
        """A grocery item's name in `language` (the English name when no translation)."""
        if language == "es":
            return self.items_es.get(item, item)
        return item


@functools.cache
def load_knowledge(directory: Path = CONTENT_DIR) -> Knowledge:
    """Parse the content files once per process (the first skill call pays for it).

    Raises:
        ContentError: a file is missing, or an item lacks a field or has the wrong type, or a
            family includes one that does not exist.
    """
    try:
        ingredients = _mapping(directory / "ingredients.yaml")
        families = tuple(_family(i) for i in _list(ingredients, "families", "ingredients.yaml"))
        keys = {f.key for f in families}
        for family in families:
            if unknown := set(family.includes) - keys:
                raise ValueError(f"family {family.key!r} includes unknown {sorted(unknown)}")
        diets = {str(tag): tuple(str(k) for k in value)
                 for tag, value in (ingredients.get("diets") or {}).items()}
        for tag, value in diets.items():
            if set(value) - keys:
                raise ValueError(f"diets.{tag}: unknown family {sorted(set(value) - keys)}")
        pairs: dict[str, tuple[tuple[str, str], ...]] = {}
        for tag, value in (ingredients.get("diet_pairs") or {}).items():
            found = tuple((str(a), str(b)) for a, b in value)
            if {k for pair in found for k in pair} - keys:
                raise ValueError(f"diet_pairs.{tag}: unknown family")
            pairs[str(tag)] = found
        composites = {str(k).lower(): _strings(v)
                      for k, v in (ingredients.get("composites") or {}).items()}
        shopping = {str(k).lower(): _purchase(v)
                    for k, v in (ingredients.get("shopping") or {}).items()}
        return Knowledge(
            foods=tuple(_food(i) for i in _items(directory / "foods.yaml", "foods")),
            recipes=tuple(_recipe(i) for i in _items(directory / "recipes.yaml", "recipes")),
            meals=tuple(_meal(i) for i in _items(directory / "meals.yaml", "meals")),
            topics=tuple(_topic(i) for i in _items(directory / "advice.yaml", "topics")),
            families=families,
            diet_families=diets,
            items_es={str(k).lower(): str(v) for k, v in (ingredients.get("items") or {}).items()},
            diet_pairs=pairs,
            composites=composites,
            shopping=shopping,
        )
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
        raise ContentError(f"{directory}: malformed content ({exc!r})") from exc


def _mapping(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ContentError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(raw, dict):
        raise ContentError(f"{path}: a mapping is required")
    return raw


def _list(raw: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    items = raw.get(key)
    if not isinstance(items, list) or not items:
        raise ContentError(f"{where}: a non-empty list under {key!r} is required")
    return items


def _items(path: Path, key: str) -> list[dict[str, Any]]:
    return _list(_mapping(path), key, str(path))


def _grams(value: Any) -> Decimal:
    return Decimal(str(value))


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v).lower() for v in value or ())


def _food(item: dict[str, Any]) -> Food:
    return Food(
        name=str(item["name"]).lower(),
        aliases=_strings(item.get("aliases")),
        serving=str(item["serving"]),
        kcal=int(item["kcal"]),
        protein_g=_grams(item["protein_g"]),
        carbs_g=_grams(item["carbs_g"]),
        fat_g=_grams(item["fat_g"]),
        fiber_g=_grams(item.get("fiber_g", 0)),
        sugar_g=_grams(item.get("sugar_g", 0)),
        tags=frozenset(item.get("tags") or ()),
        tip=str(item.get("tip", "")),
        name_es=str(item.get("name_es", "")),
        aliases_es=_strings(item.get("aliases_es")),
        serving_es=str(item.get("serving_es", "")),
        tip_es=str(item.get("tip_es", "")),
        piece_servings=_grams(item.get("piece_servings", 1)),
    )


def _recipe(item: dict[str, Any]) -> Recipe:
    ingredients = tuple(str(i) for i in item["ingredients"])
    ingredients_es = tuple(str(i) for i in item.get("ingredients_es") or ())
    if ingredients_es and len(ingredients_es) != len(ingredients):
        raise ValueError(f"recipe {item.get('name')!r}: ingredients_es must match ingredients")
    return Recipe(
        name=str(item["name"]),
        keywords=frozenset(str(k).lower() for k in item.get("keywords") or ()),
        tags=frozenset(item.get("tags") or ()),
        meal=str(item["meal"]),
        minutes=int(item["minutes"]),
        servings=int(item["servings"]),
        kcal_per_serving=int(item["kcal_per_serving"]),
        protein_g=_grams(item.get("protein_g", 0)),
        ingredients=ingredients,
        steps=str(item["steps"]),
        name_es=str(item.get("name_es", "")),
        ingredients_es=ingredients_es,
        steps_es=str(item.get("steps_es", "")),
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
        name_es=str(item.get("name_es", "")),
        amounts=tuple((str(k).lower(), _grams(v)) for k, v in (item.get("amounts") or {}).items()),
    )


def _purchase(item: dict[str, Any]) -> Purchase:
    pack = str(item.get("pack") or "")
    holds = _grams(item.get("holds", 0))
    if pack and holds <= 0:
        raise ValueError(f"a pack ({pack!r}) needs what it holds")
    return Purchase(each=_grams(item["each"]), unit=str(item.get("unit") or ""), pack=pack,
                    holds=holds)


def _topic(item: dict[str, Any]) -> AdviceTopic:
    return AdviceTopic(
        key=str(item["key"]),
        triggers=_strings(item.get("triggers")),
        text=str(item["text"]),
        text_es=str(item.get("text_es", "")),
        foods=_strings(item.get("foods")),
    )


def _family(item: dict[str, Any]) -> Family:
    return Family(
        key=str(item["key"]),
        label=str(item["label"]),
        label_es=str(item.get("label_es") or item["label"]),
        names=_strings(item.get("names")),
        names_es=_strings(item.get("names_es")),
        terms=_strings(item.get("terms")),
        exceptions=_strings(item.get("except")),
        includes=tuple(str(k) for k in item.get("includes") or ()),
    )
