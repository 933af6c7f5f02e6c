"""Reading a request once into `Constraints`: diets, exclusions with families expanded,
calories, goal, days, people, body data, foods with quantities, language; English and Spanish,
with typos."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bot.intents.classifier import correct_words, detect_language
from bot.intents.constraints import DIETS, UNSUPPORTED_DIETS, parse_constraints
from bot.intents.query import read_words
from bot.knowledge import Body, load_knowledge, maintenance_kcal, mifflin_st_jeor_bmr

KNOWLEDGE = load_knowledge()


@pytest.mark.parametrize(
    ("text", "excluded"),
    [
        ("vegetarian meal plan for 3 days, I am allergic to peanuts", {"peanut"}),
        ("nut free meal plan", {"nuts"}),
        ("nut-free breakfast", {"nuts"}),
        ("tree nut free snacks", {"tree_nut"}),
        ("how do I make pancakes without eggs", {"egg"}),
        ("vegan recipe without tofu", {"tofu"}),
        ("no nuts or dairy please", {"nuts", "dairy"}),
        ("allergic to peanuts, shellfish and eggs", {"peanut", "shellfish", "egg"}),
        ("peanut allergy meal plan", {"peanut"}),
        ("shellfish allergy recipe", {"shellfish"}),
        ("I don't eat pork", {"pork"}),
        ("I do not eat red meat", {"red_meat"}),
        ("i hate mushrooms and olives", {"mushrooms", "olives"}),
        ("without cilantro", {"cilantro"}),
        ("gluten and dairy free dinner", {"gluten"}),
        ("egg-free, soy-free lunch", {"egg", "soy"}),
        ("intolerant to sesame", {"sesame"}),
        ("no seafood", {"seafood"}),
        ("sin huevo ni leche", {"egg", "dairy"}),
        ("soy alérgica al maní y a los mariscos", {"peanut", "shellfish"}),
        ("receta sin lácteos ni huevo", {"egg"}),
        ("no como carne", {"meat"}),
        ("no me gustan los champiñones", {"mushrooms"}),
        ("libre de gluten y de soja", {"soy"}),
        ("alérgico a los frutos secos", {"nuts"}),
        ("plan sin azúcar", {"sugar"}),
        ("tengo alergia al sésamo", {"sesame"}),
        ("no problem, thanks", set()),
        ("no soy vegana", set()),
        ("chicken recipe", set()),
        # Spanish "soy" is "I am" unless it is plainly the food.
        ("sin soy", {"soy"}),
        ("plan sin gluten ni soy", {"soy"}),
        ("salsa de soy no, sin soy por favor", {"soy"}),
        ("soy alérgico al maní y soy celíaca", {"peanut"}),
        ("soy intolerante a la lactosa", set()),
        ("no soy alérgica al maní", set()),
        ("no como carne ni pescado", {"meat", "fish"}),
        ("no como cerdo", {"pork"}),
        ("sin carne roja", {"red_meat"}),
        ("sin jamón ni tocino", {"pork", "bacon"}),
        # English: negation, drinks, composites' names.
        ("not allergic to nuts", set()),
        ("no, allergic to nuts", {"nuts"}),
        ("I'm not allergic to anything", set()),
        ("I don't drink alcohol", {"alcohol"}),
        ("no pork products", {"pork"}),
        ("without garlic or onion", {"garlic", "onion"}),
        ("no red meat", {"red_meat"}),
        ("without anchovies", {"anchovy"}),
        ("sin perejil", {"parsley"}),
        ("sin comino", {"comino"}),
        ("nightshade free", {"nightshade"}),
        ("I hate cooking", set()),
        ("receta sin cocinar", set()),
    ],
)
def test_exclusions(text, excluded):
    c = parse_constraints(text, KNOWLEDGE)
    assert {e.key for e in c.exclusions} == excluded


@pytest.mark.parametrize(
    ("line", "family", "inside"),
    [
        ("2 tbsp peanut butter", "peanut", True),
        ("2 tbsp peanut butter", "dairy", False),
        ("1/2 cup light coconut milk", "dairy", False),
        ("1 1/4 cups milk", "dairy", True),
        ("2 tbsp melted butter", "dairy", True),
        ("6 small corn tortillas", "gluten", False),
        ("flour tortillas", "gluten", True),
        ("2 tbsp soy sauce", "gluten", True),
        ("2 tbsp soy sauce", "soy", True),
        ("mayonnaise", "egg", True),
        ("1/4 cup hummus", "sesame", True),
        ("1 tbsp chopped walnuts", "nuts", True),
        ("1 tbsp chopped walnuts", "peanut", False),
        ("almonds", "tree_nut", True),
        ("3 tbsp caesar dressing", "fish", True),
        ("1/2 cup rolled oats", "gluten", True),
        ("300 g raw shrimp, peeled", "shellfish", True),
        ("300 g raw shrimp, peeled", "fish", False),
        ("4 bacon slices", "pork", True),
        ("chicken broth", "meat", True),
        ("snap peas", "sugar", False),
        # Composites hold what they contain (ingredients.yaml `composites`).
        ("3 tbsp caesar dressing", "garlic", True),
        ("3 tbsp caesar dressing", "egg", True),
        ("3 tbsp caesar dressing", "dairy", True),
        ("3 tbsp caesar dressing", "mustard", True),
        ("1 cup croutons", "gluten", True),
        ("1 cup croutons", "garlic", True),
        ("1/4 cup hummus", "garlic", True),
        ("1/4 cup salsa", "onion", True),
        ("chicken broth", "onion", True),
        ("1 tsp worcestershire sauce", "fish", True),
        ("2 tbsp pesto", "nuts", True),
        ("2 tbsp pesto", "cheese", True),
        ("1/4 cup dark chocolate chips", "dairy", True),
        ("1/4 cup dark chocolate chips", "soy", True),
        ("1/4 cup dark chocolate chips", "sugar", True),
        ("1/2 cup granola", "nuts", True),
        ("1/2 cup granola", "gluten", True),
        ("1 tsp each chili powder and cumin", "garlic", True),
        ("blue cheese", "dairy", True),
        ("1/4 cup grated parmesan", "animal_rennet", True),
        ("2 tbsp grated vegetarian parmesan", "animal_rennet", False),
        ("2 tbsp grated vegetarian parmesan", "dairy", True),
        ("1 tbsp red wine vinegar", "alcohol", True),
        ("1 tsp gelatin", "pork", True),
        ("1 tsp gelatin", "meat", True),
        ("4 slices bacon", "red_meat", True),
        ("lamb chops", "red_meat", True),
        ("lamb chops", "poultry", False),
        ("6 small corn tortillas", "grain", True),
        ("2 medium sweet potatoes", "nightshade", False),
        ("1 red bell pepper, sliced", "nightshade", True),
        ("salt, pepper", "nightshade", False),
        ("1 lemon", "citrus", True),
        ("snap peas", "legume", False),
        ("1 cup dry red lentils", "legume", True),
    ],
)
def test_families_are_matched_in_ingredient_lines(line, family, inside):
    c = parse_constraints(f"allergic to {KNOWLEDGE.family(family).names[0]}", KNOWLEDGE)
    (exclusion,) = c.exclusions
    assert exclusion.matches(line) is inside


@pytest.mark.parametrize(
    ("text", "diets"),
    [
        ("vegan meal plan", {"vegan", "vegetarian", "dairy_free"}),
        ("vegetarian meal plan", {"vegetarian"}),
        ("meel plan vegitarian", {"vegetarian"}),
        ("gluten-free keto plan", {"gluten_free", "keto", "low_carb"}),
        ("lactose free", {"dairy_free"}),
        ("high protein meals", {"high_protein"}),
        ("plan de comidas vegetariano", {"vegetarian"}),
        ("receta vegana", {"vegan", "vegetarian", "dairy_free"}),
        ("sin gluten", {"gluten_free"}),
        ("bajo en carbohidratos", {"low_carb"}),
        ("alto en proteína", {"high_protein"}),
        ("pescatarian meal plan", {"pescatarian"}),
        ("soy pescetariana", {"pescatarian"}),
        ("halal meal plan", {"halal"}),
        ("plan de comidas kosher", {"kosher"}),
        ("paleo recipe", {"paleo"}),
        ("keto", {"keto", "low_carb"}),
        ("dieta cetogénica", {"keto", "low_carb"}),
        ("lacto vegetarian", {"lacto_vegetarian", "vegetarian"}),
        ("ovo-vegetarian", {"ovo_vegetarian", "vegetarian", "dairy_free"}),
        ("flexitarian", {"flexitarian"}),
        # Negated: "not vegan" is no diet; "no, vegan" is.
        ("no soy vegana", set()),
        ("ya no soy vegetariana", set()),
        ("I'm not vegetarian", set()),
        ("non vegetarian meal plan", set()),
        ("no, vegan please", {"vegan", "vegetarian", "dairy_free"}),
        ("no lactose", {"dairy_free"}),
        # "sin carne roja" is no red meat, not vegetarian; "raw vegan" is the raw diet.
        ("sin carne roja", set()),
        ("raw vegan meal plan", set()),
    ],
)
def test_diets(text, diets):
    assert parse_constraints(text, KNOWLEDGE).diets == diets


@pytest.mark.parametrize(
    ("text", "unsupported"),
    [
        ("low FODMAP meal plan", ("low_fodmap",)),
        ("renal diet", ("renal",)),
        ("plan de comidas bajo en sodio", ("low_sodium",)),
        ("meal plan, no salt", ("low_sodium",)),
        ("AIP recipe", ("aip",)),
        ("jain meal plan", ("jain",)),
        ("dieta mediterránea", ("mediterranean",)),
        ("raw vegan meal plan", ("raw",)),
        ("soy diabética", ("diabetic",)),
        ("I'm not diabetic, meal plan", ()),
        ("vegan meal plan", ()),
    ],
)
def test_unsupported_diets_are_recognised(text, unsupported):
    assert parse_constraints(text, KNOWLEDGE).unsupported == unsupported


@pytest.mark.parametrize(
    ("text", "unknown_diets", "unverifiable"),
    [
        ("zorblax diet meal plan", ("zorblax",), ()),
        ("dieta zorblax", ("zorblax",), ()),
        ("zorblax-free recipe", (), ("zorblax",)),
        ("recipe without zorblax", (), ("zorblax",)),
        ("a balanced diet meal plan", (), ()),
        ("keto diet", (), ()),
        ("nightshade free meal plan", (), ()),
        ("hassle free dinner recipe", (), ()),
        ("recipe without cilantro", (), ()),
    ],
)
def test_what_cannot_be_checked_is_kept(text, unknown_diets, unverifiable):
    c = parse_constraints(text, KNOWLEDGE)
    assert (c.unknown_diets, c.unverifiable) == (unknown_diets, unverifiable)
    assert c.honourable is not bool(unknown_diets or unverifiable)


@pytest.mark.parametrize(
    ("text", "slots", "meal"),
    [
        ("meal plan, no snacks", {"snack"}, None),
        ("plan de comidas sin meriendas", {"snack"}, None),
        ("I skip breakfast", {"breakfast"}, None),
        ("dinner recipe without eggs", set(), "dinner"),
    ],
)
def test_meals_of_the_day_left_out(text, slots, meal):
    c = parse_constraints(text, KNOWLEDGE)
    assert (set(c.excluded_slots), c.meal) == (slots, meal)


def test_kosher_never_allows_meat_with_dairy():
    c = parse_constraints("kosher meal plan", KNOWLEDGE)
    assert c.violation(["chicken thighs", "butter"]) is not None
    assert c.violation(["chicken thighs", "cauliflower"]) is None
    assert c.violation(["cod", "greek yogurt"]) is None  # fish with dairy is allowed
    assert c.violation(["bacon"]) is not None
    broken = c.violation(["chicken breast", "3 tbsp caesar dressing"])
    assert broken is not None and broken.label_in("en") == "meat with dairy"


def test_every_diet_word_names_one_diet():
    seen: dict[str, str] = {}
    for diet in DIETS:
        for phrase in diet.phrases:
            assert seen.setdefault(phrase, diet.key) == diet.key, phrase
            assert phrase == " ".join(read_words(phrase)), phrase  # as read_words gives it
    assert UNSUPPORTED_DIETS and all(DIETS[0].key != k for k in UNSUPPORTED_DIETS)


@pytest.mark.parametrize(
    ("text", "calories", "days", "people", "goal"),
    [
        ("800 calorie meal plan", 800, None, None, None),
        ("Vegan 1,800 calories plan for 3 days", 1800, 3, None, None),
        ("1800 kcal", 1800, None, None, None),
        ("2500kcal meal plan for the week", 2500, 7, None, None),
        ("meal plan to lose weight", None, None, None, "lose"),
        ("meal plan to gain weight for two days", None, 2, None, "gain"),
        ("3-day plan for 4 people", None, 3, 4, None),
        ("meals for a family of four", None, None, 4, None),
        ("meal plan for 2 weeks", None, 14, None, None),
        ("weekend meal plan", None, 2, None, None),
        ("plan de comidas de 1500 calorías para 5 días", 1500, 5, None, None),
        ("plan para bajar de peso para una semana", None, 7, None, "lose"),
        ("menú para 3 personas", None, None, 3, None),
        ("dieta para subir de peso", None, None, None, "gain"),
    ],
)
def test_numbers_and_goal(text, calories, days, people, goal):
    c = parse_constraints(text, KNOWLEDGE)
    assert (c.calories, c.days, c.people, c.goal) == (calories, days, people, goal)


@pytest.mark.parametrize(
    ("text", "foods"),
    [
        ("calories in 2 eggs and half an avocado", [("egg", "2"), ("avocado", "1")]),
        ("calories in an avocado", [("avocado", "2")]),
        ("calories in avocado", [("avocado", "1")]),
        ("calories in two avocados", [("avocado", "4")]),
        ("calories in 316 g of rice", [("white rice", "2")]),
        ("calories in 2 cups of cooked rice", [("white rice", "2")]),
        ("a cup of oats", [("oatmeal", "2")]),
        ("2 slices of pizza", [("cheese pizza", "2")]),
        ("a slice of pizza", [("cheese pizza", "1")]),
        ("a whole pizza", [("cheese pizza", "8")]),
        ("2 tbsp peanut butter", [("peanut butter", "1")]),
        ("1 lb ground beef", [("ground beef", "4.54")]),
        ("a dozen eggs", [("egg", "12")]),
        ("cuántas calorías tiene un huevo", [("egg", "1")]),
        ("medio aguacate y 100 g de arroz", [("avocado", "1"), ("white rice", "0.63")]),
        ("la mitad de un aguacate", [("avocado", "1")]),
        ("calorías en 2 plátanos", [("banana", "2")]),
        ("calroies in an avocdo", [("avocado", "2")]),
        ("vegan recipe without tofu", []),
    ],
)
def test_foods_and_quantities(text, foods):
    c = parse_constraints(text, KNOWLEDGE)
    assert [(m.food.name, str(m.servings)) for m in c.foods] == foods


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("receta de pollo", "es"),
        ("plan de comidas vegetariano para 3 días", "es"),
        ("cuántas calorías tiene un huevo", "es"),
        ("hola", "es"),
        ("¿es saludable la pizza?", "es"),
        ("lista de compras", "es"),
        ("chicken recipe", "en"),
        ("calories in an egg", "en"),
        ("meal plan", "en"),
        ("pizza", "en"),
        ("", "en"),
    ],
)
def test_language(text, language):
    assert detect_language(text) == language
    assert parse_constraints(text, KNOWLEDGE).language == language


def test_the_language_can_be_forced():
    assert parse_constraints("receta de pollo", KNOWLEDGE, language="en").language == "en"


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("meel plan vegitarian", "meal plan vegetarian"),
        ("calroies in an avocdo", "calories in an avocado"),
        ("recpie for pancakes", "recipe for pancakes"),
        ("grocey list", "grocery list"),
        ("mealplan", "meal plan"),
        ("ok cool", "ok cool"),
        ("i ate a plate of pasta", "i ate a plate of pasta"),
    ],
)
def test_typos_are_corrected_and_real_words_are_not(typo, meant):
    assert " ".join(parse_constraints(typo, KNOWLEDGE).words) == meant


def test_correct_words_keeps_known_and_short_words():
    assert correct_words(("egg", "cool", "zzzz"), frozenset({"eggs", "cook"})) == (
        "egg", "cool", "zzzz")


def test_read_words_keeps_numbers_whole():
    assert read_words("1,800 kcal, 1/2 cup, 100g, 1 1/2 cups") == (
        "1800", "kcal", "0.5", "cup", "100", "g", "1.5", "cups")


def test_body_data_and_mifflin_st_jeor():
    c = parse_constraints("I'm a 30 year old woman, 60 kg, 165 cm, lightly active", KNOWLEDGE)
    assert c.body == Body(Decimal(60), Decimal(165), 30, "female", "light")
    # Mifflin-St Jeor: 10 x 60 + 6.25 x 165 - 5 x 30 - 161 = 1320.25
    assert mifflin_st_jeor_bmr(c.body) == 1320
    assert maintenance_kcal(c.body) == 1815  # x 1.375
    man = parse_constraints("5'10 man 180 lbs 40 years old", KNOWLEDGE).body
    assert (man.height_cm, man.weight_kg, man.age, man.sex) == (
        Decimal(178), Decimal("81.6"), 40, "male")


def test_references_to_an_earlier_turn():
    assert parse_constraints("grocery list for my meal plan", KNOWLEDGE).refers_to_plan
    assert parse_constraints("lista de compras para mi plan", KNOWLEDGE).refers_to_plan
    assert parse_constraints("shopping list for this recipe", KNOWLEDGE).refers_to_recipe
    assert not parse_constraints("vegan grocery list", KNOWLEDGE).refers_to_plan


def test_constraints_are_frozen():
    c = parse_constraints("vegan meal plan", KNOWLEDGE)
    with pytest.raises(AttributeError):
        c.days = 3  # type: ignore[misc]
