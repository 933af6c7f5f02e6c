"""`flask --app wsgi simulate`: the economy simulator (issue #9).

A synthetic population (casual, active, power and abusive people) is replayed over one
simulated month through the real pipeline, in this process, with simulated time:

- Every person's messages are generated first (how many a day, when, which intent, on which
  channel: the persona table `PERSONAS`), then replayed in time order through
  `bot.router.answer_message(..., now=<simulated time>)`, committed per message as the Twilio
  webhook does, each with a unique MessageSid.
- What the router answers drives what people do next: a refusal or "not enough tokens" with a
  pay link may lead to a purchase (the pay link's checkout is opened with the sandbox provider
  and its `checkout.session.completed` event applied through
  `tokens.payment_events.receive_event`, as the sandbox's Pay button does); an upsell notice
  may lead to texting BUY; partner offers may be clicked (`tokens.affiliates.record_click`)
  and a click may convert (`record_conversion`, commission = sale x the partner's rate); a
  cut SMS answer may be followed by MORE. STOP, START, HELP and BALANCE happen now and then.
- The LLM is simulated by default (`SimulatedChat`): no network, a short answer and a
  realistic `usage` (prompt tokens from the request's length, completion tokens bounded by
  its `max_tokens`), behind the same answer cache as in production, so LLM COGS accrue and
  people step down the levels as they would. `--no-llm` uses the offline skills instead.

It writes into a fresh SQLite file in the output folder (migrated with Flask-Migrate), never
into the app's own database unless `--database` names it. The output: the month's report
(`tokens.reports.month_report`), the share of people whose loss stays within the monthly
loss ceiling (`tokens.levels.monthly_loss_ceiling_musd`; it must be 100 %), the profit
distribution, a table per persona, `report.json`, `summary.json`, `people.csv` and PNG charts.

Money is integer µUSD throughout; it becomes a float only when handed to matplotlib.

    flask --app wsgi simulate --people 10000 --month 2026-11 --seed 1
    flask --app wsgi simulate --people 200 --days 7 --mix casual=0.5,power=0.5 --out /tmp/sim

(registered in `app.cli.register_cli` with `app.cli.add_command(simulate)`). The replay runs
at the pipeline's pace, about 50 SQL statements per message: see the run's messages/s.
"""

from __future__ import annotations

import calendar
import heapq
import json
import logging
import random
import re
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from limits.storage import Storage
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, aliased

from app.config import Config
from app.pay import checkout_request
from app.sandbox import payment_events
from bot.contacts import mask_address
from bot.intents.classifier import classify
from bot.intents.llm_classify import classification_ceiling_musd
from bot.llm import CachedChat, ChatClient, ChatReply, ChatRequest, LlmError, MemoryCache
from bot.messages import InboundMessage
from bot.models import Contact, Message
from bot.ratelimit import SenderLimits
from bot.router import BotSettings, Outcome, answer_message
from tokens import affiliates, levels, payments
from tokens.catalog import Catalog
from tokens.costs import CostEntry, LlmUsage
from tokens.errors import PayLinkExpired, PayLinkNotFound
from tokens.ledger import Account
from tokens.payment_events import EventContext, prefetch, receive_event
from tokens.providers import SandboxProvider
from tokens.reports import MonthReport, month_report, people_csv

log = logging.getLogger(__name__)

MUSD = 1_000_000
DAY = 86_400
# Where simulated people write from and to (the phone numbers are made up).
BOT_NUMBER = "+15005550006"
SIM_NETWORK = "simnet"
# What people write, by intent; every text classifies as its intent (checked at start).
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
# Free commands and compliance keywords people send.
COMMANDS = {"balance": "BALANCE", "help": "HELP", "stop": "STOP", "start": "START",
            "more": "MORE", "buy": "BUY", "premium": "BUY PREMIUM"}
# A simulated LLM answer is made of this text (GSM-7 only, as an SMS answer would be).
ANSWER_FILLER = (
    "Try oats with berries and yogurt for breakfast, a lentil and vegetable salad for lunch, "
    "and grilled fish with brown rice and greens for dinner. Snack on nuts or fruit. Drink "
    "water through the day and keep portions moderate. "
)
_LIMIT = re.compile(r"Keep the answer under (\d+) characters")


# --- personas ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Persona:
    """How one kind of person behaves over a month.

    Volumes (any combination; a person's messages are the sum):
        monthly: (min, max) messages a month scattered over random days (casual people).
        day_share: the chance that a day is an active day; per_day: (min, max) messages on it.
        bursts: (min, max) bursts a month; burst_size: (min, max) messages in one burst;
            burst_minutes: (min, max) minutes one burst lasts.

    Behaviour:
        intents: intent name -> weight of the priced messages.
        commands: share of messages that are BALANCE or HELP (free commands).
        stop: chance that a message is STOP (after which the person leaves, or texts START).
        buy: chance to buy when refused ("refused", "insufficient") with a pay link; half of
            it to text BUY after an upsell notice or partner offers.
        premium: share of purchases that are the premium subscription (not a pack).
        click: chance to click a partner offer; convert: chance that a click becomes a sale.
        more: chance to text MORE after an answer cut with "Reply MORE".
        pause: chance, after a refusal not followed by a purchase, to write no more that day;
            give_up: chance to write no more this month.
        whatsapp: share of people of this persona writing mostly on WhatsApp (else SMS).
    """

    name: str
    monthly: tuple[int, int] = (0, 0)
    day_share: float = 0.0
    per_day: tuple[int, int] = (0, 0)
    bursts: tuple[int, int] = (0, 0)
    burst_size: tuple[int, int] = (0, 0)
    burst_minutes: tuple[int, int] = (30, 180)
    intents: Mapping[str, float] = field(default_factory=dict)
    commands: float = 0.02
    stop: float = 0.002
    buy: float = 0.0
    premium: float = 0.0
    click: float = 0.0
    convert: float = 0.0
    more: float = 0.3
    pause: float = 0.0
    give_up: float = 0.0
    whatsapp: float = 0.4


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
                more=0.5, whatsapp=0.5),
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


def with_propensities(personas: Mapping[str, Persona], attribute: str, text: str | None
                      ) -> dict[str, Persona]:
    """`personas` with `attribute` ("buy" or "click") overridden.

    `text` is either one number, applied to every persona except "abusive" (who never pays),
    or "persona=chance,..." for the named personas only.
    """
    result = dict(personas)
    if not text:
        return result
    hint = f"--{attribute}-propensity"
    if "=" in text:
        chances = parse_shares(text, list(personas), what=hint)
    else:
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise click.BadParameter(f"{text!r} is not a number", param_hint=hint) from None
        chances = {name: value for name in personas if name != "abusive"}
    for name, chance in chances.items():
        if not 0 <= chance <= 1:
            raise click.BadParameter(f"{name}: a chance between 0 and 1", param_hint=hint)
        persona = result[name]
        result[name] = (replace(persona, buy=float(chance)) if attribute == "buy"
                        else replace(persona, click=float(chance)))
    return result


