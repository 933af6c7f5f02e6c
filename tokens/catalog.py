"""The economy catalog: intents and their prices, the free allowance, commands and token packs.

The catalog is one YAML file (`tokens/economy.yaml` by default, `ECONOMY_FILE` to override).
It is parsed and checked once into frozen dataclasses; nothing else in the project reads the
YAML. The defaults are those of docs/economy.md ("Default catalog").
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tokens.errors import CatalogError
from tokens.money import format_cents, usd_to_musd

DEFAULT_CATALOG_PATH = Path(__file__).with_name("economy.yaml")
COMMAND_NAMES = ("balance", "buy", "more", "premium", "language", "auto_on", "auto_off",
                 "account")
LANGUAGES = ("en", "es")
"""The languages the bot speaks (its replies: `bot/content/replies.yaml`); the first is the
default."""
MESSAGING_CHANNELS = ("sms", "whatsapp")
MESSAGING_UNITS = ("segment", "message")
DEFAULT_LLM_TIER = "normal"


@dataclass(frozen=True)
class IntentSpec:
    """One priced intent of the catalog.

    Attributes:
        name: stable identifier, e.g. "meal_plan"; skills are registered under it.
        label: how a person reads it, e.g. "meal plan".
        price: tokens debited for one answer (positive integer).
        example: a message that selects this intent, shown in help and refusal texts.
        patterns: compiled regular expressions searched in the normalised message.
        prompt: what the LLM is told to do for this intent (after the catalog's system
            prompt); "" for none.
        label_es: the label in Spanish, e.g. "plan de comidas"; "" to use `label`.
    """

    name: str
    label: str
    price: int
    example: str
    patterns: tuple[re.Pattern[str], ...]
    prompt: str = ""
    label_es: str = ""

    def label_in(self, language: str) -> str:
        """The label in `language` ("en" or "es"; anything else reads as English)."""
        return (self.label_es or self.label) if language == "es" else self.label


@dataclass(frozen=True)
class Pack:
    """A token pack sold through a pay link.

    Attributes:
        code: stable identifier, e.g. "starter".
        name: display name, e.g. "Starter".
        price_cents: price in the currency's minor unit (Stripe's unit), e.g. 500.
        currency: ISO 4217 code in lower case, e.g. "usd".
        tokens: purchased tokens (bucket `paid`).
        bonus_tokens: bonus tokens, posted as their own entry (bucket `bonus`).
    """

    code: str
    name: str
    price_cents: int
    currency: str
    tokens: int
    bonus_tokens: int

    @property
    def total_tokens(self) -> int:
        """Purchased plus bonus tokens."""
        return self.tokens + self.bonus_tokens

    @property
    def price_display(self) -> str:
        """The price as a person reads it, e.g. "$5.00" (only USD gets a symbol)."""
        return format_cents(self.price_cents, self.currency)


@dataclass(frozen=True)
class Plan:
    """The premium subscription sold through a pay link (docs/payments.md, "Subscription status").

    Attributes:
        code: stable identifier, e.g. "premium".
        name: display name, e.g. "Premium".
        price_cents: monthly price in the currency's minor unit (Stripe's unit), e.g. 500.
        currency: ISO 4217 code in lower case, e.g. "usd".
        monthly_tokens: tokens granted by each paid invoice (bucket "subscription").
        grace_days: days a `past_due` subscription keeps premium.
    """

    code: str
    name: str
    price_cents: int
    currency: str
    monthly_tokens: int
    grace_days: int

    @property
    def price_display(self) -> str:
        """The price as a person reads it, e.g. "$5.00 a month"."""
        return f"{format_cents(self.price_cents, self.currency)} a month"


@dataclass(frozen=True)
class ModelPrice:
    """An LLM's list prices (docs/economy.md, "Cost and revenue": LLM cost from a price table).

    Attributes:
        model: the model name sent to the API, e.g. "gpt-4o-mini".
        input_usd_per_million: USD per million prompt tokens (Decimal).
        output_usd_per_million: USD per million completion tokens (Decimal).
    """

    model: str
    input_usd_per_million: Decimal
    output_usd_per_million: Decimal

    def cost_musd(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost of one call in µUSD, rounded up to a whole µUSD.

        USD per million tokens times tokens is exactly µUSD, so no float is involved.
        """
        exact = (prompt_tokens * self.input_usd_per_million
                 + completion_tokens * self.output_usd_per_million)
        return math.ceil(exact)


