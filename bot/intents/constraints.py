"""What a person asked for, read once from their words into a frozen `Constraints`.

Every offline skill answers from this one reading: the diet, what must be left out (allergens
and dislikes, with families expanded: "nuts" is walnuts, almonds, ... and peanuts), a calorie
target, a goal (lose or gain weight), days, people, the foods asked about with their quantities,
and the language of the request. English and Spanish are read alike:

    "vegetarian meal plan for 3 days, I am allergic to peanuts"
    "plan de comidas vegetariano para 3 días, soy alérgico al maní"

both give diets {vegetarian}, days 3, exclusions (peanuts).

Typos are corrected first, towards the words of the content and of the intents
(`bot.intents.classifier.correct_words`), so "meel plan vegitarian" reads as
"meal plan vegetarian".

Exclusions are checked against ingredient lists, never titles: `Constraints.violation` says
which exclusion an ingredient list breaks, and a skill must not show a meal or recipe for which
it returns one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from bot.intents.classifier import (
    CLASSIFIER_VOCABULARY,
    COMMON_WORDS,
    correct_words,
    detect_language,
)
from bot.intents.query import (
    NUMBER_WORDS,
    UNITS,
    FoodMention,
    find_foods,
    number,
    read_words,
    stem,
    stems,
)
from bot.knowledge import Body, Family, Knowledge

# Diet tags that are rules (a meal must carry the tag and contain nothing the diet rules out)
# and those that are preferences (preferred when the content has them).
HARD_DIETS = frozenset({"vegan", "vegetarian", "gluten_free", "dairy_free"})
SOFT_DIETS = frozenset({"low_carb", "high_protein"})

# Phrases (as `read_words` gives them) that select a diet tag of the content files.
DIET_PHRASES: Mapping[str, tuple[str, ...]] = {
    "vegan": ("vegan", "vegans", "plant based", "no animal products", "vegano", "vegana",
              "veganos", "veganas", "vegetal estricta"),
    "vegetarian": ("vegetarian", "veggie", "meatless", "no meat", "meat free", "vegetariano",
                   "vegetariana", "vegetarianos", "vegetarianas", "sin carne"),
    "gluten_free": ("gluten free", "no gluten", "without gluten", "celiac", "coeliac", "gf",
                    "sin gluten", "libre de gluten", "celiaco", "celiaca"),
    "dairy_free": ("dairy free", "no dairy", "without dairy", "lactose free", "lactose",
                   "non dairy", "sin lactosa", "sin lacteos", "libre de lactosa",
                   "deslactosado", "lactose intolerant", "intolerante a la lactosa"),
    "low_carb": ("low carb", "keto", "ketogenic", "no carb", "no carbs", "low carbohydrate",
                 "bajo en carbohidratos", "baja en carbohidratos", "cetogenica", "cetogenico",
                 "sin carbohidratos", "pocos carbohidratos"),
    "high_protein": ("high protein", "protein rich", "muscle", "bulking", "more protein",
                     "alto en proteina", "alta en proteina", "rico en proteina",
                     "rica en proteina", "mas proteina", "proteica", "proteico"),
}
GOAL_PHRASES: Mapping[str, tuple[str, ...]] = {
    "lose": ("lose weight", "losing weight", "weight loss", "lose fat", "fat loss", "slim down",
             "to lose", "cutting", "calorie deficit", "bajar de peso", "perder peso",
             "bajar peso", "adelgazar", "perdida de peso", "quemar grasa", "deficit calorico"),
    "gain": ("gain weight", "put on weight", "weight gain", "gain muscle", "build muscle",
             "bulk", "bulking", "gaining weight", "subir de peso", "ganar peso",
             "aumentar de peso", "engordar", "ganar musculo", "ganar masa muscular",
             "volumen"),
    "maintain": ("maintain weight", "maintain my weight", "maintenance", "mantener peso",
                 "mantener mi peso", "mantenimiento"),
}
MEAL_WORDS: Mapping[str, str] = {
    "breakfast": "breakfast", "brunch": "breakfast", "desayuno": "breakfast",
    "desayunar": "breakfast", "lunch": "lunch", "almuerzo": "lunch", "almorzar": "lunch",
    "dinner": "dinner", "supper": "dinner", "cena": "dinner", "cenar": "dinner",
    "snack": "snack", "snacks": "snack", "merienda": "snack", "tentempie": "snack",
    "botana": "snack", "dessert": "snack", "postre": "snack",
}
# Exclusion triggers, as word tuples. `_BEFORE`: the excluded thing follows ("without eggs");
# `_AFTER`: it comes first ("nut free", "peanut allergy"). Weak triggers ("no", "X free") only
# take names of the content (a family, a food, an ingredient), so "no problem" excludes nothing.
_BEFORE_STRONG: tuple[tuple[str, ...], ...] = tuple(tuple(t.split()) for t in (
    "without", "free of", "free from", "allergic to", "allergy to", "allergies to",
    "intolerant to", "intolerance to", "sensitive to", "i dont eat", "i do not eat", "dont eat",
    "i cant eat", "i cannot eat", "cant eat", "cannot eat", "i cant have", "cant have",
    "i dont like", "dont like", "do not like", "i hate", "i avoid", "avoid", "avoiding",
    "except", "excluding", "exclude", "hold the", "skip the", "nothing with", "not a fan of",
    "sin", "alergico a", "alergica a", "alergico al", "alergica al", "alergicos a",
    "alergicas a", "alergia a", "alergia al", "alergias a", "intolerante a", "intolerante al",
    "intolerancia a", "intolerancia al", "no como", "no puedo comer", "no tomo", "no me gusta",
    "no me gustan", "odio", "libre de", "libres de", "excepto", "evito", "evitar", "nada de",
))
_BEFORE_WEAK: tuple[tuple[str, ...], ...] = (("no",), ("zero",), ("not",))
_AFTER_WEAK: tuple[tuple[str, ...], ...] = tuple(tuple(t.split()) for t in (
    "free", "allergy", "allergies", "intolerance", "intolerant", "allergic", "sensitivity",
))
_ARTICLES = frozenset({"the", "any", "a", "an", "all", "el", "la", "los", "las", "al", "un",
                       "una", "del", "de", "ningun", "ninguna"})
_CONNECTORS = frozenset({"and", "or", "nor", "y", "o", "ni", "e", "u", "plus"})
STOPWORDS = frozenset({
    "a", "an", "the", "for", "me", "my", "i", "im", "some", "with", "and", "or", "of", "to", "in",
    "on", "please", "give", "want", "need", "can", "you", "how", "what", "is", "are", "any",
    "good", "ideas", "idea", "make", "cook", "recipe", "recipes", "find", "show", "send", "quick",
    "easy", "grocery", "groceries", "list", "shopping", "meal", "meals", "plan", "plans", "menu",
    "day", "days", "week", "weekly", "calorie", "calories", "kcal", "cal", "free", "low", "high",
    "rich", "based", "no", "not", "it", "its", "this", "that", "be", "do", "does", "dont", "am",
    "at", "from", "by", "about", "just", "like", "get", "would", "could", "should", "eat",
    "eating", "food", "foods", "healthy", "tips", "advice", "diet", "something", "things", "more",
    "less", "also", "very", "really", "much", "many", "lot", "lots", "one", "two", "three", "four",
    "five", "six", "seven", "per", "each", "every", "daily", "today", "tomorrow", "people",
    "person", "family", "help", "hi", "hello", "hey", "thanks", "thank", "yes", "ok", "okay", "de",
    "la", "el", "los", "las", "un", "una", "unos", "unas", "para", "con", "sin", "por", "que",
    "como", "mi", "mis", "tu", "es", "y", "o", "en", "al", "del", "lo", "se", "le", "su",
    "sus", "quiero", "dame", "necesito", "puedo", "hacer", "receta", "recetas", "comida",
    "comidas", "lista", "compras", "dia", "dias", "semana", "calorias", "caloria", "favor",
    "hola", "gracias", "algo", "alguna", "algun",
})
# Words of people's messages that name the plan or recipe shown before ("my plan").
PLAN_REFERENCES = tuple(tuple(t.split()) for t in (
    "my plan", "the plan", "this plan", "that plan", "my meal plan", "the meal plan",
    "this meal plan", "that meal plan", "above", "previous plan", "last plan", "mi plan",
    "el plan", "este plan", "ese plan", "mi plan de comidas", "el plan de comidas",
    "plan anterior",
))
RECIPE_REFERENCES = tuple(tuple(t.split()) for t in (
    "this recipe", "that recipe", "the recipe", "esta receta", "esa receta", "la receta",
))
_CALORIE_UNITS = frozenset({"kcal", "kcals", "cal", "cals", "calorie", "calories", "calorias",
                            "caloria", "kilocalorias"})
_DAY_WORDS = frozenset({"day", "days", "dia", "dias"})
_WEEK_WORDS = frozenset({"week", "weeks", "semana", "semanas"})
_PEOPLE_WORDS = frozenset({"people", "persons", "person", "adults", "adult", "personas",
                           "persona", "adultos", "comensales", "guests", "servings"})
_FEMALE = frozenset({"woman", "female", "girl", "lady", "mujer", "femenino", "chica", "she",
                     "mom", "mother", "madre"})
_MALE = frozenset({"man", "male", "guy", "hombre", "masculino", "chico", "he", "dad",
                   "father", "padre"})


@dataclass(frozen=True)
class Exclusion:
    """Something to leave out: a family ("peanuts", "dairy") or one ingredient ("tofu").

    Attributes:
        key: the family key, or the ingredient's English name.
        label: how an English reply names it ("peanuts").
        label_es: how a Spanish reply names it ("maní").
        terms: stemmed word sequences; an ingredient line holding one is excluded.
        exceptions: stemmed sequences removed from a line before matching ("peanut butter"
            is not dairy).
    """

    key: str
    label: str
    label_es: str
    terms: tuple[tuple[str, ...], ...]
    exceptions: tuple[tuple[str, ...], ...] = ()

    def label_in(self, language: str) -> str:
        """The name of what is left out, in `language`."""
        return self.label_es if language == "es" else self.label

    def matches(self, ingredient: str) -> bool:
        """Whether the ingredient line (e.g. "2 tbsp peanut butter") contains this exclusion."""
        return _line_matches(ingredient, self)


@functools.lru_cache(maxsize=65536)
def _line_matches(ingredient: str, exclusion: Exclusion) -> bool:
    words = list(stems(read_words(ingredient)))
    for exception in exclusion.exceptions:
        size = len(exception)
        for start in range(len(words) - size + 1):
            if tuple(words[start:start + size]) == exception:
                for i in range(start, start + size):
                    words[i] = ""
    for term in exclusion.terms:
        size = len(term)
        for start in range(len(words) - size + 1):
            if tuple(words[start:start + size]) == term:
                return True
    return False


@dataclass(frozen=True)
class Constraints:
    """The parsed request.

    Attributes:
        text: the words of the message, typos corrected, joined by spaces.
        words: the same words, in order.
        language: "en" or "es".
        diets: diet tags asked for (see `DIET_PHRASES`); vegan implies vegetarian and dairy
            free.
        exclusions: what the person asked to leave out, in order ("without eggs": egg).
        diet_exclusions: what the hard diets rule out (vegan: meat, fish, dairy, egg, ...).
        calories: a daily calorie target in kcal when one was named, as written (any size:
            an 800 kcal request is kept so that the skill can refuse it).
        goal: "lose", "gain", "maintain" or None.
        days: days a plan should cover when named ("week" is 7; may exceed 7).
        people: how many people when named ("for 4 people", "familia de 4").
        foods: foods named (not those excluded), with servings.
        meal: "breakfast", "lunch", "dinner" or "snack" when one was named.
        body: weight, height, age, sex and activity when told (for Mifflin-St Jeor).
        refers_to_plan: the message names a plan shown before ("grocery list for my plan").
        refers_to_recipe: the message names a recipe shown before ("this recipe").
        unknown: content words not understood (not food, not a keyword), e.g. ("kombucha",).
    """

    text: str
    words: tuple[str, ...]
    language: str
    diets: frozenset[str] = frozenset()
    exclusions: tuple[Exclusion, ...] = ()
    diet_exclusions: tuple[Exclusion, ...] = ()
    calories: int | None = None
    goal: str | None = None
    days: int | None = None
    people: int | None = None
    foods: tuple[FoodMention, ...] = ()
    meal: str | None = None
    body: Body = field(default_factory=Body)
    refers_to_plan: bool = False
    refers_to_recipe: bool = False
    unknown: tuple[str, ...] = ()
    excluded_words: frozenset[str] = frozenset()

    @property
    def hard_diets(self) -> frozenset[str]:
        """The diets that are rules (`HARD_DIETS`)."""
        return self.diets & HARD_DIETS

    @property
    def soft_diets(self) -> frozenset[str]:
        """The diets that are preferences (`SOFT_DIETS`)."""
        return self.diets & SOFT_DIETS

    @property
    def all_exclusions(self) -> tuple[Exclusion, ...]:
        """The person's exclusions, then the diets'."""
        return self.exclusions + self.diet_exclusions

    def violation(self, ingredients: Iterable[str]) -> Exclusion | None:
        """The first exclusion (the person's or a diet's) that one of `ingredients` breaks, or
        None when the list is allowed."""
        lines = tuple(ingredients)
        for exclusion in self.all_exclusions:
            if any(exclusion.matches(line) for line in lines):
                return exclusion
        return None

    def excluded_labels(self, language: str | None = None) -> str:
        """The person's exclusions named for a reply: "peanuts and eggs" / "maní y huevo"."""
        lang = language or self.language
        labels = [e.label_in(lang) for e in self.exclusions]
        if not labels:
            return ""
        if len(labels) == 1:
            return labels[0]
        joiner = " y " if lang == "es" else " and "
        return ", ".join(labels[:-1]) + joiner + labels[-1]

    def keywords(self) -> frozenset[str]:
        """Content words of the message (stemmed and as written), without stopwords, diet
        words, numbers and what was excluded: what a recipe is ranked by."""
        found: set[str] = set()
        for word in self.words:
            if (word in STOPWORDS or word in _DIET_WORDS or len(word) < 3 or number(word)
                    is not None or word in self.excluded_words):
                continue
            found.add(word)
            found.add(stem(word))
        return frozenset(found)


