"""Checking an LLM's answer, before it is sent, against what the person asked to leave out.

The offline skills check ingredient lists (`Constraints.violation`); an LLM answers in free
text, so this module reads the text itself. An answer breaks an exclusion when it names one of
its ingredients, in English or Spanish, singular or plural, and the mention is not a negated
one:

    "Breakfast: 2 eggs on toast"        -> breaks "no eggs"
    "Pancakes without eggs"            -> does not ("without", "no", "instead of", "sin", "ni")
    "A peanut-free granola"            -> does not ("X-free", "X allergy", "X substitute")
    "Gluten-free bread", "pan sin gluten", "vegan cheese", "almond milk" (for dairy)
                                        -> do not: the qualifier makes it something else

What an exclusion covers is the content's family data (bot/content/ingredients.yaml: "peanuts"
is peanut, peanut butter, groundnut, satay, ...; composites such as "caesar dressing" hold
what they contain), the families' Spanish names, and the Spanish names of the foods and grocery
items of the content that belong to it ("leche", "queso", "mantequilla" for dairy). The
exceptions of a family are removed first ("peanut butter" is not dairy). A rule diet is checked
through what it rules out (`Constraints.diet_exclusions`: meat and fish words in a vegetarian
answer); a forbidden pair (kosher: meat with dairy in one meal) is not, as free text does not say
reliably which foods share a meal.

An answer that gives advice rather than food to eat (`advice=True`) names foods to warn about
them ("satay sauce contains peanuts"), so there a mention in a sentence with a warning word
(avoid, contains, check the label, evita, lleva, ...) does not count either.

The check is deliberately strict where it is unsure: a false alarm costs one retry, and at
worst a free refusal; a missed allergen is what the person asked us to prevent.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from bot.intents.classifier import detect_language
from bot.intents.constraints import Constraints, Exclusion
from bot.intents.query import read_words, stem, stems
from bot.knowledge import Family, Knowledge


@dataclass(frozen=True)
class Violation:
    """A mention in an answer of something the person's constraints leave out.

    Attributes:
        exclusion: what was broken (a family such as peanuts, or one ingredient).
        said: the words of the answer that named it, lower case without accents ("eggs").
        diet: the rule diet that rules it out ("vegetarian"), or None when the person asked to
            leave it out themselves.
    """

    exclusion: Exclusion
    said: str
    diet: str | None = None


# Tokens: words and numbers, and the punctuation that ends a clause or separates a list.
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?|[.;:!?()\[\]\n]|,")
_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
_BOUNDARIES = frozenset({".", ";", ":", "!", "?", "(", ")", "[", "]", "\n"})
_SENTENCE_ENDS = frozenset({".", ";", "!", "?", "\n"})
# How far back (in tokens) a negation reaches: "no peanuts, tree nuts, sesame or soy".
_NEGATION_REACH = 12

# Words before a list of things left out (as token tuples, accents dropped).
_NEGATIONS: tuple[tuple[str, ...], ...] = tuple(tuple(t.split()) for t in (
    "no", "not", "non", "never", "nor", "without", "zero", "minus", "except", "excluding",
    "exclude", "excluded", "avoid", "avoids", "avoiding", "skip", "skipping", "skipped", "omit",
    "omitting", "omitted", "replace", "replacing", "replaced", "swap", "swapping", "swapped",
    "substitute", "substituting", "free of", "free from", "instead of", "in place of",
    "rather than", "leave out", "leaving out", "left out", "hold the", "allergic to",
    "allergy to", "intolerant to", "dont", "doesnt", "didnt", "isnt", "arent", "wont",
    "dont use", "doesnt use", "do not use", "does not use", "not use", "never use",
    "dont add", "do not add", "without using", "no added", "nothing with",
    # Spanish
    "sin", "ni", "nunca", "cero", "excepto", "salvo", "menos", "evita", "evitar", "evitando",
    "evitamos", "omite", "omitir", "quita", "quitar", "quitamos", "sustituye", "sustituir",
    "sustituimos", "reemplaza", "reemplazar", "cambia", "cambiar", "libre de", "libres de",
    "nada de", "en lugar de", "en vez de", "alergico a", "alergica a", "alergico al",
    "alergica al", "no uses", "no usa", "no uso", "no lleva", "no llevan", "no contiene",
    "no contienen", "no anadas", "no agregues", "sin usar",
))
_NEGATION_SIZES = sorted({len(n) for n in _NEGATIONS}, reverse=True)
_NEGATION_SET = frozenset(_NEGATIONS)
# Words that start saying what the answer does use: a negation does not reach past them
# ("without eggs, use 2 tbsp of flax"; "skip the cheese, add avocado").
_ENDERS = frozenset({
    "with", "use", "uses", "using", "used", "add", "adds", "adding", "try", "serve", "eat",
    "have", "choose", "opt", "plus", "but", "here", "just", "only", "for", "then", "include",
    "includes", "including", "breakfast", "lunch", "dinner", "snack", "snacks", "dessert",
    "day", "con", "usa", "usar", "usamos", "anade", "agrega", "agregar", "prueba", "sirve",
    "come", "elige", "pero", "aqui", "solo", "por", "luego", "incluye", "desayuno", "almuerzo",
    "cena", "merienda", "postre", "dia",
})
# After a food: it is named only to say it is not there ("peanut allergy", "egg substitute").
_AFTER = frozenset({
    "free", "allergy", "allergies", "allergic", "intolerance", "intolerant", "substitute",
    "substitutes", "alternative", "alternatives", "replacement", "replacements", "replacer",
    "sustituto", "sustitutos", "alternativa", "alternativas", "vegano", "vegana", "veganos",
    "veganas", "vegetal", "vegetales",
})
# Before a food: a version without the animal or the allergen ("vegan cheese", "flax egg").
_ALTERNATIVE_BEFORE = frozenset({
    "vegan", "veggie", "vegetarian", "meatless", "mock", "faux", "fake", "imitation", "plant",
    "based", "eggless", "dairyless",
})
# Before a staple (or "de ..." after it in Spanish): a version made from a plant ("almond
# milk", "cauliflower rice", "harina de almendra", "leche de avena").
_PLANT_SOURCES = frozenset({
    "soy", "soya", "almond", "oat", "coconut", "rice", "cauliflower", "zucchini", "courgette",
    "chickpea", "cashew", "flax", "flaxseed", "chia", "lentil", "corn", "bean", "hemp", "pea",
    "buckwheat", "quinoa", "konjac", "shirataki", "lettuce", "soja", "almendra", "avena",
    "coco", "arroz", "coliflor", "calabacin", "garbanzo", "anacardo", "linaza", "lenteja",
    "maiz", "sarraceno", "lechuga", "mani", "cacahuete", "avellana",
})
_STAPLES = frozenset({
    "milk", "butter", "cream", "yogurt", "yoghurt", "cheese", "egg", "flour", "noodle",
    "pasta", "spaghetti", "rice", "bread", "tortilla", "wrap", "crust", "leche", "mantequilla",
    "crema", "yogur", "queso", "huevo", "harina", "fideo", "espagueti", "arroz", "pan",
})
# Words of a sentence that warns about a food rather than serving it (`advice=True`).
_WARNINGS = frozenset({
    "avoid", "avoiding", "contain", "contains", "containing", "made", "found", "hidden",
    "watch", "label", "labels", "check", "careful", "allergy", "allergies", "allergic",
    "allergen", "allergens", "risk", "unsafe", "not", "isnt", "arent", "dont", "doesnt",
    "never", "instead", "rule", "rules", "ruled", "exclude", "excluded", "skip", "contamination",
    "evita", "evitar", "contiene", "contienen", "lleva", "llevan", "cuidado", "revisa",
    "etiqueta", "etiquetas", "alergia", "alergico", "alergica", "alergenos", "riesgo", "no",
    "nunca", "excluye", "oculto", "ocultos", "oculta", "ocultas", "high", "rich", "limit",
    "limits", "cut", "less", "little", "small", "moderation", "sparingly", "much", "too",
    "reduce", "alto", "alta", "rico", "rica", "limita", "limitar", "poco", "poca", "menos",
    "moderacion", "reducir",
})
# Phrases that hold an ingredient word without being the ingredient ("blood sugar").
_NOT_FOOD = (("blood", "sugar"), ("sake", "of"), ("sugar", "snap"), ("azucar", "en", "la",
                                                                     "sangre"))
_ARTICLES = frozenset({"the", "a", "an", "any", "el", "la", "los", "las", "de", "del", "al",
                       "un", "una"})


def fold(text: str) -> str:
    """`text` lower case, without accents or apostrophes ("Maní" -> "mani")."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch)).lower()
    return _APOSTROPHES.sub("", folded)


