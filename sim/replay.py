"""The replay of one shard's people over a simulated month through the real pipeline.

Every person's messages are scheduled first (`sim.population.schedule`), then replayed in time
order through `bot.router.answer_message(..., now=<simulated time>)`, committed per message as
the Twilio webhook does, each with a unique MessageSid. What the router answers drives what
people do next: a refusal or "not enough tokens" with a pay link may lead to a purchase (the
pay link's checkout is opened with the sandbox provider and its `checkout.session.completed`
event applied through `tokens.payment_events.receive_event`, as the sandbox's Pay button
does); a pack may later be refunded (`charge.refunded`) or disputed and lost
(`charge.dispute.closed`); an upsell notice may lead to texting BUY; partner offers may be
clicked (`tokens.affiliates.record_click`) and a click may convert (`record_conversion`,
commission = sale x the partner's rate); a cut SMS answer may be followed by MORE.

Nothing is shortcut: pricing, levels, holds, the reply budget and the per-sender rate limits
(counted on the simulated clock, `sim.clock`) are the production code's.
"""

from __future__ import annotations

import heapq
import logging
import re
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.config import Config
from app.pay import checkout_request
from app.sandbox import payment_events
from bot.messages import InboundMessage
from bot.ratelimit import SenderLimits
from bot.router import BotSettings, Outcome, answer_message
from sim.clock import SimulatedClockStorage
from sim.fake_llm import SimulatedCache, unwrap
from sim.personas import COMMANDS, PERSONAS, Persona
from sim.population import DAY, Person, schedule
from tokens import affiliates, levels, payments
from tokens.errors import PayLinkExpired, PayLinkNotFound
from tokens.ledger import Account
from tokens.payment_events import EventContext, prefetch, receive_event
from tokens.providers import SandboxProvider

log = logging.getLogger(__name__)

# Where simulated people write from and to (the phone numbers are made up).
BOT_NUMBER = "+15005550006"
SIM_NETWORK = "simnet"

# Event kinds; an event is (seconds since the month's start, person, sequence, kind, arg).
MSG, PAY, CLICK, CONVERT, REFUND, DISPUTE = "msg", "pay", "click", "convert", "refund", "dispute"
Event = tuple[int, int, int, str, str]


@dataclass(frozen=True)
class SimulationOptions:
    """What to simulate.

    Attributes:
        people: how many people (in the whole population, all shards).
        month: "YYYY-MM" (UTC).
        seed: the random seed (same seed, same run).
        mix: persona -> share of the people (sums to 1).
        personas: the persona table (defaults `PERSONAS`, with any overrides).
        days: simulate the first `days` days of the month (default: all of it).
        llm: answer with `SimulatedChat` (True) or the offline skills (False).
        llm_failure_rate: share of simulated LLM calls that time out.
        progress: show a progress bar (needs tqdm).
        shards: processes the people are split across (person i goes to shard i % shards).
    """

    people: int
    month: str
    seed: int
    mix: Mapping[str, Decimal]
    personas: Mapping[str, Persona] = field(default_factory=lambda: dict(PERSONAS))
    days: int | None = None
    llm: bool = True
    llm_failure_rate: float = 0.01
    progress: bool = False
    shards: int = 1

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
    """What the replay did: counts, timings (seconds), errors. Adds up across shards."""

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

    def add(self, other: RunStats) -> None:
        """Add `other`'s counts and CPU seconds (wall seconds: the longest shard's)."""
        self.events += other.events
        self.messages += other.messages
        self.outcomes.update(other.outcomes)
        self.payments.update(other.payments)
        self.clicks += other.clicks
        self.conversions += other.conversions
        self.errors.update(other.errors)
        self.first_errors = (self.first_errors + other.first_errors)[:5]
        self.warnings.update(other.warnings)
        self.llm_calls += other.llm_calls
        self.llm_failures += other.llm_failures
        self.seconds = max(self.seconds, other.seconds)
        self.cpu_seconds += other.cpu_seconds