_DIET_WORDS = frozenset(w for phrases in DIET_PHRASES.values() for p in phrases
                        for w in p.split())


def parse_constraints(text: str, knowledge: Knowledge, language: str | None = None
                      ) -> Constraints:
    """Read `text` into `Constraints`, using the names of `knowledge`.

    Args:
        text: the person's message.
        knowledge: the content (its foods, families and ingredients are the vocabulary).
        language: "en" or "es" to force the language; None detects it from `text`.

    Returns:
        The constraints (frozen).
    """
    detected = detect_language(text)
    lang = language if language in ("en", "es") else detected
    # Spanish food names count when the text reads as Spanish, whatever the reply language.
    names_language = "es" if "es" in (lang, detected) else "en"
    vocabulary = _vocabulary(knowledge)
    words, commas = _words_and_commas(read_words(text, commas=True), vocabulary)
    taken: set[int] = set()

    diet_spans: dict[int, int] = {}
    diets = _diets(words, taken, diet_spans)
    index = _exclusion_index(knowledge)
    exclusions = _exclusions(words, taken, index, knowledge, lang, diet_spans, commas)
    diet_exclusions = _diet_exclusions(knowledge, diets)
    calories = _calories(words, taken)
    days = _days(words)
    people = _people(words)
    goal = _phrase_key(words, GOAL_PHRASES)
    body = _body(words)
    foods = find_foods(words, knowledge, names_language, taken)
    meal = next((MEAL_WORDS[w] for w in words if w in MEAL_WORDS), None)
    food_words = {i for m in foods for i in range(m.start, m.start + len(m.said.split()))}
    unknown = tuple(
        w for i, w in enumerate(words)
        if i not in taken and i not in food_words and w.isalpha() and len(w) >= 4
        and w not in vocabulary and w not in COMMON_WORDS
    )
    excluded_words = frozenset(w for i in taken for w in (words[i], stem(words[i])))
    return Constraints(
        text=" ".join(words),
        words=words,
        language=lang,
        diets=diets,
        exclusions=exclusions,
        diet_exclusions=diet_exclusions,
        calories=calories,
        goal=goal,
        days=days,
        people=people,
        foods=foods,
        meal=meal,
        body=body,
        refers_to_plan=_has_phrase(words, PLAN_REFERENCES),
        refers_to_recipe=_has_phrase(words, RECIPE_REFERENCES),
        unknown=unknown,
        excluded_words=excluded_words,
    )