def tokens(text: str) -> tuple[str, ...]:
    """The words, numbers and clause punctuation of `text`, folded (`fold`); hyphens and other
    marks separate words ("peanut-free" -> "peanut", "free")."""
    return tuple(_TOKEN.findall(fold(text)))


def word_key(word: str) -> str:
    """What a word is compared by: `query.stem` (singular), then a final "e" dropped from long
    words so English and Spanish plurals meet ("cheeses"/"cheese", "camarones"/"camarón")."""
    key = stem(word)
    if len(key) > 4 and key.endswith("e"):
        key = key[:-1]
    return key


def _keys(words: Iterable[str]) -> tuple[str, ...]:
    return tuple(word_key(w) for w in words)


_STAPLE_KEYS = frozenset(_keys(_STAPLES))
_PLANT_KEYS = frozenset(_keys(_PLANT_SOURCES))


@dataclass(frozen=True)
class _Terms:
    """What one exclusion is matched by: keyed word sequences (English; Spanish, used only in
    a Spanish answer, since "pan" is also an English word), and exceptions removed first."""

    english: frozenset[tuple[str, ...]]
    spanish: frozenset[tuple[str, ...]]
    exceptions: tuple[tuple[str, ...], ...]

    def phrases(self, spanish: bool) -> frozenset[tuple[str, ...]]:
        """The phrases to look for in an answer (Spanish ones too when it is Spanish)."""
        return self.english | self.spanish if spanish else self.english