# --- the simulated LLM -----------------------------------------------------------------------


class SimulatedChat:
    """A `ChatClient` that answers at once, without a network, with a realistic `usage`.

    Prompt tokens: the request's characters / 4 plus 4 per message (English averages about 4
    characters a token), always under the level policy's ceiling. Completion tokens: 40 % to
    120 % of the length the system prompt asks for (characters / 4), at most `max_tokens`.
    The answer text is that many tokens x 4 characters of GSM-7 text. A share `failure_rate`
    of calls time out with no usage (the router then records the call at its ceiling).
    Deterministic for a seed and a sequence of calls.
    """

    def __init__(self, seed: int, failure_rate: float = 0.0) -> None:
        self._rng = random.Random(f"{seed}:llm")
        self.failure_rate = failure_rate
        self.calls = 0
        self.failures = 0

    def complete(self, request: ChatRequest) -> ChatReply:
        """Answer `request`; raises `LlmError("timeout")` for the simulated failures."""
        self.calls += 1
        if self.failure_rate and self._rng.random() < self.failure_rate:
            self.failures += 1
            raise LlmError("timeout")
        prompt_tokens = (sum(len(content) for _, content in request.messages) // 4
                         + 4 * len(request.messages))
        system = request.messages[0][1] if request.messages else ""
        match = _LIMIT.search(system)
        wanted = int(match.group(1)) // 4 if match else 75
        completion = max(8, min(request.max_tokens, int(wanted * self._rng.uniform(0.4, 1.2))))
        chars = completion * 4
        text = (ANSWER_FILLER * (chars // len(ANSWER_FILLER) + 1))[:chars].rsplit(" ", 1)[0]
        return ChatReply(text.strip() + ".", LlmUsage(request.model, prompt_tokens, completion))


# --- rate limits on the simulated clock ----------------------------------------------------


class SimulatedClockStorage(Storage):
    """A `limits` storage in memory whose counters expire on the simulated clock.

    `bot.ratelimit.SenderLimits` keys its fixed windows by the router's `now`, but a storage
    expires its keys in real time; the in-memory one also scans every live key after each
    increment (a 10 ms timer), so a month replayed in an hour keeps every key of the last
    real hour alive and the scans come to dominate the replay. Here a counter lives `expiry`
    seconds of simulated time from its first increment, as it would in production. The
    simulation sets `now` (Unix seconds) before each message.
    """

    STORAGE_SCHEME = None

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self._counts: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._queue: list[tuple[float, str]] = []

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        """Nothing here raises storage errors."""
        return ValueError

    def _expire(self) -> None:
        while self._queue and self._queue[0][0] <= self.now:
            at, key = heapq.heappop(self._queue)
            if self._expires.get(key) == at:
                del self._expires[key]
                self._counts.pop(key, None)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Add `amount` to the counter `key` (created to live `expiry` seconds); its value."""
        self._expire()
        if key not in self._counts:
            self._counts[key] = 0
            self._expires[key] = self.now + expiry
            heapq.heappush(self._queue, (self.now + expiry, key))
        self._counts[key] += amount
        return self._counts[key]

    def get(self, key: str) -> int:
        """The counter's value (0 when absent or expired)."""
        self._expire()
        return self._counts.get(key, 0)

    def get_expiry(self, key: str) -> float:
        """When the counter expires (Unix seconds of the simulated clock)."""
        return self._expires.get(key, self.now)

    def check(self) -> bool:
        """Always healthy."""
        return True

    def reset(self) -> int | None:
        """Forget every counter; how many there were."""
        count = len(self._counts)
        self._counts.clear()
        self._expires.clear()
        self._queue.clear()
        return count

    def clear(self, key: str) -> None:
        """Forget one counter."""
        self._counts.pop(key, None)
        self._expires.pop(key, None)


# --- the population and its events -----------------------------------------------------------


@dataclass
class Person:
    """One simulated person and what they did (counts; tokens and money are in the DB)."""

    index: int
    persona: str
    phone: str
    channel: str
    opted_out: bool = False
    left: bool = False
    quiet_until: int = 0
    buying_until: int = 0
    premium: bool = False
    packs: int = 0
    subscriptions: int = 0
    clicks: int = 0
    conversions: int = 0
    messages: int = 0


# Event kinds; an event is (seconds since the month's start, sequence, kind, person, arg).
MSG, PAY, CLICK, CONVERT = "msg", "pay", "click", "convert"
Event = tuple[int, int, str, int, str]


def waking_second(rng: random.Random) -> int:
    """A second of the day when people write: mostly 7:00-23:00 UTC, a few at night."""
    if rng.random() < 0.06:
        return rng.randrange(0, 7 * 3600)
    return rng.randrange(7 * 3600, 23 * 3600)


def schedule(persona: Persona, rng: random.Random, days: int, days_in_month: int
             ) -> list[int]:
    """When one person writes: seconds since the month's start, sorted, within `days` days.

    Monthly volumes and burst counts scale with `days / days_in_month` (a person with
    bursts has at least one).
    """
    scale = days / days_in_month
    times: list[int] = []
    if persona.monthly[1]:
        count = round(rng.randint(*persona.monthly) * scale)
        times += [rng.randrange(days) * DAY + waking_second(rng) for _ in range(max(count, 1))]
    if persona.day_share:
        for day in range(days):
            if rng.random() < persona.day_share:
                times += [day * DAY + waking_second(rng)
                          for _ in range(rng.randint(*persona.per_day))]
    if persona.bursts[1]:
        for _ in range(max(1, round(rng.randint(*persona.bursts) * scale))):
            start = rng.randrange(days) * DAY + waking_second(rng)
            span = rng.randint(*persona.burst_minutes) * 60
            size = rng.randint(*persona.burst_size)
            times += [min(start + rng.randrange(span), days * DAY - 1) for _ in range(size)]
    return sorted(times)


def message_text(persona: Persona, rng: random.Random) -> str:
    """What one scheduled message says: a priced request, BALANCE, HELP, or STOP."""
    roll = rng.random()
    if roll < persona.stop:
        return COMMANDS["stop"]
    if roll < persona.stop + persona.commands:
        return COMMANDS["balance"] if rng.random() < 0.8 else COMMANDS["help"]
    names = list(persona.intents)
    intent = rng.choices(names, weights=[persona.intents[n] for n in names])[0]
    return rng.choice(TEXTS[intent])


def check_texts(catalog: Catalog) -> None:
    """Every text of `TEXTS` classifies as its intent under `catalog` (a different catalog
    may not know them: then the simulation's intent mix is wrong, so it stops)."""
    for intent, texts in TEXTS.items():
        for text in texts:
            got = classify(text, catalog).name
            if got != intent:
                raise click.ClickException(
                    f"the simulator's text {text!r} classifies as {got!r}, not {intent!r}, "
                    "under this catalog")


# --- the replay --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationOptions:
    """What to simulate.

    Attributes:
        people: how many people.
        month: "YYYY-MM" (UTC).
        seed: the random seed (same seed, same run).
        mix: persona -> share of the people (sums to 1).
        personas: the persona table (defaults `PERSONAS`, with any overrides).
        days: simulate the first `days` days of the month (default: all of it).
        llm: answer with `SimulatedChat` (True) or the offline skills (False).
        llm_failure_rate: share of simulated LLM calls that time out.
        progress: show a progress bar.
    """

    people: int
    month: str
    seed: int
    mix: Mapping[str, Decimal]
    personas: Mapping[str, Persona] = field(default_factory=lambda: dict(PERSONAS))
    days: int | None = None
    llm: bool = True
    llm_failure_rate: float = 0.01
    progress: bool = True

    @property
    def start(self) -> datetime:
        """The month's first instant (UTC)."""
        year, month = (int(part) for part in self.month.split("-"))
        return datetime(year, month, 1, tzinfo=UTC)

    @property
    def days_in_month(self) -> int:
        """Days in the month."""
        return levels.days_in(self.start)

    @property
    def days_simulated(self) -> int:
        """Days simulated (`days`, at most the month's)."""
        return min(self.days or self.days_in_month, self.days_in_month)


@dataclass
class RunStats:
    """What the replay did: counts, timings (seconds), errors."""

    events: int = 0
    messages: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    payments: Counter[str] = field(default_factory=Counter)
    clicks: int = 0
    conversions: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    warnings: Counter[str] = field(default_factory=Counter)
    llm_calls: int = 0
    llm_failures: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


class Simulation:
    """The replay of one month: a heap of timed events through the real pipeline.

    Args:
        session: the simulation database's session (committed once per event).
        settings: the router's settings (catalog, public URL, the simulated LLM or None).
        options: what to simulate.
        provider: the sandbox payment provider checkouts are opened with.
    """

    def __init__(self, session: Session, settings: BotSettings, options: SimulationOptions,
                 provider: SandboxProvider) -> None:
        self.session = session
        self.settings = settings
        self.options = options
        self.provider = provider
        self.rng = random.Random(options.seed)
        self.start = options.start
        self.end = options.days_simulated * DAY
        self.people: list[Person] = []
        self.heap: list[Event] = []
        self.seq = 0
        self.stats = RunStats()
        self.clock: SimulatedClockStorage | None = None
        if settings.sender_limits is not None:  # the same limits, counted on simulated time
            self.clock = SimulatedClockStorage()
            self.settings = replace(settings, sender_limits=SenderLimits(
                settings.sender_limits.limits, self.clock))
        base = re.escape(settings.public_base_url.rstrip("/"))
        self._pay = re.compile(base + r"/pay/([A-Za-z0-9_-]+)")
        self._offer = re.compile(base + r"/r/([A-Za-z0-9_-]+)")

    # -- population --

    def populate(self) -> None:
        """Create the people (personas shuffled by the seed) and schedule their messages."""
        options = self.options
        counts = persona_counts(options.people, options.mix)
        kinds = [name for name, count in counts.items() for _ in range(count)]
        self.rng.shuffle(kinds)
        for index, name in enumerate(kinds):
            persona = options.personas[name]
            rng = random.Random(f"{options.seed}:person:{index}")
            channel = "whatsapp" if rng.random() < persona.whatsapp else "sms"
            person = Person(index=index, persona=name, phone=f"+1555{index:07d}",
                            channel=channel)
            self.people.append(person)
            for moment in schedule(persona, rng, options.days_simulated,
                                   options.days_in_month):
                self.push(moment, MSG, index, message_text(persona, rng))

    def push(self, moment: int, kind: str, person: int, arg: str) -> bool:
        """Schedule an event at `moment` (seconds since the month's start); False (dropped)
        when it falls after the simulated days."""
        if moment >= self.end:
            return False
        self.seq += 1
        heapq.heappush(self.heap, (moment, self.seq, kind, person, arg))
        return True

    # -- replay --

    def run(self) -> RunStats:
        """Replay every event in time order (follow-ups are scheduled as they arise)."""
        from tqdm import tqdm

        started, cpu = time.perf_counter(), time.process_time()
        bar = tqdm(total=len(self.heap), unit="ev", desc=f"simulating {self.options.month}",
                   disable=not self.options.progress, mininterval=0.5, smoothing=0.05)
        handlers = {MSG: self.message, PAY: self.pay, CLICK: self.click,
                    CONVERT: self.convert}
        try:
            while self.heap:
                moment, _, kind, index, arg = heapq.heappop(self.heap)
                before = len(self.heap)
                now = self.start + timedelta(seconds=moment)
                try:
                    handlers[kind](self.people[index], arg, now, moment)
                except Exception as exc:  # a bug in the pipeline: note it and go on
                    self.session.rollback()
                    self._error(kind, exc)
                self.stats.events += 1
                added = len(self.heap) - before
                if added > 0:
                    bar.total += added
                bar.update(1)
        finally:
            bar.close()
        self.stats.seconds = time.perf_counter() - started
        self.stats.cpu_seconds = time.process_time() - cpu
        chat = _unwrap(self.settings.chat)
        if chat is not None:
            self.stats.llm_calls, self.stats.llm_failures = chat.calls, chat.failures
        return self.stats

    def _error(self, kind: str, exc: Exception) -> None:
        key = f"{kind}: {type(exc).__name__}: {str(exc)[:120]}"
        self.stats.errors[key] += 1
        if len(self.stats.first_errors) < 5:
            self.stats.first_errors.append(traceback.format_exc())

    def message(self, person: Person, text: str, now: datetime, moment: int) -> None:
        """One inbound message through the router, committed; then what the person does."""
        if person.left or moment < person.quiet_until:
            return
        persona = self.options.personas[person.persona]
        rng = self.rng
        if person.opted_out and text != COMMANDS["start"]:
            if rng.random() < 0.5:
                person.left = True  # they stopped for good: no more messages
                return
            self.push(moment + rng.randint(5, 60), MSG, person.index, text)
            text = COMMANDS["start"]
        channel = person.channel
        if rng.random() < 0.05:  # now and then from the other channel (one wallet)
            channel = "sms" if channel == "whatsapp" else "whatsapp"
        self.stats.messages += 1
        person.messages += 1
        msg = InboundMessage(channel=channel, sender=person.phone, text=text,
                             message_sid=f"SM{self.stats.messages:032x}",
                             to=BOT_NUMBER if channel == "sms" else f"whatsapp:{BOT_NUMBER}")
        if self.clock is not None:
            self.clock.now = now.timestamp()
        outcome = answer_message(self.session, msg, self.settings, transport="twiml", now=now)
        self.stats.outcomes[outcome.kind] += 1
        self.react(person, persona, outcome, moment)

    def react(self, person: Person, persona: Persona, outcome: Outcome, moment: int) -> None:
        """What the person does after the bot's answer (see the module docstring)."""
        rng = self.rng
        kind = outcome.kind
        text = "\n".join(outcome.replies)
        if kind == "opt_out":
            person.opted_out = True
        elif kind == "opt_in":
            person.opted_out = False
        elif kind in ("refused", "insufficient"):
            link = self._pay.search(text)
            if moment < person.buying_until:
                pass  # already on their way to pay
            elif link and rng.random() < persona.buy:
                if persona.premium and not person.premium and rng.random() < persona.premium:
                    self.buy(person, moment, rng.randint(60, 900), MSG, COMMANDS["premium"])
                else:
                    self.buy(person, moment, rng.randint(60, 1800), PAY, link.group(1))
            elif rng.random() < persona.give_up:
                person.left = True
            elif rng.random() < persona.pause:
                person.quiet_until = (moment // DAY + 1) * DAY
        elif kind in ("buy", "premium"):
            link = self._pay.search(text)
            if link and rng.random() < 0.85:  # some open the checkout and walk away
                self.buy(person, moment, rng.randint(60, 900), PAY, link.group(1))
        elif kind == "offers":
            offers = self._offer.findall(text)
            if offers and rng.random() < persona.click:
                self.push(moment + rng.randint(30, 3600), CLICK, person.index,
                          rng.choice(offers))
            elif moment >= person.buying_until and rng.random() < persona.buy / 2:
                self.buy(person, moment, rng.randint(60, 900), MSG, COMMANDS["buy"])
        elif (kind == "answered" and "Text BUY" in text and moment >= person.buying_until
              and rng.random() < persona.buy / 2):
            self.buy(person, moment, rng.randint(60, 900), MSG, COMMANDS["buy"])
        if (kind in ("answered", "more") and text.rstrip().endswith("MORE")
                and rng.random() < persona.more):
            self.push(moment + rng.randint(20, 300), MSG, person.index, COMMANDS["more"])

    def buy(self, person: Person, moment: int, delay: int, kind: str, arg: str) -> None:
        """Schedule the next step of a purchase (texting BUY, or paying a link) `delay`
        seconds from `moment`; no other purchase starts until then."""
        if self.push(moment + delay, kind, person.index, arg):
            person.buying_until = moment + delay + 1

    def pay(self, person: Person, token: str, now: datetime, moment: int) -> None:
        """Pay a pay link as the sandbox checkout does: open the checkout with the provider,
        then apply `checkout.session.completed` (and, for premium, `invoice.paid`) at the
        simulated time through `tokens.payment_events.receive_event`."""
        session, catalog = self.session, self.settings.catalog
        try:
            link = payments.find_pay_link(session, token, now)
        except (PayLinkNotFound, PayLinkExpired):
            self.stats.payments["link expired"] += 1
            return
        if link.purpose == "portal" or (link.purpose == "premium" and payments.has_premium(
                session, link.account_id, now, catalog.premium.grace_days)):
            return
        public_id = str(session.scalar(select(Account.public_id)
                                       .where(Account.id == link.account_id)))
        request = checkout_request(catalog, link, public_id, self.settings.public_base_url,
                                   moment)
        created = self.provider.create_checkout(request)
        session_id = created.external_id
        session.add(payments.Checkout(
            pay_link_id=link.id, account_id=link.account_id, provider=self.provider.name,
            mode=request.mode, item_code=request.item_code, amount_cents=request.amount_cents,
            currency=request.currency, tokens=request.tokens,
            bonus_tokens=request.bonus_tokens, external_id=session_id, url=created.url,
            status="open", created_at=now, expires_at=now + timedelta(hours=24)))
        session.commit()
        events = payment_events(session_id, request.mode, request.amount_cents,
                                request.currency, public_id, request.item_code)
        subscription = events[0]["data"]["object"]["subscription"]
        if subscription is not None:  # the sandbox's subscription, on the simulated clock
            self.provider.subscriptions[subscription] = {
                "id": subscription, "object": "subscription", "status": "active",
                "customer": f"cus_sandbox_{public_id}", "cancel_at_period_end": False,
                "current_period_end": int((now + timedelta(days=30)).timestamp()),
                "metadata": {"account": public_id, "sandbox_checkout": session_id}}
        for event in events:
            self._apply(event, now)
        if subscription is not None:
            person.premium = True
            person.subscriptions += 1
            self.stats.payments["premium"] += 1
        else:
            person.packs += 1
            self.stats.payments["pack"] += 1

    def _apply(self, event: dict[str, Any], now: datetime) -> None:
        ctx = EventContext(catalog=self.settings.catalog, provider=self.provider.name, now=now,
                           fetched=prefetch(event, self.provider))
        receive_event(self.session, self.provider.name, event, ctx)
        self.session.commit()

    def click(self, person: Person, token: str, now: datetime, moment: int) -> None:
        """Open an offer link (one click recorded); maybe a sale follows hours later."""
        session = self.session
        try:
            affiliates.record_click(session, token, self.settings.catalog, now)
        except affiliates.UnknownOfferLink:
            session.rollback()
            return
        # This link's click of the hour (one per link and hour: a repeat reuses it).
        click_id, partner = session.execute(
            select(affiliates.Click.click_id, affiliates.Click.partner_code)
            .join(affiliates.OfferLink, affiliates.OfferLink.id == affiliates.Click.offer_link_id)
            .where(affiliates.OfferLink.token == token)
            .order_by(affiliates.Click.id.desc()).limit(1)).one()
        session.commit()
        person.clicks += 1
        self.stats.clicks += 1
        persona = self.options.personas[person.persona]
        if self.rng.random() < persona.convert:
            self.push(moment + self.rng.randint(3600, 3 * DAY), CONVERT, person.index,
                      f"{click_id} {partner}")

    def convert(self, person: Person, arg: str, now: datetime, moment: int) -> None:
        """The network reports a sale for a click: commission = sale x partner's rate."""
        click_id, partner_code = arg.split(" ")
        partner = next(p for p in self.settings.catalog.affiliates.partners
                       if p.code == partner_code)
        sale = self.rng.randint(2000, 9000)  # cents
        commission = int(Decimal(sale) * partner.commission_rate)
        affiliates.record_conversion(self.session, SIM_NETWORK, f"conv-{self.seq}-{moment}",
                                     click_id, sale, commission, now)
        self.session.commit()
        person.conversions += 1
        self.stats.conversions += 1


def _unwrap(chat: ChatClient | None) -> SimulatedChat | None:
    if isinstance(chat, CachedChat):
        chat = chat.client
    return chat if isinstance(chat, SimulatedChat) else None


# --- the loss ceiling --------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonResult:
    """One person's month as the report and the loss check see it (µUSD).

    Attributes:
        loss_musd: what the loss ceiling bounds: cost - revenue, without the person's own
            inbound messages (messaging in and the per-interaction platform cost); every reply
            the bot sends counts (`monthly_loss_ceiling_musd`).
        carrier_replies_musd: what the replies to HELP, STOP and START cost (reported; part
            of the loss, from the daily budget of free replies).
        raw_loss_musd: cost - revenue, everything counted.
        ceiling_musd: the person's monthly loss ceiling (with the free allowance's answers
            added when they bought something this month).
    """

    account_id: int
    persona: str
    level: str
    messages_in: int
    cost_musd: int
    revenue_musd: int
    inbound_musd: int
    platform_musd: int
    carrier_replies_musd: int
    loss_musd: int
    raw_loss_musd: int
    ceiling_musd: int
    bought: bool

    @property
    def profit_musd(self) -> int:
        """Revenue - cost, µUSD."""
        return self.revenue_musd - self.cost_musd

    @property
    def within(self) -> bool:
        """The loss stays within the ceiling."""
        return self.loss_musd <= self.ceiling_musd


def loss_check(session: Session, report: MonthReport, catalog: Catalog,
               persona_of: Mapping[int, str], days_in_month: int, *,
               classify_call_musd: int = 0) -> list[PersonResult]:
    """Every active person's loss against `levels.monthly_loss_ceiling_musd`.

    The ceiling leaves out the person's own inbound messages (its docstring), so those are
    taken out of the loss too: the inbound messaging cost (the `messaging` cost entries of
    direction "in") and the platform cost (recorded once per inbound message). The replies
    to HELP, STOP and START (units x the outbound rate) are reported and stay in the loss.
    `classify_call_musd`: one LLM classification call's ceiling when an LLM answers (0
    without), for the ceiling's classification term.
    """
    label = report.month
    inbound = dict(session.execute(
        select(CostEntry.account_id, func.sum(CostEntry.amount_musd))
        .where(CostEntry.month == label, CostEntry.kind == "messaging",
               CostEntry.direction == "in")
        .group_by(CostEntry.account_id)).tuples().all())
    year, month = (int(part) for part in label.split("-"))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = start + timedelta(days=calendar.monthrange(year, month)[1])
    out, into = aliased(Message), aliased(Message)
    rates = catalog.costs.messaging
    carrier: Counter[int] = Counter()
    for account_id, channel, units in session.execute(
            select(Contact.account_id, out.channel, func.sum(out.units))
            .join(into, into.id == out.in_reply_to_id)
            .join(Contact, Contact.id == out.contact_id)
            .where(out.direction == "out", out.created_at >= start, out.created_at < end,
                   into.outcome.in_(("help", "opt_out", "opt_in")))
            .group_by(Contact.account_id, out.channel)):
        carrier[account_id] += int(units or 0) * rates[channel].outbound_musd
    plain = levels.monthly_loss_ceiling_musd(catalog, days_in_month,
                                            classify_call_musd=classify_call_musd)
    buyer = levels.monthly_loss_ceiling_musd(catalog, days_in_month,
                                            holds_purchased_tokens=True,
                                            classify_call_musd=classify_call_musd)
    results = []
    for row in report.people:
        bought = row.revenue_pack_musd > 0 or row.revenue_subscription_musd > 0
        inbound_musd = int(inbound.get(row.account_id, 0) or 0)
        excluded = inbound_musd + row.cost_platform_musd
        results.append(PersonResult(
            account_id=row.account_id, persona=persona_of.get(row.account_id, "?"),
            level=row.level, messages_in=row.messages_in, cost_musd=row.cost_musd,
            revenue_musd=row.revenue_musd, inbound_musd=inbound_musd,
            platform_musd=row.cost_platform_musd,
            carrier_replies_musd=carrier[row.account_id],
            loss_musd=row.cost_musd - excluded - row.revenue_musd,
            raw_loss_musd=row.cost_musd - row.revenue_musd,
            ceiling_musd=buyer if bought else plain, bought=bought))
    return results


# --- summaries -------------------------------------------------------------------------------


PERCENTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)


def percentiles(values: Sequence[int], points: Sequence[int] = PERCENTILES) -> dict[str, int]:
    """Nearest-rank percentiles of integer `values` (µUSD stay integers): "p50" -> value."""
    ordered = sorted(values)
    if not ordered:
        return {}
    n = len(ordered)
    return {f"p{p}": ordered[max(0, -(-p * n // 100) - 1)] for p in points}


def usd(musd: int, places: int = 2) -> str:
    """µUSD as "$1,234.56" (or more places), rounded half-even; "-$0.12" when negative."""
    amount = (Decimal(musd) / MUSD).quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN)
    return f"-${-amount:,}" if amount < 0 else f"${amount:,}"


def share(part: int, whole: int) -> str:
    """A share as a percentage with two decimals, e.g. "99.95 %"."""
    if not whole:
        return "n/a"
    return f"{(Decimal(part) * 100 / whole).quantize(Decimal('0.01'), ROUND_HALF_EVEN)} %"


def persona_table(results: Sequence[PersonResult], people: Sequence[Person]
                  ) -> dict[str, dict[str, Any]]:
    """Per persona: people, messages, payers, revenue, cost, profit (µUSD), levels."""
    table: dict[str, dict[str, Any]] = {}
    actions: dict[str, Counter[str]] = {}
    for person in people:
        counter = actions.setdefault(person.persona, Counter())
        counter.update(packs=person.packs, subscriptions=person.subscriptions,
                       clicks=person.clicks, conversions=person.conversions,
                       left=int(person.left))
    for name in PERSONAS:
        rows = [r for r in results if r.persona == name]
        if not rows:
            continue
        profits = [r.profit_musd for r in rows]
        by_level = Counter(r.level for r in rows)
        table[name] = {
            "people": len(rows),
            "messages_in": sum(r.messages_in for r in rows),
            "paying": sum(1 for r in rows if r.revenue_musd > 0),
            "revenue_musd": sum(r.revenue_musd for r in rows),
            "cost_musd": sum(r.cost_musd for r in rows),
            "profit_musd": sum(profits),
            "mean_profit_musd": sum(profits) // len(rows),
            "median_profit_musd": percentiles(profits, (50,))["p50"],
            "worst_loss_musd": max(r.loss_musd for r in rows),
            "worst_raw_loss_musd": max(r.raw_loss_musd for r in rows),
            "within_ceiling": sum(1 for r in rows if r.within),
            "levels": {level: by_level[level] for level in levels.LEVELS if by_level[level]},
            **dict(actions.get(name, Counter())),
        }
    return table


# --- charts --------------------------------------------------------------------------------


def write_charts(out: Path, report: MonthReport, results: Sequence[PersonResult]
                 ) -> list[Path]:
    """Draw the PNG charts into `out` and return their paths: the profit distribution by
    persona, daily revenue vs cost, the level distribution by persona, profit per persona (box
    plot), and each person's loss as a share of their ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def dollars(musd: int) -> float:
        """µUSD as a float of dollars, for drawing only."""
        return musd / MUSD

    names = [name for name in PERSONAS if any(r.persona == name for r in results)]
    colours = {"casual": "#4c72b0", "active": "#55a868", "power": "#dd8452",
               "abusive": "#c44e52"}
    paths = []

    fig, ax = plt.subplots(figsize=(9, 5))
    ax.hist([[dollars(r.profit_musd) for r in results if r.persona == n] for n in names],
            bins=60, stacked=True, label=names, color=[colours.get(n, "grey") for n in names])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set(title=f"Profit per person, {report.month}", xlabel="profit (USD)",
           ylabel="people (log scale)")
    ax.legend()
    paths.append(_save(fig, out / "profit_distribution.png"))

    fig, ax = plt.subplots(figsize=(9, 5))
    days = [day[-2:] for day, _, _ in report.daily]
    ax.plot(days, [dollars(r) for _, r, _ in report.daily], label="revenue", marker="o")
    ax.plot(days, [dollars(c) for _, _, c in report.daily], label="cost (COGS)", marker="o")
    ax.set(title=f"Daily revenue and cost, {report.month}", xlabel="day",
           ylabel="USD")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend()
    paths.append(_save(fig, out / "daily_revenue_cost.png"))

    fig, ax = plt.subplots(figsize=(9, 5))
    bottom = [0] * len(levels.LEVELS)
    for name in names:
        counts = [sum(1 for r in results if r.persona == name and r.level == level)
                  for level in levels.LEVELS]
        ax.bar(levels.LEVELS, counts, bottom=bottom, label=name, color=colours.get(name))
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set(title=f"Level at the month's end (by exposure), {report.month}", ylabel="people")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend()
    paths.append(_save(fig, out / "levels.png"))

    fig, ax = plt.subplots(figsize=(9, 5))
    ax.boxplot([[dollars(r.profit_musd) for r in results if r.persona == n] for n in names],
               tick_labels=names, showfliers=True)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(title=f"Profit per person by persona, {report.month}", ylabel="profit (USD)")
    paths.append(_save(fig, out / "persona_profit_boxplot.png"))

    fig, ax = plt.subplots(figsize=(9, 5))
    ax.hist([[max(-1.0, r.loss_musd / r.ceiling_musd) for r in results if r.persona == n]
             for n in names], bins=50, stacked=True, label=names,
            color=[colours.get(n, "grey") for n in names])
    ax.axvline(1, color="red", linewidth=1, label="ceiling")
    ax.set_yscale("log")
    ax.set(title=f"Loss as a share of the monthly loss ceiling, {report.month}",
           xlabel="loss / ceiling (own inbound messages excluded; profits shown at -1)",
           ylabel="people (log scale)")
    ax.legend()
    paths.append(_save(fig, out / "loss_vs_ceiling.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the database --------------------------------------------------------------------------


def simulation_app(database_url: str, outer: Flask) -> Flask:
    """An app bound to the simulation's database: the outer app's catalog file, public URL and
    rate limits; no Redis (rate-limit counters in memory), no Twilio credentials, no OpenAI key:
    nothing leaves this process."""
    from app import create_app

    environ = {
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "PUBLIC_BASE_URL": outer.config["PUBLIC_BASE_URL"],
        "TWILIO_AUTH_TOKEN": "simulation-only",
        "SECRET_KEY": "simulation-only",
    }
    for name in ("ECONOMY_FILE", "OPENAI_MODEL", "SENDER_RATE_LIMIT"):
        if outer.config.get(name):
            environ[name] = outer.config[name]

    class SimulationConfig(Config):
        """The simulation's settings: `environ` only, no .env file."""

        load_dotenv_file = False

        def __init__(self) -> None:
            super().__init__(environ=environ)
            # One connection, used by one thread: no liveness ping before every message.
            self.SQLALCHEMY_ENGINE_OPTIONS = {"hide_parameters": True}

    return create_app(SimulationConfig)


def fast_sqlite(engine: Engine) -> None:
    """A throwaway SQLite file may lose its last writes on a power cut: WAL without fsync."""
    if engine.dialect.name != "sqlite":
        return
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()


@contextmanager
def quiet_logs() -> Iterator[Counter[str]]:
    """Count the pipeline's warnings instead of printing thousands of them, and drop its
    per-message INFO lines; yields the counter (message -> times)."""
    counter: Counter[str] = Counter()

    class Count(logging.Handler):
        """Counts records by logger and message."""

        def emit(self, record: logging.LogRecord) -> None:
            """Count `record`."""
            counter[f"{record.name}: {record.getMessage()}"[:160]] += 1

    handler = Count(logging.WARNING)
    saved = []
    for name in ("bot", "tokens", "app"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        logger.addHandler(handler)
    try:
        yield counter
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


# --- the command -------------------------------------------------------------------------------


def _month(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    if value is None:
        return f"{datetime.now(UTC):%Y-%m}"
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", value):
        raise click.BadParameter("use YYYY-MM, e.g. 2026-11")
    return value


@click.command("simulate")
@click.option("--people", default=1000, show_default=True, type=click.IntRange(min=1),
              help="How many people.")
@click.option("--month", default=None, callback=_month, metavar="YYYY-MM",
              help="The simulated month (UTC); default this month.")
@click.option("--days", default=None, type=click.IntRange(1, 31),
              help="Simulate only the month's first DAYS days (quick runs).")
@click.option("--seed", default=1, show_default=True, type=int,
              help="Random seed: the same seed gives the same month.")
@click.option("--mix", default=DEFAULT_MIX, show_default=True,
              help="Share of each persona (casual, active, power, abusive).")
@click.option("--buy-propensity", default=None, metavar="P|persona=P,...",
              help="Chance to buy when refused with a pay link: one number for every persona "
                   "but abusive, or per persona. Default: the persona table.")
@click.option("--click-propensity", default=None, metavar="P|persona=P,...",
              help="Chance to click a partner offer, as --buy-propensity.")
@click.option("--llm/--no-llm", default=True, show_default=True,
              help="Answer with a simulated LLM (realistic usage and cost, no network) or "
                   "with the offline skills.")
@click.option("--llm-failure-rate", default=0.01, show_default=True,
              type=click.FloatRange(0, 1), help="Share of simulated LLM calls that time out.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder; default instance/simulation/<month>.")
@click.option("--database", default=None, metavar="URL",
              help="Database URL to simulate in (e.g. postgresql://...); default a fresh "
                   "SQLite file in the output folder. It must hold no accounts.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar.")
@click.option("--charts/--no-charts", default=True, show_default=True,
              help="Draw the PNG charts.")
@with_appcontext
def simulate(people: int, month: str, days: int | None, seed: int, mix: str,
             buy_propensity: str | None, click_propensity: str | None, llm: bool,
             llm_failure_rate: float, out_dir: str | None, database: str | None,
             progress: bool, charts: bool) -> None:
    """Replay a synthetic population over a simulated month through the real pipeline and
    report the month's economy: revenue, COGS, margin, the share of people within the loss
    ceiling (must be 100 %), the profit distribution, a table per persona, and PNG charts.

    Exits 1 when someone's loss passes the ceiling or the pipeline raised.
    """
    outer: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    catalog: Catalog = outer.extensions["bot_settings"].catalog
    check_texts(catalog)
    personas = with_propensities(PERSONAS, "buy", buy_propensity)
    personas = with_propensities(personas, "click", click_propensity)
    options = SimulationOptions(people=people, month=month, seed=seed, mix=parse_mix(mix),
                                personas=personas, days=days, llm=llm,
                                llm_failure_rate=llm_failure_rate, progress=progress)
    out = Path(out_dir) if out_dir else Path(outer.instance_path) / "simulation" / month
    out.mkdir(parents=True, exist_ok=True)
    if database is None:
        path = out / "simulation.db"
        for stale in (path, path.with_name(path.name + "-wal"),
                      path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
        database = f"sqlite:///{path.resolve()}"
    summary = run(outer, catalog, options, database, out, charts=charts)
    failed = summary["within_ceiling"]["people"] != summary["within_ceiling"]["of"]
    if failed or summary["errors"]:
        raise SystemExit(1)


def run(outer: Flask, catalog: Catalog, options: SimulationOptions, database: str,
        out: Path, *, charts: bool = True) -> dict[str, Any]:
    """Migrate `database`, replay the month, write the outputs into `out` (the charts unless
    `charts` is False), print the summary; returns the summary (as in summary.json)."""
    from flask_migrate import upgrade

    from app.extensions import db

    sim = simulation_app(database, outer)
    with sim.app_context():
        fast_sqlite(db.engine)
        upgrade()
        db.engine.dispose()  # new connections get the pragmas
        session = db.session()  # the plain `Session` behind the scoped one
        if session.scalar(select(func.count()).select_from(Account)):
            raise click.ClickException(
                "the simulation database already has accounts: give an empty one")
        chat: ChatClient | None = None
        if options.llm:
            chat = CachedChat(SimulatedChat(options.seed, options.llm_failure_rate),
                              MemoryCache(), catalog.llm.cache_ttl_seconds)
        # The app factory's settings (catalog, public URL, per-sender rate limits in memory),
        # with the simulated LLM (or none) instead of a real one.
        settings: BotSettings = replace(sim.extensions["bot_settings"], chat=chat)
        simulation = Simulation(session, settings, options,
                                SandboxProvider(sim.config["PUBLIC_BASE_URL"]))
        simulation.populate()
        click.echo(f"Simulating {options.people:,} people over {options.month} "
                   f"({options.days_simulated} of {options.days_in_month} days), seed "
                   f"{options.seed}: {len(simulation.heap):,} messages scheduled; LLM: "
                   f"{'simulated' if options.llm else 'off (offline skills)'}; "
                   f"database {_safe_url(database)}")
        with quiet_logs() as warnings:
            stats = simulation.run()
        stats.warnings = warnings
        started = time.perf_counter()
        report = month_report(session, options.month, catalog)
        accounts: dict[str, int] = {
            address: account_id for address, account_id
            in session.execute(select(Contact.address, Contact.account_id))}
        persona_of = {accounts[p.phone]: p.persona for p in simulation.people
                      if p.phone in accounts}
        classify_call = classification_ceiling_musd(catalog) if chat is not None else 0
        results = loss_check(session, report, catalog, persona_of, options.days_in_month,
                             classify_call_musd=classify_call)
        phones = {account: mask_address(address) for address, account in accounts.items()}
        (out / "people.csv").write_text(people_csv(report, phones))
        session.commit()
        report_seconds = time.perf_counter() - started
        db.session.remove()
        db.engine.dispose()
    summary = summarise(options, catalog, report, results, simulation.people, stats, report_seconds)
    (out / "report.json").write_text(json.dumps(report.as_json(), indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    drawn = write_charts(out, report, results) if charts else []
    print_summary(summary, report, out, drawn)
    return summary


def _safe_url(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def summarise(options: SimulationOptions, catalog: Catalog, report: MonthReport,
              results: Sequence[PersonResult], people: Sequence[Person], stats: RunStats,
              report_seconds: float) -> dict[str, Any]:
    """The run's summary (JSON-ready; money in µUSD integers, shares as strings)."""
    worst = max(results, key=lambda r: (r.loss_musd - r.ceiling_musd, r.loss_musd),
                default=None)
    worst_raw = max(results, key=lambda r: r.raw_loss_musd, default=None)
    within = sum(1 for r in results if r.within)
    with_platform = sum(1 for r in results
                        if r.loss_musd + r.platform_musd <= r.ceiling_musd)
    catalog_days = options.days_in_month
    return {
        "month": options.month,
        "people": options.people,
        "days_simulated": options.days_simulated,
        "days_in_month": catalog_days,
        "seed": options.seed,
        "mix": {name: str(value) for name, value in options.mix.items()},
        "llm": "simulated" if options.llm else "off",
        "events": stats.events,
        "messages": stats.messages,
        "seconds": round(stats.seconds, 1),
        "cpu_seconds": round(stats.cpu_seconds, 1),
        "messages_per_second": round(stats.messages / stats.seconds, 1) if stats.seconds else 0,
        "report_seconds": round(report_seconds, 1),
        "outcomes": dict(stats.outcomes.most_common()),
        "payments": dict(stats.payments),
        "clicks": stats.clicks,
        "conversions": stats.conversions,
        "llm_calls": stats.llm_calls,
        "llm_failures": stats.llm_failures,
        "within_ceiling": {
            "people": within, "of": len(results), "share": share(within, len(results)),
            "worst_account": worst.account_id if worst else None,
            "worst_persona": worst.persona if worst else None,
            "worst_loss_musd": worst.loss_musd if worst else 0,
            "worst_ceiling_musd": worst.ceiling_musd if worst else 0,
            "ceiling_musd": levels.monthly_loss_ceiling_musd(catalog, catalog_days),
            "ceiling_buyer_musd": levels.monthly_loss_ceiling_musd(
                catalog, catalog_days, holds_purchased_tokens=True),
            "within_if_platform_counted": with_platform,
            "worst_raw_loss_musd": worst_raw.raw_loss_musd if worst_raw else 0,
            "worst_raw_loss_account": worst_raw.account_id if worst_raw else None,
            "worst_raw_loss_persona": worst_raw.persona if worst_raw else None,
        },
        "profit_percentiles_musd": percentiles([r.profit_musd for r in results]),
        "loss_percentiles_musd": percentiles([r.loss_musd for r in results]),
        "personas": persona_table(results, people),
        "errors": dict(stats.errors),
        "first_errors": stats.first_errors,
        "warnings": dict(stats.warnings.most_common(20)),
    }


def print_summary(summary: dict[str, Any], report: MonthReport, out: Path,
                  charts: Sequence[Path]) -> None:
    """Print the month's report, the loss-ceiling check, the profit distribution and the
    persona table."""
    echo = click.echo
    echo(f"\nReplayed {summary['events']:,} events ({summary['messages']:,} messages) in "
         f"{summary['seconds']:.1f} s ({summary['cpu_seconds']:.1f} s CPU): "
         f"{summary['messages_per_second']:,.0f} messages/s; "
         f"report and checks {summary['report_seconds']:.1f} s")
    echo("Outcomes: " + ", ".join(f"{k} {v:,}" for k, v in summary["outcomes"].items()))
    echo(f"Payments: {summary['payments'] or 'none'}; offer clicks {summary['clicks']:,}, "
         f"conversions {summary['conversions']:,}; LLM calls {summary['llm_calls']:,} "
         f"({summary['llm_failures']:,} timed out)")
    echo(f"\nMonth {report.month}: {report.active_people:,} active people (of "
         f"{summary['people']:,} simulated), {report.paying_people:,} paying")
    echo(f"Revenue {usd(report.revenue_musd)}, COGS {usd(report.cost_musd)}, profit "
         f"{usd(report.profit_musd)}, gross margin {report.gross_margin}")
    echo(f"ARPU {usd(report.arpu_musd, 4)}, average cost {usd(report.average_cost_musd, 4)}, "
         f"profitable {report.share_profitable}, at the $3.00 target {report.share_at_target}, "
         f"pack conversion {report.pack_conversion}")
    echo("Revenue by kind: " + ", ".join(
        f"{k} {usd(v)} ({report.revenue_mix.get(k)})" for k, v in report.revenue_by_kind.items()))
    echo("Levels: " + ", ".join(f"{k} {v:,}" for k, v in report.level_distribution.items()))
    echo("Top intents by LLM cost: " + (", ".join(
        f"{name} {usd(llm, 4)} ({answers:,} answers)" for name, llm, answers
        in report.top_intents) or "none"))
    ceiling = summary["within_ceiling"]
    echo(f"\nWithin the monthly loss ceiling: {ceiling['people']:,} of {ceiling['of']:,} people "
         f"({ceiling['share']}) [loss = cost - revenue without own inbound messages, platform "
         "cost and HELP/STOP/START replies, as the ceiling is defined]")
    echo(f"Worst loss {usd(ceiling['worst_loss_musd'], 4)} vs its ceiling "
         f"{usd(ceiling['worst_ceiling_musd'], 4)} (account {ceiling['worst_account']}, "
         f"{ceiling['worst_persona']})")
    echo(f"Everything counted, the worst loss is {usd(ceiling['worst_raw_loss_musd'], 4)} "
         f"(account {ceiling['worst_raw_loss_account']}, {ceiling['worst_raw_loss_persona']}); "
         f"within the ceiling if the platform cost were counted: "
         f"{ceiling['within_if_platform_counted']:,} of {ceiling['of']:,}")
    echo("\nProfit per person: " + ", ".join(
        f"{k} {usd(v)}" for k, v in summary["profit_percentiles_musd"].items()))
    echo("\n" + f"{'persona':<8} {'people':>7} {'msgs in':>9} {'paying':>7} "
         f"{'revenue':>12} {'cost':>12} {'profit':>12} {'mean':>8} {'median':>8} "
         f"{'worst loss':>10} {'packs':>6} {'subs':>5} {'clicks':>6} {'conv':>5}  levels")
    for name, row in summary["personas"].items():
        by_level = ", ".join(f"{k} {v}" for k, v in row["levels"].items())
        echo(f"{name:<8} {row['people']:>7,} {row['messages_in']:>9,} {row['paying']:>7,} "
             f"{usd(row['revenue_musd']):>12} {usd(row['cost_musd']):>12} "
             f"{usd(row['profit_musd']):>12} {usd(row['mean_profit_musd']):>8} "
             f"{usd(row['median_profit_musd']):>8} {usd(row['worst_loss_musd']):>10} "
             f"{row.get('packs', 0):>6,} {row.get('subscriptions', 0):>5,} "
             f"{row.get('clicks', 0):>6,} {row.get('conversions', 0):>5,}  {by_level}")
    if summary["errors"]:
        echo("\nPipeline errors: " + "; ".join(f"{k} x{v}" for k, v in summary["errors"].items()))
    if summary["warnings"]:
        echo("Warnings logged: " + "; ".join(f"{k} x{v}"
                                             for k, v in summary["warnings"].items()))
    echo(f"\nWrote {out}: report.json, summary.json, people.csv"
         + "".join(f", {path.name}" for path in charts))

