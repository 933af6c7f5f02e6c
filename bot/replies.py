"""The wording of the bot's own replies: help, balance, pay links, refusals, compliance.

Every text lives in `bot/content/replies.yaml`, keyed by name, in each language the bot speaks
(`tokens.catalog.LANGUAGES`: English and Spanish), with ``{placeholders}`` that both languages
share. The file is read and checked once (`reply_catalog`): a key missing a language, or whose
languages use different placeholders, is a `ReplyCatalogError` at the first reply.

Every function here takes the person's language as ``lang`` ("en" or "es"; anything else
reads as English), so that what a person is told about money reads consistently in their
language, and short enough for one or two SMS segments. The old English constants
(`SKILL_FAILED`, `OFFLINE_FREE`, ...) are still readable as module attributes.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bot.errors import BotError
from tokens.catalog import LANGUAGES, Catalog, IntentSpec, Pack, Plan
from tokens.money import format_cents
from tokens.periods import next_month_start

REPLIES_PATH = Path(__file__).with_name("content") / "replies.yaml"
DEFAULT_LANGUAGE = LANGUAGES[0]


class ReplyCatalogError(BotError):
    """The reply catalog (`bot/content/replies.yaml`) is unreadable, or a reply lacks one of
    the bot's languages, or its languages use different placeholders: every reply must exist
    in every language, with the same values filled in."""


@dataclass(frozen=True)
class ReplyCatalog:
    """The parsed reply catalog.

    Attributes:
        texts: reply key -> language -> the text with its ``{placeholders}``.
        months: language -> the twelve month names, January first.
    """

    texts: Mapping[str, Mapping[str, str]]
    months: Mapping[str, tuple[str, ...]]

    def text(self, key: str, lang: str = DEFAULT_LANGUAGE, **values: object) -> str:
        """The reply `key` in `lang`, its placeholders filled from `values`.

        Raises:
            KeyError: no reply is called `key`, or a placeholder has no value (a bug).
        """
        return self.texts[key][language(lang)].format(**values)


def language(lang: str | None) -> str:
    """`lang` if the bot speaks it ("en", "es"), else the default, English."""
    return lang if lang in LANGUAGES else DEFAULT_LANGUAGE


def placeholders(text: str) -> frozenset[str]:
    """The ``{names}`` a reply text uses."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(text) if name)