@dataclass(frozen=True)
class LlmTier:
    """One LLM tier: the model and the caps an LLM answer is asked with (docs/economy.md,
    "Levels": NORMAL answers at the "normal" tier, REDUCED at the "reduced" one,
    `tokens.levels.LLM_TIER_OF`).

    Attributes:
        name: "normal", "reduced", ...
        model: the model to call; always in the catalog's price table.
        max_tokens: the answer's `max_tokens` (completion tokens).
        max_input_chars: cap on the characters of context and message sent (the system prompt
            excluded); the oldest context is dropped first.
    """

    name: str
    model: str
    max_tokens: int
    max_input_chars: int


@dataclass(frozen=True)
class LlmSettings:
    """How LLM answers are asked for.

    Attributes:
        system_prompt: the catalog's system prompt with the bot's name and description filled in.
        history_messages: earlier messages of the conversation sent as context.
        cache_ttl_seconds: how long an identical request is answered from the cache.
        tiers: LLM tier name -> `LlmTier` (the catalog's `llm.tiers`); always has "normal".
        classify_per_day: LLM classification calls a sender address may use in a UTC day,
            for the messages the rules are unsure of (`bot.intents.llm_classify`); then the
            rules' intent stands. It bounds what classification costs
            (`tokens.levels.monthly_loss_ceiling_musd`).
    """

    system_prompt: str
    history_messages: int
    cache_ttl_seconds: int
    tiers: Mapping[str, LlmTier]
    classify_per_day: int = 5

    def tier(self, name: str = DEFAULT_LLM_TIER) -> LlmTier:
        """The LLM tier `name`. Raises `CatalogError` if the catalog has no such LLM tier."""
        try:
            return self.tiers[name]
        except KeyError:
            raise CatalogError(f"llm.tiers: no settings for tier {name!r}") from None


@dataclass(frozen=True)
class MessagingRate:
    """What one channel's messages cost, in µUSD per unit (a segment for SMS, a message for
    WhatsApp), for each direction (docs/economy.md defaults: SMS $0.0079 a segment, WhatsApp $0.0050
    a message plus a $0.0025 platform fee)."""

    channel: str
    unit: str
    inbound_musd: int
    outbound_musd: int


@dataclass(frozen=True)
class Costs:
    """The cost table of docs/economy.md ("Cost and revenue").

    Attributes:
        platform_musd: fixed cost of one interaction (one inbound message routed), µUSD.
        messaging: channel -> `MessagingRate`.
        llm_models: model name -> `ModelPrice`.
    """

    platform_musd: int
    messaging: Mapping[str, MessagingRate]
    llm_models: Mapping[str, ModelPrice]

    def model(self, name: str) -> ModelPrice:
        """The price of model `name`. Raises `CatalogError` if the table lacks it."""
        try:
            return self.llm_models[name]
        except KeyError:
            raise CatalogError(f"costs.llm_models: no price for model {name!r}") from None


@dataclass(frozen=True)
class LevelSettings:
    """The progressive-restriction policy's numbers (docs/economy.md, "Levels").

    Attributes:
        reduced_musd, basic_musd, affiliate_musd, payment_required_musd: the exposure (µUSD)
            at which each level starts (the shipped catalog: $0.20, $0.40, $0.60, $2.00).
        free_replies_per_day: the daily budget of replies exposure does not gate (HELP,
            START/STOP confirmations, throttle notices, refusals, alerts, billing notices,
            free replies past the cutoff), then silence (`tokens.levels.take_free_reply`).
        billing_replies_per_day: BALANCE, BUY and BUY PREMIUM replies a day past the cutoff
            (their own budget, so the free replies never silence the way to pay; it bounds
            what they can cost, `tokens.levels.monthly_loss_ceiling_musd`).
        inbound_flood_per_day: a person's inbound messages in a UTC day past which the bot
            stays silent for the rest of the day (STOP still opts out) and the admin pages
            flag them.
        upsell_every_hours: the least time between two upsell lines (REDUCED, BASIC).
        affiliate_min_price: intents at or above this price (tokens) get partner offers at
            AFFILIATE; cheaper ones get the offline template.
    """

    reduced_musd: int
    basic_musd: int
    affiliate_musd: int
    payment_required_musd: int
    free_replies_per_day: int
    upsell_every_hours: int
    affiliate_min_price: int
    billing_replies_per_day: int = 5
    inbound_flood_per_day: int = 300


