"""The offline skills: useful answers for the six default intents from `bot/content/`, no LLM.

Each skill reads the request once into `Constraints` (diet, exclusions, calorie target, goal,
days, people, foods, language; `bot.intents.constraints`) and builds its answer from the shipped
foods, recipes, meals and advice, so different requests get different answers. The rules every
skill keeps:

- Nothing excluded is ever shown: each meal's and recipe's ingredient list (and name) is checked,
  composites expanded, for the person's exclusions and for what their diet rules out (kosher:
  never meat with dairy in one meal).
- When the content cannot satisfy the request (no recipe left, a target below the safe minimum
  or beyond what the meals reach, an unknown food, a question no topic answers) the skill raises
  `SkillFailed` with a reply saying so, and the person is charged nothing. So does a request
  with a diet the content cannot honour or does not know (low FODMAP, renal, "zorblax diet"),
  or something to leave out that it cannot check ("zorblax-free"): it is never answered as if
  that had not been said.
- A Spanish request is answered in Spanish (`SkillRequest.language`, else the language detected
  from the text). By SMS, the accents outside GSM-7 (á, í, ó, ú) are dropped, so the reply is
  not sent as UCS-2 at less than half the characters per segment.
- Answers stay under 1,600 characters (Twilio's cap for one message).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

import numpy

from bot.allergies import with_allergies
from bot.errors import SkillFailed
from bot.intents import SkillAnswer, SkillRequest, register_skill
from bot.intents.answer_check import find_violation
from bot.intents.classifier import COMMON_WORDS, normalise_text
from bot.intents.constraints import (
    DIET_BY_KEY,
    DIET_PHRASES,
    DIETS,
    HARD_DIETS,
    STOPWORDS,
    Constraints,
    Exclusion,
    Pair,
    diet_rules,
    diet_tags,
    family_exclusion,
    parse_constraints,
)
from bot.intents.query import read_words, stem, stems
from bot.knowledge import (
    DEFICIT_KCAL,
    REFERENCE_DAILY_KCAL,
    SURPLUS_KCAL,
    AdviceTopic,
    Body,
    Food,
    Knowledge,
    Meal,
    Purchase,
    Recipe,
    load_knowledge,
    maintenance_kcal,
    mifflin_st_jeor_bmr,
    safe_minimum_kcal,
)

MAX_ANSWER = 1600  # Twilio: a message body is at most 1,600 characters.
DEFAULT_DAILY_KCAL = REFERENCE_DAILY_KCAL  # The reference daily intake on US nutrition labels.
# A repeated meal counts like being this many kcal off target, so a week's plan varies.
REPEAT_PENALTY_KCAL = 250
MAX_PLAN_DAYS = 7  # one message holds a week of meals
# A day's total must be within this share of the target (or `MIN_TOLERANCE_KCAL`) to be shown.
TOLERANCE = Decimal("0.06")
MIN_TOLERANCE_KCAL = 100
# Bigger portions reach targets above what one portion of each meal gives (a 3,000 kcal plan).
PORTION_FACTORS = (Decimal(1), Decimal("1.25"), Decimal("1.5"), Decimal("1.75"), Decimal(2))
DIET_LABELS = {d.key: d.label for d in DIETS}
DIET_LABELS_ES = {d.key: d.label_es for d in DIETS}
SUPPORTED_DIETS = (
    "I can follow vegetarian, vegan, pescatarian, halal, kosher, paleo, keto, low-carb, "
    "gluten-free and dairy-free diets, and leave out any ingredient you name (\"without "
    "garlic\").",
    "Puedo seguir dietas vegetariana, vegana, pescetariana, halal, kosher, paleo, keto, baja en "
    "carbohidratos, sin gluten y sin lácteos, y quitar cualquier ingrediente que nombres "
    "(\"sin ajo\").",
)
SLOT_LABELS = {"breakfast": ("Breakfast", "Desayuno"), "lunch": ("Lunch", "Almuerzo"),
               "dinner": ("Dinner", "Cena"), "snack": ("Snack", "Merienda")}
FOOD_EXAMPLES = "eggs, avocado, chicken breast, rice, banana, oats, salmon, pizza"
FOOD_EXAMPLES_ES = "huevo, aguacate, pollo, arroz, plátano, avena, salmón, pizza"
NOTHING_CHARGED = ("Nothing was charged.", "No se cobró nada.")
KETO_CARBS = "20-50 g"  # carbs a day on a ketogenic diet (common clinical range)
# By SMS, the accented letters outside GSM-7 (3GPP TS 23.038) become plain letters, so a Spanish
# reply stays GSM-7 (é, ñ, ü, ¿ and ¡ are in GSM-7 and stay).
_SMS_FOLD = str.maketrans("áíóúÁÍÓÚ", "aiouAIOU")


def say(language: str, english: str, spanish: str) -> str:
    """`spanish` when `language` is "es", else `english`."""
    return spanish if language == "es" else english


def for_channel(text: str, channel: str) -> str:
    """`text` as sent on `channel`: by SMS, á, í, ó and ú (not in GSM-7) lose their accents."""
    return text.translate(_SMS_FOLD) if channel == "sms" else text


def grams(value: Decimal, language: str = "en") -> str:
    """Grams for a person: one decimal at most, no trailing ".0" (e.g. "12.6", "31"); a decimal
    comma in Spanish."""
    rounded = value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    text = f"{rounded:f}".removesuffix(".0")
    return text.replace(".", ",") if language == "es" else text


def kcal_of(value: Decimal) -> int:
    """Whole kcal, half up."""
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def plural(count: int, noun: str, language: str = "en") -> str:
    """"1 day", "3 days"; "1 día", "3 días" for the nouns used here in Spanish."""
    if language == "es":
        spanish = {"day": ("día", "días"), "serving": ("porción", "porciones"),
                   "person": ("persona", "personas")}
        one, many = spanish.get(noun, (noun, noun + "s"))
        return f"{count} {one if count == 1 else many}"
    if noun == "person":
        return f"{count} person" if count == 1 else f"{count} people"
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def portion(food: Food, servings: Decimal, language: str = "en") -> str:
    """How much of a food, e.g. "egg, 2 x 1 large egg (50 g)" or "chicken breast, 100 g,
    cooked"."""
    amount = "" if servings == 1 else f"{grams(servings, language)} x "
    return f"{food.label(language)}, {amount}{food.serving_text(language)}"


def shown_diets(diets: Iterable[str]) -> list[str]:
    """The diets to name, in `DIETS` order, without those another implies (vegan implies
    vegetarian and dairy-free; keto low-carb)."""
    present = set(diets)
    implied = {i for d in present if d in DIET_BY_KEY for i in DIET_BY_KEY[d].implies}
    return [d.key for d in DIETS if d.key in present and d.key not in implied]


def diet_label(diets: Iterable[str], language: str = "en") -> str:
    """"vegan, gluten-free" for the diets asked for (vegetarian and dairy-free implied by
    vegan)."""
    labels = DIET_LABELS_ES if language == "es" else DIET_LABELS
    return ", ".join(labels[d] for d in shown_diets(diets))


def diet_notes(c: Constraints, language: str) -> list[str]:
    """The notes of the rule diets asked for ("Halal: no pork or alcohol. Buy halal meat")."""
    notes = []
    for key in shown_diets(c.hard_diets):
        diet = DIET_BY_KEY[key]
        note = diet.note_es if language == "es" else diet.note
        if note:
            notes.append(note)
    return notes


def fit(text: str) -> str:
    """`text` cut at the last full line or sentence below `MAX_ANSWER` characters."""
    if len(text) <= MAX_ANSWER:
        return text
    cut = text[: MAX_ANSWER - 3]
    for mark in ("\n", ". "):
        at = cut.rfind(mark)
        if at > MAX_ANSWER // 2:
            return cut[: at + 1].rstrip() + " ..."
    return cut.rstrip() + "..."


def _read(request: SkillRequest, knowledge: Knowledge) -> Constraints:
    """The request's constraints, with the person's remembered allergies (`bot.allergies`)."""
    return with_allergies(parse_constraints(request.text, knowledge, request.language),
                          request.allergies, knowledge)


def _answer(text: str, request: SkillRequest) -> SkillAnswer:
    return SkillAnswer(fit(for_channel(text, request.channel)))


def _refuse(reason: str, reply: str, request: SkillRequest, language: str) -> SkillFailed:
    charged = say(language, *NOTHING_CHARGED)
    return SkillFailed(reason, reply=for_channel(f"{reply} {charged}", request.channel))


def check_honourable(c: Constraints, request: SkillRequest, language: str) -> None:
    """Refuse (free) a request with something the content cannot honour or check.

    Raises:
        SkillFailed: a diet the content cannot honour (`constraints.UNSUPPORTED`) or does not
            know ("zorblax diet"), or something to leave out that no ingredient is known as
            ("zorblax-free"); the reply says which, and what can be followed.
    """
    reply = unhonourable_reply(c, language)
    if reply:
        raise _refuse("the request has a requirement the content cannot honour", reply,
                      request, language)


def unhonourable_reply(c: Constraints, language: str, skip: Iterable[str] = ()) -> str:
    """Why the request cannot be honoured ("" when it can); unsupported diets in `skip` are
    left out (an advice topic covers them)."""
    unsupported = [k for k in c.unsupported if k not in set(skip)]
    if unsupported:
        diet = DIET_BY_KEY[unsupported[0]]
        reason = (diet.reason_es if language == "es" else diet.reason) or say(
            language, "my meals and recipes aren't checked for it",
            "mis comidas y recetas no están revisadas para eso")
        text = say(language,
                   f"I can't follow the {diet.label} diet yet: {reason}, so I won't send "
                   "something that may not fit.",
                   f"Aún no puedo seguir la dieta {diet.label_es}: {reason}, así que no te "
                   "mando algo que quizá no encaje.")
        if diet.medical:
            text += say(language, " A doctor or registered dietitian can plan it with you.",
                        " Un médico o dietista titulado puede planificarla contigo.")
    elif c.unknown_diets:
        name = c.unknown_diets[0]
        text = say(language, f"I don't know the \"{name}\" diet, so I can't follow it.",
                   f"No conozco la dieta \"{name}\", así que no puedo seguirla.")
    elif c.unverifiable:
        name = c.unverifiable[0]
        text = say(language,
                   f"I don't know which ingredients \"{name}\" covers, so I can't promise to "
                   "leave it out. Name the ingredients instead (e.g. \"without tomatoes\").",
                   f"No sé qué ingredientes abarca \"{name}\", así que no puedo garantizar "
                   "quitarlo. Nombra los ingredientes (p. ej. \"sin tomate\").")
    else:
        return ""
    return f"{text} {say(language, *SUPPORTED_DIETS)}"


def check_slots(c: Constraints, request: SkillRequest, language: str) -> None:
    """Refuse (free) a plan without breakfast, lunch or dinner: plans have all three.

    Raises:
        SkillFailed: the request leaves out a main meal ("no breakfast").
    """
    main = [s for s in ("breakfast", "lunch", "dinner") if s in c.excluded_slots]
    if main:
        raise _refuse(
            "a main meal left out",
            say(language,
                f"My plans always have breakfast, lunch and dinner, so I can't leave out "
                f"{_slot_names(main, language)} yet. Snacks can go: text \"meal plan, no "
                "snacks\".",
                f"Mis planes siempre tienen desayuno, almuerzo y cena, así que aún no puedo "
                f"quitar {_slot_names(main, language)}. Las meriendas sí: escribe \"plan de "
                "comidas sin meriendas\"."),
            request, language)


