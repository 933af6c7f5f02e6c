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

Stored form: comma-separated keys, sorted, at most `MAX_REMEMBERED` of them: an exclusion key
("peanut", "shellfish", "kiwi") or "diet:<key>" ("diet:gluten_free").
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
from bot.knowledge import Knowledge
from tokens.catalog import normalise_command

# Words that make a message a statement of an allergy or an intolerance (as
# `Constraints.words` has them: lower case, accents dropped).
CUES = frozenset({
    "allergic", "allergy", "allergies", "anaphylaxis", "anaphylactic", "intolerant",
    "intolerance", "celiac", "coeliac", "alergico", "alergica", "alergicos", "alergicas",
    "alergia", "alergias", "intolerante", "intolerantes", "intolerancia", "celiaco", "celiaca",
    "celiacos", "celiacas",
})
# A cheap look at the raw text before the message is parsed (most messages state no allergy).
_MAYBE = re.compile(r"al+[eé]rg|intoler|c[oe]?el[ií]ac|anaphyla", re.IGNORECASE)
# Medical diets remembered from such a statement ("I'm celiac": gluten-free; "lactose
# intolerant": dairy-free). Other diets (vegan, halal) are choices a request states itself.
MEDICAL_DIETS = frozenset({"gluten_free", "dairy_free"})
MAX_REMEMBERED = 20
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
    """`Contact.allergies` for `keys`: sorted, unique, at most `MAX_REMEMBERED`; None when
    there are none."""
    unique = sorted(set(keys))[:MAX_REMEMBERED]
    return ",".join(unique) or None


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
    c = parse_constraints(text, knowledge, language)
    if not CUES & set(c.words):
        return ()
    unverifiable = set(c.unverifiable)
    keys = [e.key for e in c.exclusions
            if e.key not in unverifiable and _exclusion(e.key, knowledge) is not None]
    keys += [DIET_PREFIX + d for d in sorted(c.hard_diets & MEDICAL_DIETS)]
    return tuple(keys)


def with_allergies(c: Constraints, keys: Iterable[str], knowledge: Knowledge) -> Constraints:
    """`c` with the remembered `keys` added: their exclusions after the message's own, their
    diets with what those rule out. `c` itself when there is nothing to add."""
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
                               pairs=pairs)


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
    named = labels(keys, knowledge, language)
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
    found = parse_constraints(f"without {key}", knowledge, "en")
    if found.unverifiable:
        return None
    return next((e for e in found.exclusions if e.key == key), None)