def load_replies(path: Path = REPLIES_PATH) -> ReplyCatalog:
    """Read and check a reply catalog.

    Args:
        path: the YAML file: ``months: {en: [12 names], es: [...]}`` and
            ``replies: {key: {en: text, es: text}}``.

    Raises:
        ReplyCatalogError: the file is unreadable or not shaped so; a reply lacks a language
            (or has one the bot does not speak), or its languages differ in placeholders; the
            months are not twelve names in each language. The message names the key.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ReplyCatalogError(f"{path}: cannot read the reply catalog ({exc})") from exc
    if not isinstance(raw, dict):
        raise ReplyCatalogError(f"{path}: a mapping with months and replies is required")
    texts: dict[str, dict[str, str]] = {}
    for key, by_language in _mapping(raw, "replies", path).items():
        if not isinstance(by_language, dict) or set(by_language) != set(LANGUAGES) or not all(
                isinstance(text, str) and text for text in by_language.values()):
            raise ReplyCatalogError(
                f"{path}: replies.{key}: a text in each of {', '.join(LANGUAGES)} is required")
        names = {lang: placeholders(text) for lang, text in by_language.items()}
        if len(set(names.values())) != 1:
            raise ReplyCatalogError(
                f"{path}: replies.{key}: the languages use different placeholders ({names})")
        texts[str(key)] = dict(by_language)
    months: dict[str, tuple[str, ...]] = {}
    for lang in LANGUAGES:
        names_of = _mapping(raw, "months", path).get(lang)
        if not isinstance(names_of, list) or len(names_of) != 12 or not all(
                isinstance(name, str) and name for name in names_of):
            raise ReplyCatalogError(f"{path}: months.{lang}: twelve month names are required")
        months[lang] = tuple(names_of)
    return ReplyCatalog(texts=texts, months=months)


def _mapping(raw: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict) or not value:
        raise ReplyCatalogError(f"{path}: {key}: a mapping is required")
    return value


@functools.cache
def reply_catalog() -> ReplyCatalog:
    """The shipped reply catalog, read and checked once per process (`load_replies`)."""
    return load_replies()


def reply(key: str, lang: str = DEFAULT_LANGUAGE, **values: object) -> str:
    """The reply `key` of `bot/content/replies.yaml` in `lang`, filled from `values`."""
    return reply_catalog().text(key, lang, **values)


# The English texts once held in constants here, still readable as attributes (callers in
# other modules use them): `replies.SKILL_FAILED` is `reply("skill_failed")`.
_CONSTANTS = {
    "NO_TEXT": "no_text", "NOTHING_MORE": "nothing_more", "SKILL_FAILED": "skill_failed",
    "THROTTLED": "throttled", "OFFLINE_FREE": "offline_free",
    "TOOK_TOO_LONG": "took_too_long", "PAYMENT_FAILED": "payment_failed",
    "MORE_HINT": "more_hint",
}


def __getattr__(name: str) -> str:
    """`SKILL_FAILED`, `OFFLINE_FREE`, `TOOK_TOO_LONG`, ...: the English reply (PEP 562)."""
    try:
        return reply(_CONSTANTS[name])
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def no_text(lang: str = DEFAULT_LANGUAGE) -> str:
    """A photo or a location without words: say so, nothing charged."""
    return reply("no_text", lang)


def nothing_more(lang: str = DEFAULT_LANGUAGE) -> str:
    """MORE with no continuation waiting."""
    return reply("nothing_more", lang)


def skill_failed(lang: str = DEFAULT_LANGUAGE) -> str:
    """A skill failed: an apology, nothing charged."""
    return reply("skill_failed", lang)


def throttled(lang: str = DEFAULT_LANGUAGE) -> str:
    """Past the per-sender rate limit (`bot.ratelimit`): wait, nothing charged."""
    return reply("throttled", lang)


def offline_free(lang: str = DEFAULT_LANGUAGE) -> str:
    """The line before an offline answer given free because the LLM failed."""
    return reply("offline_free", lang)


def took_too_long(lang: str = DEFAULT_LANGUAGE) -> str:
    """The hold lapsed before the answer job ran: an apology, nothing charged."""
    return reply("took_too_long", lang)


def payment_failed_text(lang: str = DEFAULT_LANGUAGE) -> str:
    """A pack's payment failed: nothing added."""
    return reply("payment_failed", lang)


def more_hint(lang: str = DEFAULT_LANGUAGE) -> str:
    """What ends a reply cut at the channel's cap, e.g. "\\n(Reply MORE for the rest)"; asking
    for MORE is free (docs/messaging.md)."""
    return reply("more_hint", lang)


def price_list(catalog: Catalog, affordable_below: int | None = None,
               lang: str = DEFAULT_LANGUAGE) -> str:
    """Intents with their prices, dearest first, e.g. "meal plan 5, dietary advice 4, ...".

    Args:
        catalog: the economy catalog.
        affordable_below: when given, only intents costing at most this many tokens.
        lang: the language of the labels (`IntentSpec.label_in`).
    """
    specs = sorted(catalog.intents, key=lambda s: (-s.price, s.label_in(lang)))
    if affordable_below is not None:
        specs = [s for s in specs if s.price <= affordable_below]
    return ", ".join(f"{s.label_in(lang)} {s.price}" for s in specs)


def date_text(moment: datetime, lang: str = DEFAULT_LANGUAGE) -> str:
    """A day as a person reads it: "Dec 1" in English, "1 de diciembre" in Spanish."""
    month = reply_catalog().months[language(lang)][moment.month - 1]
    return reply("date", lang, month=month, day=moment.day)