def _breach(c: Constraints, broken: Exclusion | Pair | None, language: str) -> str:
    """What a recipe breaks, after "has" / "lleva": "peanuts, which you asked to leave out",
    "pork, which a halal diet rules out"; when it only lacks a diet's tag, "no place in a
    vegan diet"."""
    diets = diet_label(c.hard_diets, language)
    feminine = re.sub(r"(ano|bajo|alto)\b", lambda m: m.group(1)[:-1] + "a", diets)
    if broken is None:
        return say(language, f"no place in a {diets} diet",
                   f"lo que una dieta {feminine} no permite")
    label = broken.label_in(language)
    if isinstance(broken, Exclusion) and broken in c.exclusions:
        return say(language, f"{label}, which you asked to leave out",
                   f"{label}, que pediste quitar")
    return say(language, f"{label}, which a {diets} diet rules out",
               f"{label}, que una dieta {feminine} no permite")


def _without(c: Constraints, language: str) -> str:
    """", without peanuts" / ", sin maní" for the person's exclusions ("" when none)."""
    labels = c.excluded_labels(language)
    return say(language, f", without {labels}", f", sin {labels}") if labels else ""


# --- targets --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A plan's daily calories and how they were set.

    Attributes:
        kcal: the daily target, kcal.
        reason: one line saying how it was set (empty for an explicit or default target).
    """

    kcal: int
    reason: str = ""


def _round10(value: int) -> int:
    return int((Decimal(value) / 10).to_integral_value(rounding=ROUND_HALF_UP)) * 10


def daily_target(c: Constraints, request: SkillRequest, language: str) -> Target:
    """The daily kcal a plan aims at: the number asked for, else one set by the goal (Mifflin-St
    Jeor when the person gave weight, height, age and sex; else the 2,000 kcal label reference),
    less `DEFICIT_KCAL` to lose weight or plus `SURPLUS_KCAL` to gain.

    Raises:
        SkillFailed: the target asked for is below the safe minimum (`MIN_SAFE_KCAL`).
    """
    floor = safe_minimum_kcal(c.body.sex)
    if c.calories is not None:
        if c.calories < floor:
            raise _refuse(
                "calorie target below the safe minimum",
                say(language,
                    f"{c.calories} kcal a day is below the {floor} kcal minimum that health "
                    "guidance (Harvard Health; NIH/NHLBI) sets for a diet without medical "
                    f"supervision, so I won't plan it. Ask for {floor} kcal or more, or see a "
                    "doctor or dietitian for a very-low-calorie diet.",
                    f"{c.calories} kcal al día está por debajo del mínimo de {floor} kcal que "
                    "fijan las guías de salud (Harvard Health; NIH/NHLBI) para una dieta sin "
                    f"supervisión médica, así que no lo planifico. Pide {floor} kcal o más, o "
                    "consulta a un médico o dietista para una dieta muy baja en calorías."),
                request, language)
        return Target(c.calories)
    if c.goal is None and not c.body.complete:
        return Target(DEFAULT_DAILY_KCAL)
    if c.body.complete:
        needs = maintenance_kcal(c.body)
        base = say(language,
                   f"your needs by Mifflin-St Jeor (about {needs} kcal a day)",
                   f"tus necesidades según Mifflin-St Jeor (unas {needs} kcal al día)")
    else:
        needs = DEFAULT_DAILY_KCAL
        base = say(language, "the 2,000 kcal label reference",
                   "la referencia de 2.000 kcal de las etiquetas")
    if c.goal == "lose":
        kcal = max(_round10(needs - DEFICIT_KCAL), floor)
        reason = say(
            language,
            f"Set as {base} minus {DEFICIT_KCAL} kcal a day, the usual deficit for about 0.5 kg "
            f"(1 lb) a week (NIH/NHLBI), never below {floor} kcal.",
            f"Calculado como {base} menos {DEFICIT_KCAL} kcal al día, el déficit habitual para "
            f"bajar unos 0,5 kg a la semana (NIH/NHLBI), nunca por debajo de {floor} kcal.")
    elif c.goal == "gain":
        kcal = _round10(needs + SURPLUS_KCAL)
        reason = say(
            language,
            f"Set as {base} plus {SURPLUS_KCAL} kcal a day for a steady gain.",
            f"Calculado como {base} más {SURPLUS_KCAL} kcal al día para subir de forma "
            "constante.")
    else:
        kcal = _round10(needs)
        reason = say(language, f"Set as {base}.", f"Calculado según {base}.")
    if not c.body.complete:
        reason += say(language,
                      " Text your age, sex, weight and height for a personal estimate.",
                      " Envía tu edad, sexo, peso y altura para un cálculo personal.")
    return Target(kcal, reason)


# --- meal plans -----------------------------------------------------------------------------

@dataclass(frozen=True)
class DayPlan:
    """One day of meals: breakfast, lunch, dinner and zero to two snacks, each eaten `factor`
    times its usual portion."""

    meals: tuple[Meal, ...]
    factor: Decimal = Decimal(1)

    @property
    def kcal(self) -> int:
        """The day's energy, kcal."""
        return sum(self.meal_kcal(m) for m in self.meals)

    @property
    def protein_g(self) -> Decimal:
        """The day's protein, grams."""
        return sum((m.protein_g for m in self.meals), Decimal(0)) * self.factor

    def meal_kcal(self, meal: Meal) -> int:
        """One meal's energy at this day's portion, kcal."""
        return kcal_of(meal.kcal * self.factor)


@dataclass(frozen=True)
class MenuRules:
    """What a plan's meals must satisfy: hashable, so plans are cached by it.

    Attributes:
        hard: content tags every meal must carry (the rule diets' tags).
        soft: content tags preferred (used in a slot when some meal there has them all).
        exclusions: nothing in a meal's name or ingredient list may match one of these.
        pairs: family pairs a meal may not hold both of (kosher: meat and dairy).
        snacks: whether the days may have snacks ("no snacks": False).
    """

    hard: frozenset[str] = frozenset()
    soft: frozenset[str] = frozenset()
    exclusions: tuple[Exclusion, ...] = ()
    pairs: tuple[Pair, ...] = ()
    snacks: bool = True

    @classmethod
    def of(cls, c: Constraints) -> MenuRules:
        """The rules of a request."""
        return cls(c.required_tags, c.preferred_tags, c.all_exclusions, c.pairs,
                   "snack" not in c.excluded_slots)

    def allows(self, ingredients: Iterable[str]) -> bool:
        """Whether no line matches an exclusion and no forbidden pair is there."""
        lines = tuple(ingredients)
        return not (any(e.matches(line) for e in self.exclusions for line in lines)
                    or any(pair.broken_by(lines) for pair in self.pairs))


@dataclass(frozen=True)
class _Menu:
    """Every breakfast x lunch x dinner allowed by some rules, with its kcal, and the snack sets
    (none, one or two snacks) sorted by kcal: what a plan search needs that does not depend on
    the target, worked out once per (knowledge, rules)."""

    knowledge: Knowledge
    trios: tuple[tuple[Meal, ...], ...]
    trio_kcal: numpy.ndarray  # int64, one per trio, in `itertools.product` order
    snack_sets: tuple[tuple[Meal, ...], ...]
    snack_kcal: numpy.ndarray  # int64, ascending
    missing: tuple[str, ...]  # main slots with no allowed meal
    soft_unmet: bool  # some slot had no meal with every soft tag

    @property
    def lowest(self) -> int:
        """The lightest day at one portion (no snacks), kcal; 0 when a slot is empty."""
        return int(self.trio_kcal.min()) if self.trios else 0

    @property
    def highest(self) -> int:
        """The heaviest day at one portion (two snacks), kcal; 0 when a slot is empty."""
        if not self.trios:
            return 0
        return int(self.trio_kcal.max()) + int(self.snack_kcal.max())


_MENUS: dict[tuple[int, MenuRules], _Menu] = {}
# Plans already worked out, by (knowledge, rules, kcal target, days): people ask the same few
# things ("meal plan", "vegan meal plan for 3 days"), so a worker computes each once. Bounded:
# cleared when it reaches `_PLAN_CACHE_SIZE` entries.
_PLAN_CACHE: dict[tuple[int, MenuRules, int, int], tuple[Knowledge, tuple[DayPlan, ...]]] = {}
_PLAN_CACHE_SIZE = 1024


def menu(knowledge: Knowledge, rules: MenuRules) -> _Menu:
    """The meals allowed by `rules`, slot by slot (cached per knowledge and rules)."""
    key = (id(knowledge), rules)
    found = _MENUS.get(key)
    if found is not None and found.knowledge is knowledge:
        return found
    by_slot: dict[str, list[Meal]] = {}
    soft_unmet = False
    for slot in ("breakfast", "lunch", "dinner", "snack"):
        allowed = [m for m in knowledge.meals if m.slot == slot and rules.hard <= m.tags
                   and rules.allows((m.name, *m.groceries))]
        if slot == "snack" and not rules.snacks:
            allowed = []
        if rules.soft:
            preferred = [m for m in allowed if rules.soft <= m.tags]
            if preferred:
                allowed = preferred
            elif allowed and slot != "snack":
                soft_unmet = True
        by_slot[slot] = allowed
    snacks: list[tuple[int, tuple[Meal, ...]]] = [(0, ())]
    for size in (1, 2):
        for combo in itertools.combinations(by_slot["snack"], size):
            snacks.append((sum(m.kcal for m in combo), combo))
    snacks.sort(key=lambda pair: pair[0])
    trios = tuple(itertools.product(by_slot["breakfast"], by_slot["lunch"], by_slot["dinner"]))
    if len(_MENUS) >= _PLAN_CACHE_SIZE:
        _MENUS.clear()
    found = _MENUS[key] = _Menu(
        knowledge=knowledge,
        trios=trios,
        trio_kcal=numpy.fromiter((sum(m.kcal for m in t) for t in trios), numpy.int64,
                                 len(trios)),
        snack_sets=tuple(combo for _, combo in snacks),
        snack_kcal=numpy.fromiter((kcal for kcal, _ in snacks), numpy.int64, len(snacks)),
        missing=tuple(s for s in ("breakfast", "lunch", "dinner") if not by_slot[s]),
        soft_unmet=soft_unmet,
    )
    return found


def tolerance(target: int) -> int:
    """How far a day's kcal may be from `target` and still count as near it."""
    return max(MIN_TOLERANCE_KCAL, int(target * TOLERANCE))


