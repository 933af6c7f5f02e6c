"""Intent classification: the catalog's patterns, searched in precedence order.

Patterns are whole-word regular expressions over a normalised message, so substrings cannot
fool it ("I ate a cookie" contains "ate", not "meal plan"; economy.md lists the cases that must
hold). Free commands are matched before this, on the whole message.
"""

from __future__ import annotations

import re
import unicodedata

from tokens.catalog import Catalog, IntentSpec

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalise_text(text: str) -> str:
    """Lower case, accents and apostrophes dropped, other non-alphanumerics as single spaces.

    "This week's Meal-Plan!" -> "this weeks meal plan".
    """
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch)).lower()
    folded = _APOSTROPHES.sub("", folded)
    return _NON_WORD.sub(" ", folded).strip()


def classify(text: str, catalog: Catalog) -> IntentSpec:
    """The intent of `text`: the first catalog intent with a matching pattern, else the default.

    Args:
        text: the person's message.
        catalog: the economy catalog (intents in precedence order).

    Returns:
        The matching `IntentSpec` (its `price` is what the answer costs).
    """
    normalised = normalise_text(text)
    for spec in catalog.intents:
        if any(pattern.search(normalised) for pattern in spec.patterns):
            return spec
    return catalog.intent(catalog.default_intent)