def _words_and_commas(tokens: tuple[str, ...], vocabulary: frozenset[str]
                      ) -> tuple[tuple[str, ...], frozenset[int]]:
    """The words (typos corrected) without the "," tokens, and the indexes of the words a comma
    follows."""
    words: list[str] = []
    commas: set[int] = set()
    for token in tokens:
        if token == ",":
            if words:
                commas.add(len(words) - 1)
            continue
        words.extend(correct_words((token,), vocabulary))
    return tuple(words), frozenset(commas)


# --- vocabulary --------------------------------------------------------------------------------

_VOCABULARY: dict[int, tuple[Knowledge, frozenset[str]]] = {}


def _vocabulary(knowledge: Knowledge) -> frozenset[str]:
    """Every word the content and the parsers know, for typo correction and `unknown`."""
    cached = _VOCABULARY.get(id(knowledge))
    if cached is not None and cached[0] is knowledge:
        return cached[1]
    words: set[str] = set(CLASSIFIER_VOCABULARY) | STOPWORDS | set(NUMBER_WORDS) | set(UNITS)
    texts: list[str] = []
    for food in knowledge.foods:
        texts += [food.name, *food.aliases, food.name_es, *food.aliases_es]
    for recipe in knowledge.recipes:
        texts += [recipe.name, recipe.name_es, *recipe.keywords, *recipe.ingredients]
    for meal in knowledge.meals:
        texts += [meal.name, meal.name_es, *meal.groceries]
    for family in knowledge.families:
        texts += [*family.names, *family.names_es, *family.terms]
    for topic in knowledge.topics:
        texts += list(topic.triggers)
    texts += list(knowledge.items_es.values())
    phrase_tables: list[Iterable[str]] = [*DIET_PHRASES.values(), *GOAL_PHRASES.values(),
                                          MEAL_WORDS]
    for table in phrase_tables:
        texts += list(table)
    for trigger in (*_BEFORE_STRONG, *_AFTER_WEAK, *PLAN_REFERENCES, *RECIPE_REFERENCES):
        words.update(trigger)
    for text in texts:
        words.update(w for w in read_words(text) if w.isalpha())
    words |= _CALORIE_UNITS | _DAY_WORDS | _WEEK_WORDS | _PEOPLE_WORDS | _FEMALE | _MALE
    words |= {"kg", "cm", "years", "old", "age", "tall", "weigh", "active", "sedentary",
              "lightly", "moderately", "inches", "feet", "pounds", "kilos", "libras",
              "anos", "edad", "peso", "mido", "activo", "activa", "sedentario", "sedentaria"}
    vocabulary = frozenset(words)
    if len(_VOCABULARY) >= 16:
        _VOCABULARY.clear()
    _VOCABULARY[id(knowledge)] = (knowledge, vocabulary)
    return vocabulary