def plan_days(knowledge: Knowledge, diets: frozenset[str], target: int, days: int,
              exclusions: tuple[Exclusion, ...] = ()) -> list[DayPlan]:
    """Day plans close to `target` kcal using meals that fit `diets` and `exclusions`, varied
    across days.

    For each day every breakfast x lunch x dinner within `tolerance` of the target (after the
    best 0-2 snacks) is scored by its distance from the target plus `REPEAT_PENALTY_KCAL` per
    meal already used; the lowest score wins, the first in menu order on a tie. When no trio is
    within tolerance the nearest is used (callers check `feasible` first). The result is
    remembered per process (`_PLAN_CACHE`).

    Args:
        knowledge: the content.
        diets: keys of `constraints.DIETS`; the tags of the rule diets are required (vegan,
            keto: low_carb, ...), those of the preferences preferred. What the diets rule out
            by ingredient is for `exclusions` (`constraints.diet_rules`).
        target: daily kcal at one portion.
        days: how many days (1-7).
        exclusions: what no meal may contain (with the diets' own, see `MenuRules`).

    Raises:
        ValueError: some main slot has no allowed meal.
    """
    hard = diet_tags(diets & HARD_DIETS)
    rules = MenuRules(hard, diet_tags(diets - HARD_DIETS) - hard, exclusions)
    return _plans(knowledge, rules, target, days)


def _plans(knowledge: Knowledge, rules: MenuRules, target: int, days: int) -> list[DayPlan]:
    key = (id(knowledge), rules, target, days)
    cached = _PLAN_CACHE.get(key)
    # The entry holds the knowledge it was made from, so that id cannot be reused meanwhile.
    if cached is None or cached[0] is not knowledge:
        if len(_PLAN_CACHE) >= _PLAN_CACHE_SIZE:
            _PLAN_CACHE.clear()
        cached = _PLAN_CACHE[key] = (knowledge,
                                     tuple(_search_plans(menu(knowledge, rules), target, days)))
    return list(cached[1])


def _search_plans(found: _Menu, target: int, days: int) -> list[DayPlan]:
    if not found.trios:
        raise ValueError(f"no allowed meal for {', '.join(found.missing)}")
    # Each trio's best snacks (the nearer neighbour of what is left; the lighter on a tie)
    # and its distance from the target: one vectorised pass.
    wanted = target - found.trio_kcal
    last = len(found.snack_kcal) - 1
    at = numpy.searchsorted(found.snack_kcal, wanted, side="left")
    above = numpy.minimum(at, last)
    below = numpy.maximum(at - 1, 0)
    gap_below = numpy.abs(found.snack_kcal[below] - wanted)
    gap_above = numpy.abs(found.snack_kcal[above] - wanted)
    snack = numpy.where(gap_below <= gap_above, below, above)
    distance = numpy.minimum(gap_below, gap_above)
    # Trios by distance (menu order on a tie): a day's search stops at the first trio whose
    # distance alone exceeds the best score so far (the repeat penalty only adds) or the
    # tolerance (a varied day off target is not near it).
    order = numpy.argsort(distance, kind="stable").tolist()
    distances = distance.tolist()
    snacks = snack.tolist()
    limit = tolerance(target)
    used: Counter[str] = Counter()
    plans = []
    for _ in range(days):
        best_score, best_at = -1, -1
        for index in order:
            gap = distances[index]
            if best_at >= 0 and (gap > best_score or gap > limit):
                break
            score = gap + REPEAT_PENALTY_KCAL * sum(used[m.name] for m in found.trios[index])
            if best_at < 0 or score < best_score or (score == best_score and index < best_at):
                best_score, best_at = score, index
        meals = found.trios[best_at] + found.snack_sets[snacks[best_at]]
        plans.append(DayPlan(meals))
        used.update(m.name for m in meals)
    return plans


def _slot_names(slots: Sequence[str], language: str) -> str:
    names = [SLOT_LABELS[s][1 if language == "es" else 0].lower() for s in slots]
    return say(language, " and ", " y ").join(names)


def build_plan(knowledge: Knowledge, c: Constraints, target: int, days: int,
               request: SkillRequest, language: str) -> tuple[list[DayPlan], _Menu]:
    """Day plans for the request, each day within `tolerance` of `target`, at the smallest
    portion size (`PORTION_FACTORS`) that reaches it. Preferred diet tags (low carb, high
    protein) are dropped when keeping them would miss the target.

    Raises:
        SkillFailed: no meal is allowed in a main slot, or `target` is beyond what the allowed
            meals reach (too low even without snacks, too high even at double portions).
    """
    rules = MenuRules.of(c)
    found = menu(knowledge, rules)
    what = " ".join(filter(None, [diet_label(c.diets, language), _without(c, language)
                                  .removeprefix(", ")]))
    if found.missing:
        raise _refuse(
            "no meal fits the constraints",
            say(language,
                f"I have no {_slot_names(found.missing, language)} that fits ({what}), so I "
                "can't make that plan yet. Try fewer restrictions.",
                f"No tengo {_slot_names(found.missing, language)} que encaje ({what}), así que "
                "aún no puedo hacer ese plan. Prueba con menos restricciones."),
            request, language)
    limit = tolerance(target)
    if target < found.lowest - limit:
        raise _refuse(
            "calorie target below the content's lightest day",
            say(language,
                f"The lightest day I can build{' (' + what + ')' if what else ''} is about "
                f"{found.lowest} kcal, above your {target} kcal. Ask for {found.lowest} kcal "
                "or more.",
                f"El día más ligero que puedo armar{' (' + what + ')' if what else ''} tiene "
                f"unas {found.lowest} kcal, más que tus {target} kcal. Pide {found.lowest} kcal "
                "o más."),
            request, language)
    attempts = [rules]
    if rules.soft:
        attempts.append(dataclasses.replace(rules, soft=frozenset()))
    for attempt in attempts:
        tried = menu(knowledge, attempt)
        for factor in PORTION_FACTORS:
            base = kcal_of(Decimal(target) / factor)
            if base > tried.highest + tolerance(base) or base < tried.lowest - tolerance(base):
                continue
            plans = [DayPlan(day.meals, factor) for day in _plans(knowledge, attempt, base, days)]
            if all(abs(day.kcal - target) <= limit for day in plans):
                if attempt is not rules:
                    tried = dataclasses.replace(tried, soft_unmet=True)
                return plans, tried
    most = kcal_of(found.highest * PORTION_FACTORS[-1])
    raise _refuse(
        "calorie target beyond the content",
        say(language,
            f"I can't build days near {target} kcal{' (' + what + ')' if what else ''}: my "
            f"meals reach about {found.lowest}-{most} kcal a day, and not every target in "
            "between with these restrictions. Try another calorie target.",
            f"No puedo armar días cerca de {target} kcal{' (' + what + ')' if what else ''}: "
            f"mis comidas llegan a unas {found.lowest}-{most} kcal al día, y no a cualquier "
            "cifra intermedia con estas restricciones. Prueba con otra cifra de calorías."),
        request, language)


def _plan_kind(c: Constraints, language: str) -> str:
    label = diet_label(c.diets, language)
    if language == "es":
        kind = "Plan de comidas" + (f" {label}" if label else "")
        goal = {"lose": " para bajar de peso", "gain": " para subir de peso",
                "maintain": " para mantener el peso"}
    else:
        kind = f"{label} meal plan" if label else "Meal plan"
        goal = {"lose": " to lose weight", "gain": " to gain weight",
                "maintain": " to keep your weight"}
    kind += goal.get(c.goal or "", "")
    return kind[0].upper() + kind[1:]


def _days_of(c: Constraints, default: int, request: SkillRequest, language: str) -> int:
    days = c.days or default
    if days > MAX_PLAN_DAYS:
        raise _refuse(
            "more days than one plan holds",
            say(language,
                f"I plan up to {MAX_PLAN_DAYS} days at a time. Ask for a {MAX_PLAN_DAYS}-day "
                "plan and repeat it, or ask again next week.",
                f"Planifico hasta {MAX_PLAN_DAYS} días cada vez. Pide un plan de "
                f"{MAX_PLAN_DAYS} días y repítelo, o vuelve a pedirlo la semana que viene."),
            request, language)
    return days


def shopping_hint(c: Constraints, days: int, target: int, language: str,
                  start: str | None = None) -> str:
    """A message that rebuilds the same plan, e.g. "grocery list vegan 3 days 1800 kcal no
    peanuts" (the plan search is deterministic, so the grocery list matches the plan)."""
    if language == "es":
        parts = [start or "lista de compras", diet_label(c.diets, "es").replace(", ", " "),
                 plural(days, "day", "es"), f"{target} kcal"]
        parts += [f"sin {e.label_es}" for e in c.exclusions]
        if "snack" in c.excluded_slots:
            parts.append("sin meriendas")
        if c.people and c.people > 1:
            parts.append(f"para {c.people} personas")
    else:
        parts = [start or "grocery list", diet_label(c.diets).replace(", ", " "),
                 plural(days, "day"), f"{target} kcal"]
        parts += [f"no {e.label}" for e in c.exclusions]
        if "snack" in c.excluded_slots:
            parts.append("no snacks")
        if c.people and c.people > 1:
            parts.append(f"for {c.people} people")
    return " ".join(p for p in parts if p)


class MealPlanSkill:
    """meal_plan: a day (or up to a week) of meals at the asked calories and diet, with nothing
    the person excluded."""

    intent = "meal_plan"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        """The plan, its daily kcal and how the target was set.

        Raises:
            SkillFailed: the request cannot be met (see `daily_target`, `build_plan`), or it
                asks for more than `MAX_PLAN_DAYS` days, or has what the content cannot
                honour (`check_honourable`, `check_slots`).
        """
        knowledge = load_knowledge()
        c = _read(request, knowledge)
        lang = c.language
        check_honourable(c, request, lang)
        check_slots(c, request, lang)
        target = daily_target(c, request, lang)
        days = _days_of(c, 1, request, lang)
        plans, found = build_plan(knowledge, c, target.kcal, days, request, lang)
        kind = _plan_kind(c, lang)
        without = _without(c, lang)
        if days == 1:
            day = plans[0]
            lines = [say(lang, f"{kind}, about {target.kcal} kcal{without}:",
                         f"{kind}, unas {target.kcal} kcal{without}:")]
            for meal in day.meals:
                slot = SLOT_LABELS[meal.slot][1 if lang == "es" else 0]
                lines.append(f"{slot}: {meal.label(lang)} ({day.meal_kcal(meal)} kcal)")
            lines.append(say(lang, f"Total {day.kcal} kcal, {grams(day.protein_g)} g protein.",
                             f"Total {day.kcal} kcal, {grams(day.protein_g, 'es')} g de "
                             "proteína."))
        else:
            lines = [say(lang, f"{kind} for {days} days, about {target.kcal} kcal a day"
                               f"{without}:",
                         f"{kind} para {days} días, unas {target.kcal} kcal al día{without}:")]
            for number, day in enumerate(plans, start=1):
                names = "; ".join(m.label(lang) for m in day.meals)
                lines.append(say(lang, f"Day {number}: {names} ({day.kcal} kcal)",
                                 f"Día {number}: {names} ({day.kcal} kcal)"))
        lines += _plan_notes(c, plans, found, target, lang)
        hint = shopping_hint(c, days, target.kcal, lang)
        lines.append(say(lang, f'For the shopping list text "{hint}".',
                         f'Para la lista de compras escribe "{hint}".'))
        return _answer("\n".join(lines), request)


