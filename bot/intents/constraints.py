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

Diets are the table `DIETS`, the one place that says which diet words are recognised (English
and Spanish) and what each diet is: a rule the skills honour strictly (vegan, halal, keto, ...),
a preference (high protein), or one the content cannot honour (low FODMAP, renal, ...), for
which a skill refuses without charge. A diet said in the negative ("no soy vegana", "I'm not
vegetarian") does not count.

Exclusions are checked against ingredient lists (and names), never titles alone:
`Constraints.violation` says which exclusion, diet rule or forbidden pair (kosher: meat with
dairy) an ingredient list breaks, and a skill must not show a meal or recipe for which it returns
one. A composite ingredient holds what it contains (bot/content/ingredients.yaml `composites`:
caesar dressing is egg, anchovy, garlic, parmesan, ...). What cannot be checked (an unknown
"X-free", a diet not understood) is kept in `Constraints.unverifiable` and
`Constraints.unknown_diets`, so the skill can say so instead of answering as if it were not
there.

Spanish "soy" is "I am" ("soy vegana", "soy alérgico al maní"); it is the food only after "sin",
"de", "la" or at the end of a list ("sin gluten ni soy").
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar, cast

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
from bot.knowledge import Body, Knowledge

RULE = "rule"
PREFERENCE = "preference"
UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Diet:
    """A diet people name.

    Attributes:
        key: e.g. "vegan", "halal", "low_fodmap".
        label, label_es: how a reply names it ("gluten-free", "sin gluten").
        phrases: the words that name it, English and Spanish, as `read_words` gives them
            (lower case, no accents).
        kind: `RULE` (every meal and recipe shown must keep it: the families it rules out,
            bot/content/ingredients.yaml `diets`, and `tag` when set), `PREFERENCE` (meals with
            `tag` are preferred) or `UNSUPPORTED` (the content cannot honour it: skills refuse,
            free).
        tag: the content tag a meal or recipe must carry (a rule) or that is preferred.
        implies: diets this one includes (vegan: vegetarian and dairy-free).
        note, note_es: a line for plans and recipes of the diet ("buy halal meat").
        summary, summary_es: what the diet means, for advice.
        reason, reason_es: why an unsupported diet cannot be followed.
        medical: an unsupported diet for a health condition: the reply points to a doctor or
            dietitian.
        topic: the advice topic that covers an unsupported diet (advice still answers).
    """

    key: str
    label: str
    label_es: str
    phrases: tuple[str, ...]
    kind: str = RULE
    tag: str | None = None
    implies: tuple[str, ...] = ()
    note: str = ""
    note_es: str = ""
    summary: str = ""
    summary_es: str = ""
    reason: str = ""
    reason_es: str = ""
    medical: bool = False
    topic: str | None = None

    def label_in(self, language: str) -> str:
        """The diet's name in `language`."""
        return self.label_es if language == "es" else self.label


def _unsupported(key: str, label: str, label_es: str, phrases: tuple[str, ...],
                 reason: str = "", reason_es: str = "", medical: bool = False,
                 topic: str | None = None) -> Diet:
    return Diet(key, label, label_es, phrases, UNSUPPORTED, reason=reason, reason_es=reason_es,
                medical=medical, topic=topic)


# Every diet word the skills recognise. Phrases are matched longest first across the whole
# table, so "raw vegan" is the raw-food diet, not vegan.
DIETS: tuple[Diet, ...] = (
    # --- rules -----------------------------------------------------------------------------
    Diet("vegan", "vegan", "vegano", (
        "vegan", "vegans", "plant based", "no animal products", "cruelty free", "vegano",
        "vegana", "veganos", "veganas", "vegetal estricta", "dieta vegetal",
        "vegetariana estricta", "vegetariano estricto", "vegetarianos estrictos",
        "sin productos animales"),
        tag="vegan", implies=("vegetarian", "dairy_free")),
    Diet("vegetarian", "vegetarian", "vegetariano", (
        "vegetarian", "vegetarians", "veggie", "meatless", "no meat", "meat free",
        "lacto ovo vegetarian", "ovo lacto vegetarian", "vegetariano", "vegetariana",
        "vegetarianos", "vegetarianas", "sin carne", "ovolactovegetariano",
        "ovolactovegetariana"), tag="vegetarian"),
    Diet("lacto_vegetarian", "lacto-vegetarian", "lactovegetariano", (
        "lacto vegetarian", "lactovegetarian", "lactovegetariano", "lactovegetariana",
        "lacto vegetariano", "lacto vegetariana"), tag="vegetarian", implies=("vegetarian",),
        summary="Lacto-vegetarian: no meat, fish or eggs; dairy is fine.",
        summary_es="Lactovegetariano: sin carne, pescado ni huevo; los lácteos sí."),
    Diet("ovo_vegetarian", "ovo-vegetarian", "ovovegetariano", (
        "ovo vegetarian", "ovovegetarian", "ovovegetariano", "ovovegetariana",
        "ovo vegetariano", "ovo vegetariana"), tag="vegetarian",
        implies=("vegetarian", "dairy_free"),
        summary="Ovo-vegetarian: no meat, fish or dairy; eggs are fine.",
        summary_es="Ovovegetariano: sin carne, pescado ni lácteos; el huevo sí."),
    Diet("pescatarian", "pescatarian", "pescetariano", (
        "pescatarian", "pescatarians", "pescetarian", "pescetarians", "pescovegetarian",
        "pesco vegetarian", "pescetariano", "pescetariana", "pescatariano", "pescatariana",
        "pescovegetariano", "pescovegetariana", "pescetarianos", "pescetarianas"),
        summary="Pescatarian: no meat or poultry; fish, seafood, eggs and dairy are fine. "
                "Aim for oily fish such as salmon or sardines twice a week.",
        summary_es="Pescetariano: sin carne ni aves; pescado, mariscos, huevo y lácteos sí. "
                   "Procura pescado azul como salmón o sardinas dos veces por semana."),
    Diet("pollotarian", "pollotarian", "pollotariano", (
        "pollotarian", "pollotarians", "pollo vegetarian", "pollotariano", "pollotariana"),
        summary="Pollotarian: poultry but no red meat or fish.",
        summary_es="Pollotariano: aves, pero sin carne roja ni pescado."),
    Diet("gluten_free", "gluten-free", "sin gluten", (
        "gluten free", "no gluten", "without gluten", "celiac", "coeliac", "gf", "sin gluten",
        "libre de gluten", "celiaco", "celiaca", "celiacos", "celiacas", "sin tacc",
        "apto celiacos"), tag="gluten_free"),
    Diet("dairy_free", "dairy-free", "sin lácteos", (
        "dairy free", "no dairy", "without dairy", "lactose free", "lactose", "non dairy",
        "sin lactosa", "sin lacteos", "libre de lactosa", "deslactosado", "lactose intolerant",
        "intolerante a la lactosa", "libre de lacteos"), tag="dairy_free"),
    Diet("keto", "keto", "keto", (
        "keto", "ketogenic", "keto friendly", "atkins", "cetogenica", "cetogenico",
        "cetogenicas", "cetogenicos"), tag="low_carb", implies=("low_carb",),
        note="Keto: every meal is low-carb, with no grains or added sugar (keto is about "
             "20-50 g carbs a day).",
        note_es="Keto: todas las comidas son bajas en carbohidratos, sin cereales ni azúcar "
                "añadido (keto son unos 20-50 g de carbohidratos al día)."),
    Diet("low_carb", "low-carb", "bajo en carbohidratos", (
        "low carb", "low carbs", "no carb", "no carbs", "carb free", "low carbohydrate",
        "low carbohydrates", "bajo en carbohidratos", "baja en carbohidratos",
        "bajos en carbohidratos", "bajas en carbohidratos", "sin carbohidratos",
        "pocos carbohidratos"), tag="low_carb"),
    Diet("paleo", "paleo", "paleo", (
        "paleo", "paleolithic", "caveman diet", "paleolitica", "paleolitico", "dieta paleo"),
        note="Paleo: no grains, legumes, dairy or refined sugar.",
        note_es="Paleo: sin cereales, legumbres, lácteos ni azúcar refinado.",
        summary="Paleo: meat, fish, eggs, vegetables, fruit, nuts and seeds; no grains, "
                "legumes, dairy or refined sugar. Get calcium from greens, almonds and canned "
                "fish with bones.",
        summary_es="Paleo: carne, pescado, huevo, verduras, fruta, frutos secos y semillas; sin "
                   "cereales, legumbres, lácteos ni azúcar refinado. El calcio, de hojas "
                   "verdes, almendras y pescado en lata con espinas."),
    Diet("halal", "halal", "halal", (
        "halal", "zabiha", "zabihah", "muslim", "muslims", "musulman", "musulmana",
        "musulmanes", "musulmanas"),
         note="Halal: no pork or alcohol. Buy halal meat and poultry.",
         note_es="Halal: sin cerdo ni alcohol. Compra carne y pollo halal.",
         summary="Halal: no pork or pork products (bacon, ham, lard, gelatin) and no alcohol, "
                 "wine included, in food or cooking. Meat and poultry must be bought halal; "
                 "check labels of sweets and sauces for gelatin or alcohol.",
         summary_es="Halal: sin cerdo ni derivados (tocino, jamón, manteca, gelatina) y sin "
                    "alcohol, vino incluido, en la comida ni al cocinar. La carne y el pollo "
                    "deben comprarse halal; revisa en las etiquetas de dulces y salsas si "
                    "llevan gelatina o alcohol."),
    Diet("kosher", "kosher", "kosher", (
        "kosher", "kasher", "kashrut", "casher", "keep kosher", "jewish", "judio", "judia",
        "judios", "judias"),
         note="Kosher: no pork or shellfish, and meat and dairy are never in the same meal. "
              "Buy kosher-certified meat.",
         note_es="Kosher: sin cerdo ni mariscos, y nunca carne con lácteos en la misma comida. "
                 "Compra carne con certificación kosher.",
         summary="Kosher: no pork or shellfish, fish only with fins and scales, and never meat "
                 "with dairy in the same meal. Buy kosher-certified meat and packaged foods.",
         summary_es="Kosher: sin cerdo ni mariscos, solo pescado con aletas y escamas, y nunca "
                    "carne con lácteos en la misma comida. Compra carne y envasados con "
                    "certificación kosher."),
    # --- preferences -----------------------------------------------------------------------
    Diet("high_protein", "high-protein", "alto en proteína", (
        "high protein", "protein rich", "muscle", "bulking", "more protein", "alto en proteina",
        "alta en proteina", "altos en proteina", "rico en proteina", "rica en proteina",
        "mas proteina", "proteica", "proteico"), PREFERENCE, tag="high_protein"),
    Diet("flexitarian", "flexitarian", "flexitariano", (
        "flexitarian", "flexitarians", "flexitariano", "flexitariana"), PREFERENCE,
        tag="vegetarian",
        summary="Flexitarian: mostly plant-based meals (beans, lentils, tofu, eggs, dairy) "
                "with meat or fish now and then.",
        summary_es="Flexitariano: sobre todo comidas vegetales (legumbres, tofu, huevo, "
                   "lácteos) y carne o pescado de vez en cuando."),
    # --- diets the content cannot honour ----------------------------------------------------
    _unsupported("low_fodmap", "low-FODMAP", "baja en FODMAP", (
        "low fodmap", "fodmap", "fodmaps", "bajo en fodmap", "baja en fodmap",
        "dieta fodmap"),
        "my meals aren't checked for FODMAPs (garlic, onion, wheat, beans, some fruit)",
        "mis comidas no están revisadas para los FODMAP (ajo, cebolla, trigo, legumbres, "
        "algunas frutas)", medical=True),
    _unsupported("renal", "renal (kidney)", "renal", (
        "renal", "renal diet", "kidney diet", "kidney disease", "ckd", "dialysis",
        "dieta renal", "enfermedad renal", "insuficiencia renal", "dialisis"),
        "it limits sodium, potassium, phosphorus and protein, which my meals don't track",
        "limita sodio, potasio, fósforo y proteína, que mis comidas no controlan",
        medical=True),
    _unsupported("low_sodium", "low-sodium", "baja en sodio", (
        "low sodium", "low salt", "salt free", "no salt", "without salt", "sodium free",
        "no sodium", "no added salt", "dash diet", "bajo en sodio", "baja en sodio",
        "bajo en sal", "baja en sal", "sin sal", "hiposodica", "hiposodico", "sin sodio",
        "dieta dash", "poca sal"),
        "my meals don't track sodium (canned foods, sauces and bacon are salty)",
        "mis comidas no controlan el sodio (las latas, salsas y el tocino son salados)",
        medical=True, topic="blood_pressure"),
    _unsupported("diabetic", "diabetic", "para diabetes", (
        "diabetic", "diabetics", "diabetes", "prediabetes", "prediabetic",
        "gestational diabetes", "blood sugar", "diabetico", "diabetica", "diabeticos",
        "diabeticas", "diabetes gestacional", "azucar en la sangre"),
        "carbs and timing have to be set with your care team",
        "los carbohidratos y los horarios se fijan con tu equipo médico",
        medical=True, topic="diabetes"),
    _unsupported("low_fat", "low-fat", "baja en grasa", (
        "low fat", "fat free", "no fat", "nonfat", "non fat", "lowfat", "bajo en grasa",
        "baja en grasa", "bajo en grasas", "baja en grasas", "sin grasa", "sin grasas"),
        "my meals don't track fat", "mis comidas no controlan la grasa"),
    _unsupported("heart", "low-cholesterol", "baja en colesterol", (
        "low cholesterol", "heart healthy", "cardiac diet", "cholesterol lowering",
        "bajo en colesterol", "baja en colesterol", "cardiosaludable"),
        "my meals don't track cholesterol or saturated fat",
        "mis comidas no controlan el colesterol ni la grasa saturada",
        medical=True, topic="heart_health"),
    _unsupported("aip", "AIP (autoimmune protocol)", "AIP (protocolo autoinmune)", (
        "aip", "autoimmune protocol", "autoimmune paleo", "protocolo autoinmune"),
        "it rules out eggs, nightshades, nuts, seeds and more, and is meant to be done with "
        "a clinician", "excluye huevo, solanáceas, frutos secos, semillas y más, y se hace "
        "con un profesional", medical=True),
    _unsupported("whole30", "Whole30", "Whole30", ("whole30", "whole 30"),
                 "it has label rules (additives, any added sugar) I can't check",
                 "tiene reglas de etiquetas (aditivos, cualquier azúcar añadido) que no puedo "
                 "revisar"),
    _unsupported("jain", "Jain", "jainista", (
        "jain", "jains", "jainism", "jaina", "jainista", "jainistas"),
        "it also rules out root vegetables (onion, garlic, potato, carrot), which my meals "
        "aren't marked for",
        "también excluye raíces (cebolla, ajo, papa, zanahoria), y mis comidas no están "
        "marcadas para eso"),
    _unsupported("sattvic", "sattvic (Ayurvedic)", "sátvica (ayurvédica)", (
        "sattvic", "satvik", "satvic", "ayurvedic", "ayurveda", "satvica", "ayurvedica")),
    _unsupported("carnivore", "carnivore", "carnívora", (
        "carnivore", "carnivore diet", "lion diet", "dieta carnivora", "carnivoro",
        "carnivora"),
        "every meal I have includes plants", "todas mis comidas llevan vegetales"),
    _unsupported("raw", "raw-food", "crudivegana", (
        "raw vegan", "raw food", "raw foods", "raw diet", "rawfood", "crudivegano",
        "crudivegana", "crudiveganos", "crudivegetariano", "crudivorismo", "crudivora",
        "crudivoro", "alimentacion cruda"),
        "most of my meals are cooked", "la mayoría de mis comidas son cocinadas"),
    _unsupported("fruitarian", "fruitarian", "frugívora", (
        "fruitarian", "frutariano", "frutariana", "frugivoro", "frugivora"),
        "my meals are not fruit only", "mis comidas no son solo fruta"),
    _unsupported("macrobiotic", "macrobiotic", "macrobiótica", (
        "macrobiotic", "macrobiotica", "macrobiotico")),
    _unsupported("mediterranean", "Mediterranean", "mediterránea", (
        "mediterranean", "mediterranea", "mediterraneo", "mediterraneas")),
    _unsupported("low_histamine", "low-histamine", "baja en histamina", (
        "low histamine", "histamine", "histamine intolerance", "histamina",
        "baja en histamina"),
        "my meals aren't checked for histamine", "mis comidas no están revisadas para la "
        "histamina", medical=True),
    _unsupported("low_oxalate", "low-oxalate", "baja en oxalatos", (
        "low oxalate", "oxalate", "oxalates", "kidney stones", "oxalato", "oxalatos",
        "calculos renales"),
        "my meals aren't checked for oxalates", "mis comidas no están revisadas para los "
        "oxalatos", medical=True),
    _unsupported("low_purine", "low-purine (gout)", "baja en purinas (gota)", (
        "low purine", "purine", "purines", "gout", "purinas", "baja en purinas",
        "acido urico", "uric acid"),
        "my meals aren't checked for purines", "mis comidas no están revisadas para las "
        "purinas", medical=True),
    _unsupported("lectin_free", "lectin-free", "sin lectinas", (
        "lectin", "lectins", "lectin free", "plant paradox", "lectinas", "sin lectinas")),
    _unsupported("low_fiber", "low-fiber", "baja en fibra", (
        "low fiber", "low fibre", "low residue", "bajo en fibra", "baja en fibra",
        "bajo en residuos", "baja en residuos"),
        "my meals don't track fiber", "mis comidas no controlan la fibra", medical=True),
    _unsupported("high_fiber", "high-fiber", "alta en fibra", (
        "high fiber", "high fibre", "fiber rich", "fibre rich", "alto en fibra",
        "alta en fibra", "rico en fibra", "rica en fibra"),
        "my meals don't track fiber", "mis comidas no controlan la fibra", topic="fiber"),
    _unsupported("low_glycemic", "low-glycemic", "de bajo índice glucémico", (
        "low glycemic", "low gi", "glycemic index", "glycaemic index", "indice glucemico",
        "bajo indice glucemico"),
        "my meals don't track the glycemic index", "mis comidas no controlan el índice "
        "glucémico"),
    _unsupported("digestive", "digestive-condition", "para problemas digestivos", (
        "ibs", "irritable bowel", "crohn", "crohns", "colitis", "gerd", "acid reflux",
        "gastritis", "diverticulitis", "reflujo", "colon irritable", "intestino irritable"),
        "my meals aren't checked for it", "mis comidas no están revisadas para eso",
        medical=True),
    _unsupported("texture", "soft or liquid", "blanda o líquida", (
        "soft food", "soft foods", "soft diet", "pureed", "liquid diet", "clear liquid",
        "full liquid", "dysphagia", "bland diet", "brat diet", "dieta blanda", "dieta liquida",
        "triturada", "triturados", "disfagia"),
        "my meals aren't adapted for texture", "mis comidas no están adaptadas de textura",
        medical=True),
    _unsupported("pregnancy", "pregnancy", "embarazo", (
        "pregnant", "pregnancy", "expecting a baby", "prenatal", "embarazada", "embarazadas",
        "embarazo", "gestante"),
        "my meals aren't checked for it (smoked fish, deli meat, mercury)",
        "mis comidas no están revisadas para eso (pescado ahumado, fiambres, mercurio)",
        medical=True, topic="pregnancy"),
    _unsupported("fasting", "intermittent-fasting", "de ayuno intermitente", (
        "intermittent fasting", "fasting", "omad", "one meal a day", "time restricted eating",
        "16 8", "ayuno", "ayuno intermitente", "ayunar", "ayunas"),
        "my plans have breakfast, lunch and dinner and don't fit an eating window",
        "mis planes tienen desayuno, almuerzo y cena y no se ajustan a una ventana de comidas",
        topic="intermittent_fasting"),
    _unsupported("brand", "commercial", "comercial", (
        "weight watchers", "ww points", "south beach", "zone diet", "dukan", "blood type diet",
        "slimming world", "noom", "optavia", "nutrisystem", "herbalife", "cabbage soup diet",
        "master cleanse", "detox", "juice cleanse", "dieta de la zona", "dieta dukan",
        "grupo sanguineo", "dieta detox", "desintoxicacion"),
        "its rules and points aren't in my meals", "sus reglas y puntos no están en mis "
        "comidas"),
    _unsupported("hindu", "Hindu", "hindú", ("hindu", "hindus", "hinduism", "hinduismo"),
                 "Hindu diets differ (many are vegetarian, most leave out beef)",
                 "las dietas hindúes varían (muchas son vegetarianas, casi todas sin res)"),
    _unsupported("unprocessed", "unprocessed-food", "sin procesados", (
        "no processed", "processed food", "processed foods", "ultra processed",
        "ultraprocessed", "whole foods only", "unprocessed", "sin procesados",
        "sin ultraprocesados", "ultraprocesados", "ultraprocesado", "comida procesada",
        "alimentos procesados"),
        "some of my meals use packaged foods (bacon, deli turkey, sauces, bread)",
        "algunas comidas usan envasados (tocino, fiambre de pavo, salsas, pan)"),
    _unsupported("elimination", "elimination", "de eliminación", (
        "elimination diet", "gaps diet", "specific carbohydrate diet", "dieta de eliminacion"),
        medical=True),
)
DIET_BY_KEY: Mapping[str, Diet] = {d.key: d for d in DIETS}
HARD_DIETS = frozenset(d.key for d in DIETS if d.kind == RULE)
SOFT_DIETS = frozenset(d.key for d in DIETS if d.kind == PREFERENCE)
UNSUPPORTED_DIETS = frozenset(d.key for d in DIETS if d.kind == UNSUPPORTED)
# Phrases (as `read_words` gives them) by diet key: every diet word recognised.
DIET_PHRASES: Mapping[str, tuple[str, ...]] = {d.key: d.phrases for d in DIETS}
_DIET_PHRASE_LIST: tuple[tuple[tuple[str, ...], str], ...] = tuple(sorted(
    ((tuple(p.split()), d.key) for d in DIETS for p in d.phrases),
    key=lambda pair: -len(pair[0])))
# The same, each phrase with its stems (stemmed once, not once per message).
_DIET_PHRASES_STEMMED: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = tuple(
    (phrase, stems(phrase), key) for phrase, key in _DIET_PHRASE_LIST)
# Words before a diet that negate it: "not vegan", "no soy vegana", "I'm no longer vegetarian".
_NEGATIONS: tuple[tuple[str, ...], ...] = tuple(tuple(t.split()) for t in (
    "not", "non", "isnt", "arent", "no longer", "not a", "not an", "never", "no soy",
    "no somos", "no es", "no son", "no estoy", "no sea", "nunca", "ya no", "no soy un",
    "no soy una", "no", "sin ser", "nada de",
))
# Words of a request that name a diet generically ("a balanced diet"): no diet is missing.
_GENERIC_DIET_WORDS = frozenset({
    "balanced", "healthy", "normal", "regular", "strict", "current", "clean", "whole",
    "simple", "varied", "usual", "special", "proper", "standard", "typical", "new", "own",
    "custom", "sensible", "sustainable", "realistic", "flexible", "personalized",
    "personalised", "tailored", "restrictive", "easy", "good", "better", "cheap", "equilibrada",
    "equilibrado", "balanceada", "balanceado", "sana", "sano", "saludable", "estricta",
    "estricto", "nueva", "nuevo", "variada", "variado", "completa", "completo", "actual",
    "buena", "bueno", "facil", "economica", "casera", "habitual", "especial", "personal",
    "personalizada", "semanal", "diaria",
})

GOAL_PHRASES: Mapping[str, tuple[str, ...]] = {
    "lose": ("lose weight", "losing weight", "weight loss", "lose fat", "fat loss", "slim down",
             "to lose", "cutting", "calorie deficit", "low calorie", "low calories", "low cal",
             "bajar de peso", "perder peso", "bajar peso", "adelgazar", "perdida de peso",
             "quemar grasa", "deficit calorico", "bajo en calorias", "baja en calorias",
             "bajas en calorias", "bajos en calorias", "hipocalorica", "hipocalorico"),
    "gain": ("gain weight", "put on weight", "weight gain", "gain muscle", "build muscle",
             "bulk", "bulking", "gaining weight", "high calorie", "subir de peso", "ganar peso",
             "aumentar de peso", "engordar", "ganar musculo", "ganar masa muscular",
             "volumen", "alto en calorias", "hipercalorica", "hipercalorico"),
    "maintain": ("maintain weight", "maintain my weight", "maintenance", "mantener peso",
                 "mantener mi peso", "mantenimiento"),
}
MEAL_WORDS: Mapping[str, str] = {
    "breakfast": "breakfast", "breakfasts": "breakfast", "brunch": "breakfast",
    "desayuno": "breakfast", "desayunos": "breakfast", "desayunar": "breakfast",
    "lunch": "lunch", "lunches": "lunch", "almuerzo": "lunch", "almuerzos": "lunch",
    "almorzar": "lunch", "dinner": "dinner", "dinners": "dinner", "supper": "dinner",
    "cena": "dinner", "cenas": "dinner", "cenar": "dinner", "snack": "snack",
    "snacks": "snack", "merienda": "snack", "meriendas": "snack", "tentempie": "snack",
    "botana": "snack", "botanas": "snack", "dessert": "snack", "desserts": "snack",
    "postre": "snack", "postres": "snack",
}
# Exclusion triggers, as word tuples. `_BEFORE`: the excluded thing follows ("without eggs");
# `_AFTER`: it comes first ("nut free", "peanut allergy"). Weak triggers ("no", "X free") only
# take names of the content (a family, a food, an ingredient), so "no problem" excludes nothing.
_BEFORE_STRONG: tuple[tuple[str, ...], ...] = tuple(tuple(t.split()) for t in (
    "without", "free of", "free from", "allergic to", "allergy to", "allergies to",
    "alergic to", "anaphylactic to", "anaphylaxis to", "intolerant to", "intolerance to",
    "sensitive to", "i dont eat", "i do not eat", "dont eat",
    "i cant eat", "i cannot eat", "cant eat", "cannot eat", "i cant have", "cant have",
    "i dont like", "dont like", "do not like", "i hate", "i avoid", "avoid", "avoiding",
    "except", "excluding", "exclude", "hold the", "skip the", "skip", "nothing with",
    "not a fan of", "leave out", "minus", "i dont drink", "dont drink", "i do not drink",
    "i never drink", "i never eat", "never eat", "no bebo", "no consumo", "no puedo tomar",
    "sin", "alergico a", "alergica a", "alergico al", "alergica al", "alergicos a",
    "alergicas a", "alergia a", "alergia al", "alergias a", "intolerante a", "intolerante al",
    "intolerancia a", "intolerancia al", "no como", "no puedo comer", "no tomo", "no me gusta",
    "no me gustan", "odio", "libre de", "libres de", "excepto", "evito", "evitar", "nada de",
    "no quiero", "menos",
))
# Triggers of an allergy or intolerance: "not" before them means there is none.
_ALLERGY_TRIGGERS = frozenset(t for t in _BEFORE_STRONG if t[0] in {
    "allergic", "allergy", "allergies", "alergic", "anaphylactic", "anaphylaxis", "intolerant",
    "intolerance", "sensitive", "alergico", "alergica", "alergicos", "alergicas", "alergia",
    "alergias", "intolerante", "intolerancia"})
_BEFORE_WEAK: tuple[tuple[str, ...], ...] = tuple(tuple(t.split()) for t in (
    "no", "zero", "not", "low", "less", "reduced", "limited", "minimal", "little",
    "bajo en", "baja en", "bajos en", "bajas en", "poco", "poca", "pocos", "pocas", "menos",
))
# What often follows "no" without being something to leave out ("no worries").
_NOT_EXCLUSIONS = frozenset({
    "problem", "problems", "worries", "worry", "thanks", "thank", "idea", "rush", "hurry",
    "pressure", "matter", "clue", "doubt", "biggie", "probs", "prob", "stress", "longer",
    "sure", "tengo", "quiero", "puedo", "gracias", "importa", "prisa", "problema", "hay",
    "busy", "budget", "money", "cooking", "time", "tiempo",
})
_AFTER_WEAK: tuple[tuple[str, ...], ...] = tuple(tuple(t.split()) for t in (
    "free", "allergy", "allergies", "intolerance", "intolerant", "allergic", "sensitivity",
    "anaphylaxis",
))
_ARTICLES = frozenset({"the", "any", "a", "an", "all", "el", "la", "los", "las", "al", "un",
                       "una", "del", "de", "ningun", "ninguna", "my", "mi"})
_CONNECTORS = frozenset({"and", "or", "nor", "y", "o", "ni", "e", "u", "plus"})
# Words that follow an exclusion trigger without naming an ingredient ("I hate cooking").
_NOT_INGREDIENTS = frozenset({
    "cooking", "baking", "frying", "waiting", "cleaning", "washing", "dishes", "mess", "fuss",
    "hassle", "stress", "worry", "guilt", "prep", "prepping", "effort", "spending", "chopping",
    "oven", "stove", "microwave", "blender", "cruelty", "tax", "charge", "cost", "money",
    "cocinar", "horno", "estufa", "licuadora", "complicaciones", "prisa", "esfuerzo",
    "microondas", "cocina", "coccion", "problema", "problemas", "nada",
})
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
    "hola", "gracias", "algo", "alguna", "algun", "but", "pero", "though", "plz",
    "pls", "soy", "estoy", "somos", "dieta", "diets", "dietas", "friendly", "style", "estilo",
    "fine", "bien", "sure",
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
        terms: stemmed word sequences; an ingredient line holding one is excluded. They include
            the composites that contain the family ("caesar dressing" for fish).
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


@dataclass(frozen=True)
class Pair:
    """Two families a diet never allows in one meal or recipe (kosher: meat with dairy)."""

    first: Exclusion
    second: Exclusion

    @property
    def key(self) -> str:
        """E.g. "meat+dairy"."""
        return f"{self.first.key}+{self.second.key}"

    def label_in(self, language: str) -> str:
        """"meat with dairy" / "carne con lácteos"."""
        joiner = " con " if language == "es" else " with "
        return self.first.label_in(language) + joiner + self.second.label_in(language)

    def broken_by(self, lines: tuple[str, ...]) -> bool:
        """Whether `lines` hold both families."""
        return (any(self.first.matches(line) for line in lines)
                and any(self.second.matches(line) for line in lines))


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
        diets: keys of `DIETS` asked for (rules and preferences, with what they imply: vegan
            is also vegetarian and dairy free; keto is low carb); not those said in the
            negative.
        exclusions: what the person asked to leave out, in order ("without eggs": egg).
        diet_exclusions: what the rule diets rule out (vegan: meat, fish, dairy, egg, ...).
        pairs: families a rule diet never allows together in one meal (kosher: meat, dairy).
        unsupported: keys of the `UNSUPPORTED` diets named (low FODMAP, renal, ...).
        unknown_diets: words naming a diet that is not known ("zorblax" in "zorblax diet").
        unverifiable: what the person asked to leave out that the content cannot check
            ("nightshade" would be, were it not a family: an unknown "X-free").
        excluded_slots: meals of the day asked to be left out ("no snacks": {"snack"}).
        excluded_at: indexes of the words that name what is left out ("nuts" in "allergic to
            nuts"), so advice about nuts is not given for them.
        remembered: the keys of `exclusions` and `diets` that this message did not name but the
            person told the bot before (`bot.allergies.with_allergies`): honoured like the
            others, but not answered about as if this message asked.
        calories: a daily calorie target in kcal when one was named, as written (any size:
            an 800 kcal request is kept so that the skill can refuse it).
        goal: "lose", "gain", "maintain" or None.
        days: days a plan should cover when named ("week" is 7; may exceed 7).
        people: how many people when named ("for 4 people", "familia de 4").
        foods: foods named (not those excluded), with servings.
        meal: "breakfast", "lunch", "dinner" or "snack" when one was named (not excluded).
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
    pairs: tuple[Pair, ...] = ()
    unsupported: tuple[str, ...] = ()
    unknown_diets: tuple[str, ...] = ()
    unverifiable: tuple[str, ...] = ()
    excluded_slots: frozenset[str] = frozenset()
    excluded_at: frozenset[int] = frozenset()
    remembered: frozenset[str] = frozenset()

    @property
    def hard_diets(self) -> frozenset[str]:
        """The diets that are rules (`HARD_DIETS`)."""
        return self.diets & HARD_DIETS

    @property
    def soft_diets(self) -> frozenset[str]:
        """The diets that are preferences (`SOFT_DIETS`)."""
        return self.diets & SOFT_DIETS

    @property
    def required_tags(self) -> frozenset[str]:
        """Content tags every meal and recipe shown must carry (the rule diets' tags)."""
        return diet_tags(self.hard_diets)

    @property
    def preferred_tags(self) -> frozenset[str]:
        """Content tags preferred (the preferences' tags), beyond the required ones."""
        return diet_tags(self.soft_diets) - self.required_tags

    @property
    def all_exclusions(self) -> tuple[Exclusion, ...]:
        """The person's exclusions, then the diets'."""
        return self.exclusions + self.diet_exclusions

    @property
    def honourable(self) -> bool:
        """Whether everything asked can be checked against the content (no unsupported or
        unknown diet, nothing to leave out that the content cannot check)."""
        return not (self.unsupported or self.unknown_diets or self.unverifiable)

    def violation(self, ingredients: Iterable[str]) -> Exclusion | Pair | None:
        """The first exclusion (the person's or a diet's), or forbidden pair, that
        `ingredients` break, or None when the list is allowed."""
        lines = tuple(ingredients)
        for exclusion in self.all_exclusions:
            if any(exclusion.matches(line) for line in lines):
                return exclusion
        for pair in self.pairs:
            if pair.broken_by(lines):
                return pair
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

    @property
    def own_exclusions(self) -> tuple[Exclusion, ...]:
        """The exclusions this message named (not the remembered ones)."""
        return tuple(e for e in self.exclusions if e.key not in self.remembered)

    @property
    def own_diets(self) -> frozenset[str]:
        """The diets this message named, with what they imply (not the remembered ones)."""
        return self.diets - self.remembered

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
                        for w in p.split()) | frozenset(
    w for phrases in GOAL_PHRASES.values() for p in phrases for w in p.split()
    if w not in {"weight", "peso", "muscle", "musculo", "fat", "grasa"})


def diet_tags(diets: Iterable[str]) -> frozenset[str]:
    """The content tags of `diets` (keto: low_carb; halal: none)."""
    return frozenset(tag for d in diets if d in DIET_BY_KEY
                     for tag in (DIET_BY_KEY[d].tag,) if tag)


# Messages parsed per `Knowledge`, kept by (text, language), most recently used first. The
# parse is a pure function of the three and its `Constraints` are frozen, so a message that
# comes again ("vegan meal plan", "receta sin gluten") is read once. A parse of a message of
# a few words costs 0.2-0.3 ms of CPU, and one turn may ask for it more than once (the
# classifier's doubt, `llm_classify.unsure`; the skill; the earlier message of a follow-up)
# (docs/pipeline.md, "Statements and CPU per answered message").
PARSE_CACHE_SIZE = 8192


def parse_constraints(text: str, knowledge: Knowledge, language: str | None = None
                      ) -> Constraints:
    """Read `text` into `Constraints`, using the names of `knowledge`.

    Args:
        text: the person's message.
        knowledge: the content (its foods, families and ingredients are the vocabulary).
        language: "en" or "es" to force the language; None (or any other value) detects it
            from `text`.

    Returns:
        The constraints (frozen; the same object for the same arguments while it is among
        the `PARSE_CACHE_SIZE` most recently parsed).
    """
    parse = _derived("parser", knowledge, _build_parser)
    return parse(text, language if language in ("en", "es") else None)


def _build_parser(knowledge: Knowledge) -> Callable[[str, str | None], Constraints]:
    def parse(text: str, language: str | None) -> Constraints:
        return _parse_constraints(text, knowledge, language)

    return functools.lru_cache(maxsize=PARSE_CACHE_SIZE)(parse)


def _parse_constraints(text: str, knowledge: Knowledge, language: str | None) -> Constraints:
    """`parse_constraints`, uncached."""
    detected = detect_language(text)
    lang = language if language in ("en", "es") else detected
    # Spanish food names count when the text reads as Spanish, whatever the reply language.
    names_language = "es" if "es" in (lang, detected) else "en"
    vocabulary = _vocabulary(knowledge)
    words, commas = _words_and_commas(read_words(text, commas=True), vocabulary)
    if detected == "es":
        words = _spanish_soy(words, commas)
    taken: set[int] = set()

    diet_spans: dict[int, int] = {}
    index = _exclusion_index(knowledge)
    diets, unsupported = _diets(words, taken, diet_spans, index, commas)
    found = _exclusions(words, taken, index, knowledge, detected == "es", vocabulary,
                        diet_spans, commas)
    unknown_diets = _unknown_diets(words, taken, vocabulary)
    diet_exclusions, pairs = diet_rules(knowledge, diets)
    calories = _calories(words, taken)
    days = _days(words)
    people = _people(words)
    goal = _phrase_key(words, GOAL_PHRASES)
    body = _body(words)
    foods = find_foods(words, knowledge, names_language, taken)
    meal = next((MEAL_WORDS[w] for i, w in enumerate(words) if w in MEAL_WORDS
                 and i not in taken), None)
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
        exclusions=found.exclusions,
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
        pairs=pairs,
        unsupported=unsupported,
        unknown_diets=unknown_diets,
        unverifiable=found.unverifiable,
        excluded_slots=found.slots,
        excluded_at=found.named,
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


# Spanish "soy" is the food after these words ("sin soy", "salsa de soy", "a la soy").
_SOY_FOOD_AFTER = frozenset({"sin", "de", "la", "con", "salsa", "leche", "yogur", "proteina"})
# ... and after a list word when the list ends with it ("sin gluten ni soy").
_SOY_LIST_AFTER = frozenset({"ni", "o", "u", "y", "e"})
_LIST_ENDS = frozenset({"por", "para", "porfa", "gracias", "please", "y", "o", "ni", "e", "u"})


def _spanish_soy(words: tuple[str, ...], commas: frozenset[int]) -> tuple[str, ...]:
    """Spanish words with "soy" the food written "soja", and "soy" the verb ("I am") kept:
    "soy vegana", "soy alérgico al maní", "no soy vegana" are the verb; "sin soy", "salsa de
    soy", "sin gluten ni soy" the food."""
    out = list(words)
    for i, word in enumerate(words):
        if word != "soy" or i == 0:
            continue
        before = words[i - 1]
        after = words[i + 1] if i + 1 < len(words) else ""
        ends_list = (before in _SOY_LIST_AFTER or i - 1 in commas) and (
            not after or i in commas or after in _LIST_ENDS)
        if before in _SOY_FOOD_AFTER or ends_list:
            out[i] = "soja"
    return tuple(out)


# --- vocabulary --------------------------------------------------------------------------------

_T = TypeVar("_T")
# What is derived from one `Knowledge` (a few at most: the shipped content, a test's own),
# keyed by its id and kept with it, so a new object at a reused id is never mistaken for it.
_DERIVED: dict[tuple[str, int], tuple[Knowledge, Any]] = {}


def _derived(name: str, knowledge: Knowledge, build: Callable[[Knowledge], _T]) -> _T:
    """`build(knowledge)`, computed once per `Knowledge` object and kept (at most 48)."""
    key = (name, id(knowledge))
    cached = _DERIVED.get(key)
    if cached is not None and cached[0] is knowledge:
        return cast(_T, cached[1])
    value = build(knowledge)
    if len(_DERIVED) >= 48:
        _DERIVED.clear()
    _DERIVED[key] = (knowledge, value)
    return value


def _vocabulary(knowledge: Knowledge) -> frozenset[str]:
    """Every word the content and the parsers know, for typo correction and `unknown`."""
    return _derived("vocabulary", knowledge, _build_vocabulary)


def _build_vocabulary(knowledge: Knowledge) -> frozenset[str]:
    words: set[str] = set(CLASSIFIER_VOCABULARY) | STOPWORDS | set(NUMBER_WORDS) | set(UNITS)
    texts: list[str] = []
    for food in knowledge.foods:
        texts += [food.name, *food.aliases, food.name_es, *food.aliases_es]
    for recipe in knowledge.recipes:
        texts += [recipe.name, recipe.name_es, *recipe.keywords, *recipe.ingredients,
                  *recipe.ingredients_es]
    for meal in knowledge.meals:
        texts += [meal.name, meal.name_es, *meal.groceries]
    for family in knowledge.families:
        texts += [*family.names, *family.names_es, *family.terms]
    for name, parts in knowledge.composites.items():
        texts += [name, *parts]
    for topic in knowledge.topics:
        texts += list(topic.triggers)
    texts += list(knowledge.items_es.values())
    phrase_tables: list[Iterable[str]] = [*DIET_PHRASES.values(), *GOAL_PHRASES.values(),
                                          MEAL_WORDS]
    for table in phrase_tables:
        texts += list(table)
    for trigger in (*_BEFORE_STRONG, *_AFTER_WEAK, *PLAN_REFERENCES, *RECIPE_REFERENCES,
                    *_NEGATIONS):
        words.update(trigger)
    for text in texts:
        words.update(w for w in read_words(text) if w.isalpha())
    words |= _CALORIE_UNITS | _DAY_WORDS | _WEEK_WORDS | _PEOPLE_WORDS | _FEMALE | _MALE
    words |= _NOT_INGREDIENTS | _GENERIC_DIET_WORDS
    words |= {"kg", "cm", "years", "old", "age", "tall", "weigh", "active", "sedentary",
              "lightly", "moderately", "inches", "feet", "pounds", "kilos", "libras",
              "anos", "edad", "peso", "mido", "activo", "activa", "sedentario", "sedentaria"}
    return frozenset(words)


# --- diets, goals, numbers ----------------------------------------------------------------

def _find(stemmed: tuple[str, ...], phrase: tuple[str, ...]) -> int:
    """The first index where `phrase` starts in the message's `stemmed` words (`stems` of
    both sides are compared), or -1."""
    size = len(phrase)
    target = stems(phrase)
    for start in range(len(stemmed) - size + 1):
        if stemmed[start:start + size] == target:
            return start
    return -1


def _has_phrase(words: tuple[str, ...], phrases: Iterable[tuple[str, ...]]) -> bool:
    stemmed = stems(words)
    return any(_find(stemmed, p) >= 0 for p in phrases)


def _phrase_key(words: tuple[str, ...], table: Mapping[str, tuple[str, ...]]) -> str | None:
    """The key of the earliest phrase of `table` found in `words`."""
    best: tuple[int, str] | None = None
    stemmed = stems(words)
    for key, phrases in table.items():
        for phrase in phrases:
            at = _find(stemmed, tuple(phrase.split()))
            if at >= 0 and (best is None or at < best[0]):
                best = (at, key)
    return best[1] if best else None


# The negations that undo an allergy ("not allergic to", "no soy alérgica a"): never a bare
# "no", which may be an answer ("no, allergic to nuts").
_ALLERGY_NEGATIONS = frozenset(n for n in _NEGATIONS
                               if n not in {("no",), ("non",), ("nada", "de"), ("sin", "ser")})


def _negated(words: tuple[str, ...], start: int, commas: frozenset[int] = frozenset(),
             allergy: bool = False) -> int:
    """How many words just before `start` negate what starts there ("not", "no soy"), 0 if
    none; a comma between ("no, vegan") is no negation."""
    negations = _ALLERGY_NEGATIONS if allergy else _NEGATIONS
    for negation in sorted(negations, key=len, reverse=True):
        size = len(negation)
        if (start >= size and words[start - size:start] == negation
                and not any(i in commas for i in range(start - size, start))):
            return size
    return 0


_EXCLUSION_STARTS = frozenset({"no", "sin", "without", "non", "libre"})


def _diets(words: tuple[str, ...], taken: set[int], spans: dict[int, int],
           index: Mapping[tuple[str, ...], _Target], commas: frozenset[int] = frozenset()
           ) -> tuple[frozenset[str], tuple[str, ...]]:
    """The diets named (with what they imply) and the unsupported ones, longest phrase first;
    their words are added to `taken`, their spans (start -> end) to `spans`. A diet said in the
    negative ("no soy vegana") takes its words but does not count. A diet phrase that is a
    trigger and a name ("sin carne") gives way to a longer name ("sin carne roja")."""
    stemmed = stems(words)
    present = frozenset(stemmed)
    found: set[str] = set()
    unsupported: list[str] = []
    for phrase, target, key in _DIET_PHRASES_STEMMED:
        if target[0] not in present:  # cheap test first; the order of phrases is kept
            continue
        size = len(phrase)
        for at in range(len(words) - size + 1):
            if stemmed[at:at + size] != target or any(i in taken for i in range(at, at + size)):
                continue
            if phrase[0] in _EXCLUSION_STARTS and size > 1:
                longer = _target_at(words, at + 1, index, taken)
                if longer is not None and longer[1] > size - 1:
                    continue
            negation = 0 if phrase[0] in _EXCLUSION_STARTS else _negated(words, at, commas)
            if negation == 1 and words[at - 1] == "no" and _target_at(
                    words, at, index, taken) is not None:
                negation = 0  # "no lactose": lactose is left out, the diet holds
            taken.update(range(at - negation, at + size))
            if negation:
                continue
            spans[at] = at + size
            if DIET_BY_KEY[key].kind == UNSUPPORTED:
                if key not in unsupported:
                    unsupported.append(key)
            else:
                found.add(key)
    pending = list(found)
    while pending:
        for implied in DIET_BY_KEY[pending.pop()].implies:
            if implied not in found:
                found.add(implied)
                pending.append(implied)
    return frozenset(found), tuple(unsupported)


_DIET_NOUNS = frozenset({"diet", "diets", "dieter", "dieting", "compliant"})
_DIET_NOUNS_ES = frozenset({"dieta", "dietas", "regimen"})


def _unknown_diets(words: tuple[str, ...], taken: set[int], vocabulary: frozenset[str]
                   ) -> tuple[str, ...]:
    """Words naming a diet that is not in `DIETS`: "zorblax" in "zorblax diet" or "dieta
    zorblax" (words the content and the parsers know, and generic ones, are not)."""
    found: list[str] = []
    for i, word in enumerate(words):
        if word in _DIET_NOUNS and i > 0:
            candidate = i - 1
        elif word in _DIET_NOUNS_ES and i + 1 < len(words):
            candidate = i + 1
        else:
            continue
        name = words[candidate]
        if (candidate in taken or not name.isalpha() or len(name) < 3 or name in vocabulary
                or name in COMMON_WORDS or name in _GENERIC_DIET_WORDS):
            continue
        if name not in found:
            found.append(name)
    return tuple(found)


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


def _composite_contents(knowledge: Knowledge
                        ) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """Each composite's name (stemmed words) with everything it contains, composites inside it
    expanded ("caesar dressing" holds worcestershire sauce, so anchovy and malt vinegar too)."""
    return _derived("composites", knowledge, _build_composite_contents)


def _build_composite_contents(knowledge: Knowledge
                              ) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    names = {stems(read_words(name)): name for name in knowledge.composites}

    def expand(name: str, seen: frozenset[str]) -> list[str]:
        parts: list[str] = []
        for part in knowledge.composites.get(name, ()):
            parts.append(part)
            words = stems(read_words(part))
            for key, inner in names.items():
                if inner not in seen and _contains(words, key):
                    parts += expand(inner, seen | {inner})
        return parts

    return tuple((key, tuple(dict.fromkeys(expand(name, frozenset({name})))))
                 for key, name in names.items() if key)


def _contains(words: tuple[str, ...], part: tuple[str, ...]) -> bool:
    size = len(part)
    return any(words[i:i + size] == part for i in range(len(words) - size + 1))


_EXPANDED: dict[tuple[int, Exclusion], tuple[Knowledge, Exclusion]] = {}


def with_composites(knowledge: Knowledge, exclusion: Exclusion) -> Exclusion:
    """`exclusion` with the composites that contain it among its terms: fish gets "caesar
    dressing" and "worcestershire sauce", garlic gets "hummus" and "salsa" (worked out once
    per exclusion)."""
    key = (id(knowledge), exclusion)
    cached = _EXPANDED.get(key)
    if cached is not None and cached[0] is knowledge:
        return cached[1]
    extra = [name for name, parts in _composite_contents(knowledge)
             if name not in exclusion.terms and any(exclusion.matches(p) for p in parts)]
    expanded = dataclasses.replace(exclusion, terms=exclusion.terms + tuple(extra)) \
        if extra else exclusion
    if len(_EXPANDED) >= 65536:
        _EXPANDED.clear()
    _EXPANDED[key] = (knowledge, expanded)
    return expanded


def family_exclusion(knowledge: Knowledge, key: str) -> Exclusion:
    """The family `key` as an `Exclusion`: its terms, those of the families it includes, and
    the composites that contain them."""
    return _family_exclusions(knowledge)[key]


_FAMILIES: dict[int, tuple[Knowledge, dict[str, Exclusion]]] = {}


def _family_exclusions(knowledge: Knowledge) -> dict[str, Exclusion]:
    """Every family as an `Exclusion` (included families and composites expanded), by key."""
    cached = _FAMILIES.get(id(knowledge))
    if cached is not None and cached[0] is knowledge:
        return cached[1]
    found: dict[str, Exclusion] = {}
    for family in knowledge.families:
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
        exclusion = Exclusion(
            key=family.key, label=family.label, label_es=family.label_es,
            terms=tuple(dict.fromkeys(t for t in terms if t)),
            exceptions=tuple(dict.fromkeys(e for e in exceptions if e and e not in term_set)),
        )
        found[family.key] = with_composites(knowledge, exclusion)
    if len(_FAMILIES) >= 16:
        _FAMILIES.clear()
    _FAMILIES[id(knowledge)] = (knowledge, found)
    return found


def _exclusion_index(knowledge: Knowledge) -> dict[tuple[str, ...], _Target]:
    """Names a person may exclude (stemmed words) -> what they exclude: families first, then
    foods (English and Spanish names), grocery items, family terms and composites, then any
    ingredient word of a recipe (a Spanish one stands for the English lines it translates)."""
    return _derived("exclusions", knowledge, _build_exclusion_index)


def _build_exclusion_index(knowledge: Knowledge) -> dict[tuple[str, ...], _Target]:
    index: dict[tuple[str, ...], _Target] = {}

    def add(name: str, target: _Target) -> None:
        key = stems(read_words(name))
        if key and key not in index:
            index[key] = target

    def item(name: str, label: str, label_es: str) -> Exclusion:
        return _item(name, label, label_es)  # composites are added when it is used

    families = _family_exclusions(knowledge)
    for family in knowledge.families:
        target = _Target(families[family.key], strong=True)
        for name in (*family.names, *family.names_es):
            add(name, target)
    for food in knowledge.foods:
        for name in (food.name, *food.aliases):
            add(name, _Target(item(name, name, food.name_es or name), strong=True))
        head = set(read_words(food.name))
        generic = [a for a in (food.name, *food.aliases) if set(read_words(a)) <= head]
        for name in (food.name_es, *food.aliases_es):
            terms = tuple(dict.fromkeys(stems(read_words(g)) for g in generic))
            add(name, _Target(Exclusion(food.name, food.name, food.name_es or food.name,
                                        terms), strong=True))
    for grocery in sorted({g for meal in knowledge.meals for g in meal.groceries}):
        spanish = knowledge.items_es.get(grocery, grocery)
        target = _Target(item(grocery, grocery, spanish), strong=True)
        add(grocery, target)
        add(spanish, target)
    for family in knowledge.families:
        for term in family.terms:
            add(term, _Target(item(term, term, term), strong=True))
    for name in knowledge.composites:
        add(name, _Target(item(name, name, name), strong=True))
    # Single words that name an ingredient: family terms, foods, grocery items.
    known = {stem(w) for family in knowledge.families for t in family.terms
             for w in read_words(t) if _ingredient_word(w) and len(read_words(t)) == 1}
    known |= {stem(w) for food in knowledge.foods for w in read_words(food.name)
              if _ingredient_word(w)}
    known |= {stem(w) for meal in knowledge.meals for g in meal.groceries
              for w in read_words(g)[-1:] if _ingredient_word(w)}
    spanish_lines: dict[str, list[str]] = {}
    for recipe in knowledge.recipes:
        for line in recipe.ingredients:
            for word in read_words(line):
                if _ingredient_word(word):
                    add(word, _Target(item(word, word, word), strong=True))
        for english, spanish_line in zip(recipe.ingredients, recipe.ingredients_es,
                                         strict=False):
            for word in read_words(spanish_line):
                if _ingredient_word(word):
                    spanish_lines.setdefault(word, []).append(english)
    for word, lines in spanish_lines.items():
        # The English word the lines share ("comino": "1 tsp cumin", "... and cumin" share
        # "cumin"), else the lines themselves.
        shared = set.intersection(*({stem(w) for w in read_words(line) if _ingredient_word(w)}
                                    for line in lines))
        if len(shared) > 1:
            # "pimentón": "1/2 tsp smoked paprika" -> "paprika", a name the content knows.
            shared = {w for w in shared if w in known} or shared
        said = tuple((w,) for w in sorted(shared)) + tuple(dict.fromkeys(
            stems(read_words(line)) for line in lines))
        add(word, _Target(Exclusion(word, word, word, said), strong=True))
    return index


_LINE_WORDS = frozenset({
    "sliced", "diced", "chopped", "minced", "grated", "cooked", "rinsed", "drained", "halved",
    "shredded", "crumbled", "mashed", "peeled", "pressed", "cubed", "spiralized", "juiced",
    "medium", "large", "small", "each", "pinch", "squeeze", "handful", "inch", "cloves",
    "clove", "stalks", "stalk", "head", "leaves", "slices", "slice", "fillets", "fillet",
    "picado", "picada", "picados", "picadas", "rallado", "rallada", "cocido", "cocida",
    "enjuagados", "enjuagadas", "escurrido", "tiras", "cubos", "rodajas", "mitades",
    "mediano", "medianos", "grande", "grandes", "pequenas", "pequenos", "pizca", "chorrito",
    "puñado", "punado", "dientes", "diente", "ramas", "rama", "hojas", "rebanadas", "filetes",
    "cada", "taza", "tazas", "lata", "latas", "litro", "seco", "secas", "secos", "crudo",
    "cruda", "crudos", "deshuesados", "prensado", "espiral", "desmenuzado", "laminados",
    "machacado", "machacados", "maduro", "jugo", "triturado", "troceado", "natural",
})


def _ingredient_word(word: str) -> bool:
    """Whether a word of an ingredient line may name what it is ("cilantro", "perejil"), not
    how much or how it is cut."""
    return (word.isalpha() and len(word) >= 4 and word not in STOPWORDS and word not in UNITS
            and stem(word) not in UNITS and word not in COMMON_WORDS
            and word not in _LINE_WORDS and word not in _ARTICLES)


def _item(name: str, label: str, label_es: str) -> Exclusion:
    return Exclusion(key=name, label=label, label_es=label_es,
                     terms=(stems(read_words(name)),))


_MAX_NAME_WORDS = 4


def _target_at(words: tuple[str, ...], start: int, index: Mapping[tuple[str, ...], _Target],
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


def _target_ending(words: tuple[str, ...], end: int, index: Mapping[tuple[str, ...], _Target],
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
            and word not in COMMON_WORDS and word not in _ARTICLES and word not in _CONNECTORS
            and word not in MEAL_WORDS)


@dataclass(frozen=True)
class _Found:
    """What the exclusion triggers of a message name."""

    exclusions: tuple[Exclusion, ...] = ()
    slots: frozenset[str] = frozenset()
    unverifiable: tuple[str, ...] = ()
    named: frozenset[int] = frozenset()


def _exclusions(words: tuple[str, ...], taken: set[int],
                index: Mapping[tuple[str, ...], _Target], knowledge: Knowledge, spanish: bool,
                vocabulary: frozenset[str], diet_spans: Mapping[int, int] | None = None,
                commas: frozenset[int] = frozenset()) -> _Found:
    """What the words ask to leave out; the words read are added to `taken`. After an
    excluded name, "and"/"or"/"ni" or a comma (indexes in `commas`) go on to the next one.

    A meal of the day after a trigger ("no snacks", "sin desayuno") is an excluded slot. An
    unknown word after a strong trigger ("without nightshades" were nightshades not a family)
    is excluded as written and, when no word the content knows, is `unverifiable`; so is an
    unknown word before "free" ("zorblax-free"). "Not allergic to" excludes nothing.
    """
    found: dict[str, Exclusion] = {}
    slots: set[str] = set()
    unverifiable: list[str] = []
    named: set[int] = set()
    diet_spans = diet_spans or {}
    diet_starts = frozenset(diet_spans)
    if spanish:
        # Spanish "soy" is "I am" ("soy vegana"); the food is written "soja" by `_spanish_soy`.
        index = {k: v for k, v in index.items() if k != ("soy",)}
    family_keys = {f.key for f in knowledge.families}

    def keep(exclusion: Exclusion) -> None:
        if exclusion.key not in found:
            found[exclusion.key] = with_composites(knowledge, exclusion)

    def literal(word: str) -> None:
        keep(Exclusion(key=word, label=word, label_es=word, terms=((stem(word),),)))
        if word not in vocabulary and word not in unverifiable:
            unverifiable.append(word)

    def name_at(at: int, strong: bool) -> bool:
        """Whether an excludable name (or a meal, or an unknown word after a strong trigger)
        starts at `at`."""
        if at >= len(words) or at in taken:
            return False
        if words[at] in MEAL_WORDS or _target_at(words, at, index, taken) is not None:
            return True
        return strong and _unknown_word(words[at]) and words[at] not in _NOT_INGREDIENTS

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
            negation = _negated(words, i, commas, allergy=True)
            if words[i:i + size] in _ALLERGY_TRIGGERS and negation:
                # "not allergic to nuts", "no soy alérgica al maní": nothing to leave out.
                end = at
                while end < len(words) and end - 1 not in commas and (
                        words[end] in _ARTICLES or name_at(end, True)
                        or words[end] in _CONNECTORS):
                    end += 1
                taken.update(range(i - negation, end))
                i = end
                continue
        consumed = list(range(i, at))
        while at < len(words):
            if items and words[at] in _CONNECTORS:
                after = at + 1
                while after < len(words) and words[after] in _ARTICLES:
                    after += 1
                if not name_at(after, False):
                    break
                consumed += list(range(at, after))
                at = after
            while at < len(words) and words[at] in _ARTICLES and at not in taken:
                consumed.append(at)
                at += 1
            hit = _target_at(words, at, index, taken) if at < len(words) else None
            if at < len(words) and at not in taken and words[at] in MEAL_WORDS and (
                    hit is None or hit[1] == 1):
                slots.add(MEAL_WORDS[words[at]])
                length = 1
            elif hit is not None:
                target, length = hit
                keep(target.exclusion)
            elif strong and not items and at < len(words) and words[at] in _NOT_INGREDIENTS:
                length = 1  # "I hate cooking": read, nothing to leave out
            elif strong and name_at(at, True):
                literal(words[at])
                length = 1
            elif (not strong and not items and at < len(words) and at not in taken
                  and words[i] == "no" and _unknown_word(words[at])
                  and words[at] not in vocabulary and words[at] not in _NOT_EXCLUSIONS
                  and words[at] not in _NOT_INGREDIENTS):
                # "no zorblax": something to leave out that no ingredient is known as.
                literal(words[at])
                length = 1
            else:
                break
            consumed += list(range(at, at + length))
            named.update(range(at, at + length))
            at += length
            items += 1
            if at - 1 in commas and at < len(words) and words[at] not in _CONNECTORS:
                after = at
                while after < len(words) and words[after] in _ARTICLES:
                    after += 1
                if name_at(after, strong):
                    consumed += list(range(at, after))
                    at = after
                    continue
                break
            if at < len(words) and words[at] in _CONNECTORS:
                after = at + 1
                while after < len(words) and words[after] in _ARTICLES:
                    after += 1
                if not name_at(after, strong):
                    break
                consumed += list(range(at, after))
                at = after
                continue
            nxt = _target_at(words, at, index, taken) if at < len(words) else None
            if nxt is None or nxt[0].exclusion.key not in family_keys:
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
                before = words[cursor - 1]
                if (not names and end not in diet_starts and cursor - 1 not in taken
                        and _unknown_word(before) and before not in vocabulary
                        and before not in _NOT_INGREDIENTS):
                    # "zorblax-free": something to leave out that no ingredient is known as.
                    literal(before)
                    names.append(cursor - 1)
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
            named.update(names)
            taken.add(end)
    return _Found(tuple(found.values()), frozenset(slots), tuple(unverifiable),
                  frozenset(named))


def _trigger_at(words: tuple[str, ...], at: int, taken: set[int]) -> tuple[int, bool] | None:
    """The exclusion trigger starting at `at` as (its length, strong), the longest first (of
    two as long, the strong one)."""
    best: tuple[int, bool] | None = None
    for trigger, strong in _TRIGGERS_BY_FIRST_WORD.get(words[at], ()):
        size = len(trigger)
        if (words[at:at + size] == trigger and (best is None or size > best[0])
                and not any(i in taken for i in range(at, at + size))):
            best = (size, strong)
    return best


def _triggers_by_first_word() -> dict[str, tuple[tuple[tuple[str, ...], bool], ...]]:
    """`_BEFORE_STRONG` then `_BEFORE_WEAK` as (trigger, strong), by first word, in that order
    (so `_trigger_at` looks only at the triggers that can start at a word)."""
    table: dict[str, list[tuple[tuple[str, ...], bool]]] = {}
    for triggers, strong in ((_BEFORE_STRONG, True), (_BEFORE_WEAK, False)):
        for trigger in triggers:
            table.setdefault(trigger[0], []).append((trigger, strong))
    return {word: tuple(entries) for word, entries in table.items()}


_TRIGGERS_BY_FIRST_WORD = _triggers_by_first_word()


def diet_rules(knowledge: Knowledge, diets: Iterable[str]
               ) -> tuple[tuple[Exclusion, ...], tuple[Pair, ...]]:
    """What the rule diets among `diets` rule out (bot/content/ingredients.yaml `diets`, as
    exclusions with composites) and the family pairs they never allow in one meal
    (`diet_pairs`)."""
    families = _family_exclusions(knowledge)
    keys: list[str] = []
    pairs: list[Pair] = []
    for diet in sorted(set(diets) & HARD_DIETS):
        keys += [k for k in knowledge.diet_families.get(diet, ()) if k not in keys]
        for first, second in knowledge.diet_pairs.get(diet, ()):
            pair = Pair(families[first], families[second])
            if pair not in pairs:
                pairs.append(pair)
    return tuple(families[k] for k in keys), tuple(pairs)