@dataclass(frozen=True)
class Partner:
    """An affiliate partner (docs/economy.md, "Affiliate gating").

    Attributes:
        code: stable identifier, e.g. "freshbox".
        name: what a person reads.
        categories: partner categories, e.g. ("meal_kits",).
        url: the URL template on an allow-listed domain; `{click_id}` is our click id.
        commission_rate: the share of a sale the partner pays (Decimal, e.g. 0.10).
    """

    code: str
    name: str
    categories: tuple[str, ...]
    url: str
    commission_rate: Decimal


@dataclass(frozen=True)
class AffiliateSettings:
    """Partner offers: the mode ("offer" or "click_to_unlock"), the disclosure line, the
    allow-listed domains, the partners, and which categories suit each intent."""

    mode: str
    disclosure: str
    allowed_domains: frozenset[str]
    partners: tuple[Partner, ...]
    intent_categories: Mapping[str, tuple[str, ...]]
    disclosure_es: str = ""

    def disclosure_in(self, language: str) -> str:
        """The disclosure line in `language` ("en" or "es"); English when no Spanish is set."""
        return (self.disclosure_es or self.disclosure) if language == "es" else self.disclosure

    def offers_for(self, intent: str, limit: int = 3) -> tuple[Partner, ...]:
        """Up to `limit` partners relevant to `intent`, in catalog order."""
        wanted = set(self.intent_categories.get(intent, ()))
        return tuple(p for p in self.partners if wanted & set(p.categories))[:limit]


@dataclass(frozen=True)
class AutoTopupSettings:
    """Auto top-up (issue #16): a saved card buys a pack when the balance runs low.

    Attributes:
        threshold_tokens: a top-up starts when the available balance falls under this many
            tokens; None means the price of the dearest intent (`Catalog.auto_topup_threshold`).
        max_per_month: at most this many auto top-ups per account and calendar month (UTC).
        pack_code: the pack bought; None means the first pack of the catalog
            (`Catalog.auto_topup_pack`).
    """

    threshold_tokens: int | None = None
    max_per_month: int = 4
    pack_code: str | None = None