def _family_closure(knowledge: Knowledge, key: str) -> list[Family]:
    """The family `key` and the families it includes, recursively (nuts: tree nuts, peanuts)."""
    by_key = {f.key: f for f in knowledge.families}
    found: list[Family] = []
    pending = [key]
    while pending:
        current = pending.pop()
        family = by_key.get(current)
        if family is None or family in found:
            continue
        found.append(family)
        pending += list(family.includes)
    return found


def _contains(words: tuple[str, ...], part: tuple[str, ...]) -> bool:
    size = len(part)
    return size > 0 and any(words[i:i + size] == part for i in range(len(words) - size + 1))


def readable_terms(knowledge: Knowledge, exclusion: Exclusion) -> tuple[str, ...]:
    """What an exclusion covers, as a person reads it (for a prompt): the family's terms and
    those of the families it includes, then the composites that hold them ("peanut, peanut
    butter, groundnut, satay, nut butter"); an ingredient's own name when it is no family."""
    closure = _family_closure(knowledge, exclusion.key)
    if not closure:
        return (exclusion.label,)
    names = [t for family in closure for t in family.terms]
    stemmed = set(exclusion.terms)
    names += [c for c in knowledge.composites if stems(read_words(c)) in stemmed]
    return tuple(dict.fromkeys(names))


_TERMS: dict[tuple[int, Exclusion], tuple[Knowledge, _Terms]] = {}


def _terms_of(knowledge: Knowledge, exclusion: Exclusion) -> _Terms:
    """The keyed terms of `exclusion` (worked out once per exclusion and content)."""
    cache_key = (id(knowledge), exclusion)
    cached = _TERMS.get(cache_key)
    if cached is not None and cached[0] is knowledge:
        return cached[1]
    closure = _family_closure(knowledge, exclusion.key)
    english = [*exclusion.terms, *(read_words(n) for f in closure for n in f.names)]
    spoken = [n for family in closure for n in family.names_es]
    if not closure:
        english += [read_words(exclusion.label)]
        spoken += [exclusion.label_es]
    # Spanish: the names of the content's foods and grocery items that belong to it.
    exceptions: set[tuple[str, ...]] = {_keys(e) for e in exclusion.exceptions}
    for food in knowledge.foods:
        spanish = (food.name_es, *food.aliases_es)
        names = [stems(read_words(n)) for n in (food.name, *food.aliases)]
        if exclusion.matches(food.name):
            spoken += spanish
        elif any(_contains(n, x) for n in names for x in exclusion.exceptions):
            exceptions |= {_keys(read_words(s)) for s in spanish if s}
    spoken += [es for item, es in knowledge.items_es.items() if exclusion.matches(item)]
    english_keys = {_keys(words) for words in english} - exceptions - {()}
    spanish_keys = {_keys(read_words(n)) for n in spoken if n} - exceptions - {()}
    terms = _Terms(frozenset(english_keys), frozenset(spanish_keys - english_keys),
                   tuple(sorted(exceptions | {_keys(n) for n in _NOT_FOOD}, key=len,
                                reverse=True)))
    if len(_TERMS) >= 4096:
        _TERMS.clear()
    _TERMS[cache_key] = (knowledge, terms)
    return terms


