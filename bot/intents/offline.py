"""The offline skills: useful answers for the six default intents from `bot/content/`, no LLM.

Each skill reads the request into a `Query` (diet, calorie target, days, foods, keywords) and
builds its answer from the shipped foods, recipes, meals and advice, so different requests get
different answers. Answers stay under 1,600 characters (Twilio's cap for one message).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

import numpy

from bot.errors import SkillFailed
from bot.intents import SkillAnswer, SkillRequest, register_skill
from bot.intents.query import Query, parse_query
from bot.knowledge import Food, Knowledge, Meal, Recipe, load_knowledge

MAX_ANSWER = 1600  # Twilio: a message body is at most 1,600 characters.
DEFAULT_DAILY_KCAL = 2000  # The reference daily intake used on US nutrition labels.
# A repeated meal counts like being this many kcal off target, so a week's plan varies.
REPEAT_PENALTY_KCAL = 250
DIET_LABELS = {
    "vegan": "vegan",
    "vegetarian": "vegetarian",
    "gluten_free": "gluten-free",
    "dairy_free": "dairy-free",
    "low_carb": "low-carb",
    "high_protein": "high-protein",
}
FOOD_EXAMPLES = "eggs, avocado, chicken breast, rice, banana, oats, salmon, pizza"


@dataclass(frozen=True)
class DayPlan:
    """One day of meals: breakfast, lunch, dinner and zero to two snacks."""

    meals: tuple[Meal, ...]

    @property
    def kcal(self) -> int:
        return sum(m.kcal for m in self.meals)

    @property
    def protein_g(self) -> Decimal:
        return sum((m.protein_g for m in self.meals), Decimal(0))


def grams(value: Decimal) -> str:
    """Grams for a person: one decimal at most, no trailing ".0" (e.g. "12.6", "31")."""
    rounded = value.quantize(Decimal("0.1"))
    return f"{rounded:f}".removesuffix(".0")


def plural(count: int, noun: str) -> str:
    """"1 day", "3 days"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def portion(food: Food, servings: Decimal) -> str:
    """How much of a food, e.g. "egg, 2 x 1 large egg (50 g)" or "chicken breast, 100 g, cooked"."""
    amount = "" if servings == 1 else f"{grams(servings)} x "
    return f"{food.name}, {amount}{food.serving}"


def diet_label(diets: frozenset[str]) -> str:
    """"vegan, gluten-free" for the tags asked for (vegetarian and dairy-free implied by vegan)."""
    shown = set(diets)
    if "vegan" in shown:
        shown -= {"vegetarian", "dairy_free"}
    return ", ".join(DIET_LABELS[t] for t in DIET_LABELS if t in shown)


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


def _with_diets(items: list[Meal], diets: frozenset[str]) -> list[Meal]:
    """Items carrying every diet tag; if none do, those carrying the most of them."""
    if not diets:
        return items
    full = [m for m in items if diets <= m.tags]
    if full:
        return full
    best = max(len(diets & m.tags) for m in items)
    return [m for m in items if len(diets & m.tags) == best]


# Plans already worked out, by (knowledge, diets, kcal target, days): people ask the same few
# things ("meal plan", "vegan meal plan for 3 days"), so a worker computes each once. Bounded:
# cleared when it reaches `_PLAN_CACHE_SIZE` entries.
_PLAN_CACHE: dict[tuple[int, frozenset[str], int, int], tuple[Knowledge, tuple[DayPlan, ...]]] = {}
_PLAN_CACHE_SIZE = 1024


@dataclass(frozen=True)
class _Menu:
    """Every breakfast x lunch x dinner of one diet, with its kcal, and the snack sets (none,
    one or two snacks) sorted by kcal: what a plan search needs that does not depend on the
    target, worked out once per (knowledge, diets)."""

    knowledge: Knowledge
    trios: tuple[tuple[Meal, ...], ...]
    trio_kcal: numpy.ndarray  # int64, one per trio, in `itertools.product` order
    snack_sets: tuple[tuple[Meal, ...], ...]
    snack_kcal: numpy.ndarray  # int64, ascending


_MENUS: dict[tuple[int, frozenset[str]], _Menu] = {}


