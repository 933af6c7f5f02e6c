"""The wording of the bot's own replies: help, balance, pay links, refusals, compliance.

Kept in one place so that what a person is told about money reads consistently, and short
enough for one or two SMS segments.
"""

from __future__ import annotations

from datetime import datetime

from tokens.catalog import Catalog, IntentSpec, Pack, Plan
from tokens.ledger import next_month_start


def price_list(catalog: Catalog, affordable_below: int | None = None) -> str:
    """Intents with their prices, dearest first, e.g. "meal plan 5, dietary advice 4, ...".

    Args:
        catalog: the economy catalog.
        affordable_below: when given, only intents costing at most this many tokens.
    """
    specs = sorted(catalog.intents, key=lambda s: (-s.price, s.label))
    if affordable_below is not None:
        specs = [s for s in specs if s.price <= affordable_below]
    return ", ".join(f"{s.label} {s.price}" for s in specs)


def renewal_date(now: datetime) -> str:
    """When the free allowance renews, e.g. "Dec 1"."""
    start = next_month_start(now)
    return f"{start:%b} {start.day}"


def help_text(catalog: Catalog, now: datetime) -> str:
    """HELP: what the bot does, prices, the free commands and how to stop (messaging.md)."""
    pack = catalog.pack()
    return (
        f"{catalog.bot_name}: {catalog.bot_description}. Prices in tokens: "
        f"{price_list(catalog)}. You get {catalog.free_monthly_allowance} free tokens a month "
        f"(next on {renewal_date(now)}). Text BALANCE to see yours, BUY for "
        f"{pack.total_tokens} more for {pack.price_display}. Reply STOP to unsubscribe. "
        "Msg & data rates may apply."
    )


def balance_text(catalog: Catalog, available: int, now: datetime) -> str:
    """BALANCE: the available balance as "<N> tokens", and what it buys."""
    cheapest = min(s.price for s in catalog.intents)
    spend = f"Prices: {price_list(catalog)}." if available >= cheapest else "Text BUY to top up."
    return (
        f"You have {available} tokens. {spend} Free tokens renew on {renewal_date(now)}."
    )


def buy_text(pack: Pack, url: str) -> str:
    """BUY: the pay link and what it buys."""
    bonus = f" ({pack.tokens} + {pack.bonus_tokens} bonus)" if pack.bonus_tokens else ""
    return f"Get {pack.total_tokens} tokens{bonus} for {pack.price_display}: {url}"


def premium_text(plan: Plan, url: str) -> str:
    """BUY PREMIUM: the subscription's pay link, what it gives, and how it ends."""
    return (f"{plan.name}: {plan.monthly_tokens} tokens every month for {plan.price_display}. "
            f"Subscribe: {url} (to cancel later, text BUY PREMIUM again)")


def premium_manage_text(plan: Plan, url: str) -> str:
    """BUY PREMIUM from a subscriber: the billing portal, to change the card or cancel."""
    return f"You have {plan.name}. Manage or cancel it here: {url}"


def pack_credited_text(tokens: int, available: int) -> str:
    """After a pack is paid for."""
    return f"Thank you! {tokens} tokens were added. You now have {available} tokens."


def premium_started_text(plan: Plan) -> str:
    """A subscription became active."""
    return (f"Welcome to {plan.name}: {plan.monthly_tokens} tokens arrive with each monthly "
            "payment. Text BALANCE any time.")


def premium_ended_text(plan: Plan) -> str:
    """A subscription ended (tokens already bought stay usable)."""
    return (f"Your {plan.name} subscription has ended. The tokens you have stay yours; text "
            "BUY PREMIUM to subscribe again.")


def billing_problem_text(url: str) -> str:
    """A subscription payment failed (or the subscription went past due)."""
    return f"We could not take your subscription payment. Please update your card: {url}"


PAYMENT_FAILED = "Your payment did not go through, so nothing was added. Text BUY to try again."