# --- diets, goals, numbers ----------------------------------------------------------------

def _find(words: tuple[str, ...], phrase: tuple[str, ...]) -> int:
    """The first index where `phrase` (stemmed comparison) starts in `words`, or -1."""
    size = len(phrase)
    target = stems(phrase)
    stemmed = stems(words)
    for start in range(len(words) - size + 1):
        if stemmed[start:start + size] == target:
            return start
    return -1


def _has_phrase(words: tuple[str, ...], phrases: Iterable[tuple[str, ...]]) -> bool:
    return any(_find(words, p) >= 0 for p in phrases)


def _phrase_key(words: tuple[str, ...], table: Mapping[str, tuple[str, ...]]) -> str | None:
    """The key of the earliest phrase of `table` found in `words`."""
    best: tuple[int, str] | None = None
    for key, phrases in table.items():
        for phrase in phrases:
            at = _find(words, tuple(phrase.split()))
            if at >= 0 and (best is None or at < best[0]):
                best = (at, key)
    return best[1] if best else None


def _diets(words: tuple[str, ...], taken: set[int], spans: dict[int, int]) -> frozenset[str]:
    """The diet tags named; their words are added to `taken`, their spans (start -> end) to
    `spans`."""
    found: set[str] = set()
    for tag, phrases in DIET_PHRASES.items():
        for phrase in sorted(phrases, key=lambda p: -len(p)):
            parts = tuple(phrase.split())
            at = _find(words, parts)
            if at >= 0:
                found.add(tag)
                taken.update(range(at, at + len(parts)))
                spans[at] = at + len(parts)
    if "vegan" in found:
        found |= {"vegetarian", "dairy_free"}
    return frozenset(found)