@dataclass(frozen=True)
class Catalog:
    """The parsed economy catalog.

    Attributes:
        bot_name: the bot's name in replies.
        bot_description: one line on what the bot does.
        token_price_musd: list price of one token in µUSD (docs/economy.md: $0.05 = 50,000 µUSD).
        free_monthly_allowance: tokens granted per person and calendar month (UTC).
        intents: priced intents in precedence order (first match wins).
        default_intent: the intent of a message that matches no pattern.
        commands: free command name (`COMMAND_NAMES`: "balance", "buy", "more", "premium",
            "language", "auto_on", "auto_off", "account") ->
            the normalised whole messages that are that command. "language" holds every form
            of `language_choices`.
        language_choices: a normalised whole message of the language command -> the language
            it chooses ("en", "es"), or "" for the bare command (which explains how to
            choose): "LANGUAGEES", "IDIOMAINGLES", "ESPANOL" ... (`tokens/economy.yaml`,
            `commands.language` and `language_names`).
        bot_description_es: `bot_description` in Spanish ("" to use the English one).
        packs: token packs by code.
        default_pack: code of the pack offered in pay links.
        pay_link_ttl_seconds: lifetime of a pay link.
        hold_ttl_seconds: how long a hold may stay pending before it expires and releases
            its tokens (a crash between hold and capture charges nothing).
        costs: what interactions cost the operator.
        llm: how LLM answers are asked for.
        sms_max_segments: SMS replies longer than this are cut with a free "Reply MORE".
        whatsapp_max_messages: WhatsApp replies longer than this many messages are cut the same
            way.
        premium: the premium subscription plan.
        levels: the progressive-restriction policy's numbers (the catalog's `levels`).
        affiliates: partner offers for the AFFILIATE level.
    """

    bot_name: str
    bot_description: str
    token_price_musd: int
    free_monthly_allowance: int
    intents: tuple[IntentSpec, ...]
    default_intent: str
    commands: Mapping[str, frozenset[str]]
    packs: Mapping[str, Pack]
    default_pack: str
    pay_link_ttl_seconds: int
    hold_ttl_seconds: int
    costs: Costs
    llm: LlmSettings
    sms_max_segments: int
    whatsapp_max_messages: int
    premium: Plan
    levels: LevelSettings
    affiliates: AffiliateSettings
    language_choices: Mapping[str, str]
    bot_description_es: str = ""
    auto_topup: AutoTopupSettings = AutoTopupSettings()

    @functools.cached_property
    def command_words(self) -> frozenset[str]:
        """Every free command's words (`commands`), normalised, in one set: a message that
        is one of them is a command, never a priced request."""
        return frozenset().union(*self.commands.values())

    def auto_topup_threshold(self) -> int:
        """The balance (tokens) under which an auto top-up starts: `auto_topup.threshold_tokens`,
        else the price of the dearest intent (a balance under it cannot pay every answer)."""
        if self.auto_topup.threshold_tokens is not None:
            return self.auto_topup.threshold_tokens
        return max(spec.price for spec in self.intents)

    def auto_topup_pack(self) -> Pack:
        """The pack an auto top-up buys: `auto_topup.pack`, else the first pack of the
        catalog. Raises `CatalogError` if the code is not a pack."""
        return self.pack(self.auto_topup.pack_code or next(iter(self.packs)))

    def description_in(self, language: str) -> str:
        """What the bot does, in `language` ("en" or "es"); English when no Spanish is set."""
        if language == "es":
            return self.bot_description_es or self.bot_description
        return self.bot_description

    def intent(self, name: str) -> IntentSpec:
        """The intent called `name`. Raises `CatalogError` if there is none."""
        for spec in self.intents:
            if spec.name == name:
                return spec
        raise CatalogError(f"unknown intent {name!r}")

    def pack(self, code: str | None = None) -> Pack:
        """The pack `code`, or the default pack. Raises `CatalogError` if unknown."""
        try:
            return self.packs[code or self.default_pack]
        except KeyError:
            raise CatalogError(f"unknown pack {code!r}") from None