def _plan_notes(c: Constraints, plans: list[DayPlan], found: _Menu, target: Target,
                language: str) -> list[str]:
    notes = diet_notes(c, language)
    if target.reason:
        notes.append(target.reason)
    factor = plans[0].factor
    if factor != 1:
        shown = f"{factor.normalize():f}"
        notes.append(say(language, f"Portions are {shown} x the usual to reach it.",
                         f"Las porciones son {shown.replace('.', ',')} veces las normales para "
                         "llegar."))
    if "snack" in c.excluded_slots:
        notes.append(say(language, "No snacks, as you asked.", "Sin meriendas, como pediste."))
    if found.soft_unmet:
        soft = diet_label(c.soft_diets, language)
        notes.append(say(language,
                         f"Not every meal is {soft}: I have too few that fit the rest too.",
                         f"No todas las comidas son {soft}: tengo pocas que encajen con lo "
                         "demás."))
    if c.people and c.people > 1:
        notes.append(say(language, "Amounts are per person.", "Las cantidades son por persona."))
    return notes


# --- grocery lists ---------------------------------------------------------------------------

# The meal names as `_plan_from_history` looks for them, per content set: (its meals, names).
_MEAL_NAMES: dict[int, tuple[tuple[Meal, ...], list[tuple[str, Meal]]]] = {}


def _meal_names(meals: tuple[Meal, ...]) -> list[tuple[str, Meal]]:
    """(normalised name, meal) for every English and Spanish meal name, longest first;
    computed once per content set (the content is loaded once per process)."""
    cached = _MEAL_NAMES.get(id(meals))
    if cached is not None and cached[0] is meals:
        return cached[1]
    names: list[tuple[str, Meal]] = []
    for meal in meals:
        for label in {meal.name, meal.name_es}:
            if label:
                names.append((normalise_text(label), meal))
    names.sort(key=lambda pair: -len(pair[0]))
    _MEAL_NAMES[id(meals)] = (meals, names)
    return names


def _plan_from_history(knowledge: Knowledge, history: tuple[tuple[str, str], ...]
                       ) -> tuple[list[Meal], int, Decimal] | None:
    """The meals of the latest meal plan the assistant sent (English or Spanish names), with how
    many days it covered and its portion size ("Portions are 1.5 x the usual"); None when no
    recent assistant turn is a plan."""
    names = _meal_names(knowledge.meals)
    for role, text in reversed(history):
        if role != "assistant":
            continue
        lines = text.splitlines()
        found: list[Meal] = []
        for line in lines:
            rest = f" {normalise_text(line)} "
            for name, meal in names:
                while f" {name} " in rest:
                    found.append(meal)
                    rest = rest.replace(f" {name} ", " | ", 1)
        if len(found) >= 3:
            days = sum(1 for line in lines if re.match(r"^(Day|D[ií]a) \d+:", line)) or 1
            size = re.search(r"(?:Portions are|Las porciones son) ([0-9]+(?:[.,][0-9]+)?)", text)
            factor = Decimal(size.group(1).replace(",", ".")) if size else Decimal(1)
            return found, days, factor
    return None


def _recipe_from_history(knowledge: Knowledge, history: tuple[tuple[str, str], ...]
                         ) -> Recipe | None:
    """The recipe the assistant sent last (its first line starts with the recipe's name)."""
    for role, text in reversed(history):
        if role != "assistant" or not text:
            continue
        first = normalise_text(text.splitlines()[0])
        for recipe in sorted(knowledge.recipes, key=lambda r: -len(r.name)):
            for label in (recipe.name, recipe.name_es):
                if label and first.startswith(normalise_text(label)):
                    return recipe
        return None
    return None


# How packs and units are named: (English singular, plural), (Spanish singular, plural).
PACK_NAMES: Mapping[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "bottle": (("bottle", "bottles"), ("botella", "botellas")),
    "jar": (("jar", "jars"), ("frasco", "frascos")),
    "bag": (("bag", "bags"), ("bolsa", "bolsas")),
    "can": (("can", "cans"), ("lata", "latas")),
    "carton": (("carton", "cartons"), ("caja", "cajas")),
    "head": (("head", "heads"), ("cabeza", "cabezas")),
    "bunch": (("bunch", "bunches"), ("manojo", "manojos")),
    "piece": (("piece", "pieces"), ("trozo", "trozos")),
    "tub": (("tub", "tubs"), ("envase", "envases")),
    "bar": (("bar", "bars"), ("tableta", "tabletas")),
    "pack": (("pack", "packs"), ("paquete", "paquetes")),
    "loaf": (("loaf", "loaves"), ("paquete", "paquetes")),
    "cup": (("cup", "cups"), ("taza", "tazas")),
    "tbsp": (("tbsp", "tbsp"), ("cda", "cdas")),
    "tsp": (("tsp", "tsp"), ("cdta", "cdtas")),
}
_COUNT = Purchase(each=Decimal(1))


def _ceil(value: Decimal, step: Decimal = Decimal(1)) -> Decimal:
    """`value` rounded up to a multiple of `step` (at least one step)."""
    steps = (value / step).to_integral_value(rounding=ROUND_CEILING)
    return max(steps, Decimal(1)) * step


def _named(count: Decimal, unit: str, language: str) -> str:
    """"2 bottles", "1 taza", "1,5 tazas"."""
    names = PACK_NAMES[unit][1 if language == "es" else 0]
    return f"{grams(count, language)} {names[0] if count == 1 else names[1]}"


def buy_amount(purchase: Purchase, total: Decimal, language: str) -> str:
    """What to buy of an item that `total` (in `purchase.unit`) is needed of: whole packs for
    pantry items ("1 bottle"), grams or ml rounded up ("360 g", "1.2 kg"), half cups, whole
    cans, or a count of pieces."""
    if purchase.pack:
        return _named(_ceil(total / purchase.holds), purchase.pack, language)
    unit = purchase.unit
    if unit in ("g", "ml"):
        step = Decimal(10) if total < 100 else Decimal(50) if total < 1000 else Decimal(100)
        value = _ceil(total, step)
        if value >= 1000:
            return f"{grams(value / 1000, language)} {'kg' if unit == 'g' else 'L'}"
        return f"{grams(value, language)} {unit}"
    if unit == "cup":
        return _named(_ceil(total, Decimal("0.5")), unit, language)
    if unit in PACK_NAMES:
        return _named(_ceil(total), unit, language)
    return grams(_ceil(total), language)


def shopping_list(uses: Iterable[tuple[Meal, Decimal]], knowledge: Knowledge, language: str,
                  skip: Iterable[str] = ()) -> str:
    """The grocery list of meals eaten `factor` portions each ((meal, factor) pairs: portions
    times people), each item totalled and said in what is bought: "eggs 12, cheddar cheese
    360 g, olive oil 1 bottle". Items used most come first; items in `skip` are left out."""
    skipped = set(skip)
    totals: dict[str, Decimal] = {}
    counts: Counter[str] = Counter()
    for meal, factor in uses:
        for item in meal.groceries:
            if item in skipped:
                continue
            purchase = knowledge.shopping.get(item, _COUNT)
            amount = meal.amount(item)
            totals[item] = totals.get(item, Decimal(0)) + (
                purchase.each if amount is None else amount) * factor
            counts[item] += 1
    order = sorted(totals, key=lambda item: (-counts[item], item))
    return ", ".join(
        f"{knowledge.item_label(item, language)} "
        f"{buy_amount(knowledge.shopping.get(item, _COUNT), totals[item], language)}"
        for item in order)


class GroceryListSkill:
    """grocery_list: the shopping list of the plan sent before, of a recipe named, or of a plan
    for the asked days, with nothing the person excluded."""

    intent = "grocery_list"
    # The router passes the conversation only to skills that read it (bot.router.answer).
    uses_history = True

    def answer(self, request: SkillRequest) -> SkillAnswer:
        """The list, each item totalled across the days (times the people and the portion
        size) in what is bought: grams, pieces, or whole packs for pantry items.

        Uses `request.history`: "grocery list for my plan" lists the meals of the latest meal
        plan the assistant sent; "grocery list for this recipe" the latest recipe.

        Raises:
            SkillFailed: the named recipe has an excluded ingredient and no other fits, or the
                plan cannot be made (see `MealPlanSkill`).
        """
        knowledge = load_knowledge()
        c = _read(request, knowledge)
        lang = c.language
        check_honourable(c, request, lang)
        people = c.people or 1
        # Remembered allergies do not make a new list: the earlier plan already left them out.
        bare = not (c.own_diets or c.days or c.foods or c.calories or c.goal
                    or c.own_exclusions)
        if c.refers_to_plan or bare:
            previous = _plan_from_history(knowledge, request.history)
            if previous is not None:
                return self._from_plan(previous, c, knowledge, request)
        if c.refers_to_recipe:
            recipe = _recipe_from_history(knowledge, request.history)
            if recipe is not None:
                return self._from_recipe(recipe, c, request)
        named = _named_recipe(knowledge, c, request, lang)
        if named is not None and not c.days:
            return self._from_recipe(named, c, request,
                                     _instead_of(knowledge, c, named, lang))
        check_slots(c, request, lang)
        target = daily_target(c, request, lang)
        days = _days_of(c, 3, request, lang)
        plans, _ = build_plan(knowledge, c, target.kcal, days, request, lang)
        uses = [(meal, day.factor * people) for day in plans for meal in day.meals]
        label = diet_label(c.diets, lang)
        who = _for_people(people, lang)
        if lang == "es":
            head = (f"Lista de compras para {plural(days, 'day', 'es')}"
                    f"{', plan ' + label if label else ''}{who} (unas {target.kcal} kcal al "
                    f"día{_without(c, lang)})")
        else:
            head = (f"Grocery list for {plural(days, (label + ' ' if label else '') + 'day')}"
                    f"{who} (about {target.kcal} kcal a day{_without(c, lang)})")
        hint = shopping_hint(c, days, target.kcal, lang,
                             start=say(lang, "meal plan", "plan de comidas"))
        meals = "; ".join(m.label(lang) for m in plans[0].meals)
        full = say(lang, f'Text "{hint}" for the full plan.',
                   f'Escribe "{hint}" para el plan completo.')
        if c.refers_to_plan:
            full += say(lang, " (I can't see an earlier plan here, so this list is for a new one.)",
                        " (No veo aquí un plan anterior, así que la lista es de uno nuevo.)")
        notes = "".join(f"\n{note}" for note in diet_notes(c, lang))
        body = f"{head}: {shopping_list(uses, knowledge, lang)}."
        text = f"{body}\n{say(lang, 'Day 1 is', 'El día 1 es')}: {meals}. {full}{notes}"
        if len(text) > MAX_ANSWER:
            # A long list keeps its items, notes and the way to the plan; day 1 goes.
            text = f"{body}\n{full}{notes}"
        return _answer(text, request)

    def _from_plan(self, previous: tuple[list[Meal], int, Decimal], c: Constraints,
                   knowledge: Knowledge, request: SkillRequest) -> SkillAnswer:
        meals, days, factor = previous
        lang = c.language
        people = c.people or 1
        left_out: set[str] = set()
        skip: set[str] = set()
        for meal in meals:
            for item in meal.groceries:
                if c.violation((item,)) is not None:
                    left_out.add(knowledge.item_label(item, lang))
                    skip.add(item)
        who = _for_people(people, lang)
        head = say(lang, f"Grocery list for your meal plan ({plural(days, 'day')}){who}",
                   f"Lista de compras para tu plan de comidas ({plural(days, 'day', 'es')}){who}")
        listed = shopping_list(((m, factor * people) for m in meals), knowledge, lang, skip)
        text = f"{head}: {listed}."
        if left_out:
            text += say(lang, f"\nLeft out, as you asked: {', '.join(sorted(left_out))}.",
                        f"\nQuité lo que pediste: {', '.join(sorted(left_out))}.")
        return _answer(text, request)

    def _from_recipe(self, recipe: Recipe, c: Constraints, request: SkillRequest,
                     note: str = "") -> SkillAnswer:
        lang = c.language
        broken = c.violation((recipe.name, *recipe.ingredients))
        if broken is not None or not c.required_tags <= recipe.tags:
            raise _refuse("the recipe has an excluded ingredient",
                          say(lang, f"{recipe.label(lang)} has {_breach(c, broken, lang)}.",
                              f"{recipe.label(lang)} lleva {_breach(c, broken, lang)}."),
                          request, lang)
        items = ", ".join(recipe.ingredient_lines(lang))
        servings = plural(recipe.servings, "serving", lang)
        text = say(lang, f"Grocery list for {recipe.label(lang)} ({servings}): {items}.",
                   f"Lista de compras para {recipe.label(lang)} ({servings}): {items}.")
        text += _people_note(c, recipe, lang)
        text += "".join(f"\n{line}" for line in [note, *diet_notes(c, lang)] if line)
        return _answer(text, request)