def plan_days(knowledge: Knowledge, diets: frozenset[str], target: int, days: int) -> list[DayPlan]:
    """Day plans close to `target` kcal using meals that fit `diets`, varied across days.

    For each day every breakfast x lunch x dinner is scored by its distance from the target
    after the best 0-2 snacks, plus `REPEAT_PENALTY_KCAL` per meal already used; the lowest
    score wins, the first in menu order on a tie. The result is remembered per process
    (`_PLAN_CACHE`).
    """
    key = (id(knowledge), diets, target, days)
    cached = _PLAN_CACHE.get(key)
    # The entry holds the knowledge it was made from, so that id cannot be reused meanwhile.
    if cached is None or cached[0] is not knowledge:
        if len(_PLAN_CACHE) >= _PLAN_CACHE_SIZE:
            _PLAN_CACHE.clear()
        cached = _PLAN_CACHE[key] = (knowledge,
                                     tuple(_search_plans(knowledge, diets, target, days)))
    return list(cached[1])


def _menu(knowledge: Knowledge, diets: frozenset[str]) -> _Menu:
    key = (id(knowledge), diets)
    menu = _MENUS.get(key)
    if menu is not None and menu.knowledge is knowledge:
        return menu
    by_slot = {
        slot: _with_diets([m for m in knowledge.meals if m.slot == slot], diets)
        for slot in ("breakfast", "lunch", "dinner", "snack")
    }
    snacks: list[tuple[int, tuple[Meal, ...]]] = [(0, ())]
    for size in (1, 2):
        for combo in itertools.combinations(by_slot["snack"], size):
            snacks.append((sum(m.kcal for m in combo), combo))
    snacks.sort(key=lambda pair: pair[0])
    trios = tuple(itertools.product(by_slot["breakfast"], by_slot["lunch"], by_slot["dinner"]))
    if len(_MENUS) >= _PLAN_CACHE_SIZE:
        _MENUS.clear()
    menu = _MENUS[key] = _Menu(
        knowledge=knowledge,
        trios=trios,
        trio_kcal=numpy.fromiter((sum(m.kcal for m in t) for t in trios), numpy.int64,
                                 len(trios)),
        snack_sets=tuple(combo for _, combo in snacks),
        snack_kcal=numpy.fromiter((kcal for kcal, _ in snacks), numpy.int64, len(snacks)),
    )
    return menu


def _search_plans(knowledge: Knowledge, diets: frozenset[str], target: int, days: int
                  ) -> list[DayPlan]:
    menu = _menu(knowledge, diets)
    if not menu.trios:
        raise AssertionError("the shipped meals cover every slot")
    # Each trio's best snacks (the nearer neighbour of what is left; the lighter on a tie)
    # and its distance from the target: one vectorised pass.
    wanted = target - menu.trio_kcal
    last = len(menu.snack_kcal) - 1
    at = numpy.searchsorted(menu.snack_kcal, wanted, side="left")
    above = numpy.minimum(at, last)
    below = numpy.maximum(at - 1, 0)
    gap_below = numpy.abs(menu.snack_kcal[below] - wanted)
    gap_above = numpy.abs(menu.snack_kcal[above] - wanted)
    snack = numpy.where(gap_below <= gap_above, below, above)
    distance = numpy.minimum(gap_below, gap_above)
    # Trios by distance (menu order on a tie): a day's search stops at the first trio whose
    # distance alone exceeds the best score so far, since the repeat penalty only adds.
    order = numpy.argsort(distance, kind="stable").tolist()
    distances = distance.tolist()
    snacks = snack.tolist()
    used: Counter[str] = Counter()
    plans = []
    for _ in range(days):
        best_score, best_at = -1, -1
        for at in order:
            gap = distances[at]
            if best_at >= 0 and gap > best_score:
                break
            score = gap + REPEAT_PENALTY_KCAL * sum(used[m.name] for m in menu.trios[at])
            if best_at < 0 or score < best_score or (score == best_score and at < best_at):
                best_score, best_at = score, at
        meals = menu.trios[best_at] + menu.snack_sets[snacks[best_at]]
        plans.append(DayPlan(meals))
        used.update(m.name for m in meals)
    return plans


def _plan_request(query: Query, default_days: int) -> tuple[int, int]:
    target = query.calories if query.calories and query.calories >= 1000 else DEFAULT_DAILY_KCAL
    return target, query.days or default_days