def mentions(text: str, knowledge: Knowledge, exclusion: Exclusion, *,
             advice: bool = False, spanish: bool | None = None,
             asked: frozenset[str] = frozenset()) -> str | None:
    """The first mention in `text` of something `exclusion` covers that is not negated or
    qualified away (module docstring), as the words said ("2 eggs" -> "eggs"); None if none.

    Args:
        text: the answer.
        knowledge: the content (families, foods, grocery items and their Spanish names).
        exclusion: what must not be there.
        advice: the answer advises rather than serves food: a mention in a sentence that warns
            ("contains", "avoid", "lleva", ...) does not count.
        spanish: look for the Spanish names too; None decides by the text
            (`classifier.detect_language`).
        asked: word keys (`word_key`) of the person's message: with `advice`, a mention of
            what they asked about themselves ("calories in bacon, I'm halal") is the answer to
            their question, not a suggestion.
    """
    words = tokens(text)
    if not words:
        return None
    if spanish is None:
        spanish = detect_language(text) == "es"
    terms = _terms_of(knowledge, exclusion)
    phrases, named_phrases = _phrase_sets(terms, spanish)
    keys: list[str | None] = [None if w in _BOUNDARIES or w == "," else word_key(w)
                              for w in words]
    # Where the family is named, exceptions included, for "gluten-free bread" / "pan sin
    # gluten": what qualifies a staple need not itself be a mention.
    named = _matches(keys, named_phrases)
    for exception in terms.exceptions:
        size = len(exception)
        for start in range(len(keys) - size + 1):
            if tuple(keys[start:start + size]) == exception:
                for i in range(start, start + size):
                    keys[i] = None
    ends = {end for _, end in named}
    starts = {start for start, _ in named}
    for start, end in _matches(keys, phrases):
        if advice and asked and all(k in asked for k in keys[start:end]):
            continue
        if not _excused(words, start, end, ends, starts, advice):
            return " ".join(words[start:end])
    return None


@dataclass(frozen=True)
class _PhraseSet:
    """Keyed phrases to find in an answer, with what `_matches` needs to skip ahead: the
    longest phrase's length and the words a phrase can start with."""

    wanted: frozenset[tuple[str, ...]]
    longest: int
    firsts: frozenset[str]

    @classmethod
    def of(cls, phrases: Iterable[tuple[str, ...]]) -> _PhraseSet:
        """The set of `phrases` (empty phrases are never found)."""
        wanted = frozenset(p for p in phrases if p)
        return cls(wanted, max((len(p) for p in wanted), default=0),
                   frozenset(p[0] for p in wanted))


@functools.lru_cache(maxsize=4096)
def _phrase_sets(terms: _Terms, spanish: bool) -> tuple[_PhraseSet, _PhraseSet]:
    """What `mentions` looks for (once per exclusion, content and language): the mentions,
    and the places the family is named (the mentions and the exceptions)."""
    phrases = terms.phrases(spanish)
    return _PhraseSet.of(phrases), _PhraseSet.of(phrases | frozenset(terms.exceptions))


def _matches(keys: list[str | None], phrases: _PhraseSet) -> list[tuple[int, int]]:
    """(start, end) of each phrase in the keyed words, the longest at each place first."""
    wanted, longest, firsts = phrases.wanted, phrases.longest, phrases.firsts
    found: list[tuple[int, int]] = []
    i, count = 0, len(keys)
    while i < count:
        if keys[i] not in firsts:  # no phrase starts here
            i += 1
            continue
        for size in range(min(longest, count - i), 0, -1):
            window = keys[i:i + size]
            if None not in window and tuple(window) in wanted:
                found.append((i, i + size))
                i += size
                break
        else:
            i += 1
    return found