def _instead_of(knowledge: Knowledge, c: Constraints, recipe: Recipe, language: str) -> str:
    """"(Chicken Cobb salad has pork, which ...; this is the closest.)" when the recipe asked
    for is ruled out and `recipe` stands in for it; "" otherwise."""
    best = rank_recipes(knowledge, c, allowed_only=False)
    if not best or best[0][0] is recipe:
        return ""
    chosen = next((score for r, score in best if r is recipe), 0)
    asked = best[0][0]
    broken = c.violation((asked.name, *asked.ingredients))
    if best[0][1] <= chosen or (broken is None and c.required_tags <= asked.tags):
        return ""
    return say(language, f"({asked.label(language)} has {_breach(c, broken, language)}; this "
                         "is the closest.)",
               f"({asked.label(language)} lleva {_breach(c, broken, language)}; esta es la "
               "más parecida.)")


def _for_people(people: int, language: str) -> str:
    """" for 2 people" / " para 2 personas" ("" for one)."""
    if people <= 1:
        return ""
    return say(language, f" for {plural(people, 'person')}",
               f" para {plural(people, 'person', 'es')}")


def _people_note(c: Constraints, recipe: Recipe, language: str) -> str:
    if not c.people or c.people == recipe.servings:
        return ""
    factor = grams(Decimal(c.people) / recipe.servings, language)
    return say(language, f"\nFor {c.people} people use {factor} x the amounts.",
               f"\nPara {c.people} personas usa {factor} veces las cantidades.")


def _named_recipe(knowledge: Knowledge, c: Constraints, request: SkillRequest, language: str
                  ) -> Recipe | None:
    """The recipe a grocery request names (score 3+ before any exclusion), replaced by the best
    allowed one that is also named; None when none is named.

    Raises:
        SkillFailed: the named recipe has an excluded ingredient and no other named one fits.
    """
    ranked = rank_recipes(knowledge, c, allowed_only=False)
    if not ranked or ranked[0][1] < 3:
        return None
    for recipe, score in rank_recipes(knowledge, c):
        if score >= 3:
            return recipe
    recipe = ranked[0][0]
    broken = c.violation((recipe.name, *recipe.ingredients))
    raise _refuse("the named recipe has an excluded ingredient",
                  say(language, f"{recipe.label(language)} has {_breach(c, broken, language)}, "
                                "and I have no other recipe like it.",
                      f"{recipe.label(language)} lleva {_breach(c, broken, language)}, y no "
                      "tengo otra receta parecida."), request, language)


# --- recipes ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1024)
def _recipe_words(recipe: Recipe) -> frozenset[str]:
    words: set[str] = set()
    for text in (*recipe.keywords, recipe.name, recipe.name_es):
        for word in read_words(text):
            words.add(word)
        words.update(stems(read_words(text)))
    return frozenset(words)


@functools.lru_cache(maxsize=4096)
def _uses(recipe: Recipe, food: Food) -> bool:
    """Whether `recipe`'s ingredients name `food` (or one of its aliases)."""
    ingredients = " ".join(stems(read_words(" ".join(recipe.ingredients))))
    return any(f" {' '.join(stems(read_words(name)))} " in f" {ingredients} "
               for name in (food.name, *food.aliases)) or food.name in recipe.keywords


def best_recipe(knowledge: Knowledge, c: Constraints) -> tuple[Recipe | None, int]:
    """The allowed recipe that best fits the request, with its score (0: nothing in common)."""
    ranked = rank_recipes(knowledge, c)
    return ranked[0] if ranked else (None, 0)


def rank_recipes(knowledge: Knowledge, c: Constraints, allowed_only: bool = True
                 ) -> list[tuple[Recipe, int]]:
    """Recipes for the request, best score first (ties: quicker first).

    Score: 3 per keyword shared with the recipe's keywords or names, 2 per named food the recipe
    uses, 1 when its meal (breakfast, ...) is named. With `allowed_only`, recipes lacking a rule
    diet's tag, with an excluded ingredient (or a forbidden pair: kosher meat with dairy), of a
    meal left out ("no breakfast"), or above a per-serving calorie cap ("recipe under 400
    calories"; `LOW_CALORIE_RECIPE_KCAL` for a low-calorie or weight-loss request) are left
    out, and preferred tags are required when some recipe has them all.
    """
    recipes = list(knowledge.recipes)
    if allowed_only:
        recipes = [r for r in recipes
                   if c.required_tags <= r.tags and r.meal not in c.excluded_slots
                   and c.violation((r.name, *r.ingredients)) is None]
        if c.calories is not None and c.calories <= 1000:
            recipes = [r for r in recipes if r.kcal_per_serving <= c.calories]
        elif c.calories is None and c.goal == "lose":
            recipes = [r for r in recipes if r.kcal_per_serving <= LOW_CALORIE_RECIPE_KCAL]
        if c.preferred_tags:
            preferred = [r for r in recipes if c.preferred_tags <= r.tags]
            recipes = preferred or recipes
    words = c.keywords()
    scored = []
    for recipe in recipes:
        score = 3 * len(words & _recipe_words(recipe))
        score += 2 * sum(1 for m in c.foods if _uses(recipe, m.food))
        score += 1 if c.meal == recipe.meal else 0
        scored.append((recipe, score))
    # Ties: a main meal before a snack unless a snack was asked for, then the quicker.
    scored.sort(key=lambda pair: (-pair[1], pair[0].meal == "snack" and c.meal != "snack",
                                  pair[0].minutes, pair[0].name))
    return scored


LOW_CALORIE_RECIPE_KCAL = 450  # a recipe's kcal per serving for "low calorie", "to lose weight"
_MEAL_KEYWORDS = frozenset({"breakfast", "lunch", "dinner", "snack", "desayuno", "almuerzo",
                            "cena", "merienda", "supper", "brunch", "dessert", "postre", "comida",
                            "cenar", "desayunar", "almorzar"})