class Simulation:
    """The replay of one shard: a heap of timed events through the real pipeline.

    Args:
        session: the shard database's session (committed once per event).
        settings: the router's settings (catalog, public URL, the simulated LLM or None).
        options: what to simulate.
        provider: the sandbox payment provider checkouts are opened with.
        people: this shard's people (their own random streams; `sim.population`).
    """

    def __init__(self, session: Session, settings: BotSettings, options: SimulationOptions,
                 provider: SandboxProvider, people: Sequence[Person]) -> None:
        self.session = session
        self.options = options
        self.provider = provider
        self.start = options.start
        self.start_ts = options.start.timestamp()
        self.end = options.days_simulated * DAY
        self.people = {person.index: person for person in people}
        self.heap: list[Event] = []
        self.seq = 0
        self.stats = RunStats()
        self.clock: SimulatedClockStorage | None = None
        self.cache: SimulatedCache | None = None
        self.chat = unwrap(settings.chat)
        from bot.llm import CachedChat

        if isinstance(settings.chat, CachedChat) and isinstance(settings.chat.cache,
                                                                SimulatedCache):
            self.cache = settings.chat.cache
        if settings.sender_limits is not None:  # the same limits, counted on simulated time
            self.clock = SimulatedClockStorage()
            settings = replace(settings, sender_limits=SenderLimits(
                settings.sender_limits.limits, self.clock))
        self.settings = settings
        base = re.escape(settings.public_base_url.rstrip("/"))
        self._pay = re.compile(base + r"/pay/([A-Za-z0-9_-]+)")
        self._offer = re.compile(base + r"/r/([A-Za-z0-9_-]+)")
        self._packs: dict[int, list[tuple[str, int]]] = {}

    # -- population --

    def populate(self) -> None:
        """Schedule every person's messages."""
        options = self.options
        for person in self.people.values():
            persona = options.personas[person.persona]
            for moment, text in schedule(persona, person.rng, options.days_simulated,
                                         options.days_in_month, person.language):
                self.push(moment, MSG, person.index, text)

    def push(self, moment: int, kind: str, person: int, arg: str) -> bool:
        """Schedule an event at `moment` (seconds since the month's start); False (dropped)
        when it falls after the simulated days. Ties are broken by person, then by order of
        scheduling, so each person's events keep their order in any shard."""
        if moment >= self.end:
            return False
        self.seq += 1
        heapq.heappush(self.heap, (moment, person, self.seq, kind, arg))
        return True

    # -- replay --

    def run(self, progress: Any = None) -> RunStats:
        """Replay every event in time order (follow-ups are scheduled as they arise).

        `progress`: a callable given the number of events done so far, now and then.
        """
        started, cpu = time.perf_counter(), time.process_time()
        handlers = {MSG: self.message, PAY: self.pay, CLICK: self.click,
                    CONVERT: self.convert, REFUND: self.refund, DISPUTE: self.dispute}
        heap, people, start = self.heap, self.people, self.start
        while heap:
            moment, index, _, kind, arg = heapq.heappop(heap)
            person = people[index]
            now = start + timedelta(seconds=moment)
            if self.chat is not None:
                self.chat.rng = person.rng
            if self.cache is not None:
                self.cache.person, self.cache.now = index, self.start_ts + moment
            try:
                handlers[kind](person, arg, now, moment)
            except Exception as exc:  # a bug in the pipeline: note it and go on
                self.session.rollback()
                self._error(kind, exc)
            self.stats.events += 1
            if progress is not None and not self.stats.events % 500:
                progress(self.stats.events, len(heap))
        self.stats.seconds = time.perf_counter() - started
        self.stats.cpu_seconds = time.process_time() - cpu
        if self.chat is not None:
            self.stats.llm_calls, self.stats.llm_failures = self.chat.calls, self.chat.failures
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
        rng = person.rng
        toggler = bool(persona.abuse.get("stop_toggle"))
        if person.opted_out and text != COMMANDS["start"] and not toggler:
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
        person.sent += 1
        msg = InboundMessage(channel=channel, sender=person.phone, text=text,
                             message_sid=f"SM{person.index:010x}{person.sent:022x}",
                             to=BOT_NUMBER if channel == "sms" else f"whatsapp:{BOT_NUMBER}")
        if self.clock is not None:
            self.clock.now = self.start_ts + moment
        outcome = answer_message(self.session, msg, self.settings, transport="twiml", now=now)
        self.stats.outcomes[outcome.kind] += 1
        self.react(person, persona, outcome, moment)

    def react(self, person: Person, persona: Persona, outcome: Outcome, moment: int) -> None:
        """What the person does after the bot's answer (see the module docstring)."""
        rng = person.rng
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
            elif link and (person.auto_topup or rng.random() < persona.buy):
                if persona.premium and not person.premium and rng.random() < persona.premium:
                    self.buy(person, moment, rng.randint(60, 900), MSG, COMMANDS["premium"])
                else:
                    delay = rng.randint(5, 60) if person.auto_topup else rng.randint(60, 1800)
                    self.buy(person, moment, delay, PAY, link.group(1))
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
        simulated time through `tokens.payment_events.receive_event`. A pack may then be
        refunded or disputed (the persona's `refund` and `dispute` chances)."""
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
        persona = self.options.personas[person.persona]
        rng = person.rng
        if subscription is not None:
            person.premium = True
            person.subscriptions += 1
            self.stats.payments["premium"] += 1
            return
        person.packs += 1
        self.stats.payments["pack"] += 1
        if person.packs == 1 and persona.auto_topup and rng.random() < persona.auto_topup:
            person.auto_topup = True
        arg = f"{session_id} {request.amount_cents}"
        if persona.refund and rng.random() < persona.refund:
            self.push(moment + rng.randint(1, 10) * DAY, REFUND, person.index, arg)
        elif persona.dispute and rng.random() < persona.dispute:
            self.push(moment + rng.randint(1, 20) * DAY, DISPUTE, person.index, arg)

    def _apply(self, event: dict[str, Any], now: datetime) -> None:
        ctx = EventContext(catalog=self.settings.catalog, provider=self.provider.name, now=now,
                           fetched=prefetch(event, self.provider))
        receive_event(self.session, self.provider.name, event, ctx)
        self.session.commit()

    def refund(self, person: Person, arg: str, now: datetime, moment: int) -> None:
        """The provider refunds a pack in full (`charge.refunded`)."""
        session_id, cents = arg.split(" ")
        charge = {"id": f"ch_sandbox_{session_id}", "object": "charge",
                  "payment_intent": f"pi_sandbox_{session_id}", "amount": int(cents),
                  "amount_refunded": int(cents), "refunded": True}
        self._apply({"id": f"evt_sandbox_refund_{session_id}", "object": "event",
                     "type": "charge.refunded", "livemode": False,
                     "data": {"object": charge}}, now)
        person.refunds += 1
        self.stats.payments["refund"] += 1

    def dispute(self, person: Person, arg: str, now: datetime, moment: int) -> None:
        """The buyer disputes a pack and wins (`charge.dispute.closed`, status "lost")."""
        session_id, cents = arg.split(" ")
        dispute = {"id": f"dp_sandbox_{session_id}", "object": "dispute",
                   "charge": f"ch_sandbox_{session_id}",
                   "payment_intent": f"pi_sandbox_{session_id}", "amount": int(cents),
                   "status": "lost"}
        self._apply({"id": f"evt_sandbox_dispute_{session_id}", "object": "event",
                     "type": "charge.dispute.closed", "livemode": False,
                     "data": {"object": dispute}}, now)
        person.disputes += 1
        self.stats.payments["dispute"] += 1

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
        if person.rng.random() < persona.convert:
            self.push(moment + person.rng.randint(3600, 3 * DAY), CONVERT, person.index,
                      f"{click_id} {partner}")

    def convert(self, person: Person, arg: str, now: datetime, moment: int) -> None:
        """The network reports a sale for a click: commission = sale x partner's rate."""
        click_id, partner_code = arg.split(" ")
        partner = next(p for p in self.settings.catalog.affiliates.partners
                       if p.code == partner_code)
        sale = person.rng.randint(2000, 9000)  # cents
        commission = int(Decimal(sale) * partner.commission_rate)
        affiliates.record_conversion(
            self.session, SIM_NETWORK, f"conv-{person.index}-{person.conversions}-{moment}",
            click_id, sale, commission, now)
        self.session.commit()
        person.conversions += 1
        self.stats.conversions += 1


# --- the database --------------------------------------------------------------------------


def simulation_environ(outer: Flask, database_url: str, catalog_file: str | None = None
                       ) -> dict[str, str]:
    """The settings a shard's app is made from (plain strings, so they cross processes):
    the outer app's public URL, model and rate limits, the catalog file (`catalog_file` or
    the outer app's), and the shard's database URL."""
    environ = {
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "PUBLIC_BASE_URL": outer.config["PUBLIC_BASE_URL"],
        "TWILIO_AUTH_TOKEN": "simulation-only",
        "SECRET_KEY": "simulation-only",
    }
    for name in ("ECONOMY_FILE", "OPENAI_MODEL", "SENDER_RATE_LIMIT"):
        if outer.config.get(name):
            environ[name] = str(outer.config[name])
    if catalog_file:
        environ["ECONOMY_FILE"] = str(catalog_file)
    return environ


def simulation_app(environ: Mapping[str, str]) -> Flask:
    """An app bound to the simulation's database, made from `environ` only
    (`simulation_environ`): no Redis (rate-limit counters in memory), no Twilio credentials,
    no OpenAI key: nothing leaves this process."""
    from app import create_app

    settings = dict(environ)

    class SimulationConfig(Config):
        """The simulation's settings: `environ` only, no .env file."""

        load_dotenv_file = False

        def __init__(self) -> None:
            super().__init__(environ=settings)
            # One connection, used by one thread: no liveness ping before every message.
            self.SQLALCHEMY_ENGINE_OPTIONS = {"hide_parameters": True}

    return create_app(SimulationConfig)


def fast_sqlite(engine: Engine) -> None:
    """A throwaway SQLite file may lose everything on a crash: the journal in memory, no
    fsync, a large page cache."""
    if engine.dialect.name != "sqlite":
        return
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=MEMORY")
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