class MealPlanSkill:
    """meal_plan: a day (or up to a week) of meals at the asked calories and diet."""

    intent = "meal_plan"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        knowledge = load_knowledge()
        query = parse_query(request.text, knowledge)
        target, days = _plan_request(query, default_days=1)
        plans = plan_days(knowledge, query.diets, target, days)
        label = diet_label(query.diets)
        kind = f"{label} meal plan" if label else "Meal plan"
        kind = kind[0].upper() + kind[1:]
        if days == 1:
            day = plans[0]
            lines = [f"{kind}, about {target} kcal:"]
            for meal in day.meals:
                lines.append(f"{meal.slot.capitalize()}: {meal.name} ({meal.kcal} kcal)")
            lines.append(f"Total {day.kcal} kcal, {grams(day.protein_g)} g protein.")
        else:
            lines = [f"{kind} for {days} days, about {target} kcal a day:"]
            for number, day in enumerate(plans, start=1):
                names = "; ".join(m.name for m in day.meals)
                lines.append(f"Day {number}: {names} ({day.kcal} kcal)")
        hint = " ".join(filter(None, ["grocery list", label, plural(days, "day")]))
        lines.append(f'For the shopping list text "{hint}".')
        return SkillAnswer(fit("\n".join(lines)))


class GroceryListSkill:
    """grocery_list: the shopping list of a recipe named, or of a plan for the asked days."""

    intent = "grocery_list"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        knowledge = load_knowledge()
        query = parse_query(request.text, knowledge)
        recipe, score = best_recipe(knowledge, query)
        if recipe is not None and score >= 3 and not query.days:
            items = ", ".join(recipe.ingredients)
            return SkillAnswer(fit(f"Grocery list for {recipe.name} "
                                   f"({plural(recipe.servings, 'serving')}): {items}."))
        target, days = _plan_request(query, default_days=3)
        plans = plan_days(knowledge, query.diets, target, days)
        counts: Counter[str] = Counter()
        for day in plans:
            for meal in day.meals:
                counts.update(meal.groceries)
        label = diet_label(query.diets)
        head = f"Grocery list for {plural(days, (label + ' ' if label else '') + 'day')}"
        items = ", ".join(
            f"{item} x{n}" if n > 1 else item
            for item, n in sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
        )
        meals = "; ".join(m.name for m in plans[0].meals)
        return SkillAnswer(fit(f"{head} (about {target} kcal a day): {items}.\n"
                               f"Day 1 is: {meals}. Text \"meal plan\" for the full plan."))


def best_recipe(knowledge: Knowledge, query: Query) -> tuple[Recipe | None, int]:
    """The recipe that best fits the query, with its score (0: nothing in common).

    Score: 3 per keyword shared with the recipe's keywords or name, 2 per named food the
    recipe uses, 1 when its meal (breakfast, ...) is named. Recipes lacking an asked diet tag
    are left out unless none has all of them.
    """
    ranked = rank_recipes(knowledge, query)
    return ranked[0] if ranked else (None, 0)


def rank_recipes(knowledge: Knowledge, query: Query) -> list[tuple[Recipe, int]]:
    """Recipes fitting the asked diets, best score first (ties: quicker first)."""
    recipes = list(knowledge.recipes)
    if query.diets:
        full = [r for r in recipes if query.diets <= r.tags]
        recipes = full or recipes
    words = query.keywords()
    foods = {m.food.name for m in query.foods}
    scored = []
    for recipe in recipes:
        vocabulary = set(recipe.keywords)
        for word in recipe.name.lower().split():
            vocabulary.add(word)
        score = 3 * len(words & vocabulary)
        score += 2 * sum(1 for f in foods if f in recipe.keywords or f in recipe.name.lower())
        score += 1 if recipe.meal in words else 0
        scored.append((recipe, score))
    scored.sort(key=lambda pair: (-pair[1], pair[0].minutes, pair[0].name))
    return scored


