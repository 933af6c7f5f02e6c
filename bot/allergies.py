"""Allergies a person told the bot about, remembered for their later requests.

"I'm allergic to peanuts", "tengo alergia a los mariscos", "I'm celiac": a message that
states an allergy or an intolerance (`CUES`, English and Spanish) and names what it is to
(`bot.intents.constraints.parse_constraints`: a food family such as peanuts or shellfish, a
food the content knows, or a medical diet such as gluten-free) is remembered on the contact
(`Contact.allergies`). Every later request of the person is read with those exclusions added
(`with_allergies`), so the offline skills leave them out, the LLM is told, and an answer that
includes one is caught by the answer check and not charged (docs/messaging.md, "Allergies").

Only what the content can check is remembered: an allergy to something no ingredient line
names (penicillin, an unknown fruit) is refused for that message, as before, and not carried
over, or every later request would be refused. A negated statement ("I'm not allergic to
eggs") names nothing to leave out, so nothing is remembered.

`ALLERGIES` (ALERGIAS) lists what is remembered; `FORGET ALLERGIES` (OLVIDA MIS ALERGIAS, and
the other `FORGET` forms) clears it. Both are free. Erasing the person (`bot.contacts.forget`)
deletes the contact row, and what it remembered with it.

Stored form: comma-separated keys, oldest first, at most `MAX_REMEMBERED` of them: an exclusion key
("peanut", "shellfish", "shrimp") or "diet:<key>" ("diet:gluten_free").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from bot.intents.constraints import (
    DIET_BY_KEY,
    Constraints,
    Exclusion,
    diet_rules,
    family_exclusion,
    parse_constraints,
)
from bot.intents.query import read_words, stems
from bot.knowledge import Knowledge
from tokens.catalog import normalise_command

# Words that make a message a statement of an allergy or an intolerance (as
# `Constraints.words` has them: lower case, accents dropped).
CUES = frozenset({
    "allergic", "alergic", "allergy", "allergies", "anaphylaxis", "anaphylactic", "intolerant",
    "sensitive", "sensitivity",
    "intolerance", "celiac", "coeliac", "alergico", "alergica", "alergicos", "alergicas",
    "alergia", "alergias", "intolerante", "intolerantes", "intolerancia", "celiaco", "celiaca",
    "celiacos", "celiacas",
})
# A cheap look at the raw text before the message is parsed (most messages state no allergy).
_MAYBE = re.compile(r"al+[eé]rg|intoler|c[oe]?el[ií]ac|anaphyla|sensitiv", re.IGNORECASE)
# Medical diets remembered from such a statement ("I'm celiac": gluten-free; "lactose
# intolerant": dairy-free). Other diets (vegan, halal) are choices a request states itself.
MEDICAL_DIETS = frozenset({"gluten_free", "dairy_free"})
# Within this many words before the allergy word, one of `NEGATIONS` makes it not a
# statement of an allergy ("I don't have a peanut allergy"); a bare "no" does within two
# words ("no nut allergies", "no tengo alergia"), not further ("no nuts please, I'm
# allergic"). One of `PAST` anywhere in the clause does too.
NEGATION_WINDOW = 4
NEGATIONS = frozenset({"not", "dont", "don't", "doesnt", "isnt", "arent", "never", "neither",
                       "nor", "nunca", "ni", "tampoco"})
PAST = frozenset({"used", "outgrew", "outgrown", "anymore", "longer", "was", "were", "thought",
                  "think", "maybe", "might", "if", "whether", "era", "fui", "antes", "creo",
                  "quizas", "quiza", "si"})
# A question about allergies ("is my son allergic to eggs?", "what causes a peanut
# allergy?", "¿soy alérgico al huevo?") states none; "I'm allergic to nuts, what can I eat?"
# and "soy alérgica al maní, ¿qué como?" do. A clause that starts as a question and ends with
# "?" asks, unless the allergy word comes later than `ASKED_WITHIN` words and someone speaks
# of themselves ("what can I eat, I'm allergic to peanuts?").
_ASKING = re.compile(
    r"^[\s¡]*(¿|(is|am|are|do|does|did|can|could|will|would|should|what|which|why|how|when|"
    r"who)\b).*\?\s*$", re.IGNORECASE | re.DOTALL)
ASKED_WITHIN = 4
FIRST_PERSON = frozenset({"i", "im", "me", "my", "soy", "tengo", "estoy", "yo", "mi", "mis"})
# Clauses: sentences (the mark kept with its clause), and the two sides of "but" / "pero".
_CLAUSES = re.compile(r"(?<=[.;!?\n])|\s(?:but|pero|aunque|although|though)\s", re.IGNORECASE)
MAX_REMEMBERED = 20
LISTED = 6  # ALLERGIES names at most this many, then "and N more"
MAX_STORED = 300  # characters: `Contact.allergies` is String(300)
DIET_PREFIX = "diet:"

# The commands (whole message, as `tokens.catalog.normalise_command` compares them).
LIST_COMMANDS = frozenset(normalise_command(c) for c in (
    "ALLERGIES", "MY ALLERGIES", "ALERGIAS", "MIS ALERGIAS"))
FORGET_COMMANDS = frozenset(normalise_command(c) for c in (
    "FORGET ALLERGIES", "FORGET MY ALLERGIES", "CLEAR ALLERGIES", "OLVIDA ALERGIAS",
    "OLVIDA MIS ALERGIAS", "OLVIDAR ALERGIAS", "OLVIDAR MIS ALERGIAS", "BORRAR ALERGIAS",
    "BORRA MIS ALERGIAS"))
COMMANDS = LIST_COMMANDS | FORGET_COMMANDS


def decode(stored: str | None) -> tuple[str, ...]:
    """The keys of `Contact.allergies` (empty for NULL)."""
    return tuple(k for k in (stored or "").split(",") if k)


def encode(keys: Iterable[str]) -> str | None:
    """`Contact.allergies` for `keys`, in the order given (what was remembered first, then
    what is new), each once, at most `MAX_REMEMBERED` keys and `MAX_STORED` characters (the
    column's size): the keys that do not fit are the last ones, never one remembered before.
    None when there are none."""
    kept: list[str] = []
    for key in dict.fromkeys(keys):
        if len(kept) == MAX_REMEMBERED or len(",".join([*kept, key])) > MAX_STORED:
            break
        kept.append(key)
    return ",".join(kept) or None


def stated(text: str, knowledge: Knowledge, language: str | None = None) -> tuple[str, ...]:
    """The keys to remember from one message: what it states an allergy or intolerance to,
    that the content can check; () when it states none.

    Args:
        text: the message as the person wrote it.
        knowledge: the content (`bot.knowledge.load_knowledge`).
        language: "en" or "es", or None to detect it.
    """
    if not _MAYBE.search(text):
        return ()
    keys: list[str] = []
    # Clause by clause, so that "I'm allergic to peanuts. Meal plan without eggs" remembers
    # peanuts only, and "allergic to shrimp but not crab" shrimp only.
    for clause in _CLAUSES.split(text):
        if not _MAYBE.search(clause):
            continue
        c = parse_constraints(clause, knowledge, language)
        cues = [i for i, w in enumerate(c.words) if w in CUES]
        if not cues or any(_negated(c.words, i) for i in cues):
            continue
        if _ASKING.match(clause.strip()) and (
                cues[0] <= ASKED_WITHIN or not FIRST_PERSON & set(c.words)):
            continue  # a question about allergies
        said = stems(read_words(clause))  # as written: no typo correction ("bees" is not beef)
        keys += [e.key for e in c.exclusions
                 if e.key not in keys and _known(e, knowledge) and _named(e, said, knowledge)]
        keys += [DIET_PREFIX + d for d in sorted(c.hard_diets & MEDICAL_DIETS)
                 if DIET_PREFIX + d not in keys]
    return tuple(keys)


def _known(exclusion: Exclusion, knowledge: Knowledge) -> bool:
    """A food family, or a food the content knows (a family's term or a food's name): what
    every later answer can be checked against."""
    if any(f.key == exclusion.key for f in knowledge.families):
        return True
    name = stems(read_words(exclusion.key))
    return any(f.name == exclusion.key for f in knowledge.foods) or any(
        stems(read_words(t)) == name for f in knowledge.families for t in f.terms)


def _named(exclusion: Exclusion, said: tuple[str, ...], knowledge: Knowledge) -> bool:
    """Whether the words as written name `exclusion` (one of its terms, or a Spanish name)."""
    phrases = set(exclusion.terms) | {stems(read_words(exclusion.label_es)),
                                      stems(read_words(exclusion.label))}
    family = next((f for f in knowledge.families if f.key == exclusion.key), None)
    if family is not None:
        phrases |= {stems(read_words(n)) for n in (*family.names, *family.names_es)}
    return any(p and any(said[i:i + len(p)] == p for i in range(len(said) - len(p) + 1))
               for p in phrases)


def _negated(words: tuple[str, ...], cue: int) -> bool:
    """Whether the allergy word at `cue` is said in the negative or of the past ("not
    allergic", "no tengo alergia", "ya no", "used to be allergic", "outgrew my allergy")."""
    before = words[max(0, cue - NEGATION_WINDOW):cue]
    return (bool(NEGATIONS & set(before)) or "no" in words[max(0, cue - 2):cue]
            or bool(PAST & set(words)))


def with_allergies(c: Constraints, keys: tuple[str, ...], knowledge: Knowledge) -> Constraints:
    """`c` with the remembered `keys` added: their exclusions after the message's own, their
    diets with what those rule out. `c` itself when there is nothing to add."""
    if not keys:
        return c
    own = {e.key for e in c.exclusions}
    added: list[Exclusion] = []
    diets = set(c.diets)
    for key in keys:
        if key.startswith(DIET_PREFIX):
            diet = key[len(DIET_PREFIX):]
            if diet in DIET_BY_KEY:
                diets.add(diet)
            continue
        if key in own:
            continue
        exclusion = _exclusion(key, knowledge)
        if exclusion is not None:
            added.append(exclusion)
            own.add(key)
    if not added and diets == set(c.diets):
        return c
    diet_exclusions, pairs = diet_rules(knowledge, diets)
    return dataclasses.replace(c, exclusions=c.exclusions + tuple(added),
                               diets=frozenset(diets), diet_exclusions=diet_exclusions,
                               pairs=pairs,
                               remembered=frozenset(e.key for e in added)
                               | (frozenset(diets) - c.diets))


def labels(keys: Iterable[str], knowledge: Knowledge, language: str) -> str:
    """What `keys` leave out, named for a reply: "peanuts, shellfish and gluten" / "maní,
    mariscos y gluten" (a medical diet by the families it rules out)."""
    names: list[str] = []
    for key in keys:
        # A medical diet is named by what it leaves out (gluten-free: gluten).
        families = (knowledge.diet_families.get(key[len(DIET_PREFIX):], ())
                    if key.startswith(DIET_PREFIX) else (key,))
        for family in families:
            exclusion = _exclusion(family, knowledge)
            if exclusion is not None and exclusion.label_in(language) not in names:
                names.append(exclusion.label_in(language))
    if len(names) <= 1:
        return "".join(names)
    joiner = " y " if language == "es" else " and "
    return ", ".join(names[:-1]) + joiner + names[-1]


def noted_text(keys: Iterable[str], knowledge: Knowledge, language: str) -> str:
    """The line that tells the person what is now remembered (added to the reply)."""
    named = labels(keys, knowledge, language)
    if language == "es":
        return (f"Anotado: dejo fuera {named} en todo lo que te sugiera. "
                "OLVIDA MIS ALERGIAS lo borra.")
    return f"Noted: I'll leave out {named} in everything I suggest. FORGET ALLERGIES clears it."


def list_text(keys: tuple[str, ...], knowledge: Knowledge, language: str) -> str:
    """The reply to ALLERGIES."""
    if not keys:
        if language == "es":
            return ("No tengo ninguna alergia anotada. Dime, por ejemplo, "
                    "\"soy alérgica al maní\".")
        return "I have no allergies noted. Tell me, e.g. \"I'm allergic to peanuts\"."
    shown = keys[:LISTED]
    named = labels(shown, knowledge, language)
    if len(keys) > LISTED:  # the reply stays within the SMS segment cap
        named += (f" y {len(keys) - LISTED} más" if language == "es"
                  else f" and {len(keys) - LISTED} more")
    if language == "es":
        return f"Dejo fuera: {named}. OLVIDA MIS ALERGIAS lo borra."
    return f"I leave out: {named}. FORGET ALLERGIES clears it."


def forgotten_text(language: str) -> str:
    """The reply to FORGET ALLERGIES."""
    if language == "es":
        return "Listo: ya no recuerdo ninguna alergia. Dímelas de nuevo cuando quieras."
    return "Done: I no longer remember any allergy. Tell me again any time."


def _exclusion(key: str, knowledge: Knowledge) -> Exclusion | None:
    """The `Exclusion` of a remembered key: a family's, or a food's as "without <key>" reads
    it; None when the content no longer knows it."""
    try:
        return family_exclusion(knowledge, key)
    except KeyError:
        pass
    cached = _ITEMS.get((id(knowledge), key))
    if cached is not None and cached[0] is knowledge:
        return cached[1]  # a food read once, not again for every request of the person
    found = parse_constraints(f"without {key}", knowledge, "en")
    item = None if found.unverifiable else next(
        (e for e in found.exclusions if e.key == key), None)
    if len(_ITEMS) >= 4096:
        _ITEMS.clear()
    _ITEMS[(id(knowledge), key)] = (knowledge, item)
    return item


# Remembered foods that are not families, as `Exclusion`s, per content (`_exclusion`).
_ITEMS: dict[tuple[int, str], tuple[Knowledge, Exclusion | None]] = {}