def _calories(words: tuple[str, ...], taken: set[int]) -> int | None:
    for i, word in enumerate(words[:-1]):
        value = number(word)
        if value is not None and words[i + 1] in _CALORIE_UNITS and 50 <= value < 20000:
            taken.update((i, i + 1))
            return int(value)
    return None


def _count_word(word: str) -> int | None:
    value = number(word)
    if value is None and word in NUMBER_WORDS and NUMBER_WORDS[word] >= 1:
        value = NUMBER_WORDS[word]
    if value is None or value != value.to_integral_value() or not 0 < value <= 1000:
        return None
    return int(value)


def _days(words: tuple[str, ...]) -> int | None:
    for i, word in enumerate(words[:-1]):
        count = _count_word(word)
        if count is None:
            continue
        following = words[i + 1]
        if following in _DAY_WORDS:
            return count
        if following in _WEEK_WORDS:
            return 7 * count
    for i, word in enumerate(words):
        if word in ("weekend",) or (word == "fin" and words[i + 1:i + 3] == ("de", "semana")):
            return 2
    if any(w in _WEEK_WORDS or w in ("weekly", "semanal") for w in words):
        return 7
    if any(w in ("today", "tomorrow", "hoy", "manana", "tonight") for w in words):
        return 1
    return None


def _people(words: tuple[str, ...]) -> int | None:
    for i, word in enumerate(words[:-1]):
        count = _count_word(word)
        if count is not None and words[i + 1] in _PEOPLE_WORDS and words[i + 1] != "servings":
            return count
    for i in range(len(words) - 2):
        if words[i] in ("family", "familia") and words[i + 1] in ("of", "de"):
            count = _count_word(words[i + 2])
            if count is not None:
                return count
    return None


