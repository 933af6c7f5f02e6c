"""The simulated population: people drawn from personas, and when and what each one writes.

A person's schedule and every later decision come from their own `random.Random`, seeded by
(seed, person index), so a person's month is the same whichever shard replays them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

import click

from bot.intents.classifier import classify
from sim.personas import COMMANDS, HOURS, TEXTS, TEXTS_ES, Persona, persona_counts
from tokens.catalog import Catalog

DAY = 86_400


@dataclass
class Person:
    """One simulated person and what they did (counts; tokens and money are in the DB).

    Attributes:
        index: the person's number in the population (0-based; the merged report's key).
        persona, phone, channel ("sms" or "whatsapp"), language ("en" or "es").
        rng: the person's own random stream (schedule, reactions, the simulated LLM).
        opted_out, left, quiet_until, buying_until: replay state (seconds since the month's
            start for the `*_until`).
        premium, auto_topup: whether they subscribed / turned auto top-up on.
        packs, subscriptions, refunds, disputes, clicks, conversions, messages: counts.
    """

    index: int
    persona: str
    phone: str
    channel: str
    language: str = "en"
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)
    opted_out: bool = False
    left: bool = False
    quiet_until: int = 0
    buying_until: int = 0
    premium: bool = False
    auto_topup: bool = False
    packs: int = 0
    subscriptions: int = 0
    refunds: int = 0
    disputes: int = 0
    clicks: int = 0
    conversions: int = 0
    messages: int = 0
    sent: int = 0

    def counts(self) -> dict[str, int]:
        """What the person did, as counts (the persona table's columns)."""
        return {"packs": self.packs, "subscriptions": self.subscriptions,
                "refunds": self.refunds, "disputes": self.disputes, "clicks": self.clicks,
                "conversions": self.conversions, "left": int(self.left),
                "auto_topup": int(self.auto_topup), "spanish": int(self.language == "es")}


def person_kinds(people: int, mix: Mapping[str, Decimal], seed: int) -> list[str]:
    """Each person's persona, by index: `people` split by `mix`, shuffled by `seed`."""
    counts = persona_counts(people, mix)
    kinds = [name for name, count in counts.items() for _ in range(count)]
    random.Random(seed).shuffle(kinds)
    return kinds


def make_person(index: int, persona: Persona, seed: int) -> Person:
    """Person `index` of persona `persona` with their own random stream."""
    rng = random.Random(f"{seed}:person:{index}")
    channel = "whatsapp" if rng.random() < persona.whatsapp else "sms"
    language = "es" if persona.spanish and rng.random() < persona.spanish else "en"
    return Person(index=index, persona=persona.name, phone=f"+1555{index:07d}",
                  channel=channel, language=language, rng=rng)


def waking_second(rng: random.Random, hours: str = "daytime") -> int:
    """A second of the day (UTC) when a person of pattern `hours` (`HOURS`) writes."""
    spans = HOURS[hours]
    first, last, _ = rng.choices(spans, weights=[w for _, _, w in spans])[0]
    return rng.randrange(first * 3600, last * 3600)


def schedule(persona: Persona, rng: random.Random, days: int, days_in_month: int,
             language: str = "en") -> list[tuple[int, str]]:
    """When one person writes and what: (seconds since the month's start, text), sorted,
    within `days` days.

    Monthly volumes and burst counts scale with `days / days_in_month` (a person with
    bursts has at least one). A burst follows the persona's abusive pattern (`abuse`):
    priced requests ("flood", the default), HELP ("help_flood"), STOP and START in turn
    ("stop_toggle"), or requests 6-8 s apart, at the per-minute limit ("probe").
    """
    scale = days / days_in_month
    times: list[int] = []
    if persona.monthly[1]:
        count = round(rng.randint(*persona.monthly) * scale)
        times += [rng.randrange(days) * DAY + waking_second(rng, persona.hours)
                  for _ in range(max(count, 1))]
    if persona.day_share:
        for day in range(days):
            if rng.random() < persona.day_share:
                times += [day * DAY + waking_second(rng, persona.hours)
                          for _ in range(rng.randint(*persona.per_day))]
    events = [(moment, message_text(persona, rng, language)) for moment in times]
    if persona.bursts[1]:
        patterns = list(persona.abuse) or ["flood"]
        weights = [persona.abuse.get(p, 1) for p in patterns]
        end = days * DAY - 1
        for _ in range(max(1, round(rng.randint(*persona.bursts) * scale))):
            start = rng.randrange(days) * DAY + waking_second(rng, persona.hours)
            span = rng.randint(*persona.burst_minutes) * 60
            size = rng.randint(*persona.burst_size)
            pattern = rng.choices(patterns, weights=weights)[0]
            if pattern == "probe":
                moment = start
                for _ in range(size):
                    moment += rng.randint(6, 8)
                    events.append((min(moment, end), message_text(persona, rng, language)))
            elif pattern == "stop_toggle":
                moments = sorted(min(start + rng.randrange(span), end) for _ in range(size))
                events += [(m, COMMANDS["stop"] if i % 2 == 0 else COMMANDS["start"])
                           for i, m in enumerate(moments)]
            elif pattern == "help_flood":
                events += [(min(start + rng.randrange(span), end), COMMANDS["help"])
                           for _ in range(size)]
            else:
                events += [(min(start + rng.randrange(span), end),
                            message_text(persona, rng, language)) for _ in range(size)]
    events.sort(key=lambda event: event[0])
    return events


def message_text(persona: Persona, rng: random.Random, language: str = "en") -> str:
    """What one scheduled message says: a priced request, BALANCE, HELP, or STOP."""
    roll = rng.random()
    if roll < persona.stop:
        return COMMANDS["stop"]
    if roll < persona.stop + persona.commands:
        return COMMANDS["balance"] if rng.random() < 0.8 else COMMANDS["help"]
    names = list(persona.intents)
    intent = rng.choices(names, weights=[persona.intents[n] for n in names])[0]
    texts = TEXTS_ES if language == "es" else TEXTS
    return rng.choice(texts[intent])


def check_texts(catalog: Catalog) -> None:
    """Every text of `TEXTS` and `TEXTS_ES` classifies as its intent under `catalog` (a
    different catalog may not know them: then the simulation's intent mix is wrong, so it
    stops).

    Raises:
        click.ClickException: a text that classifies as another intent.
    """
    for table in (TEXTS, TEXTS_ES):
        for intent, texts in table.items():
            for text in texts:
                got = classify(text, catalog).name
                if got != intent:
                    raise click.ClickException(
                        f"the simulator's text {text!r} classifies as {got!r}, not "
                        f"{intent!r}, under this catalog")