class RecipeSearchSkill:
    """recipe_search: the best-fitting recipe in full, and two more to try."""

    intent = "recipe_search"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        knowledge = load_knowledge()
        query = parse_query(request.text, knowledge)
        ranked = rank_recipes(knowledge, query)
        wanted = query.keywords() - {"breakfast", "lunch", "dinner", "snack"}
        if wanted and ranked[0][1] == 0 and not query.diets:
            names = ", ".join(sorted({r.name for r in knowledge.recipes})[:6])
            raise SkillFailed(
                "no recipe matches",
                reply=("I have no recipe for that yet. Try one with chicken, salmon, lentils, "
                       f"tofu, eggs or pancakes, e.g. {names}. Nothing was charged."),
            )
        recipe = ranked[0][0]
        others = [r.name for r, score in ranked[1:3] if score >= ranked[0][1] // 2]
        text = (
            f"{recipe.name} ({recipe.minutes} min, {plural(recipe.servings, 'serving')}, "
            f"{recipe.kcal_per_serving} kcal and {grams(recipe.protein_g)} g protein each)\n"
            f"Ingredients: {', '.join(recipe.ingredients)}\n"
            f"Steps: {recipe.steps}"
        )
        if others:
            text += f"\nAlso try: {'; '.join(others)}."
        return SkillAnswer(fit(text))


class NutritionAnalysisSkill:
    """nutrition_analysis: calories and macros of the foods named, with quantities."""

    intent = "nutrition_analysis"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        knowledge = load_knowledge()
        query = parse_query(request.text, knowledge)
        if not query.foods:
            raise SkillFailed(
                "no known food named",
                reply=("I could not find a food I know in that. Try e.g. \"calories in 2 eggs "
                       f"and toast\". I know {FOOD_EXAMPLES} and more. Nothing was charged."),
            )
        lines = []
        total_kcal = 0
        protein = carbs = fat = fiber = Decimal(0)
        for mention in query.foods:
            food, n = mention.food, mention.servings
            kcal = int((food.kcal * n).to_integral_value())
            total_kcal += kcal
            protein += food.protein_g * n
            carbs += food.carbs_g * n
            fat += food.fat_g * n
            fiber += food.fiber_g * n
            lines.append(
                f"{portion(food, n)}: {kcal} kcal, protein "
                f"{grams(food.protein_g * n)} g, carbs {grams(food.carbs_g * n)} g, fat "
                f"{grams(food.fat_g * n)} g, fiber {grams(food.fiber_g * n)} g, sugar "
                f"{grams(food.sugar_g * n)} g"
            )
        if len(query.foods) > 1:
            lines.append(
                f"Total: {total_kcal} kcal, protein {grams(protein)} g, carbs {grams(carbs)} g, "
                f"fat {grams(fat)} g, fiber {grams(fiber)} g"
            )
        tip = query.foods[0].food.tip
        if tip:
            lines.append(f"Tip: {tip}")
        return SkillAnswer(fit("\n".join(lines)))


class DietaryAdviceSkill:
    """dietary_advice: the advice topic(s) the message is about, or balanced-plate basics."""

    intent = "dietary_advice"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        knowledge = load_knowledge()
        query = parse_query(request.text, knowledge)
        padded = f" {query.text} "
        scored = []
        for topic in knowledge.topics:
            hits = sum(1 for t in topic.triggers if f" {t} " in padded)
            if topic.key in query.diets:
                hits += 1
            if hits:
                scored.append((hits, topic))
        scored.sort(key=lambda pair: -pair[0])
        if not scored:
            return SkillAnswer(fit(knowledge.topic("general").text))
        texts = [topic.text for _, topic in scored[:2]]
        return SkillAnswer(fit("\n".join(texts)))


GREETINGS = frozenset({"hi", "hello", "hey", "hola", "yo", "hiya", "howdy", "morning", "evening"})
THANKS = frozenset({"thanks", "thank", "thx", "ty", "gracias", "cheers"})
CAPABILITIES = (
    "I can make meal plans (\"vegetarian meal plan 1800 calories\"), grocery lists, find "
    "recipes (\"chicken recipe\"), give nutrition facts (\"calories in 2 eggs\") and diet tips "
    "(\"gluten free tips\"). Text HELP for prices."
)


class ChatSkill:
    """chat: greetings, thanks, a quick fact about a food mentioned, or what the bot can do."""

    intent = "chat"

    def answer(self, request: SkillRequest) -> SkillAnswer:
        knowledge = load_knowledge()
        query = parse_query(request.text, knowledge)
        words = set(query.words)
        if query.foods:
            mention = query.foods[0]
            food = mention.food
            kcal = int((food.kcal * mention.servings).to_integral_value())
            return SkillAnswer(fit(
                f"Noted: {portion(food, mention.servings)} is about {kcal} kcal. {food.tip} "
                f"For full facts text \"calories in {food.name}\"; for a day of meals text "
                "\"meal plan\"."
            ))
        if words & THANKS:
            return SkillAnswer("You're welcome! Ask me anytime. " + CAPABILITIES)
        if words & GREETINGS or query.text.startswith("good "):
            return SkillAnswer("Hi! I'm your nutrition assistant. " + CAPABILITIES)
        return SkillAnswer("I'm a nutrition assistant. " + CAPABILITIES)


for _skill in (MealPlanSkill(), GroceryListSkill(), RecipeSearchSkill(),
               NutritionAnalysisSkill(), DietaryAdviceSkill(), ChatSkill()):
    register_skill(_skill)