def _body(words: tuple[str, ...]) -> Body:
    weight = height = None
    age = None
    for i, word in enumerate(words):
        value = number(word)
        following = words[i + 1] if i + 1 < len(words) else ""
        if value is None:
            continue
        if following in ("kg", "kgs", "kilos", "kilo", "kilograms", "kilogramos"):
            weight = value
        elif following in ("lb", "lbs", "pounds", "libras", "pound"):
            weight = (value * Decimal("0.4536")).quantize(Decimal("0.1"))
        elif following in ("cm", "centimeters", "centimetros"):
            height = value
        elif following in ("m", "meters", "metros", "mts") and 1 < value < Decimal("2.5"):
            height = value * 100
        elif following == "ft" and 3 < value < 8:
            inches = number(words[i + 2]) if i + 2 < len(words) else None
            height = ((value * 12 + (inches or 0)) * Decimal("2.54")).quantize(Decimal(1))
        elif 10 <= value <= 110 and (
                following in ("years", "year", "yo", "yrs", "anos", "ano")
                or (i > 0 and words[i - 1] in ("age", "aged", "edad"))):
            age = int(value)
    present = set(words)
    sex = "female" if present & _FEMALE else "male" if present & _MALE else None
    activity = "sedentary"
    text = f" {' '.join(words)} "
    if any(f" {p} " in text for p in ("very active", "muy activo", "muy activa", "athlete",
                                      "atleta", "every day at the gym")):
        activity = "very"
    elif any(f" {p} " in text for p in ("lightly active", "light exercise", "poco activo",
                                        "poco activa", "a little exercise")):
        activity = "light"
    elif any(f" {p} " in text for p in ("active", "moderately active", "exercise", "activo",
                                        "activa", "hago ejercicio", "gym", "gimnasio")):
        activity = "moderate"
    return Body(weight_kg=weight, height_cm=height, age=age, sex=sex, activity=activity)


# --- exclusions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Target:
    """What a name resolves to when it follows an exclusion trigger."""

    exclusion: Exclusion
    strong: bool  # a family or a food of the content (may follow a weak trigger)


_INDEXES: dict[int, tuple[Knowledge, dict[tuple[str, ...], _Target]]] = {}


def _family_exclusion(knowledge: Knowledge, family: Family) -> Exclusion:
    terms: list[tuple[str, ...]] = []
    exceptions: list[tuple[str, ...]] = []
    pending = [family.key]
    seen: set[str] = set()
    while pending:
        key = pending.pop()
        if key in seen:
            continue
        seen.add(key)
        member = knowledge.family(key)
        terms += [stems(read_words(t)) for t in member.terms]
        exceptions += [stems(read_words(t)) for t in member.exceptions]
        pending += list(member.includes)
    # An exception that is itself a term of the family (nut butter for nuts) is not one.
    term_set = set(terms)
    return Exclusion(
        key=family.key, label=family.label, label_es=family.label_es,
        terms=tuple(dict.fromkeys(t for t in terms if t)),
        exceptions=tuple(dict.fromkeys(e for e in exceptions if e and e not in term_set)),
    )