def normalise_command(text: str) -> str:
    """The form in which commands and keywords are compared.

    Upper case, accents dropped, all white space removed and final punctuation stripped, so
    " buy  tokens! " and "BUYTOKENS" compare equal, and "más" equals "MAS" (docs/economy.md:
    commands match the whole message, case- and space-insensitively).
    """
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return re.sub(r"\s+", "", folded).upper().rstrip(".!?¡¿")


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and check the economy catalog.

    Args:
        path: a YAML file; `None` means the shipped default (`tokens/economy.yaml`).

    Returns:
        The frozen `Catalog`.

    Raises:
        CatalogError: the file is missing or unreadable, or a field is absent, of the wrong type,
            out of range, or refers to an intent or pack that does not exist. The message names
            the file and the field.
    """
    source = Path(path) if path else DEFAULT_CATALOG_PATH
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"{source}: cannot read the economy catalog ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise CatalogError(f"{source}: the catalog must be a mapping at the top level")
    try:
        return _parse(raw)
    except CatalogError as exc:
        raise CatalogError(f"{source}: {exc}") from None


def _parse(raw: dict[str, Any]) -> Catalog:
    _refuse_renamed_sections(raw)
    bot = _mapping(raw, "bot")
    intents = tuple(_parse_intent(item, i) for i, item in enumerate(_list(raw, "intents")))
    names = [spec.name for spec in intents]
    if len(set(names)) != len(names):
        raise CatalogError("intents: names must be unique")
    default_intent = _str(raw, "default_intent")
    if default_intent not in names:
        raise CatalogError(f"default_intent: {default_intent!r} is not one of the intents")

    commands_raw = _mapping(raw, "commands")
    commands = {}
    for name in COMMAND_NAMES:
        words = commands_raw.get(name)
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise CatalogError(f"commands.{name}: a non-empty list of keywords is required")
        commands[name] = frozenset(normalise_command(w) for w in words)
    language_choices = _parse_language_choices(_mapping(raw, "language_names"),
                                               commands["language"])
    commands["language"] = frozenset(language_choices)
    taken = [word for name, words in commands.items() if name != "language"
             for word in words if word in language_choices]
    if taken:
        raise CatalogError(f"language_names: {taken[0]!r} is another command already")

    packs = {}
    for i, item in enumerate(_list(raw, "packs")):
        pack = _parse_pack(item, i)
        packs[pack.code] = pack
    default_pack = _str(raw, "default_pack")
    if default_pack not in packs:
        raise CatalogError(f"default_pack: {default_pack!r} is not one of the packs")

    token_price_musd = _musd(raw, "token_list_price_usd", positive=True)
    bot_name, bot_description = _str(bot, "name"), _str(bot, "description")
    costs = _parse_costs(_mapping(raw, "costs"))
    llm = _parse_llm(_mapping(raw, "llm"), costs, bot_name, bot_description)

    return Catalog(
        bot_name=bot_name,
        bot_description=bot_description,
        token_price_musd=token_price_musd,
        free_monthly_allowance=_positive_int(raw, "free_monthly_allowance"),
        intents=intents,
        default_intent=default_intent,
        commands=commands,
        packs=packs,
        default_pack=default_pack,
        pay_link_ttl_seconds=_positive_int(raw, "pay_link_ttl_hours") * 3600,
        hold_ttl_seconds=_positive_int(raw, "hold_ttl_seconds"),
        costs=costs,
        llm=llm,
        sms_max_segments=_positive_int(raw, "sms_max_segments"),
        whatsapp_max_messages=_positive_int(raw, "whatsapp_max_messages"),
        premium=_parse_plan(_mapping(raw, "premium"), packs),
        levels=_parse_levels(_mapping(raw, "levels")),
        affiliates=_parse_affiliates(_mapping(raw, "affiliates"), names),
        language_choices=language_choices,
        bot_description_es=_optional_str(bot, "description_es", "bot"),
        auto_topup=_parse_auto_topup(raw, packs),
    )


def _parse_auto_topup(raw: Mapping[str, Any], packs: Mapping[str, Pack]) -> AutoTopupSettings:
    """The optional `auto_topup` section: `threshold_tokens` (positive integer, default the
    dearest intent's price), `max_per_month` (positive integer, default 4) and `pack` (a pack
    code, default the first pack)."""
    section = raw.get("auto_topup")
    if section is None:
        return AutoTopupSettings()
    if not isinstance(section, dict):
        raise CatalogError("auto_topup: a mapping is required")
    threshold = None
    if section.get("threshold_tokens") is not None:
        threshold = _positive_int(section, "threshold_tokens", "auto_topup")
    max_per_month = 4
    if section.get("max_per_month") is not None:
        max_per_month = _positive_int(section, "max_per_month", "auto_topup")
    pack_code = None
    if section.get("pack") is not None:
        pack_code = _str(section, "pack", "auto_topup")
        if pack_code not in packs:
            raise CatalogError(f"auto_topup.pack: {pack_code!r} is not one of the packs")
    return AutoTopupSettings(threshold, max_per_month, pack_code)


def _parse_language_choices(names: dict[str, Any], prefixes: frozenset[str]
                            ) -> dict[str, str]:
    """The whole messages of the language command: each prefix alone (""), each prefix
    followed by a language's name, and each name of three letters or more alone ("ENGLISH",
    "ESPANOL"; "EN" and "ES" only after a prefix, as "es" is an everyday Spanish word)."""
    choices = dict.fromkeys(prefixes, "")
    for language, words in names.items():
        where = f"language_names.{language}"
        if language not in LANGUAGES:
            raise CatalogError(f"{where}: the languages are {', '.join(LANGUAGES)}")
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip()
                                                               for w in words):
            raise CatalogError(f"{where}: a non-empty list of names is required")
        for word in map(normalise_command, words):
            for form in [prefix + word for prefix in prefixes] + ([word] if len(word) > 2 else []):
                if choices.get(form, language) != language:
                    raise CatalogError(f"{where}: {word!r} names two languages")
                choices[form] = language
    if set(LANGUAGES) - set(choices.values()):
        raise CatalogError(f"language_names: names for each of {', '.join(LANGUAGES)} are required")
    return choices


def _refuse_renamed_sections(raw: Mapping[str, Any]) -> None:
    """A catalog written before issue #18 names the restriction ladder `tiers`: say what it is
    called now, rather than that `levels` is missing."""
    if "tiers" in raw:
        raise CatalogError("tiers: the section is now called levels (the restriction levels; "
                           "\"LLM tier\" is only llm.tiers, the model settings): rename it")
    llm = raw.get("llm")
    if isinstance(llm, Mapping) and "levels" in llm and "tiers" not in llm:
        raise CatalogError("llm.levels: the LLM tiers are llm.tiers (the model settings the "
                           "levels answer with): rename it")


def _parse_levels(raw: dict[str, Any]) -> LevelSettings:
    thresholds = _mapping(raw, "thresholds_usd", "levels")
    where = "levels.thresholds_usd"
    values = [_musd(thresholds, name, where, positive=True)
              for name in ("reduced", "basic", "affiliate", "payment_required")]
    if values != sorted(values) or len(set(values)) != len(values):
        raise CatalogError(f"{where}: reduced < basic < affiliate < payment_required is required")
    if "refusals_per_day" in raw:
        raise CatalogError("levels.refusals_per_day is now levels.free_replies_per_day (the daily "
                           "budget of every free reply, refusals included): rename it")
    free = raw.get("free_replies_per_day")
    if type(free) is not int or free < 1:
        raise CatalogError("levels.free_replies_per_day: a positive integer is required")
    billing = raw.get("billing_replies_per_day", 5)
    if type(billing) is not int or billing < 1:
        raise CatalogError("levels.billing_replies_per_day: a positive integer is required")
    flood = raw.get("inbound_flood_per_day", 300)
    if type(flood) is not int or flood < 1:
        raise CatalogError("levels.inbound_flood_per_day: a positive integer is required")
    reduced, basic, affiliate, payment_required = values
    return LevelSettings(reduced_musd=reduced, basic_musd=basic, affiliate_musd=affiliate,
                        payment_required_musd=payment_required, free_replies_per_day=free,
                        upsell_every_hours=_positive_int(raw, "upsell_every_hours", "levels"),
                        affiliate_min_price=_positive_int(raw, "affiliate_min_price", "levels"),
                        billing_replies_per_day=billing, inbound_flood_per_day=flood)


def _parse_affiliates(raw: dict[str, Any], intents: list[str]) -> AffiliateSettings:
    where = "affiliates"
    mode = _str(raw, "mode", where)
    if mode not in ("offer", "click_to_unlock"):
        raise CatalogError(f"{where}.mode: offer or click_to_unlock, not {mode!r}")
    domains = raw.get("allowed_domains")
    if not isinstance(domains, list) or not all(isinstance(d, str) and d for d in domains):
        raise CatalogError(f"{where}.allowed_domains: a list of domain names is required")
    allowed = frozenset(d.lower().strip(".") for d in domains)
    partners = []
    for i, item in enumerate(raw.get("partners") or []):
        at = f"{where}.partners[{i}]"
        if not isinstance(item, dict):
            raise CatalogError(f"{at}: must be a mapping")
        url = _str(item, "url", at)
        parsed = urlsplit(url.replace("{click_id}", "x"))
        host = (parsed.hostname or "").lower()
        if parsed.scheme != "https" or not any(host == d or host.endswith("." + d)
                                                for d in allowed):
            raise CatalogError(f"{at}.url: an https URL on an allowed domain is required")
        if "{click_id}" not in url:
            raise CatalogError(f"{at}.url: must contain {{click_id}}")
        categories = item.get("categories")
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise CatalogError(f"{at}.categories: a list of names is required")
        rate = _decimal(item, "commission_rate", at)
        if rate > 1:
            raise CatalogError(f"{at}.commission_rate: a share between 0 and 1 is required")
        partners.append(Partner(code=_str(item, "code", at), name=_str(item, "name", at),
                                categories=tuple(categories), url=url, commission_rate=rate))
    mapping = raw.get("intent_categories") or {}
    if not isinstance(mapping, dict) or any(k not in intents for k in mapping):
        raise CatalogError(f"{where}.intent_categories: keys must be intents of the catalog")
    return AffiliateSettings(
        mode=mode, disclosure=_str(raw, "disclosure", where),
        disclosure_es=_optional_str(raw, "disclosure_es", where), allowed_domains=allowed,
        partners=tuple(partners),
        intent_categories={k: tuple(v or ()) for k, v in mapping.items()},
    )


def _parse_plan(item: dict[str, Any], packs: Mapping[str, Pack]) -> Plan:
    """The premium plan. Its tokens are priced like the packs: at most as many tokens per
    cent as the best pack gives (premium sells full answers every month, not cheaper tokens,
    so a subscriber's tokens never cost less to buy than what they cost to serve in a pack).

    Raises:
        CatalogError: a field is missing or out of range, or the plan gives more tokens per
            cent than the best pack.
    """
    where = "premium"
    grace = item.get("grace_days")
    if type(grace) is not int or grace < 0:
        raise CatalogError(f"{where}.grace_days: a non-negative integer is required")
    plan = Plan(
        code=_str(item, "code", where),
        name=_str(item, "name", where),
        price_cents=_positive_int(item, "price_cents", where),
        currency=_usd(item, where),
        monthly_tokens=_positive_int(item, "monthly_tokens", where),
        grace_days=grace,
    )
    best = max(packs.values(), key=lambda p: Fraction(p.total_tokens, p.price_cents))
    if plan.monthly_tokens * best.price_cents > best.total_tokens * plan.price_cents:
        raise CatalogError(
            f"{where}.monthly_tokens: {plan.monthly_tokens} tokens for {plan.price_display} "
            f"gives more tokens per dollar than the {best.name} pack ({best.total_tokens} for "
            f"{best.price_display}); price premium's tokens like the packs")
    return plan


def _parse_costs(raw: dict[str, Any]) -> Costs:
    messaging_raw = _mapping(raw, "messaging", "costs")
    messaging = {}
    for channel in MESSAGING_CHANNELS:
        where = f"costs.messaging.{channel}"
        rate = _mapping(messaging_raw, channel, "costs.messaging")
        unit = _str(rate, "unit", where)
        if unit not in MESSAGING_UNITS:
            raise CatalogError(f"{where}.unit: one of {', '.join(MESSAGING_UNITS)}, not {unit!r}")
        messaging[channel] = MessagingRate(
            channel=channel,
            unit=unit,
            inbound_musd=_musd(rate, "inbound_usd", where),
            outbound_musd=_musd(rate, "outbound_usd", where),
        )
    models_raw = _mapping(raw, "llm_models", "costs")
    models = {}
    for name, prices in models_raw.items():
        where = f"costs.llm_models.{name}"
        if not isinstance(prices, dict):
            raise CatalogError(f"{where}: a mapping is required")
        models[str(name)] = ModelPrice(
            model=str(name),
            input_usd_per_million=_decimal(prices, "input_usd_per_million", where),
            output_usd_per_million=_decimal(prices, "output_usd_per_million", where),
        )
    return Costs(platform_musd=_musd(raw, "platform_usd", "costs"), messaging=messaging,
                 llm_models=models)


def _parse_llm(raw: dict[str, Any], costs: Costs, bot_name: str, description: str) -> LlmSettings:
    template = _str(raw, "system_prompt", "llm")
    try:
        system_prompt = template.format(bot_name=bot_name, bot_description=description)
    except (KeyError, IndexError, ValueError) as exc:
        raise CatalogError(
            f"llm.system_prompt: only {{bot_name}} and {{bot_description}} may be filled in ({exc})"
        ) from None
    tiers = {}
    for name, item in _mapping(raw, "tiers", "llm").items():
        where = f"llm.tiers.{name}"
        if not isinstance(item, dict):
            raise CatalogError(f"{where}: a mapping is required")
        model = _str(item, "model", where)
        if model not in costs.llm_models:
            raise CatalogError(f"{where}.model: {model!r} has no price in costs.llm_models")
        tiers[str(name)] = LlmTier(
            name=str(name),
            model=model,
            max_tokens=_positive_int(item, "max_tokens", where),
            max_input_chars=_positive_int(item, "max_input_chars", where),
        )
    if DEFAULT_LLM_TIER not in tiers:
        raise CatalogError(
            f"llm.tiers: settings for the {DEFAULT_LLM_TIER!r} LLM tier are required")
    history = raw.get("history_messages")
    if type(history) is not int or history < 0:
        raise CatalogError("llm.history_messages: a non-negative integer is required")
    classify = raw.get("classify_per_day", 5)
    if type(classify) is not int or classify < 0:
        raise CatalogError("llm.classify_per_day: a non-negative integer is required")
    return LlmSettings(
        classify_per_day=classify,
        system_prompt=system_prompt,
        history_messages=history,
        cache_ttl_seconds=_positive_int(raw, "cache_ttl_seconds", "llm"),
        tiers=tiers,
    )


def _parse_intent(item: Any, index: int) -> IntentSpec:
    where = f"intents[{index}]"
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: must be a mapping")
    patterns = item.get("patterns", [])
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise CatalogError(f"{where}.patterns: must be a list of strings")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise CatalogError(
                f"{where}.patterns: {pattern!r} is not a valid regex ({exc})"
            ) from None
    return IntentSpec(
        name=_str(item, "name", where),
        label=_str(item, "label", where),
        price=_positive_int(item, "price", where),
        example=_str(item, "example", where),
        patterns=tuple(compiled),
        prompt=_optional_str(item, "prompt", where),
        label_es=_optional_str(item, "label_es", where),
    )


def _parse_pack(item: Any, index: int) -> Pack:
    where = f"packs[{index}]"
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: must be a mapping")
    bonus = item.get("bonus_tokens", 0)
    if type(bonus) is not int or bonus < 0:
        raise CatalogError(f"{where}.bonus_tokens: must be a non-negative integer")
    return Pack(
        code=_str(item, "code", where),
        name=_str(item, "name", where),
        price_cents=_positive_int(item, "price_cents", where),
        currency=_usd(item, where),
        tokens=_positive_int(item, "tokens", where),
        bonus_tokens=bonus,
    )


def _usd(item: Mapping[str, Any], where: str) -> str:
    """The currency of a price: "usd" only, since revenue is kept in µUSD (docs/economy.md)."""
    currency = _str(item, "currency", where).lower()
    if currency != "usd":
        raise CatalogError(f"{where}.currency: only usd is supported (revenue is kept in µUSD)")
    return currency


def _mapping(raw: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict) or not value:
        raise CatalogError(f"{where + '.' if where else ''}{key}: a mapping is required")
    return value


def _optional_str(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise CatalogError(f"{where}.{key}: must be a string")
    return " ".join(value.split())


def _decimal(raw: Mapping[str, Any], key: str, where: str = "") -> Decimal:
    """A non-negative decimal given as a string (YAML floats are refused: money is never a
    float)."""
    name = f"{where + '.' if where else ''}{key}"
    value = raw.get(key)
    if not isinstance(value, str):
        raise CatalogError(f'{name}: a decimal string such as "0.05" is required')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise CatalogError(f'{name}: a decimal string such as "0.05" is required') from None
    if not amount.is_finite() or amount < 0:
        raise CatalogError(f"{name}: must be a non-negative amount")
    return amount


def _musd(raw: Mapping[str, Any], key: str, where: str = "", *, positive: bool = False) -> int:
    """A USD amount given as a decimal string, as integer µUSD (it must be whole µUSD)."""
    name = f"{where + '.' if where else ''}{key}"
    musd = usd_to_musd(_decimal(raw, key, where))
    if musd != musd.to_integral_value():
        raise CatalogError(f"{name}: must be a whole number of µUSD")
    if positive and musd <= 0:
        raise CatalogError(f"{name}: must be positive and a whole number of µUSD")
    return int(musd)


def _list(raw: Mapping[str, Any], key: str) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise CatalogError(f"{key}: a non-empty list is required")
    return value


def _str(raw: Mapping[str, Any], key: str, where: str = "") -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{where + '.' if where else ''}{key}: a non-empty string is required")
    return value.strip()


def _positive_int(raw: Mapping[str, Any], key: str, where: str = "") -> int:
    value = raw.get(key)
    # bool is an int in Python; a price of `true` is a typo, not one token.
    if type(value) is not int or value <= 0:
        raise CatalogError(f"{where + '.' if where else ''}{key}: a positive integer is required")
    return value