def renewal_date(now: datetime, lang: str = DEFAULT_LANGUAGE) -> str:
    """When the free allowance renews (the first of next month, UTC), e.g. "Dec 1"."""
    return date_text(next_month_start(now), lang)


def help_text(catalog: Catalog, now: datetime, lang: str = DEFAULT_LANGUAGE) -> str:
    """HELP: what the bot does, prices, the free commands and how to stop (docs/messaging.md);
    STOP and HELP keep their carrier form in every language."""
    pack = catalog.pack()
    return reply("help", lang, bot_name=catalog.bot_name,
                 bot_description=catalog.description_in(language(lang)),
                 prices=price_list(catalog, lang=lang),
                 allowance=catalog.free_monthly_allowance, renewal=renewal_date(now, lang),
                 pack_tokens=pack.total_tokens, pack_price=pack.price_display)


def help_short_text(catalog: Catalog, lang: str = DEFAULT_LANGUAGE) -> str:
    """HELP again the same day: the one-line form (who we are, the commands, how to stop);
    the full answer goes out once a day (`tokens.levels.take_help`)."""
    return reply("help_short", lang, bot_name=catalog.bot_name)


def balance_text(catalog: Catalog, available: int, now: datetime,
                 lang: str = DEFAULT_LANGUAGE) -> str:
    """BALANCE: the available balance as "<N> tokens", and what it buys."""
    cheapest = min(s.price for s in catalog.intents)
    spend = (reply("balance_prices", lang, prices=price_list(catalog, lang=lang))
             if available >= cheapest else reply("balance_top_up", lang))
    return reply("balance", lang, available=available, spend=spend,
                 renewal=renewal_date(now, lang))