def _exclusion_index(knowledge: Knowledge) -> dict[tuple[str, ...], _Target]:
    """Names a person may exclude (stemmed words) -> what they exclude: families first, then
    foods (English and Spanish names), then grocery items, then any ingredient word."""
    cached = _INDEXES.get(id(knowledge))
    if cached is not None and cached[0] is knowledge:
        return cached[1]
    index: dict[tuple[str, ...], _Target] = {}

    def add(name: str, target: _Target) -> None:
        key = stems(read_words(name))
        if key and key not in index:
            index[key] = target

    for family in knowledge.families:
        target = _Target(_family_exclusion(knowledge, family), strong=True)
        for name in (*family.names, *family.names_es):
            add(name, target)
    for food in knowledge.foods:
        for name in (food.name, *food.aliases):
            add(name, _Target(_item(name, name, food.name_es or name), strong=True))
        head = set(read_words(food.name))
        generic = [a for a in (food.name, *food.aliases) if set(read_words(a)) <= head]
        for name in (food.name_es, *food.aliases_es):
            terms = tuple(dict.fromkeys(stems(read_words(g)) for g in generic))
            add(name, _Target(Exclusion(food.name, food.name, food.name_es or food.name,
                                        terms), strong=True))
    for item in {g for meal in knowledge.meals for g in meal.groceries}:
        spanish = knowledge.items_es.get(item, item)
        target = _Target(_item(item, item, spanish), strong=True)
        add(item, target)
        add(spanish, target)
    for recipe in knowledge.recipes:
        for line in recipe.ingredients:
            for word in read_words(line):
                if word.isalpha() and len(word) >= 4 and word not in STOPWORDS \
                        and word not in UNITS and word not in COMMON_WORDS:
                    add(word, _Target(_item(word, word, word), strong=True))
    if len(_INDEXES) >= 16:
        _INDEXES.clear()
    _INDEXES[id(knowledge)] = (knowledge, index)
    return index


def _item(name: str, label: str, label_es: str) -> Exclusion:
    return Exclusion(key=name, label=label, label_es=label_es,
                     terms=(stems(read_words(name)),))


_MAX_NAME_WORDS = 4


def _target_at(words: tuple[str, ...], start: int, index: dict[tuple[str, ...], _Target],
               taken: set[int]) -> tuple[_Target, int] | None:
    """The longest exclusion name starting at `start`, with its length in words."""
    stemmed = stems(words)
    for size in range(min(_MAX_NAME_WORDS, len(words) - start), 0, -1):
        if any(i in taken for i in range(start, start + size)):
            continue
        target = index.get(stemmed[start:start + size])
        if target is not None:
            return target, size
    return None


def _target_ending(words: tuple[str, ...], end: int, index: dict[tuple[str, ...], _Target],
                   taken: set[int]) -> tuple[_Target, int] | None:
    """The longest exclusion name ending just before `end`, with its length in words."""
    stemmed = stems(words)
    for size in range(min(_MAX_NAME_WORDS, end), 0, -1):
        start = end - size
        if any(i in taken for i in range(start, end)):
            continue
        target = index.get(stemmed[start:end])
        if target is not None:
            return target, size
    return None


def _unknown_word(word: str) -> bool:
    return (word.isalpha() and len(word) >= 4 and word not in STOPWORDS
            and word not in COMMON_WORDS and word not in _ARTICLES and word not in _CONNECTORS)


