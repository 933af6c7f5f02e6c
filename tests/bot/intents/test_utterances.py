"""Real requests, end to end through the offline path: classified, then answered by the skill.

Each row is an utterance (English or Spanish, some with typos) with what must hold of it:

- its intent (and so its price);
- "ok" (an answer) or "free" (a refusal: `SkillFailed` with a reply, nothing charged);
- the language of the reply;
- `exclude`: families or ingredients that no meal, recipe or grocery item shown may contain,
  checked against the content's ingredient lists (tests/bot/intents/answers.py);
- `kcal`: the daily target a plan must state and keep (each day within 6%, or 100 kcal);
- `mention`: words the answer must contain (the food or situation asked about), any of the
  "|"-separated forms, compared without accents or case;
- `absent`: words the answer must not contain (a diet said in the negative, advice that would
  ignore an allergy);
- `apart`: pairs of families no single meal or recipe shown may hold both of (kosher: meat and
  dairy).

A diet, allergy or "without" the content cannot honour is refused ("free"): never answered as
if it had not been said.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)
import pytest

from bot.errors import SkillFailed
from bot.intents import SkillRequest, skill_for
from bot.intents.classifier import classify, detect_language
from bot.intents.offline import MAX_ANSWER, PACK_NAMES
from bot.knowledge import load_knowledge
from tests.bot.intents.answers import (
    contains,
    day_totals,
    fold,
    grocery_items,
    grocery_quantities,
    plan_meals,
    shown_recipes,
)
from tokens.catalog import load_catalog

CATALOG = load_catalog()
KNOWLEDGE = load_knowledge()
PLAN_EN = "vegetarian meal plan for 3 days, I am allergic to peanuts"
PLAN_ES = "plan de comidas vegano para 2 días"


@dataclass(frozen=True)
class Case:
    text: str
    intent: str
    outcome: str = "ok"  # "ok" or "free"
    lang: str = "en"
    exclude: tuple[str, ...] = ()
    kcal: int | None = None
    mention: tuple[str, ...] = ()
    days: int | None = None
    history: str | None = None  # a request whose answer is the previous assistant turn
    absent: tuple[str, ...] = ()
    apart: tuple[tuple[str, str], ...] = ()


def case(text: str, intent: str, outcome: str = "ok", lang: str = "en", **more: object
         ) -> Case:
    return Case(text, intent, outcome, lang, **more)  # type: ignore[arg-type]


CASES = [
    # --- meal plans, English ------------------------------------------------------------
    case(PLAN_EN, "meal_plan", exclude=("peanut",), days=3, kcal=2000),
    case("nut free meal plan", "meal_plan", exclude=("nuts",), kcal=2000),
    case("800 calorie meal plan", "meal_plan", "free", mention=("1200",)),
    case("meal plan to lose weight", "meal_plan", kcal=1500, mention=("500", "NIH")),
    case("meel plan vegitarian", "meal_plan", exclude=("meat", "fish", "shellfish")),
    case("vegan meal plan 1800 calories", "meal_plan", kcal=1800,
         exclude=("meat", "fish", "dairy", "egg", "honey")),
    case("gluten free meal plan for the week", "meal_plan", exclude=("gluten",), days=7),
    case("dairy free meal plan 2000 kcal", "meal_plan", exclude=("dairy",), kcal=2000),
    case("keto meal plan 1500 calories", "meal_plan", kcal=1500),
    case("high protein meal plan 2500 calories", "meal_plan", kcal=2500),
    case("meal plan 3000 calories", "meal_plan", kcal=3000),
    case("meal plan 1000 calories", "meal_plan", "free", mention=("1200", "Harvard")),
    case("meal plan 6000 calories", "meal_plan", "free"),
    case("meal plan without eggs or dairy for 2 days", "meal_plan", exclude=("egg", "dairy"),
         days=2),
    case("egg-free vegetarian meal plan", "meal_plan", exclude=("egg", "meat")),
    case("meal plan, no fish or shellfish", "meal_plan", exclude=("fish", "shellfish")),
    case("meal plan for someone allergic to sesame and soy", "meal_plan",
         exclude=("sesame", "soy")),
    case("I don't eat pork, meal plan for 3 days", "meal_plan", exclude=("pork",), days=3),
    case("meal plan with no red meat", "meal_plan", exclude=("red_meat",)),
    case("mealplan 1600 kcal", "meal_plan", kcal=1600),
    case("meal paln for 5 days", "meal_plan", days=5),
    case("vegetarain meal plan gluten free", "meal_plan", exclude=("gluten", "meat")),
    case("meal plan to gain weight", "meal_plan", kcal=2500),
    case("meal plan to lose weight, I'm a 40 year old man, 90 kg, 180 cm", "meal_plan",
         kcal=1700, mention=("Mifflin",)),
    case("meal plan for 14 days", "meal_plan", "free", mention=("7",)),
    case("weekly meal plan no nuts no dairy", "meal_plan", exclude=("nuts", "dairy"), days=7),
    case("nut-free, gluten-free meal plan for 2 days", "meal_plan",
         exclude=("nuts", "gluten"), days=2),
    case("what should I eat today", "meal_plan"),
    case("plan my meals for the week, allergic to shellfish", "meal_plan",
         exclude=("shellfish",), days=7),
    case("vegan soy free nut free meal plan", "meal_plan", "free", mention=("breakfast",)),
    case("vegan meal plan 1200 kcal", "meal_plan", kcal=1200, exclude=("meat", "dairy")),
    case("low carb meal plan without cheese", "meal_plan", exclude=("cheese",)),
    case("diet plan 1800 calories no chicken", "meal_plan", exclude=("chicken",), kcal=1800),
    case("3 day meal plan, I can't eat gluten or eggs", "meal_plan", exclude=("gluten", "egg"),
         days=3),
    case("meal plan for 2 people, no mushrooms", "meal_plan", exclude=("mushroom",),
         mention=("per person",)),
    # --- meal plans, Spanish ------------------------------------------------------------
    case("plan de comidas vegetariano para 3 días", "meal_plan", lang="es", days=3,
         exclude=("meat", "fish")),
    case("plan de comidas vegetariano para 3 días, soy alérgico al maní", "meal_plan",
         lang="es", exclude=("peanut", "meat"), days=3),
    case("plan de comidas sin lácteos para una semana", "meal_plan", lang="es",
         exclude=("dairy",), days=7),
    case("plan de comidas de 800 calorías", "meal_plan", "free", lang="es", mention=("1200",)),
    case("plan de comidas para bajar de peso", "meal_plan", lang="es", kcal=1500,
         mention=("500",)),
    case("menú semanal vegano", "meal_plan", lang="es", days=7, exclude=("dairy", "egg")),
    case("plan de alimentación sin gluten de 1800 kcal", "meal_plan", lang="es",
         exclude=("gluten",), kcal=1800),
    case("plan de comidas sin huevo ni pescado", "meal_plan", lang="es",
         exclude=("egg", "fish")),
    case("plan de comidas keto 1500 calorías", "meal_plan", lang="es", kcal=1500),
    case("plan de comidas vegetariano sin frutos secos", "meal_plan", lang="es",
         exclude=("nuts", "meat")),
    case("plan de comidaz para 2 dias", "meal_plan", lang="es", days=2),
    case("qué puedo comer hoy", "meal_plan", lang="es"),
    case("plan de comidas para subir de peso", "meal_plan", lang="es", kcal=2500),
    case("dieta de 2000 calorías sin cerdo", "meal_plan", lang="es", exclude=("pork",),
         kcal=2000),
    case("plan de comidas alto en proteína 2500 kcal", "meal_plan", lang="es", kcal=2500),
    case("plan de comidas para 14 días", "meal_plan", "free", lang="es"),
    case("plan de comidas sin mariscos ni soja, soy alérgica", "meal_plan", lang="es",
         exclude=("shellfish", "soy")),
    case("plan de comidas para 3 dias sin champiñones", "meal_plan", lang="es",
         exclude=("mushroom",), days=3),
    # --- recipes, English -----------------------------------------------------------------
    case("how do I make pancakes without eggs", "recipe_search", exclude=("egg",),
         mention=("pancake",)),
    case("vegan recipe without tofu", "recipe_search", exclude=("tofu", "dairy", "egg")),
    case("chicken recipe", "recipe_search", mention=("chicken",)),
    case("recipes for pancakes", "recipe_search", mention=("pancake",)),
    case("recpie for pancakes", "recipe_search", mention=("pancake",)),
    case("gluten free dinner recipe", "recipe_search", exclude=("gluten",)),
    case("dairy free pancake recipe", "recipe_search", exclude=("dairy",),
         mention=("pancake",)),
    case("salmon recipe", "recipe_search", mention=("salmon",)),
    case("nut free snack recipe", "recipe_search", exclude=("nuts",)),
    case("recipe with chickpeas", "recipe_search", mention=("chickpea",)),
    case("shrimp recipe, I'm allergic to shellfish", "recipe_search", "free",
         mention=("shellfish",)),
    case("recipe for dragon fruit sushi burritos", "recipe_search", "free"),
    case("what can I cook with eggs and spinach", "recipe_search", mention=("egg",)),
    case("how to make hummus", "recipe_search", mention=("hummus",)),
    case("dinner ideas with salmon", "recipe_search", mention=("salmon",)),
    case("vegan recipe without soy", "recipe_search", exclude=("soy", "dairy")),
    case("lentil soup recipe", "recipe_search", mention=("lentil",)),
    case("recipe without garlic", "recipe_search", exclude=("garlic",)),
    case("breakfast recipe no eggs no dairy", "recipe_search", exclude=("egg", "dairy")),
    case("chiken recipe", "recipe_search", mention=("chicken",)),
    case("sesame free stir fry recipe", "recipe_search", exclude=("sesame",),
         mention=("stir",)),
    case("egg recipe without cheese", "recipe_search", exclude=("cheese",)),
    case("curry recipe without coconut", "recipe_search", "free", mention=("coconut",)),
    case("pasta recipe, gluten free", "recipe_search", "free", mention=("gluten",)),
    case("recipe with tuna, no mayo", "recipe_search", exclude=("mayo",), mention=("tuna",)),
    # --- recipes, Spanish -----------------------------------------------------------------
    case("receta de pollo", "recipe_search", lang="es", mention=("pollo",)),
    case("receta de panqueques sin huevo", "recipe_search", lang="es", exclude=("egg",),
         mention=("panqueque",)),
    case("receta vegana sin tofu", "recipe_search", lang="es", exclude=("tofu", "dairy")),
    case("¿cómo hago panqueques?", "recipe_search", lang="es", mention=("panqueque",)),
    case("receta sin gluten para la cena", "recipe_search", lang="es", exclude=("gluten",)),
    case("reseta de salmon", "recipe_search", lang="es", mention=("salmon",)),
    case("ideas para la cena con garbanzos", "recipe_search", lang="es",
         mention=("garbanzo",)),
    case("receta de lentejas", "recipe_search", lang="es", mention=("lenteja",)),
    case("receta sin lácteos ni huevo", "recipe_search", lang="es", exclude=("dairy", "egg")),
    case("qué puedo cocinar con atún", "recipe_search", lang="es", mention=("atun",)),
    case("receta de camarones, soy alérgica a los mariscos", "recipe_search", "free",
         lang="es", mention=("mariscos",)),
    case("receta de tacos de pescado sin lácteos", "recipe_search", lang="es",
         exclude=("dairy",), mention=("pescado|atun|salmon",)),
    # --- nutrition facts, English ---------------------------------------------------------
    case("calories in 2 eggs and half an avocado", "nutrition_analysis",
         mention=("144 kcal", "160 kcal", "Total: 304 kcal")),
    case("calories in an avocado", "nutrition_analysis", mention=("320 kcal",)),
    case("calroies in an avocdo", "nutrition_analysis", mention=("320 kcal",)),
    case("how much protein in tofu", "nutrition_analysis", mention=("tofu",)),
    case("calories in a slice of pizza", "nutrition_analysis", mention=("285 kcal",)),
    case("calories in 316 g of rice", "nutrition_analysis", mention=("410 kcal",)),
    case("calories in half an avocado", "nutrition_analysis", mention=("160 kcal",)),
    case("macros of a banana", "nutrition_analysis", mention=("105 kcal",)),
    case("nutrition facts for oatmeal", "nutrition_analysis", mention=("oatmeal",)),
    case("calories in a zorblax", "nutrition_analysis", "free", mention=("zorblax",)),
    case("how many calories should I eat a day to lose weight?", "nutrition_analysis",
         mention=("500", "NIH")),
    case("calories in 2 tbsp peanut butter", "nutrition_analysis", mention=("188 kcal",)),
    case("calories in a cup of oats", "nutrition_analysis", mention=("304 kcal",)),
    case("calories in 100g chicken breast", "nutrition_analysis", mention=("165 kcal",)),
    case("calories in a whole pizza", "nutrition_analysis", mention=("2280 kcal",)),
    case("how much sugar in a can of soda", "nutrition_analysis", mention=("soda", "33")),
    case("calories in 3 bananas", "nutrition_analysis", mention=("315 kcal",)),
    case("calories in a glass of milk", "nutrition_analysis", mention=("122 kcal",)),
    case("carbs in a potato", "nutrition_analysis", mention=("potato",)),
    case("calories in bananna", "nutrition_analysis", mention=("banana",)),
    case("I'm a 30 year old woman, 60 kg, 165 cm, how many calories do I need a day?",
         "nutrition_analysis", mention=("Mifflin", "1320")),
    case("calories in two avocados", "nutrition_analysis", mention=("640 kcal",)),
    # --- nutrition facts, Spanish ---------------------------------------------------------
    case("cuántas calorías tiene un huevo", "nutrition_analysis", lang="es",
         mention=("72 kcal", "huevo")),
    case("calorías en medio aguacate", "nutrition_analysis", lang="es", mention=("160 kcal",)),
    case("calorías de un aguacate", "nutrition_analysis", lang="es", mention=("320 kcal",)),
    case("cuánta proteína tiene el pollo", "nutrition_analysis", lang="es",
         mention=("pollo",)),
    case("calorías en 2 plátanos", "nutrition_analysis", lang="es", mention=("210 kcal",)),
    case("calorías en una rebanada de pizza", "nutrition_analysis", lang="es",
         mention=("285 kcal",)),
    case("información nutricional de la avena", "nutrition_analysis", lang="es",
         mention=("avena",)),
    case("calorias en 200 g de arroz", "nutrition_analysis", lang="es", mention=("arroz",)),
    case("calorías de un zorblax", "nutrition_analysis", "free", lang="es",
         mention=("zorblax",)),
    case("cuántas calorías debo comer al día para bajar de peso", "nutrition_analysis",
         lang="es", mention=("500",)),
    case("calroias en un huevo", "nutrition_analysis", lang="es", mention=("72 kcal",)),
    # --- advice, English ------------------------------------------------------------------
    case("is pizza healthy?", "dietary_advice", mention=("pizza",)),
    case("Can I eat bananas on keto?", "dietary_advice", mention=("banana", "keto")),
    case("what should I eat before a workout?", "dietary_advice", mention=("workout",)),
    case("what should I eat after a workout?", "dietary_advice", mention=("after a workout",)),
    case("tips for a gluten free diet", "dietary_advice", mention=("gluten",)),
    case("advice for diabetes", "dietary_advice", mention=("doctor",)),
    case("is it ok to eat eggs every day", "dietary_advice", mention=("egg",)),
    case("how to lose weight safely", "dietary_advice", mention=("week",)),
    case("keto advice please", "dietary_advice", mention=("keto",)),
    case("is coffee bad for blood pressure", "dietary_advice", mention=("coffee",)),
    case("is kombucha healthy?", "dietary_advice", "free", mention=("kombucha",)),
    case("how much protein should I eat a day", "nutrition_analysis", mention=("0.8 g",)),
    case("is it ok to have protein shakes? how much protein a day", "nutrition_analysis",
         mention=("0.8 g",)),
    case("should I drink more water", "dietary_advice", mention=("cups",)),
    case("is cheese vegan?", "dietary_advice", mention=("cheese", "not vegan")),
    case("tips for eating tempeh", "dietary_advice", "free", mention=("tempeh",)),
    case("I'm allergic to peanuts, what should I avoid?", "dietary_advice",
         mention=("peanut butter",)),
    case("is rice healthy", "dietary_advice", mention=("rice",)),
    case("should I eat chocolate", "dietary_advice", mention=("chocolate",)),
    case("healthy snacks for work", "dietary_advice", mention=("snack",)),
    case("is intermittent fasting healthy?", "dietary_advice", mention=("fasting",)),
    case("advice on drinking beer", "dietary_advice", mention=("beer",)),
    case("is avocado healthy?", "dietary_advice", mention=("avocado",)),
    case("pre workout snack tips", "dietary_advice", mention=("workout",)),
    case("healthy breakfast tips", "dietary_advice", mention=("breakfast",)),
    case("is pizza helthy", "dietary_advice", mention=("pizza",)),
    case("what is a good diet to lower cholesterol", "dietary_advice",
         mention=("oats|fiber",)),
    case("is quinoa healthy", "dietary_advice", mention=("quinoa",)),
    case("any advice?", "dietary_advice", mention=("balanced plate",)),
    # --- advice, Spanish ------------------------------------------------------------------
    case("¿es saludable la pizza?", "dietary_advice", lang="es", mention=("pizza",)),
    case("puedo comer plátanos en keto", "dietary_advice", lang="es",
         mention=("platano", "keto")),
    case("¿qué debo comer antes de entrenar?", "dietary_advice", lang="es",
         mention=("antes de entrenar",)),
    case("¿qué debo comer después de entrenar?", "dietary_advice", lang="es",
         mention=("despues de entrenar",)),
    case("consejos para bajar de peso", "dietary_advice", lang="es", mention=("kg",)),
    case("consejos para una dieta sin gluten", "dietary_advice", lang="es",
         mention=("gluten",)),
    case("¿es bueno comer huevos todos los días?", "dietary_advice", lang="es",
         mention=("huevo",)),
    case("consejos para la diabetes", "dietary_advice", lang="es", mention=("medico",)),
    case("¿el kéfir es saludable?", "dietary_advice", "free", lang="es", mention=("kefir",)),
    case("¿es sano el aguacate?", "dietary_advice", lang="es", mention=("aguacate",)),
    case("consejos para comer sano", "dietary_advice", lang="es",
         mention=("plato equilibrado",)),
    case("¿el café es malo para la presión arterial?", "dietary_advice", lang="es",
         mention=("cafe",)),
    case("consejos vegetarianos", "dietary_advice", lang="es", mention=("proteina",)),
    case("soy alérgico al maní, ¿qué debo evitar?", "dietary_advice", lang="es",
         mention=("mani",)),
    # --- grocery lists --------------------------------------------------------------------
    case("grocery list for my meal plan", "grocery_list", history=PLAN_EN, days=3,
         exclude=("peanut",), mention=("your meal plan",)),
    case("grocery list for my meal plan, no dairy please", "grocery_list", history=PLAN_EN,
         exclude=("peanut", "dairy"), mention=("Left out",)),
    case("vegan grocery list for 3 days", "grocery_list", exclude=("meat", "dairy", "egg")),
    case("grocery list for lemon garlic chicken", "grocery_list",
         mention=("Lemon garlic chicken",)),
    case("shopping list for the week without nuts", "grocery_list", exclude=("nuts",)),
    case("grocery list vegetarian 3 days no peanuts", "grocery_list",
         exclude=("peanut", "meat")),
    case("grocey list for 2 days, no dairy", "grocery_list", exclude=("dairy",)),
    case("grocery list for classic pancakes without eggs", "grocery_list", exclude=("egg",)),
    case("shopping list for 4 people, gluten free", "grocery_list", exclude=("gluten",),
         mention=("4 people",)),
    case("grocery list for my meal plan", "grocery_list", mention=("can't see",)),
    case("lista de compras para mi plan", "grocery_list", lang="es", history=PLAN_ES,
         exclude=("dairy", "egg"), mention=("tu plan",)),
    case("lista de compras vegana para 3 días", "grocery_list", lang="es",
         exclude=("meat", "dairy")),
    case("lista de la compra sin lácteos", "grocery_list", lang="es", exclude=("dairy",)),
    case("lista de compras sin frutos secos para una semana", "grocery_list", lang="es",
         exclude=("nuts",)),
    case("lista de compras para 2 personas", "grocery_list", lang="es",
         mention=("2 personas",)),
    # --- chat -----------------------------------------------------------------------------
    case("hello", "chat", mention=("meal plans",)),
    case("hola", "chat", lang="es", mention=("planes de comidas",)),
    case("gracias", "chat", lang="es", mention=("de nada",)),
    case("what can you do?", "chat", mention=("recipes",)),
    case("I ate a cookie", "chat", mention=("cookie", "kcal")),
    case("ok cool", "chat"),
    case("what do I eat before a workout?", "chat", mention=("workout",)),
    # --- diets: every diet people state is honoured, or refused free ----------------------
    case("pescatarian meal plan", "meal_plan", exclude=("meat", "poultry"),
         mention=("Pescatarian",)),
    case("pescetarian meal plan for 3 days", "meal_plan", exclude=("meat",), days=3),
    case("halal meal plan", "meal_plan", exclude=("pork", "alcohol"),
         mention=("halal meat",)),
    case("halal meal plan for 3 days, 1800 calories", "meal_plan", exclude=("pork", "alcohol"),
         days=3, kcal=1800),
    case("kosher meal plan for 3 days", "meal_plan", exclude=("pork", "shellfish"), days=3,
         apart=(("meat", "dairy"),), mention=("kosher-certified",)),
    case("paleo meal plan", "meal_plan",
         exclude=("grain", "legume", "dairy", "refined_sugar"), mention=("Paleo",)),
    case("paleo meal plan for 2 days, nut free", "meal_plan",
         exclude=("grain", "legume", "dairy", "refined_sugar", "nuts"), days=2),
    case("keto meal plan for 3 days", "meal_plan", exclude=("grain", "sugar"), days=3,
         mention=("20-50 g",)),
    case("keto vegan meal plan", "meal_plan", "free"),
    case("meal plan, no red meat and no pork", "meal_plan", exclude=("red_meat", "pork")),
    case("meal plan with no alcohol", "meal_plan", exclude=("alcohol",)),
    case("meal plan, I don't drink alcohol", "meal_plan", exclude=("alcohol",)),
    case("lacto vegetarian meal plan", "meal_plan", exclude=("meat", "fish", "egg")),
    case("ovo-vegetarian meal plan", "meal_plan", exclude=("meat", "fish", "dairy")),
    case("pollotarian meal plan", "meal_plan", exclude=("red_meat", "fish", "shellfish")),
    case("vegetarian meal plan for 2 days", "meal_plan",
         exclude=("meat", "fish", "animal_rennet"), days=2),
    case("nightshade free meal plan", "meal_plan", exclude=("nightshade",)),
    case("meal plan without onion and garlic for 2 days", "meal_plan",
         exclude=("onion", "garlic"), days=2),
    case("meal plan, no snacks", "meal_plan", mention=("No snacks",), absent=("Snack:",)),
    case("meal plan with no breakfast", "meal_plan", "free", mention=("breakfast",)),
    case("low FODMAP meal plan", "meal_plan", "free", mention=("FODMAP", "dietitian")),
    case("renal diet meal plan", "meal_plan", "free", mention=("renal", "dietitian")),
    case("low sodium meal plan", "meal_plan", "free", mention=("sodium",)),
    case("AIP meal plan for 3 days", "meal_plan", "free", mention=("AIP",)),
    case("jain meal plan", "meal_plan", "free", mention=("Jain",)),
    case("mediterranean diet meal plan", "meal_plan", "free", mention=("Mediterranean",)),
    case("zorblax diet meal plan", "meal_plan", "free", mention=("zorblax",)),
    case("zorblax-free meal plan", "meal_plan", "free", mention=("zorblax",)),
    case("diabetic meal plan", "meal_plan", "free", mention=("doctor",)),
    case("intermittent fasting meal plan", "meal_plan", "free", mention=("fasting",)),
    case("I'm not vegetarian, meal plan for 2 days", "meal_plan", days=2,
         absent=("Vegetarian meal plan",)),
    case("no, vegan please, meal plan", "meal_plan", exclude=("meat", "dairy", "egg"),
         mention=("Vegan meal plan",)),
    case("plan de comidas pescetariano", "meal_plan", lang="es", exclude=("meat",),
         mention=("pescetariano",)),
    case("soy pescetariana, plan de comidas para 3 días", "meal_plan", lang="es",
         exclude=("meat",), days=3),
    case("plan de comidas halal para 2 días", "meal_plan", lang="es",
         exclude=("pork", "alcohol"), days=2, mention=("carne y pollo halal",)),
    case("plan de comidas kosher", "meal_plan", lang="es", exclude=("pork", "shellfish"),
         apart=(("meat", "dairy"),), mention=("certificacion kosher",)),
    case("plan de comidas paleo", "meal_plan", lang="es",
         exclude=("grain", "legume", "dairy", "refined_sugar")),
    case("plan de comidas keto para 3 días", "meal_plan", lang="es", exclude=("grain", "sugar"),
         days=3),
    case("plan de comidas sin carne roja", "meal_plan", lang="es", exclude=("red_meat",),
         mention=("sin carne roja",), absent=("vegetariano",)),
    case("plan de comidas sin cerdo ni alcohol", "meal_plan", lang="es",
         exclude=("pork", "alcohol")),
    case("no como carne, plan de comidas", "meal_plan", lang="es", exclude=("meat",)),
    case("no como carne ni pescado, plan de comidas para 2 días", "meal_plan", lang="es",
         exclude=("meat", "fish"), days=2),
    case("soy vegana, plan de comidas", "meal_plan", lang="es",
         exclude=("meat", "dairy", "egg", "honey"), absent=("sin soja",)),
    case("no soy vegana, plan de comidas", "meal_plan", lang="es",
         absent=("vegano", "sin soja")),
    case("soy alérgico al maní, plan de comidas", "meal_plan", lang="es", exclude=("peanut",),
         absent=("soja",)),
    case("plan de comidas sin soy", "meal_plan", lang="es", exclude=("soy",),
         mention=("sin soja",)),
    case("plan de comidas sin gluten ni soy", "meal_plan", lang="es",
         exclude=("gluten", "soy")),
    case("plan de comidas sin meriendas", "meal_plan", lang="es", mention=("Sin meriendas",),
         absent=("Merienda:",)),
    case("plan de comidas bajo en FODMAP", "meal_plan", "free", lang="es",
         mention=("FODMAP",)),
    case("plan de comidas para diabéticos", "meal_plan", "free", lang="es",
         mention=("medico",)),
    case("plan de comidas de dieta mediterránea", "meal_plan", "free", lang="es",
         mention=("mediterranea",)),
    case("plan de comidas sin sal", "meal_plan", "free", lang="es", mention=("sodio",)),
    case("plan de comidas jainista", "meal_plan", "free", lang="es", mention=("jainista",)),
    case("plan de comidas sin solanáceas", "meal_plan", lang="es", exclude=("nightshade",)),
    case("plan de comidas sin ajo ni cebolla", "meal_plan", lang="es",
         exclude=("garlic", "onion")),
    case("plan de comidas sin desayuno", "meal_plan", "free", lang="es",
         mention=("desayuno",)),
    # --- recipes: composites hold what they contain ----------------------------------------
    case("recipe with chicken but no garlic", "recipe_search", exclude=("garlic",),
         mention=("chicken",), absent=("no recipe with but",)),
    case("chicken recipe without onion", "recipe_search", exclude=("onion",),
         mention=("chicken",)),
    case("kosher chicken recipe", "recipe_search", exclude=("pork", "shellfish"),
         apart=(("meat", "dairy"),), mention=("chicken",)),
    case("halal recipe with beef", "recipe_search", exclude=("pork", "alcohol"),
         mention=("halal",)),
    case("paleo dinner recipe", "recipe_search",
         exclude=("grain", "legume", "dairy", "refined_sugar")),
    case("keto recipe", "recipe_search", exclude=("grain", "sugar")),
    case("pescatarian dinner recipe", "recipe_search", exclude=("meat",)),
    case("vegetarian pasta recipe", "recipe_search", exclude=("meat", "fish", "animal_rennet"),
         mention=("pasta",)),
    case("caesar salad recipe, allergic to fish", "recipe_search", exclude=("fish",),
         mention=("Chicken Caesar salad has fish",)),
    case("recipe without anchovies", "recipe_search", exclude=("anchovy",)),
    case("soy free stir fry recipe", "recipe_search", "free", mention=("soy",)),
    case("gluten free stir fry recipe", "recipe_search", "free", mention=("gluten",)),
    case("recipe without mustard", "recipe_search", exclude=("mustard",)),
    case("recipe with no seeds", "recipe_search", exclude=("seeds",)),
    case("egg recipe, no cheese, no garlic", "recipe_search", exclude=("cheese", "garlic"),
         mention=("egg",)),
    case("low FODMAP recipe", "recipe_search", "free", mention=("FODMAP",)),
    case("renal diet recipe", "recipe_search", "free", mention=("renal",)),
    case("whole30 recipe", "recipe_search", "free", mention=("Whole30",)),
    case("zorblax-free recipe", "recipe_search", "free", mention=("zorblax",)),
    case("receta de pollo sin ajo", "recipe_search", lang="es", exclude=("garlic",),
         mention=("pollo",)),
    case("receta sin cebolla", "recipe_search", lang="es", exclude=("onion",)),
    case("receta de pollo sin cebolla ni ajo", "recipe_search", lang="es",
         exclude=("onion", "garlic"), mention=("pollo",)),
    case("receta sin perejil", "recipe_search", lang="es", exclude=("parsley",)),
    case("receta sin cilantro", "recipe_search", lang="es", exclude=("cilantro",)),
    case("receta halal de pollo", "recipe_search", lang="es", exclude=("pork", "alcohol"),
         mention=("halal",)),
    case("receta kosher con pollo", "recipe_search", lang="es", exclude=("pork", "shellfish"),
         apart=(("meat", "dairy"),)),
    case("receta paleo", "recipe_search", lang="es",
         exclude=("grain", "legume", "dairy", "refined_sugar")),
    case("receta keto para la cena", "recipe_search", lang="es", exclude=("grain", "sugar")),
    case("receta pescetariana", "recipe_search", lang="es", exclude=("meat",)),
    case("soy vegana, receta para la cena", "recipe_search", lang="es",
         exclude=("meat", "dairy", "egg")),
    case("soy celíaca, receta", "recipe_search", lang="es", exclude=("gluten",)),
    case("receta sin soya", "recipe_search", lang="es", exclude=("soy",)),
    case("receta de ensalada cobb sin cerdo", "recipe_search", lang="es", exclude=("pork",),
         mention=("lleva cerdo",)),
    case("receta de ensalada césar, soy alérgica al pescado", "recipe_search", lang="es",
         exclude=("fish",)),
    case("receta baja en fodmap", "recipe_search", "free", lang="es", mention=("FODMAP",)),
    case("receta sin sal", "recipe_search", "free", lang="es", mention=("sodio",)),
    # --- grocery lists of the new diets ---------------------------------------------------
    case("halal grocery list for 2 days", "grocery_list", exclude=("pork", "alcohol"),
         mention=("halal meat",)),
    case("kosher grocery list for 3 days", "grocery_list", exclude=("pork", "shellfish")),
    case("paleo grocery list", "grocery_list",
         exclude=("grain", "legume", "dairy", "refined_sugar")),
    case("pescatarian shopping list for 3 days", "grocery_list", exclude=("meat",)),
    case("grocery list for 4 people, no red meat", "grocery_list", exclude=("red_meat",),
         mention=("4 people",)),
    case("low fodmap grocery list", "grocery_list", "free", mention=("FODMAP",)),
    case("lista de compras para 4 personas sin gluten", "grocery_list", lang="es",
         exclude=("gluten",), mention=("4 personas",), absent=(" x4", " x8", " x12")),
    case("lista de compras halal para 3 días", "grocery_list", lang="es",
         exclude=("pork", "alcohol")),
    case("lista de compras kosher", "grocery_list", lang="es", exclude=("pork", "shellfish")),
    case("lista de compras pescetariana", "grocery_list", lang="es", exclude=("meat",)),
    case("lista de compras sin cerdo ni soja", "grocery_list", lang="es",
         exclude=("pork", "soy")),
    case("lista de compras baja en sodio", "grocery_list", "free", lang="es",
         mention=("sodio",)),
    # --- advice about diets and allergies -------------------------------------------------
    case("is bacon halal?", "chat", mention=("pork",)),
    case("¿el tocino es halal?", "chat", lang="es", mention=("cerdo",)),
    case("halal diet tips", "dietary_advice", mention=("gelatin", "halal")),
    case("consejos para una dieta kosher", "dietary_advice", lang="es",
         mention=("carne con lacteos",)),
    case("tips for a pescatarian diet", "dietary_advice", mention=("fish",)),
    case("consejos para una dieta paleo", "dietary_advice", lang="es", mention=("cereales",)),
    case("low fodmap tips", "dietary_advice", "free", mention=("FODMAP",)),
    case("consejos para una dieta renal", "dietary_advice", "free", lang="es",
         mention=("renal",)),
    case("soy alérgica a los frutos secos, ¿qué evito?", "dietary_advice", lang="es",
         mention=("frutos secos",), absent=("buenos para el corazon",)),
    case("is chocolate ok, I'm allergic to milk", "dietary_advice",
         mention=("chocolate has dairy",)),
    case("¿puedo comer chocolate? soy alérgica a la leche", "dietary_advice", lang="es",
         mention=("lleva lacteos",)),
    case("calories in bacon, I'm halal", "nutrition_analysis", mention=("43 kcal", "pork")),
    case("how much protein should I eat a day on a renal diet", "nutrition_analysis", "free",
         mention=("renal",)),
    case("hi, I'm on a low fodmap diet", "dietary_advice", "free", mention=("FODMAP",)),
    # --- more phrasings of the same rules -------------------------------------------------
    case("no processed food meal plan", "meal_plan", "free", mention=("packaged",)),
    case("low sugar meal plan", "meal_plan", exclude=("sugar",)),
    case("plan de comidas bajo en azúcar", "meal_plan", lang="es", exclude=("sugar",)),
    case("no spicy food meal plan", "meal_plan", exclude=("spicy",)),
    case("receta sin picante", "recipe_search", lang="es", exclude=("spicy",)),
    case("I'm Muslim, meal plan for 2 days", "meal_plan", exclude=("pork", "alcohol"), days=2,
         mention=("halal",)),
    case("soy musulmana, plan de comidas", "meal_plan", lang="es",
         exclude=("pork", "alcohol")),
    case("receta sin tacc", "recipe_search", lang="es", exclude=("gluten",)),
    case("vegetariana estricta, plan de comidas", "meal_plan", lang="es",
         exclude=("meat", "dairy", "egg")),
    case("no zorblax meal plan", "meal_plan", "free", mention=("zorblax",)),
    case("low calorie meal plan", "meal_plan", kcal=1500),
    case("vegan grocery list for lemon garlic chicken", "grocery_list", "free",
         mention=("vegan diet rules out",)),
    case("grocery list for chicken caesar salad, allergic to fish", "grocery_list",
         exclude=("fish",), mention=("Chicken Caesar salad has fish",)),
    case("lista de compras halal para la ensalada cobb", "grocery_list", lang="es",
         exclude=("pork", "alcohol"), mention=("lleva cerdo",)),
    # Ordinary words after a trigger are not refused as unknown requirements.
    case("new diet plan for me", "meal_plan"),
    case("no worries, meal plan please", "meal_plan"),
    case("I hate cooking, quick recipe", "recipe_search"),
    case("receta sin cocinar", "recipe_search", lang="es"),
]


def previous_turn(text: str) -> tuple[tuple[str, str], ...]:
    intent = classify(text, CATALOG).name
    answer = skill_for(intent).answer(SkillRequest(intent, text, "whatsapp")).text
    return (("user", text), ("assistant", answer))


def run(case: Case, channel: str = "whatsapp") -> tuple[str, str]:
    """(outcome, reply) of the case through classification and its skill."""
    history = previous_turn(case.history) if case.history else ()
    intent = classify(case.text, CATALOG).name
    request = SkillRequest(intent=intent, text=case.text, channel=channel, history=history)
    try:
        return "ok", skill_for(intent).answer(request).text
    except SkillFailed as failed:
        assert failed.reply, "a refusal says why"
        return "free", failed.reply


def shown_groups(case: Case, reply: str) -> list[list[str]]:
    """The ingredient lines of what the reply shows, one list per meal or recipe (a grocery
    list's items are one list, and each meal of its day 1 another)."""
    if case.intent == "meal_plan":
        days = plan_meals(KNOWLEDGE, reply)
        assert days and all(len(day) >= 3 for day in days), reply
        if case.days:
            assert len(days) == case.days
        return [list(meal.groceries) for day in days for meal in day]
    if case.intent == "recipe_search":
        return [list(recipe.ingredients) for recipe in shown_recipes(KNOWLEDGE, reply)]
    if case.intent == "grocery_list":
        groups = [grocery_items(KNOWLEDGE, reply)]
        day_one = [line for line in reply.splitlines() if line.startswith(("Day 1 is", "El día 1"))]
        if day_one:
            days = plan_meals(KNOWLEDGE, "Day 1: " + day_one[0].split(": ", 1)[1].split(". ")[0]
                              + " (0 kcal)")
            groups += [list(meal.groceries) for meal in days[0]]
        return groups
    return []


def shown_ingredients(case: Case, reply: str) -> list[str]:
    """Every ingredient line of what the reply shows (meals, recipes or grocery items)."""
    return [line for group in shown_groups(case, reply) for line in group]


def test_there_are_enough_cases():
    assert len(CASES) >= 150
    assert sum(1 for c in CASES if c.lang == "es") >= 50


@pytest.mark.parametrize("case", CASES, ids=[c.text for c in CASES])
def test_utterance(case: Case):
    assert classify(case.text, CATALOG).name == case.intent
    outcome, reply = run(case)
    assert outcome == case.outcome, reply
    assert 0 < len(reply) <= MAX_ANSWER
    assert detect_language(reply) == case.lang, reply
    if case.outcome == "free":
        assert ("Nothing was charged" if case.lang == "en" else "No se cobró nada") in reply
    folded = fold(reply)
    for words in case.mention:
        assert any(fold(w) in folded for w in words.split("|")), (words, reply)
    for words in case.absent:
        assert fold(words) not in folded, (words, reply)
    if case.outcome == "ok":
        groups = shown_groups(case, reply)
        lines = [line for group in groups for line in group]
        for key in case.exclude:
            bad = [line for line in lines if contains(KNOWLEDGE, line, key)]
            assert not bad, (key, bad, reply)
        for first, second in case.apart:
            together = [group for group in groups[1 if case.intent == "grocery_list" else 0:]
                        if any(contains(KNOWLEDGE, line, first) for line in group)
                        and any(contains(KNOWLEDGE, line, second) for line in group)]
            assert not together, (first, second, together, reply)
        if case.kcal is not None:
            limit = max(100, case.kcal * 6 // 100)
            assert f" {case.kcal} kcal" in reply
            totals = day_totals(reply)
            assert totals and all(abs(t - case.kcal) <= limit for t in totals), reply


SPANISH_ANSWERS = [c for c in CASES if c.lang == "es"]


@pytest.mark.parametrize("case", SPANISH_ANSWERS, ids=[c.text for c in SPANISH_ANSWERS])
def test_spanish_sms_replies_stay_gsm7(case: Case):
    _, reply = run(case, channel="sms")
    reply.encode("gsm03.38")  # raises if a character would force UCS-2


@pytest.mark.parametrize(
    ("english", "spanish"),
    [
        ("vegetarian meal plan for 3 days", "plan de comidas vegetariano para 3 días"),
        ("meal plan to lose weight", "plan de comidas para bajar de peso"),
        ("vegan weekly menu", "menú semanal vegano"),
        ("1800 calorie diet", "dieta de 1800 calorías"),
        ("what should I eat today", "qué debo comer hoy"),
        ("chicken recipe", "receta de pollo"),
        ("how do I make pancakes without eggs", "¿cómo hago panqueques sin huevo?"),
        ("gluten free recipe", "receta sin gluten"),
        ("keto recipe", "receta keto"),
        ("dinner ideas", "ideas para la cena"),
        ("what can I cook with tuna", "qué puedo cocinar con atún"),
        ("calories in an egg", "calorías en un huevo"),
        ("how much protein in chicken", "cuánta proteína tiene el pollo"),
        ("nutrition facts for oats", "información nutricional de la avena"),
        ("how many calories should I eat a day", "cuántas calorías debo comer al día"),
        ("is pizza healthy?", "¿es saludable la pizza?"),
        ("can I eat bananas on keto?", "¿puedo comer plátanos en keto?"),
        ("what should I eat before a workout?", "¿qué debo comer antes de entrenar?"),
        ("tips to lose weight", "consejos para bajar de peso"),
        ("vegan diet tips", "consejos de dieta vegana"),
        ("I'm lactose intolerant", "soy intolerante a la lactosa"),
        ("is it ok to eat eggs every day?", "¿está bien comer huevos todos los días?"),
        ("grocery list for my plan", "lista de compras para mi plan"),
        ("shopping list for the week", "lista de la compra para la semana"),
        ("hello", "hola"),
        ("thanks", "gracias"),
    ],
)
def test_a_spanish_request_costs_what_its_english_twin_costs(english, spanish):
    en = classify(english, CATALOG)
    es = classify(spanish, CATALOG)
    assert es.name == en.name
    assert es.price == en.price


def test_language_field_overrides_detection():
    request = SkillRequest("nutrition_analysis", "calories in an egg", "whatsapp", language="es")
    assert "huevo" in skill_for("nutrition_analysis").answer(request).text
    request = SkillRequest("nutrition_analysis", "calorías en un huevo", "whatsapp",
                           language="en")
    assert "egg" in skill_for("nutrition_analysis").answer(request).text


@pytest.mark.parametrize("text", [
    PLAN_EN, "halal meal plan for 3 days", "kosher meal plan for 2 days, no nuts",
    "plan de comidas pescetariano para 3 días", "paleo meal plan for 2 days",
    "meal plan for 2 days, no snacks", "plan de comidas sin carne roja para 2 días",
    "keto meal plan for 3 days", "plan de comidas sin gluten ni soy para 2 días",
])
def test_the_shopping_hint_rebuilds_the_same_plan(text):
    # Without history the hint of a plan is what gives its grocery list.
    plan = skill_for("meal_plan").answer(SkillRequest("meal_plan", text, "whatsapp")).text
    hint = plan.rsplit('"', 2)[1]
    assert classify(hint, CATALOG).name == "grocery_list"
    listing = skill_for("grocery_list").answer(SkillRequest("grocery_list", hint, "whatsapp"))
    planned = {item for day in plan_meals(KNOWLEDGE, plan) for m in day for item in m.groceries}
    assert set(grocery_items(KNOWLEDGE, listing.text)) == planned


def _units(name: str) -> tuple[str, ...]:
    (one, many), (uno, muchos) = PACK_NAMES[name]
    return one, many, uno, muchos


@pytest.mark.parametrize("text", [
    "lista de compras para 4 personas sin gluten", "shopping list for 4 people, gluten free",
    "grocery list for the week", "lista de compras vegana para 3 días",
    "halal grocery list for 2 days", "lista de compras kosher para una semana",
])
def test_grocery_lists_say_what_to_buy(text):
    # Quantities a person can buy, in both languages: grams for cheese and butter, whole
    # bottles or jars for oil and spices, pieces for eggs and avocados; never servings ("x12").
    reply = skill_for("grocery_list").answer(SkillRequest("grocery_list", text, "sms")).text
    assert not re.search(r" x\d", reply), reply
    english = {fold(es): en for en, es in KNOWLEDGE.items_es.items()}
    shown = grocery_quantities(reply)
    assert shown, reply
    for label, amount in shown.items():
        item = english.get(fold(label), label)
        purchase = KNOWLEDGE.shopping[item]
        if purchase.pack:
            allowed = _units(purchase.pack)
        elif purchase.unit in ("g", "ml"):
            allowed = ("g", "kg") if purchase.unit == "g" else ("ml", "L")
        elif purchase.unit:
            allowed = _units(purchase.unit)
        else:
            allowed = ("",)
        number, _, unit = amount.partition(" ")
        assert re.fullmatch(r"[0-9]+(?:[.,][0-9])?", number) and unit in allowed, (
            label, amount, reply)
        assert float(number.replace(",", ".")) > 0
    lang = detect_language(reply)
    for item in ("cheddar cheese", "butter", "olive oil"):
        amount = shown.get(KNOWLEDGE.item_label(item, lang))
        if amount:
            assert amount.split()[-1] in ("g", "kg", "bottle", "bottles", "botella",
                                          "botellas"), (item, amount)


def test_grocery_amounts_grow_with_people_and_days():
    def amounts(text: str) -> dict[str, str]:
        reply = skill_for("grocery_list").answer(SkillRequest("grocery_list", text, "sms")).text
        return grocery_quantities(reply)

    one = amounts("grocery list for 2 days")
    four = amounts("grocery list for 2 days for 4 people")
    assert one.keys() == four.keys()
    counted = [i for i in one if not KNOWLEDGE.shopping[i].pack and not
               KNOWLEDGE.shopping[i].unit]
    assert counted
    for item in counted:
        assert int(four[item]) >= 3 * int(one[item]) - 3, (item, one[item], four[item])
    # Pantry items are bought by the bottle or jar, not multiplied per serving.
    oil = [i for i in one if KNOWLEDGE.shopping[i].pack == "bottle"]
    assert oil and all(four[i].split()[0] in ("1", "2", "3") for i in oil), four


def test_a_grocery_list_of_an_earlier_plan_says_what_to_buy():
    history = previous_turn("kosher meal plan for 2 days")
    reply = skill_for("grocery_list").answer(SkillRequest(
        "grocery_list", "grocery list for my plan", "sms", history=history)).text
    assert reply.startswith("Grocery list for your meal plan (2 days)")
    shown = grocery_quantities(reply)
    assert shown and all(shown.values()), reply
