"""A cheap, bounded LLM call for the messages the classifier's rules are unsure of (issue #15,
point 4).

The rules (`bot.intents.classifier.classify`) end in small talk when nothing else matched: the
catalog's default intent, which is "chat". For a short greeting that is right; for "can you
help me figure out what to feed my kids this week, they hate broccoli" it is a guess. When the
rules' intent is small talk and the message is long enough or names food, diets or calories
(`unsure`), one call asks the cheapest model of the catalog's LLM tiers for one intent name, with
`max_tokens` of `CLASSIFY_MAX_TOKENS`; anything but exactly one of the catalog's names keeps
the rules' answer. So does a name priced below the rules' intent: the call can make a vague
message cost what it asks for, never less than the rules say, whatever its language.

The call's usage is returned for COGS, recorded like any LLM call (`tokens.costs.record_llm`,
keyed per message, e.g. "llm-classify:<MessageSid>").
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal

from bot.intents.classifier import normalise_text
from bot.intents.constraints import parse_constraints
from bot.knowledge import Knowledge, load_knowledge
from bot.llm import ChatClient, ChatRequest, LlmError
from tokens.catalog import Catalog, IntentSpec, LlmTier
from tokens.costs import LlmUsage
from tokens.levels import TOKEN_OVERHEAD_PER_MESSAGE, UTF8_MAX_BYTES

log = logging.getLogger(__name__)

# The intents the rules fall back to when they are unsure (with the catalog's default).
SMALL_TALK_INTENTS = frozenset({"chat"})
UNSURE_MIN_WORDS = 6  # a small-talk verdict on a message this long is a guess
# Completion tokens: the longest intent name ("nutrition_analysis") is 3 tokens in OpenAI's
# tokenizers (o200k_base, cl100k_base); a little room for a stray space or newline.
CLASSIFY_MAX_TOKENS = 8
CLASSIFY_MAX_INPUT_CHARS = 500  # of the message; the rest cannot change much
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class LlmClassification:
    """What the classification step decided.

    Attributes:
        spec: the intent to price and answer (the LLM's, else the rules').
        asked: whether the LLM was asked (a call made, or answered from the cache).
        usage: what the call used, for COGS; None when no call was made, the answer came from
            the cache, or the API reported none.
        unbilled: a call that reported no usage (a timeout, a dropped connection), which the
            provider may still bill.
        answer: the LLM's text as it came ("" without one), for logs and tests.
    """

    spec: IntentSpec
    asked: bool = False
    usage: LlmUsage | None = None
    unbilled: bool = False
    answer: str = ""


def unsure(text: str, rules: IntentSpec, catalog: Catalog, knowledge: Knowledge | None = None
           ) -> bool:
    """Whether the rules' intent is a guess worth one LLM call: small talk (`chat`, or the
    catalog's default intent) for a message of `UNSURE_MIN_WORDS` words or more, or one that
    names a food, diet, exclusion, meal, goal or calorie target (`parse_constraints`)."""
    if rules.name not in SMALL_TALK_INTENTS | {catalog.default_intent}:
        return False
    if len(normalise_text(text).split()) >= UNSURE_MIN_WORDS:
        return True
    c = parse_constraints(text, knowledge or load_knowledge())
    return bool(c.foods or c.diets or c.exclusions or c.unsupported or c.unknown_diets
                or c.calories is not None or c.meal or c.goal)


def cheapest_tier(catalog: Catalog) -> LlmTier:
    """The catalog's LLM tier whose model has the lowest list prices (input, then output);
    ties go to the tier listed first.

    Raises:
        CatalogError: a tier's model has no price (the catalog loader checks this already).
    """
    tiers = list(catalog.llm.tiers.values())

    def price(tier: LlmTier) -> tuple[Decimal, Decimal]:
        model = catalog.costs.model(tier.model)
        return model.input_usd_per_million, model.output_usd_per_million

    return min(tiers, key=price)


def classification_ceiling_musd(catalog: Catalog, tier: LlmTier | None = None) -> int:
    """The most one classification call can cost, µUSD, for recording a call that reported no
    usage (`costs.record_llm_estimate`): input bounded by UTF-8 bytes of the instructions and
    the capped message plus a per-message overhead (as `tokens.levels.llm_ceiling_musd`
    bounds an answer), output by `CLASSIFY_MAX_TOKENS`."""
    tier = tier or cheapest_tier(catalog)
    request = classification_request("", catalog, tier)
    chars = len(request.messages[0][1]) + CLASSIFY_MAX_INPUT_CHARS
    prompt = UTF8_MAX_BYTES * chars + TOKEN_OVERHEAD_PER_MESSAGE * len(request.messages)
    return catalog.costs.model(tier.model).cost_musd(prompt, CLASSIFY_MAX_TOKENS)


def classification_request(text: str, catalog: Catalog, tier: LlmTier) -> ChatRequest:
    """The chat request that asks for one intent name: the catalog's intents with their labels
    and examples, the message cut to `CLASSIFY_MAX_INPUT_CHARS`, `CLASSIFY_MAX_TOKENS`."""
    lines = "; ".join(f"{spec.name} ({spec.label}, e.g. \"{spec.example}\")"
                      for spec in catalog.intents)
    system = (
        "You route messages to a nutrition assistant. Classify the message into exactly one of "
        f"these intents: {lines}. The message may be in English or Spanish and may have "
        "typos; its language never changes the intent. Reply with the intent name only."
    )
    return ChatRequest(model=tier.model,
                       messages=(("system", system), ("user", text[:CLASSIFY_MAX_INPUT_CHARS])),
                       max_tokens=CLASSIFY_MAX_TOKENS)


def parse_intent(answer: str, catalog: Catalog) -> IntentSpec | None:
    """The catalog intent the answer names, exactly one name and nothing else (quotes, a final
    period and case aside); None for anything else."""
    name = answer.strip().strip("`'\".").strip().lower()
    if not _NAME.match(name):
        return None
    return next((spec for spec in catalog.intents if spec.name == name), None)


def classify_with_llm(text: str, rules: IntentSpec, catalog: Catalog, chat: ChatClient,
                      tier: LlmTier | None = None, knowledge: Knowledge | None = None
                      ) -> LlmClassification:
    """The intent of `text`, asking the LLM once when the rules are `unsure`.

    Args:
        text: the person's message.
        rules: what `classifier.classify` said.
        catalog: the economy catalog (its intents, and their prices).
        chat: the LLM client (a `CachedChat` answers a repeated message for free).
        tier: the model to ask; None for `cheapest_tier(catalog)`.
        knowledge: the content, for `unsure`; None for the shipped content.

    Returns:
        The `LlmClassification`: the LLM's intent when it named exactly one of the catalog's
        and it is not cheaper than the rules' intent, else the rules' intent; with the call's
        usage. Never raises for the LLM's failure (the rules' intent stands).
    """
    if not unsure(text, rules, catalog, knowledge):
        return LlmClassification(rules)
    request = classification_request(text, catalog, tier or cheapest_tier(catalog))
    try:
        reply = chat.complete(request)
    except LlmError as exc:
        log.warning("llm classification failed", extra={"reason": str(exc)})
        unbilled = exc.usage is None and str(exc) in ("timeout", "connection failed")
        return LlmClassification(rules, asked=True, usage=exc.usage, unbilled=unbilled)
    spec = parse_intent(reply.text, catalog)
    if spec is None or spec.price < rules.price:
        spec = rules
    return LlmClassification(spec, asked=True, usage=reply.usage, answer=reply.text)
