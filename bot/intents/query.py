"""The words of a request and the foods it names, with how much of each.

`read_words` turns a message into the words the parsers work on (numbers kept whole: "1,800" is
1800, "1/2" is 0.5, "100g" is "100 g"); `stem` makes singular and plural forms meet ("eggs",
"egg"); `find_foods` finds the foods of the content named in the words and reads their
quantities relative to each food's serving ("half an avocado" is one serving when the serving is
half an avocado; "an avocado" is two). The request as a whole is parsed in
`bot.intents.constraints`, which uses these.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from bot.knowledge import Food, Knowledge

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
_FEET_INCHES = re.compile(
    r"\b([4-7])\s*(?:'|\u2019|ft|feet|foot)\s*([0-9]{1,2})\s*(?:\"|in\b|inch)?")
_MIXED_FRACTION = re.compile(r"\b([0-9]+)\s+([0-9]+)\s*[/\u2044]\s*([0-9]+)\b")
_FRACTION = re.compile(r"\b([0-9]+)\s*[/\u2044]\s*([0-9]+)\b")
_THOUSANDS = re.compile(r"\b([0-9]{1,2})[,.]([0-9]{3})\b")
_DECIMAL_COMMA = re.compile(r"\b([0-9]+),([0-9]{1,2})\b")
_GLUED_UNIT = re.compile(r"\b([0-9]+(?:\.[0-9]+)?)(g|gr|grs|kg|kgs|oz|lb|lbs|ml|cm|m|kcal|cal|"
                         r"cals|yo|mg)\b")
_NON_WORD = re.compile(r"[^a-z0-9.\x00]+")
_LIST_MARKS = re.compile(r"[,;]")
_STRAY_DOTS = re.compile(r"(?<![0-9])\.|\.(?![0-9])")
_VULGAR = {"\u00bd": " 1/2", "\u00bc": " 1/4", "\u00be": " 3/4", "\u2153": " 1/3"}

NUMBER_WORDS: dict[str, Decimal] = {
    "a": Decimal(1), "an": Decimal(1), "one": Decimal(1), "two": Decimal(2),
    "three": Decimal(3), "four": Decimal(4), "five": Decimal(5), "six": Decimal(6),
    "seven": Decimal(7), "eight": Decimal(8), "nine": Decimal(9), "ten": Decimal(10),
    "twelve": Decimal(12), "fourteen": Decimal(14), "couple": Decimal(2), "dozen": Decimal(12),
    "un": Decimal(1), "una": Decimal(1), "uno": Decimal(1), "dos": Decimal(2),
    "tres": Decimal(3), "cuatro": Decimal(4), "cinco": Decimal(5), "seis": Decimal(6),
    "siete": Decimal(7), "ocho": Decimal(8), "nueve": Decimal(9), "diez": Decimal(10),
    "doce": Decimal(12), "catorce": Decimal(14), "par": Decimal(2), "docena": Decimal(12),
    "half": Decimal("0.5"), "medio": Decimal("0.5"), "media": Decimal("0.5"),
    "mitad": Decimal("0.5"), "quarter": Decimal("0.25"), "cuarto": Decimal("0.25"),
}
# Words that may sit inside a quantity without changing it ("half OF an", "la mitad DE un"),
# and describing words between a quantity and its food ("2 cups of COOKED rice").
_QUANTITY_FILLERS = frozenset({"of", "de", "la", "el", "del"})
_DESCRIBING = frozenset({
    "cooked", "raw", "boiled", "grilled", "fried", "baked", "roasted", "steamed", "large",
    "medium", "small", "big", "fresh", "ripe", "plain", "hard", "scrambled", "poached",
    "cocido", "cocida", "cocidos", "cocidas", "crudo", "cruda", "grande", "grandes", "mediano",
    "mediana", "pequeno", "pequena", "maduro", "madura", "frito", "frita", "asado", "asada",
})

# Unit words (English and Spanish, singular after `stem`) -> a canonical unit.
UNITS: dict[str, str] = {
    "g": "g", "gr": "g", "grs": "g", "gram": "g", "gramo": "g", "kg": "kg", "kgs": "kg",
    "kilo": "kg", "kilogram": "kg", "kilogramo": "kg", "oz": "oz", "ounce": "oz", "onza": "oz",
    "lb": "lb", "lbs": "lb", "pound": "lb", "libra": "lb", "cup": "cup", "taza": "cup",
    "tbsp": "tbsp", "tablespoon": "tbsp", "cucharada": "tbsp", "cda": "tbsp",
    "tsp": "tsp", "teaspoon": "tsp", "cucharadita": "tsp", "cdta": "tsp",
    "slice": "slice", "rebanada": "slice", "rodaja": "slice", "loncha": "slice",
    "tajada": "slice", "porcion": "slice", "trozo": "slice", "can": "can", "tin": "can",
    "lata": "can", "glass": "glass", "vaso": "glass", "copa": "glass", "bottle": "bottle",
    "botella": "bottle", "pint": "bottle", "bowl": "cup", "plato": "cup", "tazon": "cup",
    "scoop": "scoop", "bola": "scoop", "serving": "serving", "portion": "serving",
    "racion": "serving", "piece": "piece", "pieza": "piece", "whole": "piece",
    "entero": "piece", "entera": "piece", "handful": "serving", "punado": "serving",
}
# Grams in one unit of mass (NIST Handbook 44: 1 oz = 28.349523 g, 1 lb = 453.59237 g).
UNIT_GRAMS: dict[str, Decimal] = {
    "g": Decimal(1), "kg": Decimal(1000), "oz": Decimal("28.35"), "lb": Decimal("453.6"),
}
_SERVING_HEAD = re.compile(r"^([0-9]+(?:/[0-9]+)?(?:\.[0-9]+)?) ?([a-z]+)")


def read_words(text: str, commas: bool = False) -> tuple[str, ...]:
    """The words of `text`: lower case, accents and apostrophes dropped, numbers kept whole.

    "1,800 kcal", "1/2 cup", "100g" and "5'6" become ("1800", "kcal"), ("0.5", "cup"),
    ("100", "g") and ("5", "ft", "6", "in"); other punctuation separates words. With `commas`,
    a comma or semicolon is kept as a "," word (it separates the items of a list).
    """
    for char, fraction in _VULGAR.items():
        text = text.replace(char, fraction)
    text = _FEET_INCHES.sub(r" \1 ft \2 in ", text)
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch)).lower()
    folded = _APOSTROPHES.sub("", folded)
    folded = _MIXED_FRACTION.sub(lambda m: _decimal_text(
        Decimal(m.group(1)) + _ratio(m.group(2), m.group(3))), folded)
    folded = _FRACTION.sub(lambda m: _decimal_text(_ratio(m.group(1), m.group(2))), folded)
    folded = _THOUSANDS.sub(r"\1\2", folded)
    folded = _DECIMAL_COMMA.sub(r"\1.\2", folded)
    if commas:
        folded = _LIST_MARKS.sub(" \x00 ", folded)
    folded = _NON_WORD.sub(" ", folded)
    folded = _STRAY_DOTS.sub(" ", folded)
    folded = _GLUED_UNIT.sub(r"\1 \2", folded)
    return tuple(folded.replace("\x00", ",").split())


def _ratio(top: str, bottom: str) -> Decimal:
    return Decimal(top) / Decimal(bottom) if int(bottom) else Decimal(0)


def _decimal_text(value: Decimal) -> str:
    text = f"{value.quantize(Decimal('0.01')):f}".rstrip("0").rstrip(".")
    return f" {text} "


def number(word: str) -> Decimal | None:
    """`word` as a Decimal when it is written in digits ("2", "0.5"), else None."""
    if not word or not (word[0].isdigit()):
        return None
    try:
        return Decimal(word)
    except InvalidOperation:
        return None


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A crude singular: "eggs" -> "egg", "berries" -> "berry", "tomatoes" -> "tomato",
    "peaches" -> "peach"; words ending in "ss", "us" or "is" and short words are kept. Used on
    both sides of every comparison, so it only has to be consistent. Memoised: a message's
    parse stems the same few hundred words many times."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("oes", "ches", "shes", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def stems(words: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`stem` of each word."""
    return tuple(stem(w) for w in words)