def buy_text(pack: Pack, url: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """BUY: the pay link and what it buys."""
    bonus = (reply("buy_bonus", lang, tokens=pack.tokens, bonus_tokens=pack.bonus_tokens)
             if pack.bonus_tokens else "")
    return reply("buy", lang, total=pack.total_tokens, bonus=bonus, price=pack.price_display,
                 url=url)


def _plan_price(plan: Plan) -> str:
    return format_cents(plan.price_cents, plan.currency)


def premium_text(plan: Plan, url: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """BUY PREMIUM: the subscription's pay link, what it gives, and how it ends."""
    return reply("premium", lang, plan=plan.name, tokens=plan.monthly_tokens,
                 price=_plan_price(plan), url=url)


def premium_manage_text(plan: Plan, url: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """BUY PREMIUM from a subscriber: the billing portal, to change the card or cancel."""
    return reply("premium_manage", lang, plan=plan.name, url=url)


def low_balance_text(catalog: Catalog, available: int, url: str,
                     lang: str = DEFAULT_LANGUAGE) -> str:
    """The low-balance alert (`tokens.alerts`): under the threshold, or at 0 tokens; `url`
    buys the default pack."""
    pack = catalog.pack()
    return reply("empty_balance" if available <= 0 else "low_balance", lang,
                 available=available, pack_tokens=pack.total_tokens, price=pack.price_display,
                 url=url)


def _auto_values(catalog: Catalog, pack: Pack) -> dict[str, object]:
    return {"pack_tokens": pack.total_tokens, "price": pack.price_display,
            "threshold": catalog.auto_topup_threshold(),
            "max": catalog.auto_topup.max_per_month}


def auto_topup_consent_text(catalog: Catalog, pack: Pack, url: str,
                            lang: str = DEFAULT_LANGUAGE) -> str:
    """AUTO ON without a saved card: what auto top-up does, and the pay link whose checkout
    saves the card (the person's consent)."""
    return reply("auto_topup_consent", lang, url=url, **_auto_values(catalog, pack))


def auto_topup_on_text(catalog: Catalog, pack: Pack, lang: str = DEFAULT_LANGUAGE) -> str:
    """Auto top-up turned on (AUTO ON with a saved card, or the card just saved)."""
    return reply("auto_topup_on", lang, **_auto_values(catalog, pack))


def auto_topup_off_text(lang: str = DEFAULT_LANGUAGE) -> str:
    """AUTO OFF."""
    return reply("auto_topup_off", lang)


def auto_topup_unavailable_text(lang: str = DEFAULT_LANGUAGE) -> str:
    """AUTO ON or OFF where no payment provider is configured."""
    return reply("auto_topup_unavailable", lang)


def auto_topup_credited_text(tokens: int, available: int,
                             lang: str = DEFAULT_LANGUAGE) -> str:
    """An auto top-up was charged and credited."""
    return reply("auto_topup_credited", lang, tokens=tokens, available=available)


def auto_topup_failed_text(url: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """An auto top-up was declined or needs authentication: it is off; `url` buys the pack
    on a checkout that can save another card."""
    return reply("auto_topup_failed", lang, url=url)


def pack_credited_text(tokens: int, available: int, lang: str = DEFAULT_LANGUAGE) -> str:
    """After a pack is paid for."""
    return reply("pack_credited", lang, tokens=tokens, available=available)


def premium_started_text(plan: Plan, lang: str = DEFAULT_LANGUAGE) -> str:
    """A subscription became active."""
    return reply("premium_started", lang, plan=plan.name, tokens=plan.monthly_tokens)


def premium_ended_text(plan: Plan, lang: str = DEFAULT_LANGUAGE) -> str:
    """A subscription ended (tokens already bought stay usable)."""
    return reply("premium_ended", lang, plan=plan.name)


def billing_problem_text(url: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """A subscription payment failed (or the subscription went past due)."""
    return reply("billing_problem", lang, url=url)


def premium_unpaid_text(plan: Plan, url: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """BUY PREMIUM from someone whose subscription is past due or unpaid: `url` opens the
    billing portal to fix the card."""
    return reply("premium_unpaid", lang, plan=plan.name, url=url)


def past_due_text(plan: Plan, grace_ends_at: datetime, url: str,
                  lang: str = DEFAULT_LANGUAGE) -> str:
    """A subscription went past due: premium stays on until `grace_ends_at` (the plan's
    `grace_days` after it went past due, tokens/economy.yaml); `url` opens the billing
    portal."""
    return reply("past_due", lang, plan=plan.name, date=date_text(grace_ends_at, lang), url=url)


def grace_ended_text(plan: Plan, url: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """A past-due subscription's grace period ended: premium is paused until the card is
    fixed (bought tokens stay usable); `url` opens the billing portal."""
    return reply("grace_ended", lang, plan=plan.name, url=url)


def premium_ending_text(plan: Plan, ends_at: datetime, url: str,
                        lang: str = DEFAULT_LANGUAGE) -> str:
    """A subscription was cancelled for a later date (`ends_at`, the period's end or its
    `cancel_at`): nothing changes until then; `url` opens the billing portal to undo it."""
    return reply("premium_ending", lang, plan=plan.name, date=date_text(ends_at, lang), url=url)


def insufficient_text(
    catalog: Catalog, spec: IntentSpec, available: int, url: str, now: datetime,
    lang: str = DEFAULT_LANGUAGE,
) -> str:
    """The refusal when the balance is below the price: nothing charged, a pay link, and the
    cheaper things the person can still do (docs/economy.md, Levels: "whatever the level")."""
    pack = catalog.pack()
    label = spec.label_in(language(lang))
    if language(lang) == "en":
        article = "an" if label[:1] in "aeiou" else "a"
        what = f"{article.capitalize()} {label}"
    else:  # Spanish: "Plan de comidas: 5 tokens" needs no article (and no gender).
        what = label[:1].upper() + label[1:]
    # The pay link comes early: an SMS reply is cut after 2 segments (the rest via MORE).
    parts = [
        reply("insufficient", lang, what=what, price=spec.price, available=available),
        reply("insufficient_pack", lang, total=pack.total_tokens, price=pack.price_display,
              url=url),
    ]
    cheaper = price_list(catalog, affordable_below=available, lang=lang)
    if cheaper:
        parts.append(reply("insufficient_cheaper", lang, prices=cheaper))
    parts.append(reply("renews", lang, renewal=renewal_date(now, lang)))
    return " ".join(parts)


def stop_text(catalog: Catalog, lang: str = DEFAULT_LANGUAGE) -> str:
    """Confirmation of STOP, sent once where the app (not Twilio) manages opt-out."""
    return reply("stop", lang, bot_name=catalog.bot_name)


def start_text(catalog: Catalog, lang: str = DEFAULT_LANGUAGE) -> str:
    """Confirmation of START where the app manages opt-out."""
    return reply("start", lang, bot_name=catalog.bot_name)


def level_notice(catalog: Catalog, level: str, available: int,
                 lang: str = DEFAULT_LANGUAGE) -> str:
    """What a person on a restricted level is told, in plain words, with their balance and what
    restores full service (docs/economy.md, rule 4). Never claims anything is unlimited."""
    pack = catalog.pack()
    restore = reply("level_restore", lang, available=available, total=pack.total_tokens,
                    price=pack.price_display)
    key = {"REDUCED": "level_reduced", "BASIC": "level_basic"}.get(level, "level_nearly_used")
    return reply(key, lang, restore=restore)


def offers_text(catalog: Catalog, spec: IntentSpec, available: int,
                offers: list[tuple[str, str]], now: datetime,
                lang: str = DEFAULT_LANGUAGE) -> str:
    """The AFFILIATE answer to a costly request: the disclosure first (so it is never cut off
    from the links), the partner offers, then what restores full service. Nothing is
    charged."""
    pack = catalog.pack()
    lines = [reply("offers_head", lang, disclosure=catalog.affiliates.disclosure_in(
        language(lang)), label=spec.label_in(language(lang)))]
    lines += [f"- {name}: {url}" for name, url in offers]
    lines.append(reply("offers_tail", lang, available=available, total=pack.total_tokens,
                       price=pack.price_display, renewal=renewal_date(now, lang)))
    return "\n".join(lines)


def payment_required_text(catalog: Catalog, available: int, url: str, now: datetime,
                          lang: str = DEFAULT_LANGUAGE) -> str:
    """PAYMENT_REQUIRED: no answer, nothing charged. Says why in plain words (this month's
    free service reached its cost budget, `levels.payment_required_usd`; the token balance is
    not the reason), what BUY gives (the pack's tokens for its price, and full answers at
    once: purchased tokens are always served, README "How service steps down"), a pay link,
    and when free service returns."""
    pack = catalog.pack()
    return reply("payment_required", lang, available=available, total=pack.total_tokens,
                 price=pack.price_display, url=url, renewal=renewal_date(now, lang))


def account_text(catalog: Catalog, url: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """ACCOUNT / CUENTA: the link to the person's own account page (usage, charges, plan,
    settings), which works for 15 minutes and only for them (docs/account.md)."""
    return reply("account", lang, bot_name=catalog.bot_name, url=url)


def language_set_text(lang: str) -> str:
    """LANGUAGE EN / IDIOMA ES: the confirmation, in the language just chosen."""
    return reply("language_set", lang)


def language_help_text(lang: str = DEFAULT_LANGUAGE) -> str:
    """A bare LANGUAGE / IDIOMA: how to choose."""
    return reply("language_help", lang)


def small_talk_text(kind: str, catalog: Catalog, lang: str = DEFAULT_LANGUAGE) -> str:
    """The free reply to small talk (`bot.intents.offline.small_talk`) of `kind` "thanks",
    "ack" (ok, an emoji), "stop_request" (points to STOP, which alone opts out) or
    "no_subscription" (a non-subscriber asking to cancel one)."""
    if kind == "thanks":
        return reply("small_thanks", lang)
    if kind == "stop_request":
        return reply("stop_hint", lang, bot_name=catalog.bot_name)
    if kind == "no_subscription":
        return reply("cancel_none", lang, plan=catalog.premium.name)
    return reply("small_ack", lang)
