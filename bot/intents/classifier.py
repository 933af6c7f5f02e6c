"""Intent classification: the catalog's patterns, searched in precedence order, over text that has
been read the way a person meant it.

Patterns are whole-word regular expressions over a normalised message, so substrings cannot
fool it ("I ate a cookie" contains "ate", not "meal plan"; docs/economy.md lists the cases that must
hold). Free commands are matched before this, on the whole message.

Real messages have typos and come in Spanish too, so the rules run over the message as it was
meant:

1. Words unknown to the lexicon are corrected to the nearest known word (`correct_words`: at
   most one edit, two for long words, by rapidfuzz's optimal string alignment distance, so a
   swapped pair of letters is one edit: "calroies" -> "calories"; everyday words such as "cool"
   are never changed), and Spanish keywords are glossed into the English words the catalog's
   patterns know ("plan de comidas" -> "meal plan", "receta" -> "recipe"), so a Spanish request
   is classified, and priced, as the same intent as its English twin. The catalog's rules run
   over that text, then over the text glossed but not corrected.
2. Only if no rule matches, the message's word n-grams are compared with each intent's key
   phrases (`INTENT_PHRASES`: "meat plan" is close to "meal plan"); else the catalog's default
   intent. Fuzzy matching never overrides a rule; it only turns the default intent into another.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping

from rapidfuzz import process
from rapidfuzz.distance import OSA, Levenshtein

from bot.knowledge import load_knowledge
from tokens.catalog import Catalog, IntentSpec

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
_NON_WORD = re.compile(r"[^a-z0-9]+")
_SPANISH_MARKS = re.compile("[ñ¿¡áíóúü]")

LANGUAGES = ("en", "es")

# Words that only (or mostly) occur in one of the two languages, for `detect_language`.
SPANISH_WORDS = frozenset({
    "de", "del", "la", "el", "los", "las", "un", "una", "unos", "unas", "para", "con", "sin",
    "por", "que", "como", "cuantas", "cuantos", "cuanta", "cuanto", "tiene", "tienen", "es",
    "esta", "estoy", "estas", "son", "y", "o", "u", "e", "ni", "mi", "mis", "me", "tu", "te", "se",
    "lo", "le", "les", "su", "sus", "al", "muy", "mas", "pero", "porque", "cual", "cuales",
    "donde", "cuando", "quiero", "quisiera", "dame", "dime", "necesito", "puedo", "puedes", "debo",
    "deberia", "hacer", "hago", "comer", "comes", "bebo", "tomar", "cocinar", "preparar",
    "comprar", "receta", "recetas", "comida", "comidas", "dias", "dia", "semana", "semanas",
    "semanal", "hoy", "manana", "noche", "tarde", "lista", "compras", "compra", "calorias",
    "caloria", "proteina", "proteinas", "grasa", "grasas", "carbohidratos", "azucar", "fibra",
    "hola", "gracias", "buenos", "buenas", "soy", "alergico", "alergica", "alergicos", "alergia",
    "antes", "despues", "entrenar", "ejercicio", "gimnasio", "bajar", "subir", "perder", "ganar",
    "peso", "adelgazar", "vegetariano", "vegetariana", "vegetarianos", "vegano", "vegana",
    "veganos", "desayuno", "almuerzo", "cena", "merienda", "saludable", "sano", "sana", "bueno",
    "buena", "malo", "mala", "consejo", "consejos", "ideas", "personas", "familia", "huevo",
    "huevos", "pollo", "arroz", "aguacate", "platano", "platanos", "manzana", "leche", "queso",
    "pan", "carne", "pescado", "atun", "frijoles", "lentejas", "avena", "verduras", "fruta",
    "frutas", "nueces", "mani", "mantequilla", "papas", "patatas", "tomate", "tambien", "solo",
    "sobre", "entre", "hasta", "desde", "ya", "si", "algo", "nada", "todo", "todos", "todas",
    "otro", "otra", "cada", "mucho", "poco", "dieta", "libre", "ayuda", "estar",
    "hay", "fin",
})
ENGLISH_WORDS = frozenset({
    "the", "a", "an", "for", "with", "without", "and", "or", "is", "are", "was", "were", "in",
    "of", "to", "i", "my", "me", "you", "your", "how", "what", "which", "who", "can", "could",
    "should", "would", "do", "does", "did", "make", "cook", "recipe", "recipes", "meal", "meals",
    "calories", "calorie", "eat", "eating", "day", "days", "week", "list", "grocery", "groceries",
    "shopping", "please", "want", "need", "allergic", "allergy", "healthy", "before", "after",
    "workout", "lose", "gain", "weight", "free", "give", "show", "send", "tips", "advice", "plan",
    "about", "this", "that", "it", "on", "at", "from", "some", "any", "much", "many", "am", "im",
    "dont", "not", "no", "yes", "hi", "hello", "hey", "thanks", "thank", "good", "bad", "best",
    "breakfast", "lunch", "dinner", "snack", "chicken", "eggs", "egg", "avocado", "banana",
    "bananas", "rice", "people", "family",
})


def normalise_text(text: str) -> str:
    """Lower case, accents and apostrophes dropped, other non-alphanumerics as single spaces.

    "This week's Meal-Plan!" -> "this weeks meal plan".
    """
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch)).lower()
    folded = _APOSTROPHES.sub("", folded)
    return _NON_WORD.sub(" ", folded).strip()


@functools.lru_cache(maxsize=4096)
def detect_language(text: str) -> str:
    """"es" when `text` reads as Spanish, else "en" (the last 4,096 texts' answers kept: the
    router, the parser and the answer check each ask of the same message or answer).

    A vote of marker words (`SPANISH_WORDS` against `ENGLISH_WORDS`), with Spanish letters and
    marks (ñ, ¿, ¡, á, í, ó, ú) counting two; a tie or an empty text is English. Reliable for
    the short requests this bot gets ("receta de pollo", "calories in an egg"); not a general
    language identifier.
    """
    words = normalise_text(text).split()
    spanish = sum(1 for i, w in enumerate(words) if w in SPANISH_WORDS
                  and not (w == "soy" and _english_soy(words, i)))
    english = sum(1 for w in words if w in ENGLISH_WORDS)
    if _SPANISH_MARKS.search(text.lower()):
        spanish += 2
    return "es" if spanish > english else "en"


# English words around "soy" the food ("soy milk", "tofu and soy"): then it is no Spanish "I am".
_SOY_FOOD_WORDS = frozenset({
    "sauce", "milk", "free", "allergy", "allergic", "beans", "bean", "protein", "yogurt",
    "based", "products", "lecithin", "flour", "oil", "tofu", "chunks", "curls", "latte",
})


def _english_soy(words: list[str], at: int) -> bool:
    after = words[at + 1] if at + 1 < len(words) else ""
    before = words[at - 1] if at else ""
    return after in _SOY_FOOD_WORDS or before in _SOY_FOOD_WORDS or before in (
        "and", "or", "without", "with")


# --- typo correction ------------------------------------------------------------------------

# Everyday words that are never "corrected" into a nearby keyword ("cool" is not "cook").
COMMON_WORDS = frozenset({
    "about", "above", "after", "again", "against", "also", "always", "another", "anything",
    "around", "away", "back", "been", "being", "below", "best", "better", "between", "both",
    "bring", "called", "came", "cant", "care", "case", "come", "comes", "cool", "could", "couldnt",
    "day", "dear", "does", "doesnt", "doing", "done", "dont", "down", "each", "else", "even",
    "ever", "every", "fine", "first", "from", "gave", "getting", "give", "goes", "going", "gone",
    "good", "great", "have", "having", "hear", "heard", "help", "here", "hers", "high", "home",
    "hope", "into", "just", "keep", "kind", "know", "last", "late", "left", "less", "life", "like",
    "line", "little", "long", "look", "lots", "love", "made", "main", "make", "many", "maybe",
    "mean", "meet", "mine", "more", "most", "much", "must", "name", "near", "need", "never",
    "next", "nice", "none", "note", "nothing", "once", "only", "open", "over", "part", "plane",
    "plate", "place", "play", "plus", "pretty", "quite", "rather", "read", "real", "really",
    "right", "same", "said", "says", "seem", "seen", "send", "sent", "should", "show", "side",
    "since", "some", "soon", "sort", "still", "such", "sure", "take", "tell", "than", "thank",
    "that", "thats", "them", "then", "there", "these", "they", "thing", "things", "think", "this",
    "those", "though", "time", "told", "took", "true", "turn", "very", "wait", "want", "wants",
    "well", "went", "were", "what", "whats", "when", "where", "which", "while", "whole", "why",
    "will", "wish", "with", "without", "word", "work", "would", "yeah", "year", "years", "your",
    "yours", "okay", "cake", "bake", "beat", "feel", "felt", "fell", "hand", "hard", "head",
    "hold", "hour", "idea", "lazy", "mind", "miss", "move", "nope", "pain", "past", "post",
    "rest", "room", "safe", "seat", "sick", "size", "skip", "slow", "soft", "stop", "tired",
    "week", "weeks", "month", "today", "tonight", "hello", "thanks", "please", "sorry", "fast",
    "lose", "lost", "gain", "body", "food", "foods", "meal", "meals", "drink", "drinks", "water",
    "algo", "alguien", "antes", "aqui", "asi", "bien", "cada", "casa", "cosa", "cosas", "creo",
    "cuando", "decir", "dice", "donde", "entonces", "esto", "estoy", "gente", "hace", "hacer",
    "hola", "igual", "mejor", "mismo", "mucho", "nada", "nunca", "otra", "otro", "poco", "porque",
    "pues", "quien", "sabe", "solo", "tambien", "tanto", "tengo", "tiempo", "todo", "vale",
    "verdad", "vida", "favor", "gracias", "claro", "bueno", "buena",
})

# The words of the default catalog's patterns and of their Spanish glosses: what a typo is
# corrected towards when the classifier runs alone (the skills add the content's words).
INTENT_WORDS = frozenset({
    "grocery", "groceries", "shopping", "list", "buy", "store", "supermarket", "market", "meal",
    "meals", "plan", "plans", "prep", "diet", "diets", "dietary", "dieting", "eating", "food",
    "menu", "week", "weekly", "daily", "today", "tomorrow", "recipe", "recipes", "make", "cook",
    "bake", "prepare", "grill", "roast", "dinner", "lunch", "breakfast", "snack", "dessert",
    "supper", "ideas", "calorie", "calories", "kcal", "kcals", "macros", "nutrients", "protein",
    "carbs", "carb", "carbohydrates", "fat", "fats", "fiber", "fibre", "sugar", "sodium",
    "content", "much", "many", "nutrition", "nutritional", "facts", "info", "information", "value",
    "values", "analyze", "analyse", "analysis", "vegan", "vegetarian", "veggie", "keto",
    "ketogenic", "paleo", "gluten", "celiac", "coeliac", "lactose", "dairy", "free", "allergy",
    "allergic", "allergies", "intolerant", "intolerance", "lose", "losing", "gain", "gaining",
    "build", "building", "weight", "muscle", "loss", "diabetes", "diabetic", "cholesterol",
    "blood", "pressure", "pregnant", "pregnancy", "hydration", "salt", "intake", "should",
    "advice", "tips", "healthy", "healthier", "unhealthy", "hello", "thanks", "workout",
    "exercise", "lista", "compras", "compra", "supermercado", "mercado", "comidas", "comida",
    "alimentacion", "alimenticio", "semanal", "semana", "diario", "receta",
    "recetas", "cocinar", "preparar", "hornear", "cena", "almuerzo", "desayuno", "merienda",
    "postre", "calorias", "caloria", "proteina", "proteinas", "carbohidratos", "grasa", "grasas",
    "fibra", "azucar", "sodio", "nutricional", "nutricionales", "analiza", "analisis", "dieta",
    "dietas", "vegano", "vegana", "veganos", "veganas", "vegetariano", "vegetariana",
    "vegetarianos", "vegetarianas", "cetogenica", "lactosa", "lacteos", "alergia",
    "alergico", "alergica", "intolerante", "intolerancia", "bajar", "perder", "adelgazar", "subir",
    "ganar", "peso", "musculo", "diabetico", "colesterol", "presion", "embarazada", "embarazo",
    "hidratacion", "consejos", "consejo", "recomendaciones", "saludable", "saludables", "hola",
    "gracias", "entrenar", "ejercicio",
})


def correct_words(words: Iterable[str], vocabulary: frozenset[str]) -> tuple[str, ...]:
    """`words` with typos corrected towards `vocabulary`.

    A word is left alone when it is known (in `vocabulary` or `COMMON_WORDS`), has digits, or
    is shorter than 4 letters. Otherwise it becomes the nearest vocabulary word of 4+ letters
    within 1 edit (2 for words of 8+ letters; optimal string alignment, so "calroies" ->
    "calories" is one edit), keeping the first letter for words under 6 letters; or two known
    words run together ("mealplan" -> "meal plan"); or stays as it is.

    Args:
        words: normalised words (`normalise_text(...).split()`).
        vocabulary: the known words.

    Returns:
        The words, some replaced (a run-together word becomes two).
    """
    out: list[str] = []
    for word in words:
        out.extend(_correct(word, vocabulary).split())
    return tuple(out)


@functools.lru_cache(maxsize=8192)
def _correct(word: str, vocabulary: frozenset[str]) -> str:
    if (len(word) < 4 or word in vocabulary or word in COMMON_WORDS
            or not word.isalpha()):
        return word
    for cut in range(3, len(word) - 2):
        head, tail = word[:cut], word[cut:]
        if head in vocabulary and tail in vocabulary and len(head) >= 3 and len(tail) >= 3:
            return f"{head} {tail}"
    limit = 1 if len(word) < 8 else 2
    candidates = [w for w in _long_words(vocabulary) if abs(len(w) - len(word)) <= limit]
    found = process.extract(word, candidates, scorer=OSA.distance, score_cutoff=limit,
                            limit=None)
    best: tuple[int, int, str] | None = None
    for candidate, distance, _ in found:
        if len(word) < 6 and candidate[0] != word[0]:
            continue
        key = (int(distance), 0 if candidate[0] == word[0] else 1, candidate)
        if best is None or key < best:
            best = key
    return best[2] if best else word


@functools.lru_cache(maxsize=64)
def _long_words(vocabulary: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(w for w in vocabulary if len(w) >= 4 and w.isalpha()))


# --- Spanish glosses ------------------------------------------------------------------------

# Spanish phrases (normalised) -> the English words the catalog's patterns know. Longest first
# wins. `FUNCTION_GLOSSES` are applied only to a message detected as Spanish.
KEYWORD_GLOSSES: Mapping[str, str] = {
    # grocery_list
    "lista de compras": "grocery list", "lista de la compra": "grocery list",
    "lista de compra": "grocery list", "lista del super": "grocery list",
    "lista del supermercado": "grocery list", "lista de supermercado": "grocery list",
    "lista de mercado": "grocery list", "lista del mercado": "grocery list",
    "lista de mandado": "grocery list", "lista de despensa": "grocery list",
    "hacer la compra": "grocery shopping", "hacer las compras": "grocery shopping",
    "hacer el super": "grocery shopping", "que debo comprar": "what should i buy at the store",
    "que tengo que comprar": "what should i buy at the store",
    "que compro": "what should i buy at the store", "compras": "shopping",
    # meal_plan
    "plan de comidas": "meal plan", "planes de comidas": "meal plans",
    "plan de comida": "meal plan", "plan de alimentacion": "meal plan",
    "plan alimenticio": "meal plan", "plan alimentario": "meal plan",
    "plan nutricional": "meal plan", "plan de dieta": "diet plan", "plan de menu": "menu plan",
    "menu semanal": "weekly menu", "menu diario": "daily menu",
    "menu de la semana": "menu for the week", "menu para la semana": "menu for the week",
    "menu para hoy": "menu for today", "menu de hoy": "menu for today",
    "menu para manana": "menu for tomorrow", "preparacion de comidas": "meal prep",
    "planifica mis comidas": "plan my meals", "planificar mis comidas": "plan my meals",
    "planea mis comidas": "plan my meals", "organiza mis comidas": "plan my meals",
    "organizar mis comidas": "plan my meals", "que como hoy": "what should i eat today",
    "que como manana": "what should i eat tomorrow",
    # recipe_search
    "receta": "recipe", "recetas": "recipes", "como hago": "how do i make",
    "como preparo": "how do i prepare", "como cocino": "how do i cook",
    "como horneo": "how do i bake", "como se hace": "how do i make",
    "como se hacen": "how do i make", "como se prepara": "how do i prepare",
    "como se preparan": "how do i prepare", "como se cocina": "how do i cook",
    "como hacer": "how to make", "como preparar": "how to prepare",
    "como cocinar": "how to cook", "como puedo hacer": "how can i make",
    "como puedo preparar": "how can i prepare", "como puedo cocinar": "how can i cook",
    "que puedo cocinar": "what can i cook", "que puedo preparar": "what can i make",
    "que cocino": "what can i cook", "que preparo": "what can i make",
    "ideas para la cena": "dinner ideas", "ideas de cena": "dinner ideas",
    "ideas para cenar": "dinner ideas", "ideas para el almuerzo": "lunch ideas",
    "ideas de almuerzo": "lunch ideas", "ideas para almorzar": "lunch ideas",
    "ideas para la comida": "lunch ideas", "ideas de comida": "lunch ideas",
    "ideas para el desayuno": "breakfast ideas", "ideas de desayuno": "breakfast ideas",
    "ideas para desayunar": "breakfast ideas", "ideas de merienda": "snack ideas",
    "ideas para la merienda": "snack ideas", "ideas de postre": "dessert ideas",
    "ideas para el postre": "dessert ideas", "ideas de snack": "snack ideas",
    # nutrition_analysis
    "calorias": "calories", "caloria": "calorie", "macronutrientes": "macros",
    "nutrientes": "nutrients", "hidratos de carbono": "carbs", "carbohidratos": "carbs",
    "hidratos": "carbs", "carbos": "carbs", "proteinas": "protein", "proteina": "protein",
    "grasas": "fat", "grasa": "fat", "fibra": "fiber", "azucares": "sugar", "azucar": "sugar",
    "sodio": "sodium", "informacion nutricional": "nutrition information",
    "informacion nutrimental": "nutrition information",
    "valor nutricional": "nutrition value", "valores nutricionales": "nutrition values",
    "datos nutricionales": "nutrition facts", "tabla nutricional": "nutrition facts",
    "analiza": "analyze", "analizar": "analyze", "analisis": "analysis",
    # dietary_advice
    "dieta": "diet", "dietas": "diets", "vegano": "vegan", "vegana": "vegan",
    "veganos": "vegan", "veganas": "vegan", "vegetariano": "vegetarian",
    "vegetariana": "vegetarian", "vegetarianos": "vegetarian", "vegetarianas": "vegetarian",
    "cetogenica": "ketogenic", "cetogenico": "ketogenic", "sin gluten": "gluten free",
    "celiaco": "celiac", "celiaca": "celiac", "celiaquia": "celiac", "lactosa": "lactose",
    "sin lacteos": "dairy free", "alergia": "allergy", "alergias": "allergies",
    "alergico": "allergic", "alergica": "allergic", "alergicos": "allergic",
    "alergicas": "allergic", "intolerante": "intolerant", "intolerancia": "intolerance",
    "bajar de peso": "lose weight", "perder peso": "lose weight", "bajar peso": "lose weight",
    "adelgazar": "lose weight", "rebajar": "lose weight", "subir de peso": "gain weight",
    "ganar peso": "gain weight", "aumentar de peso": "gain weight", "engordar": "gain weight",
    "ganar musculo": "build muscle", "ganar masa muscular": "build muscle",
    "aumentar masa muscular": "build muscle", "perdida de peso": "weight loss",
    "diabetico": "diabetic", "diabetica": "diabetic", "colesterol": "cholesterol",
    "azucar en la sangre": "blood sugar", "azucar en sangre": "blood sugar",
    "glucosa": "blood sugar", "presion arterial": "blood pressure",
    "presion alta": "blood pressure", "tension arterial": "blood pressure",
    "hipertension": "blood pressure", "embarazada": "pregnant", "embarazo": "pregnancy",
    "hidratacion": "hydration", "hidratarme": "hydration", "hidratarse": "hydration",
    "consumo de sal": "salt intake", "ingesta de sal": "salt intake",
    "esta bien": "is it ok", "es seguro": "is it safe", "es malo": "is it bad",
    "es mala": "is it bad", "es bueno": "is it good", "es buena": "is it good",
    "consejos": "tips", "consejo": "advice", "recomendaciones": "advice",
    "recomendacion": "advice", "sugerencias": "advice", "saludable": "healthy",
    "saludables": "healthy", "sano": "healthy", "sana": "healthy", "sanos": "healthy",
    "mas saludable": "healthier", "poco saludable": "unhealthy", "no saludable": "unhealthy",
    "malsano": "unhealthy", "debo": "should i", "deberia": "should i",
    # chat
    "hola": "hello", "gracias": "thanks", "que puedes hacer": "what can you do",
    "buenos dias": "good morning", "buenas tardes": "good evening",
    "buenas noches": "good evening",
}
FUNCTION_GLOSSES: Mapping[str, str] = {
    "de": "of", "del": "of the", "en": "in", "para": "for", "con": "with", "sin": "without",
    "el": "the", "la": "the", "los": "the", "las": "the", "un": "a", "una": "a", "mi": "my",
    "mis": "my", "que": "what", "es": "is", "y": "and", "o": "or", "hoy": "today",
    "manana": "tomorrow", "esta semana": "this week", "la proxima semana": "next week",
    "semana": "week", "semanal": "weekly", "diario": "daily", "diaria": "daily", "dia": "day",
    "dias": "days", "comer": "eat", "como": "how", "puedo": "can i", "hacer": "make",
    "cocinar": "cook", "preparar": "prepare", "hornear": "bake", "comida": "meal",
    "comidas": "meals", "cena": "dinner", "almuerzo": "lunch", "desayuno": "breakfast",
    "merienda": "snack", "postre": "dessert", "comprar": "buy", "tienda": "store",
    "supermercado": "supermarket", "super": "supermarket", "mercado": "market",
    "tiene": "in", "tienen": "in", "hay": "in", "cuanta": "how much", "cuanto": "how much",
    "cuantas": "how many", "cuantos": "how many",
}
_MAX_GLOSS_WORDS = 4


def gloss(words: tuple[str, ...], language: str) -> tuple[str, ...]:
    """Spanish keywords of `words` replaced by the English the catalog's patterns know.

    Args:
        words: normalised words.
        language: "es" glosses function words too ("para" -> "for"); "en" only the Spanish
            keywords of `KEYWORD_GLOSSES`, so English text is left as written.

    Returns:
        The glossed words, e.g. ("plan", "de", "comidas", "vegetariano") ->
        ("meal", "plan", "vegetarian").
    """
    tables = (KEYWORD_GLOSSES, FUNCTION_GLOSSES) if language == "es" else (KEYWORD_GLOSSES,)
    out: list[str] = []
    at = 0
    while at < len(words):
        for size in range(min(_MAX_GLOSS_WORDS, len(words) - at), 0, -1):
            phrase = " ".join(words[at:at + size])
            english = next((t[phrase] for t in tables if phrase in t), None)
            if english is not None:
                out.extend(english.split())
                at += size
                break
        else:
            out.append(words[at])
            at += 1
    return tuple(out)


# --- fuzzy phrases ----------------------------------------------------------------------------

# Key phrases of the default catalog's intents (English after glossing), for the last, fuzzy
# step: only phrases of two or more words (single words are handled by `correct_words`).
INTENT_PHRASES: Mapping[str, tuple[str, ...]] = {
    "grocery_list": ("grocery list", "shopping list", "groceries list"),
    "meal_plan": ("meal plan", "diet plan", "eating plan", "food plan", "weekly menu",
                  "plan my meals", "meal prep"),
    "recipe_search": ("how do i make", "how to cook", "how to make", "what can i cook",
                      "dinner ideas", "lunch ideas", "breakfast ideas"),
    "nutrition_analysis": ("nutrition facts", "how much protein", "how many calories",
                           "calories in", "nutrition info"),
    "dietary_advice": ("diet tips", "healthy eating", "lose weight", "gain weight",
                       "weight loss", "build muscle", "blood pressure", "blood sugar"),
}
FUZZY_SIMILARITY = 0.85  # normalised Levenshtein similarity of an n-gram to a key phrase


CLASSIFIER_VOCABULARY = INTENT_WORDS | SPANISH_WORDS | ENGLISH_WORDS


@functools.cache
def _known_words() -> frozenset[str]:
    """`CLASSIFIER_VOCABULARY` and the words of the content (foods, meals, recipes, advice), so
    a real word such as "meat" or "tofu" is never "corrected" into an intent word."""
    knowledge = load_knowledge()
    texts: list[str] = []
    for food in knowledge.foods:
        texts += [food.name, *food.aliases, food.name_es, *food.aliases_es]
    for meal in knowledge.meals:
        texts += [meal.name, *meal.groceries]
    for recipe in knowledge.recipes:
        texts += [recipe.name, *recipe.keywords, *recipe.ingredients]
    for topic in knowledge.topics:
        texts += list(topic.triggers)
    for family in knowledge.families:
        texts += [*family.names, *family.names_es, *family.terms]
    words = {w for text in texts for w in normalise_text(text).split() if w.isalpha()}
    return CLASSIFIER_VOCABULARY | frozenset(words)


def _fuzzy_intent(words: tuple[str, ...], names: list[str]) -> str | None:
    for name in names:
        for phrase in INTENT_PHRASES.get(name, ()):
            size = len(phrase.split())
            for start in range(len(words) - size + 1):
                gram = " ".join(words[start:start + size])
                if Levenshtein.normalized_similarity(gram, phrase) >= FUZZY_SIMILARITY:
                    return name
    return None


def _by_rules(words: tuple[str, ...], catalog: Catalog) -> IntentSpec | None:
    text = " ".join(words)
    for spec in catalog.intents:
        if any(pattern.search(text) for pattern in spec.patterns):
            return spec
    return None


# Messages classified per `Catalog` object, kept by text, most recently used first: the
# intent is a pure function of the two (the rules, the lexicon and the fuzzy phrases are
# fixed at import), so a message that comes again is classified once.
CLASSIFY_CACHE_SIZE = 8192
_CLASSIFIERS: dict[int, tuple[Catalog, Callable[[str], IntentSpec]]] = {}


def classify(text: str, catalog: Catalog) -> IntentSpec:
    """The intent of `text`: the first catalog intent with a matching pattern, else the default.

    The patterns run over the message with typos corrected and Spanish keywords glossed into
    English, then over it glossed only; a last fuzzy step compares word n-grams with
    `INTENT_PHRASES` (module docstring). A Spanish request gets the intent, and so the price,
    of its English twin: "plan de comidas vegetariano" is a meal plan like "vegetarian meal
    plan".

    Args:
        text: the person's message.
        catalog: the economy catalog (intents in precedence order).

    Returns:
        The matching `IntentSpec` (its `price` is what the answer costs).
    """
    held = _CLASSIFIERS.get(id(catalog))
    if held is None or held[0] is not catalog:
        if len(_CLASSIFIERS) >= 16:  # catalogs are few: the configured one, tests' own
            _CLASSIFIERS.clear()

        def classify_text(text: str) -> IntentSpec:
            return _classify(text, catalog)

        held = (catalog, functools.lru_cache(maxsize=CLASSIFY_CACHE_SIZE)(classify_text))
        _CLASSIFIERS[id(catalog)] = held
    return held[1](text)


def _classify(text: str, catalog: Catalog) -> IntentSpec:
    """`classify`, uncached."""
    words = tuple(normalise_text(text).split())
    language = detect_language(text)
    corrected = gloss(correct_words(words, _known_words()), language)
    spec = _by_rules(corrected, catalog) or _by_rules(gloss(words, language), catalog)
    if spec is not None:
        return spec
    names = [s.name for s in catalog.intents]
    fuzzy = _fuzzy_intent(corrected, names)
    if fuzzy is not None:
        return catalog.intent(fuzzy)
    return catalog.intent(catalog.default_intent)