@dataclass(frozen=True)
class FoodMention:
    """A food named in the message and how many servings of it.

    Attributes:
        food: the food of the content.
        servings: servings of `food.serving` (Decimal, e.g. 2 or 0.5).
        said: the words that named it, as written (normalised), e.g. "avocados".
        start: the index of its first word in the request's words.
    """

    food: Food
    servings: Decimal
    said: str = ""
    start: int = 0


# Food names by knowledge and language: (stemmed name words, the name as written, food),
# longest first, worked out once per `Knowledge`.
_FOOD_NAMES: dict[tuple[int, str], tuple[Knowledge, tuple[tuple[tuple[str, ...], str, Food],
                                                             ...]]] = {}


def food_names(knowledge: Knowledge, language: str
               ) -> tuple[tuple[tuple[str, ...], str, Food], ...]:
    """Every name and alias of the foods of `knowledge` (Spanish ones too when `language` is
    "es"), as (stemmed words, name, food), longest first."""
    key = (id(knowledge), language)
    cached = _FOOD_NAMES.get(key)
    # The entry holds the knowledge it was made from, so that id cannot be reused meanwhile.
    if cached is None or cached[0] is not knowledge:
        names: list[tuple[tuple[str, ...], str, Food]] = []
        for food in knowledge.foods:
            spellings = [food.name, *food.aliases]
            if language == "es":
                spellings += [food.name_es, *food.aliases_es]
            for spelling in spellings:
                words = read_words(spelling)
                if words:
                    names.append((stems(words), " ".join(words), food))
        names.sort(key=lambda entry: (-len(entry[1]), entry[1]))
        if len(_FOOD_NAMES) >= 16:
            _FOOD_NAMES.clear()
        cached = _FOOD_NAMES[key] = (knowledge, tuple(names))
    return cached[1]