class RecipeSearchSkill:
    """recipe_search: the best-fitting allowed recipe in full, and two more to try."""

    intent = "recipe_search"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        """The recipe with its ingredients and steps.

        Raises:
            SkillFailed: no recipe is left after the diet and exclusions, or what was asked for
                (e.g. pancakes) only exists with an excluded ingredient, or nothing matches.
        """
        knowledge = load_knowledge()
        c = _read(request, knowledge)
        lang = c.language
        check_honourable(c, request, lang)
        ranked = rank_recipes(knowledge, c)
        wanted = c.keywords() - _MEAL_KEYWORDS
        what = " ".join(filter(None, [diet_label(c.diets, lang),
                                      _without(c, lang).removeprefix(", ")]))
        if not ranked:
            raise _refuse("no recipe fits the constraints",
                          say(lang, f"I have no recipe that fits ({what}) yet.",
                              f"Aún no tengo ninguna receta que encaje ({what})."),
                          request, lang)
        if (wanted or c.foods) and ranked[0][1] == 0:
            unfiltered = rank_recipes(knowledge, c, allowed_only=False)
            if unfiltered and unfiltered[0][1] > 0:
                blocked = unfiltered[0][0]
                broken = c.violation((blocked.name, *blocked.ingredients))
                if broken is None and c.required_tags <= blocked.tags:
                    reply = say(lang, f"The recipes I have for that ({blocked.label(lang)}) "
                                      f"don't fit what you asked{' (' + what + ')' if what else ''}"
                                      ", e.g. the calories or the meal.",
                                f"Las recetas que tengo para eso ({blocked.label(lang)}) no "
                                f"encajan con lo que pediste{' (' + what + ')' if what else ''}"
                                ", p. ej. las calorías o la comida.")
                else:
                    reply = say(lang, f"The recipes I have for that ({blocked.label(lang)}) "
                                      f"have {_breach(c, broken, lang)}.",
                                f"Las recetas que tengo para eso ({blocked.label(lang)}) "
                                f"llevan {_breach(c, broken, lang)}.")
                raise _refuse("the matching recipes break the constraints", reply, request,
                              lang)
            if not (c.diets or c.exclusions):
                names = ", ".join(sorted({r.label(lang) for r in knowledge.recipes})[:6])
                raise _refuse(
                    "no recipe matches",
                    say(lang, "I have no recipe for that yet. Try one with chicken, salmon, "
                              f"lentils, tofu, eggs or pancakes, e.g. {names}.",
                        "Aún no tengo receta para eso. Prueba con pollo, salmón, lentejas, "
                        f"tofu, huevo o panqueques, p. ej. {names}."),
                    request, lang)
        recipe = ranked[0][0]
        others = [r.label(lang) for r, score in ranked[1:3] if score >= ranked[0][1] // 2]
        servings = plural(recipe.servings, "serving", lang)
        if lang == "es":
            text = (f"{recipe.label(lang)} ({recipe.minutes} min, {servings}, "
                    f"{recipe.kcal_per_serving} kcal y {grams(recipe.protein_g, lang)} g de "
                    "proteína cada una)\n"
                    f"Ingredientes: {', '.join(recipe.ingredient_lines(lang))}\n"
                    f"Pasos: {recipe.steps_text(lang)}")
        else:
            text = (f"{recipe.label(lang)} ({recipe.minutes} min, {servings}, "
                    f"{recipe.kcal_per_serving} kcal and {grams(recipe.protein_g)} g protein "
                    f"each)\nIngredients: {', '.join(recipe.ingredient_lines(lang))}\n"
                    f"Steps: {recipe.steps_text(lang)}")
        text += _people_note(c, recipe, lang)
        if others:
            text += say(lang, f"\nAlso try: {'; '.join(others)}.",
                        f"\nPrueba también: {'; '.join(others)}.")
        if c.exclusions:
            text += say(lang, f"\nNone of these has {c.excluded_labels(lang)}.",
                        f"\nNinguna lleva {c.excluded_labels(lang)}.")
        text += "".join(f"\n{note}" for note in diet_notes(c, lang))
        best_of_all = rank_recipes(knowledge, c, allowed_only=False)
        missing = _unmatched(recipe, c)
        if best_of_all and best_of_all[0][0] is not recipe and best_of_all[0][1] > ranked[0][1]:
            # The dish asked for exists but is ruled out ("caesar salad, allergic to fish").
            closest = best_of_all[0][0]
            broken = c.violation((closest.name, *closest.ingredients))
            if broken is not None:
                text += say(lang, f"\n({closest.label(lang)} has "
                                  f"{_breach(c, broken, lang)}; this is the closest.)",
                            f"\n({closest.label(lang)} lleva {_breach(c, broken, lang)}; "
                            "esta es la más parecida.)")
                missing = []
        if missing:
            text += say(lang, f"\n(I have no recipe with {', '.join(missing)} yet; this is the "
                              "closest.)",
                        f"\n(Aún no tengo receta con {', '.join(missing)}; esta es la más "
                        "parecida.)")
        return _answer(text, request)


# Words of a recipe request that describe it without naming a dish or an ingredient.
RECIPE_GENERIC = frozenset({
    "quick", "easy", "simple", "healthy", "best", "good", "tasty", "delicious", "dish", "dishes",
    "idea", "ideas", "something", "fast", "cheap", "homemade", "tonight", "family", "kids",
    "light", "new", "nice", "yummy", "week", "weekly", "rapida", "rapido", "facil", "sencilla",
    "sencillo", "sana", "sano", "saludable", "rica", "rico", "casera", "casero", "plato", "platos",
    "algo", "noche",
})


def _unmatched(recipe: Recipe, c: Constraints) -> list[str]:
    """The dish or ingredient words of the request that `recipe` does not have ("cake" in
    "chocolate cake" answered with energy bites)."""
    have = _recipe_words(recipe)
    said = {w for m in c.foods if _uses(recipe, m.food) for w in m.said.split()}
    said |= {stem(w) for w in said}
    return sorted({w for w in c.words
                   if w in c.keywords() and w not in _MEAL_KEYWORDS and w not in RECIPE_GENERIC
                   and w not in have and stem(w) not in have and w not in said
                   and stem(w) not in said and w.isalpha()})


# --- nutrition facts --------------------------------------------------------------------------

def _facts_line(food: Food, n: Decimal, language: str) -> str:
    kcal = kcal_of(food.kcal * n)
    if language == "es":
        return (f"{portion(food, n, 'es')}: {kcal} kcal, proteína {grams(food.protein_g * n, 'es')}"
                f" g, carbohidratos {grams(food.carbs_g * n, 'es')} g, grasa "
                f"{grams(food.fat_g * n, 'es')} g, fibra {grams(food.fiber_g * n, 'es')} g, "
                f"azúcar {grams(food.sugar_g * n, 'es')} g")
    return (f"{portion(food, n)}: {kcal} kcal, protein {grams(food.protein_g * n)} g, carbs "
            f"{grams(food.carbs_g * n)} g, fat {grams(food.fat_g * n)} g, fiber "
            f"{grams(food.fiber_g * n)} g, sugar {grams(food.sugar_g * n)} g")


def _unknown_food_reply(c: Constraints, language: str) -> str:
    unknown = ", ".join(c.unknown[:3])
    if language == "es":
        head = f"No tengo datos de {unknown}. " if unknown else \
            "No encontré un alimento que conozca. "
        return (f"{head}Prueba p. ej. \"calorías en 2 huevos\". Conozco {FOOD_EXAMPLES_ES} y "
                "más.")
    head = f"I don't have facts for {unknown}. " if unknown else \
        "I could not find a food I know in that. "
    return f"{head}Try e.g. \"calories in 2 eggs and toast\". I know {FOOD_EXAMPLES} and more."


class NutritionAnalysisSkill:
    """nutrition_analysis: calories and macros of the foods named, with quantities read
    relative to each food's serving; or daily calorie needs when that is the question."""

    intent = "nutrition_analysis"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        """The facts per food (and a total for several).

        Raises:
            SkillFailed: no known food is named (the reply names what is known), or a question
                about needs names a condition no topic covers (`check_covered`).
        """
        knowledge = load_knowledge()
        c = _read(request, knowledge)
        lang = c.language
        if not c.foods:
            # "how many calories should I eat a day", "how much protein do I need": a question
            # about needs, not about a food, answered from the advice topics, which must not
            # ignore a condition named ("protein on a renal diet").
            if _asks_needs(c, knowledge):
                check_covered(c, knowledge, request, lang)
            parts = advice_parts(c, knowledge, lang) if _asks_needs(c, knowledge) else []
            if parts:
                return _answer("\n".join(parts), request)
            raise _refuse("no known food named", _unknown_food_reply(c, lang), request, lang)
        lines = []
        total_kcal = 0
        protein = carbs = fat = fiber = Decimal(0)
        for mention in c.foods:
            food, n = mention.food, mention.servings
            total_kcal += kcal_of(food.kcal * n)
            protein += food.protein_g * n
            carbs += food.carbs_g * n
            fat += food.fat_g * n
            fiber += food.fiber_g * n
            lines.append(_facts_line(food, n, lang))
        lines += food_warnings(c, lang)
        if len(c.foods) > 1:
            lines.append(say(
                lang,
                f"Total: {total_kcal} kcal, protein {grams(protein)} g, carbs {grams(carbs)} g, "
                f"fat {grams(fat)} g, fiber {grams(fiber)} g",
                f"Total: {total_kcal} kcal, proteína {grams(protein, lang)} g, carbohidratos "
                f"{grams(carbs, lang)} g, grasa {grams(fat, lang)} g, fibra "
                f"{grams(fiber, lang)} g"))
        tip = c.foods[0].food.tip_text(lang)
        if tip:
            lines.append(say(lang, f"Tip: {tip}", f"Consejo: {tip}"))
        return _answer("\n".join(lines), request)


# --- advice -----------------------------------------------------------------------------------

def _matches(c: Constraints, knowledge: Knowledge) -> list[tuple[int, int, AdviceTopic]]:
    """Topics whose triggers occur in the message, as (words matched, position, topic); the
    longest trigger takes its words, so a shorter one inside it does not count. A topic about
    foods is not matched by the words of an exclusion ("allergic to nuts" is not about eating
    nuts)."""
    words = stems(c.words)
    taken = [False] * len(words)
    best: dict[str, tuple[int, int, AdviceTopic]] = {}
    for phrase, topic in _trigger_phrases(knowledge):
        size = len(phrase)
        if not size:
            continue
        for start in range(len(words) - size + 1):
            if words[start:start + size] != phrase or any(taken[start:start + size]):
                continue
            if topic.foods and all(i in c.excluded_at for i in range(start, start + size)):
                # "allergic to nuts": the words name what is left out, not a question about
                # eating nuts.
                continue
            for i in range(start, start + size):
                taken[i] = True
            if topic.key not in best or best[topic.key][0] < size:
                best[topic.key] = (size, start, topic)
    return sorted(best.values(), key=lambda entry: (-entry[0], entry[1]))


_TRIGGERS: dict[int, tuple[Knowledge, tuple[tuple[tuple[str, ...], AdviceTopic], ...]]] = {}


def _trigger_phrases(knowledge: Knowledge
                     ) -> tuple[tuple[tuple[str, ...], AdviceTopic], ...]:
    """Every topic trigger as stemmed words, longest first (once per knowledge)."""
    cached = _TRIGGERS.get(id(knowledge))
    if cached is None or cached[0] is not knowledge:
        phrases = [(stems(read_words(t)), topic) for topic in knowledge.topics
                   for t in topic.triggers]
        phrases.sort(key=lambda pair: -len(pair[0]))
        if len(_TRIGGERS) >= 16:
            _TRIGGERS.clear()
        cached = _TRIGGERS[id(knowledge)] = (knowledge, tuple(p for p in phrases if p[0]))
    return cached[1]


NEEDS_TOPICS = frozenset({"daily_calories", "protein_needs", "hydration", "fiber", "sugar"})


def _asks_needs(c: Constraints, knowledge: Knowledge) -> bool:
    """Whether the request asks about daily needs (calories, protein, water, fiber, sugar)."""
    return any(topic.key in NEEDS_TOPICS for _, _, topic in _matches(c, knowledge))


def energy_text(c: Constraints, knowledge: Knowledge, language: str) -> str:
    """Daily calorie needs for the person's goal: by Mifflin-St Jeor when they gave weight,
    height, age and sex, with the formula shown; else the typical ranges (the daily_calories
    topic) and what the goal changes."""
    body: Body = c.body
    if not body.complete:
        text = knowledge.topic("daily_calories").text_in(language)
        if c.goal == "lose":
            text += say(language,
                        f" Example: needing 2,000 kcal, aim for about {2000 - DEFICIT_KCAL}.",
                        f" Ejemplo: si necesitas 2.000 kcal, apunta a unas {2000 - DEFICIT_KCAL}.")
        elif c.goal == "gain":
            text += say(language,
                        f" To gain weight, eat about {SURPLUS_KCAL} kcal a day more.",
                        f" Para subir de peso, come unas {SURPLUS_KCAL} kcal al día más.")
        return text
    bmr = mifflin_st_jeor_bmr(body)
    needs = maintenance_kcal(body)
    floor = safe_minimum_kcal(body.sex)
    sign = "+ 5" if body.sex == "male" else "- 161"
    formula = (f"10 x {body.weight_kg} kg + 6.25 x {body.height_cm} cm - 5 x {body.age} {sign} "
               f"= {bmr} kcal")
    factor = {"sedentary": "1.2", "light": "1.375", "moderate": "1.55", "very": "1.725"}[
        body.activity]
    text = say(language,
               f"By Mifflin-St Jeor (Mifflin et al., 1990) your resting needs are {formula}; "
               f"x {factor} for your activity = about {needs} kcal a day to keep your weight.",
               f"Según Mifflin-St Jeor (Mifflin y col., 1990) tu gasto en reposo es {formula}; "
               f"x {factor} por tu actividad = unas {needs} kcal al día para mantener el peso.")
    if c.goal == "lose":
        goal = _round10(needs - DEFICIT_KCAL)
        if goal >= floor:
            text += say(language,
                        f" To lose about 0.5 kg a week: about {goal} kcal ({DEFICIT_KCAL} less, "
                        f"NIH/NHLBI), never below {floor} without medical care (Harvard Health).",
                        f" Para bajar unos 0,5 kg a la semana: unas {goal} kcal ({DEFICIT_KCAL} "
                        f"menos, NIH/NHLBI), nunca menos de {floor} sin supervisión médica "
                        "(Harvard Health).")
        else:
            text += say(language,
                        f" To lose weight: {floor} kcal, the minimum without medical care "
                        f"(Harvard Health); {DEFICIT_KCAL} less (NIH/NHLBI) would go below it, "
                        "so add activity instead.",
                        f" Para bajar de peso: {floor} kcal, el mínimo sin supervisión médica "
                        f"(Harvard Health); {DEFICIT_KCAL} menos (NIH/NHLBI) quedaría por debajo, "
                        "así que suma actividad.")
    elif c.goal == "gain":
        text += say(language, f" To gain: about {_round10(needs + SURPLUS_KCAL)} kcal a day.",
                    f" Para subir de peso: unas {_round10(needs + SURPLUS_KCAL)} kcal al día.")
    return text


# Diets whose verdict on a food is its content tag (the others: `_rule_verdict`).
_TAG_VERDICTS = frozenset({"vegan", "vegetarian", "gluten_free", "dairy_free", "low_carb",
                           "keto", "high_protein"})


def _verdict(food: Food, diet: str, language: str, knowledge: Knowledge | None = None) -> str:
    """Whether `food` fits `diet`, from the food's tags and numbers (or, for a diet without a
    tag of its own, such as halal or paleo, from what the diet rules out)."""
    if diet not in _TAG_VERDICTS:
        return _rule_verdict(food, diet, language, knowledge or load_knowledge())
    if diet == "keto":
        diet = "low_carb"
    name = food.label(language)
    serving = food.serving_text(language)
    fits = diet in food.tags
    if diet == "low_carb":
        carbs = grams(food.carbs_g, language)
        if fits:
            return say(language,
                       f"Yes, {name} fits keto/low carb: {serving} has {carbs} g carbs (keto "
                       f"allows about {KETO_CARBS} a day).",
                       f"Sí, {name} encaja en keto/bajo en carbohidratos: {serving} tiene "
                       f"{carbs} g de carbohidratos (keto permite unos {KETO_CARBS} al día).")
        return say(language,
                   f"Not really: {name} ({serving}) has {carbs} g carbs, a big part of the "
                   f"{KETO_CARBS} a day keto allows. Lower-carb picks: berries, avocado, greens.",
                   f"No mucho: {name} ({serving}) tiene {carbs} g de carbohidratos, gran parte "
                   f"de los {KETO_CARBS} al día que permite keto. Mejor: frutos rojos, aguacate, "
                   "hojas verdes.")
    if diet == "high_protein":
        protein = grams(food.protein_g, language)
        return say(language,
                   f"{name.capitalize()} has {protein} g protein per {serving}"
                   f"{': a good protein source.' if fits else ', not much.'}",
                   f"{name.capitalize()} tiene {protein} g de proteína por {serving}"
                   f"{': buena fuente de proteína.' if fits else ', no mucha.'}")
    label = diet_label(frozenset({diet}), language)
    if fits:
        return say(language, f"Yes, {name} is {label}.", f"Sí, {name} es apto: {label}.")
    return say(language, f"No, {name} is not {label}.", f"No, {name} no es apto: {label}.")


def _rule_verdict(food: Food, diet: str, language: str, knowledge: Knowledge) -> str:
    """Whether `food` fits a diet checked by ingredient (halal, kosher, paleo, pescatarian,
    ...): what the diet rules out, matched in the food's names."""
    rule = DIET_BY_KEY[diet]
    implied = {diet, *rule.implies}
    exclusions, _ = diet_rules(knowledge, implied)
    names = (food.name, *food.aliases)
    broken = next((e for e in exclusions if any(e.matches(n) for n in names)), None)
    name = food.label(language)
    label = diet_label(frozenset({diet}), language)
    if broken is not None:
        return say(language, f"No, {name} is not {label}: it is {broken.label_in(language)}.",
                   f"No, {name} no es apto: {label} ({broken.label_in(language)}).")
    if rule.tag and rule.tag not in food.tags and rule.kind == "rule":
        return say(language, f"No, {name} is not {label}.", f"No, {name} no es apto: {label}.")
    is_meat = any(family_exclusion(knowledge, "meat").matches(n) for n in names)
    is_dairy = any(family_exclusion(knowledge, "dairy").matches(n) for n in names)
    text = say(language, f"Yes, {name} fits {label}.", f"Sí, {name} es apto: {label}.")
    if (diet == "halal" and is_meat) or (diet == "kosher" and (is_meat or is_dairy)):
        text += say(language, f" Buy it {label}-certified.",
                    f" Cómpralo con certificación {label}.")
    if diet == "kosher" and (is_meat or is_dairy):
        text += say(language, " Never eat meat and dairy in the same meal.",
                    " Nunca comas carne y lácteos en la misma comida.")
    return text


def food_warnings(c: Constraints, language: str) -> list[str]:
    """A warning for each food asked about that the person's exclusions or diet rule out ("is
    chocolate ok? I'm allergic to milk": chocolate has dairy)."""
    warnings = []
    for mention in c.foods[:2]:
        food = mention.food
        broken = c.violation((food.name, *food.aliases))
        if broken is not None:
            warnings.append(say(language,
                                f"Careful: {food.label(language)} has "
                                f"{_breach(c, broken, language)}.",
                                f"Cuidado: {food.label(language)} lleva "
                                f"{_breach(c, broken, language)}."))
    return warnings


def _food_part(food: Food, knowledge: Knowledge, language: str) -> str:
    for topic in knowledge.topics:
        if food.name in topic.foods:
            return topic.text_in(language)
    tip = food.tip_text(language)
    return say(language,
               f"{food.label(language).capitalize()}: {food.serving_text(language)} has "
               f"{food.kcal} kcal, {grams(food.protein_g)} g protein, {grams(food.carbs_g)} g "
               f"carbs and {grams(food.fat_g)} g fat. {tip}",
               f"{food.label(language).capitalize()}: {food.serving_text(language)} tiene "
               f"{food.kcal} kcal, {grams(food.protein_g, language)} g de proteína, "
               f"{grams(food.carbs_g, language)} g de carbohidratos y "
               f"{grams(food.fat_g, language)} g de grasa. {tip}").strip()


def _avoid_part(c: Constraints, language: str, knowledge: Knowledge | None = None) -> str:
    parts = []
    families = {f.key: f for f in (knowledge or load_knowledge()).families}
    for exclusion in c.exclusions[:2]:
        family = families.get(exclusion.key)
        if language == "es" and family is not None:
            # The Spanish names of the family (its terms are English ingredient words).
            names = list(dict.fromkeys(n for n in family.names_es
                                       if n != fold_accents(exclusion.label_es)))
            terms = ", ".join([exclusion.label_es, *names][:8])
        else:
            terms = ", ".join(" ".join(t) for t in exclusion.terms[:8])
        parts.append(say(language,
                         f"Without {exclusion.label}, leave out foods with: {terms}.",
                         f"Sin {exclusion.label_es}, evita lo que lleve: {terms}."))
    return " ".join(parts)


def fold_accents(text: str) -> str:
    """`text` lower case without accents, as the content's names are written."""
    return " ".join(read_words(text))


MAX_ADVICE_PARTS = 2


def check_covered(c: Constraints, knowledge: Knowledge, request: SkillRequest,
                  language: str) -> None:
    """For advice: refuse (free) when the request names a diet the content cannot honour and
    no advice topic covers it ("low FODMAP tips"; "advice for diabetes" has its topic), a diet
    it does not know, or something to leave out it cannot check.

    Raises:
        SkillFailed: see above; the reply says what cannot be done.
    """
    topics = {topic.key for _, _, topic in _matches(c, knowledge)}
    covered = [k for k in c.unsupported if DIET_BY_KEY[k].topic in topics]
    reply = unhonourable_reply(c, language, skip=covered)
    if reply:
        raise _refuse("the request has a requirement the content cannot honour", reply,
                      request, language)


class DietaryAdviceSkill:
    """dietary_advice: advice about the food, diet or situation asked about (pizza, bananas on
    keto, before a workout, daily calories for a goal), or balanced-plate basics for a general
    request."""

    intent = "dietary_advice"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        """Up to two pieces of advice, the most specific first.

        Raises:
            SkillFailed: the question names something no topic or food covers ("is kombucha
                good for me?"), or a diet the content cannot honour that no topic covers
                ("low FODMAP tips"): the reply says so instead of a generic text.
        """
        knowledge = load_knowledge()
        c = _read(request, knowledge)
        lang = c.language
        check_covered(c, knowledge, request, lang)
        parts = advice_parts(c, knowledge, lang)
        if not parts:
            subject = advice_subject(c, knowledge)
            if subject:
                raise _refuse(
                    "no advice topic matches",
                    say(lang, f"I don't know about {', '.join(subject[:3])} yet, so I won't "
                              "guess. I can advise on foods like pizza, eggs or bananas, diets "
                              "(vegan, keto, gluten free), weight, workouts and health topics.",
                        f"Aún no sé de {', '.join(subject[:3])}, así que no voy a adivinar. "
                        "Puedo aconsejarte sobre alimentos como pizza, huevos o plátano, dietas "
                        "(vegana, keto, sin gluten), peso, ejercicio y salud."),
                    request, lang)
            parts = [knowledge.topic("general").text_in(lang)]
            if _breaks(parts[0], c, knowledge):
                raise _refuse("the advice would name what the person leaves out", say(
                    lang, "My general tips name foods you leave out, so I won't send them. "
                          "Ask about one food or diet, e.g. \"tips for a high protein "
                          "breakfast\".",
                    "Mis consejos generales nombran alimentos que dejas fuera, así que no te "
                    "los envío. Pregunta por un alimento o dieta, p. ej. \"consejos para un "
                    "desayuno alto en proteína\"."), request, lang)
        return _answer("\n".join(parts), request)


# Words of a general request for advice: with only these, the balanced-plate basics answer it.
ADVICE_GENERIC = frozenset({
    "tips", "tip", "advice", "advise", "healthy", "healthier", "health", "eat", "eating", "diet",
    "diets", "dietary", "food", "foods", "nutrition", "nutritional", "good", "bad", "better",
    "best", "worse", "should", "could", "would", "general", "some", "any", "ways", "way", "help",
    "well", "balanced", "habits", "habit", "lifestyle", "clean", "right", "properly", "start",
    "started", "beginner", "basics", "guide", "know", "tell", "give", "want", "need", "like",
    "much", "many", "make", "keep", "stay", "feel", "meal", "meals", "plan", "plans", "consejos",
    "consejo", "recomendaciones", "recomendacion", "sugerencias", "saludable", "saludables",
    "sano", "sana", "sanos", "comer", "alimentacion", "alimentos", "alimento", "comida", "comidas",
    "dieta", "dietas", "bien", "mejor", "buenos", "buena", "bueno", "habitos", "quiero",
    "necesito", "dame", "algunos", "algunas", "como", "empezar", "varied",
    "equilibrada", "equilibrado", "balanceada", "balanceado", "variada", "variado",
})


def advice_subject(c: Constraints, knowledge: Knowledge) -> tuple[str, ...]:
    """The words of an advice request that name its subject but that no topic, food or diet
    covers ("tempeh" in "tips for eating tempeh"); () for a general request ("any tips?")."""
    covered: set[int] = set()
    for mention in c.foods:
        covered.update(range(mention.start, mention.start + len(mention.said.split())))
    words = stems(c.words)
    for phrase, _ in _trigger_phrases(knowledge):
        for start in range(len(words) - len(phrase) + 1):
            if words[start:start + len(phrase)] == phrase:
                covered.update(range(start, start + len(phrase)))
    return tuple(
        w for i, w in enumerate(c.words)
        if i not in covered and w.isalpha() and len(w) >= 4 and w not in ADVICE_GENERIC
        and w not in STOPWORDS and w not in COMMON_WORDS and w not in c.excluded_words
        and not any(w in p.split() for phrases in DIET_PHRASES.values() for p in phrases)
    )


def advice_parts(c: Constraints, knowledge: Knowledge, language: str) -> list[str]:
    """The advice texts for a request, most specific first, at most `MAX_ADVICE_PARTS`: a
    verdict per food and diet named ("bananas on keto"), daily needs, the topics whose triggers
    are longest, facts of a food with no topic, and what an exclusion means; [] when nothing
    in the request is covered."""
    parts: list[str] = list(food_warnings(c, language))
    used: set[str] = set()
    # What this message asked to leave out is explained; what the person told the bot before
    # is honoured without being repeated in every answer.
    own = dataclasses.replace(c, exclusions=c.own_exclusions)
    # The general topic texts, written for anyone: checked against what the person leaves
    # out (the verdicts, food facts and what-to-avoid texts answer about it by design).
    general: set[str] = set()
    for mention in c.foods[:2]:
        for diet in shown_diets(c.diets):
            parts.append(_verdict(mention.food, diet, language, knowledge))
    if not c.foods:
        # What a diet without an advice topic of its own means (halal, kosher, paleo, ...).
        for diet in shown_diets(c.diets):
            summary = DIET_BY_KEY[diet].summary_es if language == "es" else \
                DIET_BY_KEY[diet].summary
            if summary:
                parts.append(summary)
    matches = _matches(c, knowledge)
    diet_topics = {"vegan", "vegetarian", "gluten_free", "dairy_free", "low_carb"}
    food_topics = {t.key for t in knowledge.topics for m in c.foods if m.food.name in t.foods}
    for _, _, topic in matches:
        if topic.key in used or (parts and topic.key in diet_topics and c.foods):
            continue
        used.add(topic.key)
        if topic.key == "daily_calories":
            parts.append(energy_text(c, knowledge, language))
        elif topic.key == "allergies" and own.exclusions:
            parts.append(_avoid_part(own, language, knowledge))
            parts.append(topic.text_in(language))
        else:
            parts.append(topic.text_in(language))
            if topic.key != "allergies":
                general.add(parts[-1])
    for mention in c.foods[:2]:
        covered = any(mention.food.name in t.foods for t in knowledge.topics
                      if t.key in used)
        if not covered and not food_topics & used:
            parts.append(_food_part(mention.food, knowledge, language))
            used.add(mention.food.name)
    if own.exclusions and "allergies" not in used:
        parts.append(_avoid_part(own, language, knowledge))
    if c.goal and not ({"weight_loss", "weight_gain", "daily_calories"} & used) and not parts:
        parts.append(knowledge.topic("weight_loss" if c.goal == "lose" else "weight_gain")
                     .text_in(language))
    covering = [knowledge.topic(key).text_in(language) for key in
                (DIET_BY_KEY[d].topic for d in c.unsupported) if key is not None
                and key in used]
    # A condition's own topic ("advice for diabetes") is never cut to make room.
    parts = covering + [p for p in parts if p not in covering]
    # A fixed text that names what the person leaves out ("a handful of nuts" for someone
    # allergic to nuts) is not given: an answer that ignores an exclusion is never charged.
    parts = [p for p in parts if p not in general or p in covering
             or not _breaks(p, c, knowledge)]
    return list(dict.fromkeys(p for p in parts if p))[:MAX_ADVICE_PARTS]


def _breaks(text: str, c: Constraints, knowledge: Knowledge) -> bool:
    """Whether an advice text names something `c` leaves out. What the person asked to leave
    out, now or before, may not be named at all (a snack list with "a handful of nuts" for
    someone allergic to nuts; the texts that explain what to leave out are not checked here).
    What a diet of this message rules out may be named to advise on it (`find_violation` in
    advice mode: "avoid wheat" in gluten-free tips); a remembered diet's may not."""
    if not (c.all_exclusions or c.pairs):
        return False
    diets = c.remembered & frozenset(DIET_BY_KEY)
    diet_exclusions, pairs = diet_rules(knowledge, diets)
    told = dataclasses.replace(c, diets=diets, diet_exclusions=diet_exclusions, pairs=pairs)
    if (told.all_exclusions or told.pairs) and find_violation(text, told, knowledge):
        return True
    return find_violation(text, c, knowledge, advice=True) is not None


# --- chat ---------------------------------------------------------------------------------------

GREETINGS = frozenset({"hi", "hello", "hey", "hola", "yo", "hiya", "howdy", "morning", "evening",
                       "buenas", "buenos", "saludos"})
THANKS = frozenset({"thanks", "thank", "thx", "ty", "gracias", "cheers"})
CAPABILITIES = (
    "I can make meal plans (\"vegetarian meal plan 1800 calories\"), grocery lists, find "
    "recipes (\"chicken recipe\"), give nutrition facts (\"calories in 2 eggs\") and diet tips "
    "(\"gluten free tips\"). Text HELP for prices."
)
CAPABILITIES_ES = (
    "Puedo hacer planes de comidas (\"plan de comidas vegetariano 1800 calorías\"), listas de "
    "compras, buscar recetas (\"receta de pollo\"), dar datos nutricionales (\"calorías en 2 "
    "huevos\") y consejos de dieta (\"consejos sin gluten\"). Escribe HELP para ver precios."
)
_QUESTION_STARTS = frozenset({"can", "is", "are", "should", "does", "do", "what", "how", "puedo",
                              "es", "son", "debo", "deberia", "que", "como"})

# Small talk the router answers free, before pricing (`small_talk`; tokens/economy.yaml).
# A whole message of thanks or acknowledgement words (with a few fillers), at most this long.
SMALL_TALK_MAX_WORDS = 5
SMALL_THANKS = frozenset({"thanks", "thank", "thx", "ty", "tysm", "cheers", "gracias"})
SMALL_ACK = frozenset({"ok", "okay", "okey", "oki", "k", "kk", "cool", "great", "nice", "perfect",
                       "awesome", "sure", "fine", "alright", "got", "vale", "perfecto", "genial",
                       "listo", "entendido", "claro", "dale", "super", "bien"})
_SMALL_FILLERS = frozenset({"you", "so", "much", "very", "a", "lot", "it", "muchas", "mil", "muy",
                            "de", "nada", "thats", "that", "is", "ah", "oh", "bueno"})
# Asking the bot to stop writing, in words: only the STOP keyword opts out (compliance), so
# the reply says how. Patterns over `normalise_text` (lower case, no accents or apostrophes).
_STOP_REQUEST = re.compile(
    r"\b(stop|quit|cease) (sending|texting|messaging|writing to|contacting)\b"
    r"|\b(dont|do not|never) (send|text|message|write to|contact) me"
    r"( (any ?more|again|messages|texts|anything))*$"
    r"|\b(leave me alone|unsubscribe me|remove me from|take me off)\b"
    r"|\b(deja|dejen|deje|dejad|para|paren|pare) de (enviar|mandar|escribir|enviarme|mandarme"
    r"|escribirme|contactarme)\b"
    r"|\bno me (envies|mandes|escribas|envien|manden|escriban|contacten)( (mas|mensajes))*$"
    r"|\b(dame|darme|denme) de baja\b|\bno quiero (recibir )?mas mensajes\b")
# Asking to cancel a subscription: the billing portal, or "you have none".
_CANCEL_SUBSCRIPTION = re.compile(
    r"\b(cancel|end|stop|terminate|quit)\b.*\b(subscription|premium|membership)\b"
    r"|\bunsubscribe from premium\b"
    r"|\b(cancelar|cancela|cancelen|cancelo|anular|anula|terminar|termina|quitar)\b.*"
    r"\b(suscripcion|subscripcion|premium|membresia)\b"
    r"|\bdar(me)? de baja (de|del) (la )?(suscripcion|premium)\b")


def small_talk(text: str) -> str | None:
    """What kind of small talk `text` is, or None when it is a request for the skills.

    Returns:
        "cancel_subscription" ("cancel my subscription", "cancelar mi suscripción"),
        "stop_request" ("stop sending me messages", "deja de enviarme mensajes": the reply
        points to STOP, which alone opts out), "thanks" ("thanks!", "muchas gracias"), "ack"
        ("ok", "great", or no letters or digits at all: an emoji, "?!"), else None. A
        greeting ("hi") is not small talk here: it is the priced chat intent.
    """
    if not text.strip():
        return None
    normalised = normalise_text(text)
    if not normalised:
        return "ack"  # emoji and punctuation only
    if _CANCEL_SUBSCRIPTION.search(normalised):
        return "cancel_subscription"
    if _STOP_REQUEST.search(normalised):
        return "stop_request"
    words = set(normalised.split())
    if len(normalised.split()) > SMALL_TALK_MAX_WORDS:
        return None
    if words & SMALL_THANKS and words <= SMALL_THANKS | SMALL_ACK | _SMALL_FILLERS:
        return "thanks"
    if words & SMALL_ACK and words <= SMALL_ACK | _SMALL_FILLERS:
        return "ack"
    return None


class ChatSkill:
    """chat: greetings, thanks, a quick fact about a food mentioned, or what the bot can do."""

    intent = "chat"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        """A short reply in the request's language.

        Raises:
            SkillFailed: the message names a diet the content cannot honour (or does not know)
                that no advice topic covers: the reply says so, free.
        """
        knowledge = load_knowledge()
        c = _read(request, knowledge)
        lang = c.language
        check_covered(c, knowledge, request, lang)
        words = set(c.words)
        capabilities = say(lang, CAPABILITIES, CAPABILITIES_ES)
        question = "?" in request.text or bool(c.words and c.words[0] in _QUESTION_STARTS)
        if question:
            # A question the catalog prices as chat ("what do I eat before a workout?") still
            # gets the one piece of advice it asks about, when the content has it.
            parts = advice_parts(c, knowledge, lang)
            if parts:
                return _answer(parts[0], request)
        if c.foods:
            mention = c.foods[0]
            food = mention.food
            kcal = kcal_of(food.kcal * mention.servings)
            return _answer(say(
                lang,
                f"Noted: {portion(food, mention.servings)} is about {kcal} kcal. {food.tip} "
                f"For full facts text \"calories in {food.name}\"; for a day of meals text "
                "\"meal plan\".",
                f"Anotado: {portion(food, mention.servings, 'es')} son unas {kcal} kcal. "
                f"{food.tip_text('es')} Para datos completos escribe \"calorías en "
                f"{food.label('es')}\"; para un día de comidas, \"plan de comidas\"."), request)
        if words & THANKS:
            return _answer(say(lang, "You're welcome! Ask me anytime. ",
                               "¡De nada! Pregúntame cuando quieras. ") + capabilities, request)
        if words & GREETINGS or c.text.startswith("good "):
            return _answer(say(lang, "Hi! I'm your nutrition assistant. ",
                               "¡Hola! Soy tu asistente de nutrición. ") + capabilities, request)
        return _answer(say(lang, "I'm a nutrition assistant. ",
                           "Soy un asistente de nutrición. ") + capabilities, request)


for _skill in (MealPlanSkill(), GroceryListSkill(), RecipeSearchSkill(),
               NutritionAnalysisSkill(), DietaryAdviceSkill(), ChatSkill()):
    register_skill(_skill)
