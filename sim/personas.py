"""Who the simulated people are: personas (how often, when and what they write, how they
react to the bot) and the texts they send, in English and Spanish.

A persona is a frozen table of volumes and propensities (chances between 0 and 1); a person is
drawn from one persona and keeps their own random stream (`sim.population`), so what one
person does never depends on another (the shards of `sim.shard` rely on it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any

import click

# What people write, by intent and language; every text classifies as its intent
# (`sim.population.check_texts` checks it at the start of a run).
TEXTS: dict[str, tuple[str, ...]] = {
    "chat": ("hi", "hello there", "what can you do?", "thanks!", "good morning",
             "who are you", "ok cool", "thank you so much"),
    "grocery_list": ("grocery list for a vegetarian week", "shopping list for tacos tonight",
                     "what should i buy at the store for a week of lunches",
                     "groceries for a family of four"),
    "meal_plan": ("meal plan 1800 calories vegetarian", "plan my meals for the week",
                  "weekly menu with lots of protein", "what should i eat today",
                  "meal prep for my work week", "2200 calories meal plan for training"),
    "recipe_search": ("chicken recipe", "how do i make pancakes", "dinner ideas with salmon",
                      "what can i cook with eggs and spinach", "vegan chili recipe"),
    "nutrition_analysis": ("calories in an avocado", "how much protein in greek yogurt",
                           "macros of a banana", "nutrition facts for oatmeal",
                           "calories in a slice of pizza"),
    "dietary_advice": ("tips for a gluten free diet", "is it ok to eat eggs every day",
                       "how to lose weight safely", "keto advice please",
                       "is coffee bad for blood pressure"),
}
# The same intents in Spanish (people of language "es").
TEXTS_ES: dict[str, tuple[str, ...]] = {
    "chat": ("hola", "hola, que tal", "muchas gracias", "buenos dias"),
    "grocery_list": ("lista de compras para la semana", "lista del super para tacos",
                     "lista de la compra vegetariana"),
    "meal_plan": ("plan de comidas para la semana", "plan de comidas de 1800 calorias",
                  "menu semanal con mucha proteina"),
    "recipe_search": ("receta de pollo", "receta de panqueques", "receta de lentejas"),
    "nutrition_analysis": ("calorias de un aguacate", "cuanta proteina tiene el yogur griego",
                           "calorias de una manzana"),
    "dietary_advice": ("consejos para una dieta sin gluten", "consejos para bajar de peso",
                       "consejos para una dieta keto"),
}
# Free commands and compliance keywords people send.
COMMANDS = {"balance": "BALANCE", "help": "HELP", "stop": "STOP", "start": "START",
            "more": "MORE", "buy": "BUY", "premium": "BUY PREMIUM"}
# Message-time patterns: the UTC hours a person writes in, with weights.
HOURS: dict[str, tuple[tuple[int, int, float], ...]] = {
    # (first hour, last hour + 1, weight)
    "daytime": ((7, 23, 0.94), (0, 7, 0.06)),
    "evening": ((17, 24, 0.7), (7, 17, 0.25), (0, 7, 0.05)),
    "night": ((0, 6, 0.6), (6, 24, 0.4)),
}
# Abusive patterns (`Persona.abuse`): what a burst is made of.
ABUSE_PATTERNS = ("flood", "help_flood", "stop_toggle", "probe")


@dataclass(frozen=True)
class Persona:
    """How one kind of person behaves over a month.

    Volumes (any combination; a person's messages are the sum):
        monthly: (min, max) messages a month scattered over random days (casual people).
        day_share: the chance that a day is an active day; per_day: (min, max) messages on it.
        bursts: (min, max) bursts a month; burst_size: (min, max) messages in one burst;
            burst_minutes: (min, max) minutes one burst lasts.
        hours: the message-time pattern, a key of `HOURS`.

    Behaviour:
        intents: intent name -> weight of the priced messages.
        commands: share of messages that are BALANCE or HELP (free commands).
        stop: chance that a message is STOP (after which the person leaves, or texts START).
        buy: chance to buy when refused ("refused", "insufficient") with a pay link; half of
            it to text BUY after an upsell notice or partner offers.
        premium: share of purchases that are the premium subscription (not a pack).
        auto_topup: chance that a buyer turns auto top-up on after the first pack (each later
            refusal for lack of tokens then buys again at once, without a pause).
        click: chance to click a partner offer; convert: chance that a click becomes a sale.
        more: chance to text MORE after an answer cut with "Reply MORE".
        pause: chance, after a refusal not followed by a purchase, to write no more that day;
            give_up: chance to write no more this month.
        whatsapp: share of people of this persona writing mostly on WhatsApp (else SMS).
        spanish: share of people of this persona writing in Spanish.
        refund: chance that a pack purchase is refunded in full (1 to 10 days later).
        dispute: chance that a pack purchase is disputed (and lost) 1 to 20 days later.
        abuse: abusive pattern -> weight (`ABUSE_PATTERNS`): "flood" bursts of priced
            requests, "help_flood" bursts of HELP, "stop_toggle" STOP/START in turn,
            "probe" one message a few seconds apart, just at the rate limit.
    """

    name: str
    monthly: tuple[int, int] = (0, 0)
    day_share: float = 0.0
    per_day: tuple[int, int] = (0, 0)
    bursts: tuple[int, int] = (0, 0)
    burst_size: tuple[int, int] = (0, 0)
    burst_minutes: tuple[int, int] = (30, 180)
    hours: str = "daytime"
    intents: Mapping[str, float] = field(default_factory=dict)
    commands: float = 0.02
    stop: float = 0.002
    buy: float = 0.0
    premium: float = 0.0
    auto_topup: float = 0.0
    click: float = 0.0
    convert: float = 0.0
    more: float = 0.3
    pause: float = 0.0
    give_up: float = 0.0
    whatsapp: float = 0.4
    spanish: float = 0.0
    refund: float = 0.0
    dispute: float = 0.0
    abuse: Mapping[str, float] = field(default_factory=dict)

    @property
    def pays(self) -> bool:
        """Whether people of this persona ever pay (abusers do not)."""
        return self.buy > 0 or self.premium > 0


PERSONAS: dict[str, Persona] = {
    persona.name: persona for persona in (
        Persona("casual", monthly=(1, 8),
                intents={"chat": 30, "recipe_search": 25, "nutrition_analysis": 20,
                         "grocery_list": 10, "meal_plan": 8, "dietary_advice": 7},
                buy=0.05, premium=0.0, click=0.05, convert=0.05, more=0.2, pause=0.6,
                give_up=0.3, whatsapp=0.35),
        Persona("active", day_share=0.6, per_day=(1, 3),
                intents={"chat": 15, "recipe_search": 20, "nutrition_analysis": 20,
                         "grocery_list": 15, "meal_plan": 20, "dietary_advice": 10},
                buy=0.2, premium=0.15, click=0.08, convert=0.06, more=0.3, pause=0.5,
                give_up=0.1, whatsapp=0.5),
        Persona("power", day_share=0.9, per_day=(4, 14),
                intents={"chat": 5, "recipe_search": 10, "nutrition_analysis": 20,
                         "grocery_list": 15, "meal_plan": 35, "dietary_advice": 15},
                buy=0.3, premium=0.25, click=0.1, convert=0.08, more=0.4, pause=0.4,
                give_up=0.05, whatsapp=0.6),
        Persona("abusive", day_share=0.3, per_day=(1, 5), bursts=(1, 2),
                burst_size=(100, 400), burst_minutes=(20, 180),
                intents={"meal_plan": 60, "dietary_advice": 25, "nutrition_analysis": 15},
                commands=0.01, stop=0.0, buy=0.0, premium=0.0, click=0.0, convert=0.0,
                more=0.5, whatsapp=0.5, abuse={"flood": 1}),
        # Abusers of the free commands and of the limits (the abuse-wave preset).
        Persona("flooder", day_share=0.2, per_day=(1, 3), bursts=(2, 4),
                burst_size=(50, 200), burst_minutes=(10, 60), hours="night",
                intents={"chat": 50, "meal_plan": 50}, commands=0.0, stop=0.0,
                more=0.0, whatsapp=0.3, abuse={"help_flood": 1}),
        Persona("toggler", day_share=0.5, per_day=(1, 4), bursts=(3, 6),
                burst_size=(10, 40), burst_minutes=(5, 30),
                intents={"chat": 40, "recipe_search": 60}, commands=0.0, stop=0.0,
                more=0.0, whatsapp=0.5, abuse={"stop_toggle": 1}),
        Persona("prober", day_share=0.3, per_day=(1, 3), bursts=(2, 5),
                burst_size=(30, 120), burst_minutes=(10, 40),
                intents={"meal_plan": 40, "nutrition_analysis": 60}, commands=0.0, stop=0.0,
                more=0.2, whatsapp=0.5, abuse={"probe": 1}),
    )
}
DEFAULT_MIX = "casual=0.6,active=0.25,power=0.1,abusive=0.05"


def parse_shares(text: str, names: Sequence[str], *, what: str) -> dict[str, Decimal]:
    """Parse "name=share,..." (shares as decimal strings, each >= 0).

    Raises:
        click.BadParameter: an unknown name, a share that is not a number >= 0.
    """
    shares: dict[str, Decimal] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in names:
            raise click.BadParameter(f"{part!r}: use name=share with a name of "
                                     f"{', '.join(names)}", param_hint=what)
        try:
            share = Decimal(value.strip())
        except InvalidOperation:
            raise click.BadParameter(f"{part!r}: the share is not a number",
                                     param_hint=what) from None
        if not share.is_finite() or share < 0:
            raise click.BadParameter(f"{part!r}: a share must be >= 0", param_hint=what)
        shares[name] = share
    return shares


def parse_mix(text: str) -> dict[str, Decimal]:
    """The population mix from "casual=0.6,active=0.25,...": persona -> share, summing to 1.

    Personas not named get no people.

    Raises:
        click.BadParameter: unknown persona, negative share, or all shares zero.
    """
    shares = parse_shares(text, list(PERSONAS), what="--mix")
    total = sum(shares.values(), Decimal(0))
    if total <= 0:
        raise click.BadParameter("at least one persona needs a share above 0",
                                 param_hint="--mix")
    return {name: shares[name] / total for name in PERSONAS if shares.get(name)}


def persona_counts(people: int, mix: Mapping[str, Decimal]) -> dict[str, int]:
    """How many people of each persona: `people` split by `mix`, largest remainders first."""
    exact = {name: share * people for name, share in mix.items()}
    counts = {name: int(value) for name, value in exact.items()}
    left = people - sum(counts.values())
    order = list(mix)
    for name in sorted(exact, key=lambda n: (-(exact[n] - counts[n]), order.index(n)))[:left]:
        counts[name] += 1
    return counts


# The propensities `with_propensities` can override (the --*-propensity options).
PROPENSITIES = ("buy", "click", "convert", "premium", "auto_topup", "refund", "dispute",
                "spanish")


def with_propensities(personas: Mapping[str, Persona], attribute: str, text: str | None
                      ) -> dict[str, Persona]:
    """`personas` with `attribute` (one of `PROPENSITIES`) overridden.

    `text` is either one number, applied to every persona that pays (abusers never pay; for
    "spanish", to every persona), or "persona=chance,..." for the named personas only.
    """
    if attribute not in PROPENSITIES:
        raise ValueError(f"not a propensity: {attribute}")
    result = dict(personas)
    if not text:
        return result
    hint = f"--{attribute.replace('_', '-')}-propensity"
    if "=" in text:
        chances = parse_shares(text, list(personas), what=hint)
    else:
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise click.BadParameter(f"{text!r} is not a number", param_hint=hint) from None
        chances = {name: value for name, persona in personas.items()
                   if persona.pays or attribute == "spanish"}
    for name, chance in chances.items():
        if not 0 <= chance <= 1:
            raise click.BadParameter(f"{name}: a chance between 0 and 1", param_hint=hint)
        changes: dict[str, Any] = {attribute: float(chance)}
        result[name] = replace(result[name], **changes)
    return result