def _excused(words: tuple[str, ...], start: int, end: int, ends: set[int], starts: set[int],
             advice: bool) -> bool:
    """Whether the mention words[start:end] is negated or qualified away."""
    after = words[end] if end < len(words) else ""
    before = words[start - 1] if start else ""
    staple = word_key(words[end - 1]) in _STAPLE_KEYS
    if after in _AFTER or before in _ALTERNATIVE_BEFORE:
        return True  # "peanut-free", "egg substitute", "vegan cheese"
    if staple and word_key(before) in _PLANT_KEYS:
        return True  # "almond milk", "cauliflower rice"
    if (staple and after == "de" and end + 1 < len(words)
            and word_key(words[end + 1]) in _PLANT_KEYS):
        return True  # "leche de avena", "harina de almendra"
    # "pan sin gluten", "bread without gluten": the staple made without the excluded thing.
    for qualifier in (("sin",), ("without",), ("libre", "de"), ("free", "of")):
        at = end + len(qualifier)
        if tuple(words[end:at]) == qualifier:
            while at < len(words) and words[at] in _ARTICLES:
                at += 1
            if at in starts:
                return True
    if _negated(words, start, ends):
        return True
    return advice and _warning_sentence(words, start)


def _negated(words: tuple[str, ...], start: int, ends: set[int]) -> bool:
    """Whether a negation before `start`, in the same clause, reaches it ("no peanuts, eggs or
    dairy"; "gluten-free bread and pasta"); enders and numbers stop it ("no eggs, 2 slices")."""
    k = start - 1
    reach = 0
    while k >= 0 and reach < _NEGATION_REACH:
        word = words[k]
        if word in _BOUNDARIES:
            return False
        for size in _NEGATION_SIZES:
            begin = k - size + 1
            if begin < 0 or tuple(words[begin:k + 1]) not in _NEGATION_SET:
                continue
            if words[begin:k + 1] == ("no",) and k + 1 < len(words) and words[k + 1] == ",":
                continue  # "No, eggs are fine": an answer, not a negation
            return True
        if word == "free" and (k in ends or k + 1 in ends):
            # ("gluten free" may be one of the family's exceptions, ending after "free")
            return True  # "dairy-free milk and cheese": what follows is dairy-free too
        if word in _ENDERS or word[0].isdigit():
            return False
        k -= 1
        reach += 1
    return False


def _warning_sentence(words: tuple[str, ...], start: int) -> bool:
    """Whether the sentence holding words[start] has a warning word."""
    first = start
    while first > 0 and words[first - 1] not in _SENTENCE_ENDS:
        first -= 1
    last = start
    while last < len(words) and words[last] not in _SENTENCE_ENDS:
        last += 1
    return any(w in _WARNINGS for w in words[first:last])


def find_violation(text: str, constraints: Constraints, knowledge: Knowledge, *,
                   advice: bool = False) -> Violation | None:
    """The first exclusion `text` breaks: the person's exclusions first, then what their rule
    diets rule out (`Constraints.all_exclusions`); None when the answer honours them all.

    Args:
        text: the LLM's answer.
        constraints: the request's constraints (`parse_constraints`).
        knowledge: the content the constraints were read with.
        advice: the answer advises rather than serves food (see `mentions`); what the person
            asked about in their message (`Constraints.words`, not those naming what is left
            out: `excluded_at`) may then be named in the answer.

    Returns:
        The `Violation`, or None.
    """
    own = {e.key for e in constraints.exclusions}
    spanish = constraints.language == "es" or detect_language(text) == "es"
    # What the person asked about, not what they asked to leave out ("allergic to peanuts").
    asked = frozenset(word_key(w) for i, w in enumerate(constraints.words)
                      if i not in constraints.excluded_at) if advice else frozenset()
    for exclusion in constraints.all_exclusions:
        said = mentions(text, knowledge, exclusion, advice=advice, spanish=spanish,
                        asked=asked)
        if said is None:
            continue
        diet = None
        if exclusion.key not in own:
            diet = next((d for d in sorted(constraints.hard_diets)
                         if exclusion.key in knowledge.diet_families.get(d, ())),
                        min(constraints.hard_diets, default=None))
        return Violation(exclusion, said, diet)
    return None