def _exclusions(words: tuple[str, ...], taken: set[int],
                index: dict[tuple[str, ...], _Target], knowledge: Knowledge, language: str,
                diet_spans: Mapping[int, int] | None = None,
                commas: frozenset[int] = frozenset()) -> tuple[Exclusion, ...]:
    """What the words ask to leave out; the words read are added to `taken`. After an
    excluded name, "and"/"or"/"ni" or a comma (indexes in `commas`) go on to the next one."""
    found: dict[str, Exclusion] = {}
    diet_spans = diet_spans or {}
    diet_starts = frozenset(diet_spans)
    if language == "es":
        # Spanish "soy" is "I am": "no soy vegano" leaves nothing out.
        index = {k: v for k, v in index.items() if k != ("soy",)}

    def keep(exclusion: Exclusion) -> None:
        found.setdefault(exclusion.key, exclusion)

    # "sin lácteos ni huevo", "no dairy or eggs": a diet phrase that is itself an exclusion
    # ("sin ...", "no ...", "without ...") may go on with more names.
    continuations = {start: end for start, end in diet_spans.items()
                     if _trigger_at(words, start, set()) is not None and end < len(words)
                     and words[end] in _CONNECTORS}
    i = 0
    while i < len(words):
        if i in continuations:
            size, strong = continuations[i] - i, True
            at = continuations[i]
            items = 1
        else:
            trigger = _trigger_at(words, i, taken)
            if trigger is None:
                i += 1
                continue
            size, strong = trigger
            at = i + size
            items = 0
        consumed = list(range(i, at))
        while at < len(words):
            if items and words[at] in _CONNECTORS:
                after = at + 1
                while after < len(words) and words[after] in _ARTICLES:
                    after += 1
                if _target_at(words, after, index, taken) is None:
                    break
                consumed += list(range(at, after))
                at = after
            while at < len(words) and words[at] in _ARTICLES and at not in taken:
                consumed.append(at)
                at += 1
            hit = _target_at(words, at, index, taken)
            if hit is not None:
                target, length = hit
                keep(target.exclusion)
            elif strong and at < len(words) and at not in taken and _unknown_word(words[at]):
                word = words[at]
                keep(Exclusion(key=word, label=word, label_es=word, terms=((stem(word),),)))
                length = 1
            else:
                break
            consumed += list(range(at, at + length))
            at += length
            items += 1
            if at - 1 in commas and at < len(words) and words[at] not in _CONNECTORS:
                after = at
                while after < len(words) and words[after] in _ARTICLES:
                    after += 1
                if _target_at(words, after, index, taken) is not None or (
                        strong and after < len(words) and _unknown_word(words[after])):
                    consumed += list(range(at, after))
                    at = after
                    continue
                break
            if at < len(words) and words[at] in _CONNECTORS:
                after = at + 1
                while after < len(words) and words[after] in _ARTICLES:
                    after += 1
                following = _target_at(words, after, index, taken)
                if following is None and not (strong and after < len(words)
                                              and _unknown_word(words[after])):
                    break
                consumed += list(range(at, after))
                at = after
                continue
            nxt = _target_at(words, at, index, taken) if at < len(words) else None
            if nxt is None or nxt[0].exclusion.key not in {f.key for f in knowledge.families}:
                break
        if items:
            taken.update(consumed)
            i = at
        else:
            i += size
    # Names before a weak after-trigger: "nut free", "gluten and dairy free", "peanut allergy".
    ends = [end for end, word in enumerate(words) if (word,) in _AFTER_WEAK and end not in taken]
    # "gluten and [dairy free]": the names before a diet phrase joined to it by "and".
    ends += [start for start in diet_starts
             if start > 1 and words[start - 1] in _CONNECTORS]
    for end in ends:
        cursor = end if end not in diet_starts else end - 1
        names: list[int] = []
        while cursor > 0:
            hit = _target_ending(words, cursor, index, taken)
            if hit is None:
                break
            target, length = hit
            keep(target.exclusion)
            names += list(range(cursor - length, cursor))
            cursor -= length
            if cursor > 0 and words[cursor - 1] in _CONNECTORS:
                cursor -= 1
                names.append(cursor)
                continue
            break
        if names:
            taken.update(names)
            taken.add(end)
    return tuple(found.values())


def _trigger_at(words: tuple[str, ...], at: int, taken: set[int]) -> tuple[int, bool] | None:
    """The exclusion trigger starting at `at` as (its length, strong), the longest first."""
    best: tuple[int, bool] | None = None
    for triggers, strong in ((_BEFORE_STRONG, True), (_BEFORE_WEAK, False)):
        for trigger in triggers:
            size = len(trigger)
            free = not any(i in taken for i in range(at, at + size))
            if words[at:at + size] == trigger and free and (best is None or size > best[0]):
                best = (size, strong)
    return best


def _diet_exclusions(knowledge: Knowledge, diets: frozenset[str]) -> tuple[Exclusion, ...]:
    keys: list[str] = []
    for diet in sorted(diets & HARD_DIETS):
        keys += [k for k in knowledge.diet_families.get(diet, ()) if k not in keys]
    return tuple(_family_exclusion(knowledge, knowledge.family(k)) for k in keys)