def find_foods(words: tuple[str, ...], knowledge: Knowledge, language: str,
               taken: Collection[int] = ()) -> tuple[FoodMention, ...]:
    """Foods named in `words`, in order, each once, with their quantities.

    The longest name wins where names overlap ("peanut butter" over "butter"); words at the
    indexes in `taken` (an exclusion such as "without eggs") are not foods asked about.

    Args:
        words: `read_words` of the message (typos corrected).
        knowledge: the content.
        language: "en" or "es" (Spanish names count only in Spanish).
        taken: indexes of words already read as something else.

    Returns:
        The mentions, ordered by position.
    """
    stemmed = stems(words)
    present = set(stemmed)
    used = [i in taken for i in range(len(words))]
    found: list[FoodMention] = []
    seen: set[str] = set()
    for name, said, food in food_names(knowledge, language):
        if name[0] not in present:
            continue
        size = len(name)
        for start in range(len(words) - size + 1):
            if stemmed[start:start + size] != name or any(used[start:start + size]):
                continue
            for i in range(start, start + size):
                used[i] = True
            if food.name in seen:
                continue
            seen.add(food.name)
            servings = servings_of(food, words[:start], said)
            found.append(FoodMention(food, servings, " ".join(words[start:start + size]), start))
    found.sort(key=lambda mention: mention.start)
    return tuple(found)


def servings_of(food: Food, before: tuple[str, ...], said: str = "") -> Decimal:
    """Servings of `food` from the words just before its name, relative to its serving.

    "2 eggs" -> 2; "half an avocado" (serving: half an avocado) -> 1; "an avocado" -> 2;
    "316 g of rice" (serving 158 g) -> 2; "2 slices of pizza" -> 2; "a pizza" (8 slices) -> 8;
    "a cup of oats" (serving 1/2 cup) -> 2. A name that carries its unit ("slice of pizza",
    "lata de atun") uses that unit. No quantity: 1 serving.

    Args:
        food: the food.
        before: the words before its name.
        said: the name as matched (may hold a unit word).
    """
    tail = list(before[-6:])
    while tail and (tail[-1] in _QUANTITY_FILLERS or tail[-1] in _DESCRIBING):
        tail.pop()
    unit = None
    if tail and stem(tail[-1]) in UNITS:
        unit = UNITS[stem(tail[-1])]
        tail.pop()
        while tail and (tail[-1] in _QUANTITY_FILLERS or tail[-1] in _DESCRIBING):
            tail.pop()
    if unit is None:
        unit = next((UNITS[stem(w)] for w in said.split() if stem(w) in UNITS), None)
    if unit in UNIT_GRAMS:
        count = _count(tail, limit=MAX_GRAMS)
        grams = (count or Decimal(1)) * UNIT_GRAMS[unit]
        if food.serving_grams:
            return _tidy(grams / food.serving_grams)
        return _tidy(count or Decimal(1))
    count = _count(tail, limit=MAX_COUNT)
    if count is None:
        return Decimal(1)
    if unit is None or unit == "piece":
        return _tidy(count * food.piece_servings)
    if unit == "serving":
        return _tidy(count)
    per_serving = _serving_units(food.serving).get(unit)
    if per_serving:
        return _tidy(count / per_serving)
    return _tidy(count)


MAX_COUNT = 50  # a bigger bare number before a food is not a count of it ("2000 kcal rice")
MAX_GRAMS = 5000


def _tidy(value: Decimal) -> Decimal:
    """`value` to two decimals, or whole when it is whole (1.0 -> 1)."""
    value = value.quantize(Decimal("0.01"))
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value


def _count(tail: list[str], limit: int) -> Decimal | None:
    """The quantity written at the end of `tail` ("2", "half an", "la mitad de un"), or None;
    a number above `limit` is not a quantity."""
    value: Decimal | None = None
    for word in reversed(tail[-4:]):
        if word in _QUANTITY_FILLERS and value is not None:
            continue
        digits = number(word)
        if digits is not None:
            if not 0 < digits <= limit:
                break
            factor = digits
        elif word in NUMBER_WORDS:
            factor = NUMBER_WORDS[word]
        else:
            break
        value = factor if value is None else value * factor
    return value


def _serving_units(serving: str) -> dict[str, Decimal]:
    """How many of a unit one serving is: "1/2 cup dry rolled oats" -> {"cup": 0.5}."""
    match = _SERVING_HEAD.match(serving.lower())
    if not match:
        return {}
    amount, unit = match.groups()
    canonical = UNITS.get(stem(unit))
    if canonical is None or canonical in UNIT_GRAMS:
        return {}
    if "/" in amount:
        top, bottom = amount.split("/")
        value = _ratio(top, bottom)
    else:
        value = Decimal(amount)
    return {canonical: value} if value > 0 else {}