def insufficient_text(
    catalog: Catalog, spec: IntentSpec, available: int, url: str, now: datetime
) -> str:
    """The refusal when the balance is below the price: nothing charged, a pay link, and the
    cheaper things the person can still do (economy.md, Tiers: "whatever the level")."""
    pack = catalog.pack()
    article = "an" if spec.label[:1] in "aeiou" else "a"
    # The pay link comes early: an SMS reply is cut after 2 segments (the rest via MORE).
    parts = [
        f"{article.capitalize()} {spec.label} costs {spec.price} tokens and you have "
        f"{available}. Nothing was charged.",
        f"Get {pack.total_tokens} tokens for {pack.price_display}: {url}",
    ]
    cheaper = price_list(catalog, affordable_below=available)
    if cheaper:
        parts.append(f"You can still ask for: {cheaper}.")
    parts.append(f"Free tokens renew on {renewal_date(now)}.")
    return " ".join(parts)


def stop_text(catalog: Catalog) -> str:
    """Confirmation of STOP, sent once where the app (not Twilio) manages opt-out."""
    return (
        f"You are unsubscribed from {catalog.bot_name} and will get no more messages. "
        "Reply START to come back."
    )


def start_text(catalog: Catalog) -> str:
    """Confirmation of START where the app manages opt-out."""
    return (
        f"Welcome back to {catalog.bot_name}. Text HELP for what I can do, BALANCE for your "
        "tokens. Reply STOP to unsubscribe."
    )


NO_TEXT = (
    "I can only read text for now. Tell me in words, e.g. \"calories in 2 eggs\" or "
    "\"vegetarian meal plan\". Nothing was charged."
)
NOTHING_MORE = "There is nothing more to show. Ask me something new, or text HELP."
SKILL_FAILED = "Sorry, I could not answer that just now. Nothing was charged; please try again."
THROTTLED = ("You're sending messages faster than I can answer. Please wait a few minutes, "
             "then try again. Nothing was charged.")
OFFLINE_FREE = "(A shorter answer, as our assistant is busy. Nothing was charged.)"
TOOK_TOO_LONG = (
    "Sorry, that took too long to answer. Nothing was charged; please ask again."
)


def level_notice(catalog: Catalog, level: str, available: int) -> str:
    """What a person on a restricted level is told, in plain words, with their balance and what
    restores full service (economy.md, rule 4). Never claims anything is unlimited."""
    pack = catalog.pack()
    restore = (f"You have {available} tokens. Text BUY for {pack.total_tokens} tokens "
               f"({pack.price_display}) for full answers")
    if level == "REDUCED":
        return f"[Free service is reduced this month: shorter answers. {restore}.]"
    if level == "BASIC":
        return ("[You have used most of this month's free service: short ready-made answers. "
                f"{restore}.]")
    return f"[This month's free service is nearly used up. {restore}.]"


def offers_text(catalog: Catalog, spec: IntentSpec, available: int,
                offers: list[tuple[str, str]], now: datetime) -> str:
    """The AFFILIATE answer to a costly request: the disclosure first (so it is never cut off
    from the links), the partner offers, then what restores full service. Nothing is
    charged."""
    pack = catalog.pack()
    lines = [f"This month's free service is nearly used up. {catalog.affiliates.disclosure} "
             f"Partners for your {spec.label}:"]
    lines += [f"- {name}: {url}" for name, url in offers]
    lines.append(f"Nothing was charged. You have {available} tokens; text BUY for "
                 f"{pack.total_tokens} tokens ({pack.price_display}) for full answers. Free "
                 f"service returns on {renewal_date(now)}.")
    return "\n".join(lines)


def payment_required_text(catalog: Catalog, available: int, url: str, now: datetime) -> str:
    """PAYMENT_REQUIRED: no answer, a pay link, nothing charged, and when free service
    returns."""
    pack = catalog.pack()
    return (f"You have used this month's free service. Get {pack.total_tokens} tokens for "
            f"{pack.price_display}: {url} Nothing was charged; you have {available} tokens. "
            f"Free service returns on {renewal_date(now)}.")
