"""Sharding: the population split across processes, each with its own database, and the
shards' results merged into one month.

Person i goes to shard i % shards. People never interact (each has their own random
stream, their own answer cache and rate-limit counters, `sim.fake_llm`), so a person's month
is the same in any shard and the merge is exact: the merged report of 1 shard and of N
shards with the same seed are identical. The template SQLite file is migrated once and
copied per shard; the shards run in spawned processes (`concurrent.futures`), each
replaying its people through the real router on its own file.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.contacts import mask_address
from bot.llm import CachedChat, ChatClient
from bot.models import Contact
from sim.fake_llm import SimulatedCache, SimulatedChat
from sim.population import Person, make_person, person_kinds
from sim.replay import (
    RunStats,
    Simulation,
    SimulationOptions,
    fast_sqlite,
    quiet_logs,
    simulation_app,
)
from sim.report import PersonResult, build_report, loss_check
from tokens.costs import AccountDay, AccountMonthIntent
from tokens.ledger import Account
from tokens.providers import SandboxProvider
from tokens.reports import MonthReport, PersonRow, month_report


class SimulationError(Exception):
    """A simulation that cannot start (e.g. a database that already holds accounts)."""


@dataclass(frozen=True)
class ShardJob:
    """One shard's work (picklable: it crosses to a spawned process).

    Attributes:
        options: what to simulate (the whole population's options).
        environ: the shard app's settings (`sim.replay.simulation_environ`) with its
            DATABASE_URL.
        shard, shards: this shard's number (0-based) and how many there are.
        migrate: migrate the database first (False: a copy of the migrated template).
    """

    options: SimulationOptions
    environ: Mapping[str, str]
    shard: int = 0
    shards: int = 1
    migrate: bool = False


@dataclass
class ShardResult:
    """What one shard returns, keyed by person number (account ids are the shard's own).

    Attributes:
        people: the shard's people with their counts.
        rows: the report's person rows, `account_id` = person number + 1.
        results: the loss check per person (same key).
        daily: person number -> day "YYYY-MM-DD" -> (revenue, cost) µUSD.
        intents: intent -> (LLM µUSD, answers).
        phones: person number + 1 -> masked phone.
        stats: the replay's counts and timings.
    """

    people: list[Person] = field(default_factory=list)
    rows: list[PersonRow] = field(default_factory=list)
    results: list[PersonResult] = field(default_factory=list)
    daily: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)
    intents: dict[str, tuple[int, int]] = field(default_factory=dict)
    phones: dict[int, str] = field(default_factory=dict)
    stats: RunStats = field(default_factory=RunStats)
    report_seconds: float = 0.0


@dataclass
class Merged:
    """The whole population's month: the merged report and everything the summary needs."""

    report: MonthReport
    results: list[PersonResult]
    people: list[Person]
    daily: dict[int, dict[str, tuple[int, int]]]
    phones: dict[int, str]
    stats: RunStats
    scheduled: int = 0
    wall_seconds: float = 0.0
    report_seconds: float = 0.0


def _progress_bar(job: ShardJob) -> Callable[[int, int], None] | None:
    if not job.options.progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    bar = tqdm(unit="ev", desc=f"shard {job.shard + 1}/{job.shards}", position=job.shard,
               mininterval=1.0, leave=False)

    def update(done: int, left: int) -> None:
        bar.total = done + left
        bar.n = done
        bar.refresh()

    return update


def run_shard(job: ShardJob) -> ShardResult:
    """Replay shard `job.shard`'s people on its own database and read back their month.

    Raises:
        SimulationError: the database already holds accounts.
    """
    from flask_migrate import upgrade

    from app.extensions import db

    options = job.options
    sim = simulation_app(job.environ)
    with sim.app_context():
        fast_sqlite(db.engine)
        if job.migrate:
            upgrade()
        db.engine.dispose()  # new connections get the pragmas
        # One connection for the whole shard, under a plain `Session` bound to it: each of
        # the turns' transactions begins and commits on it (SQLAlchemy, "Joining a Session
        # into an External Transaction": a Session given a connection outside a transaction
        # begins and commits its own), without a checkout from the pool and a check-in with
        # its reset for each one (about 2 % of a turn's CPU). The router and the ledger use
        # only the session they are given.
        connection = db.engine.connect()
        session = Session(bind=connection)
        if session.scalar(select(func.count()).select_from(Account)):
            raise SimulationError(
                "the simulation database already has accounts: give an empty one")
        settings = sim.extensions["bot_settings"]
        catalog = settings.catalog
        chat: ChatClient | None = None
        if options.llm:
            chat = CachedChat(SimulatedChat(options.seed, options.llm_failure_rate),
                              SimulatedCache(), catalog.llm.cache_ttl_seconds)
        settings = replace(settings, chat=chat)
        kinds = person_kinds(options.people, options.mix, options.seed)
        people = [make_person(i, options.personas[kinds[i]], options.seed)
                  for i in range(job.shard, options.people, job.shards)]
        simulation = Simulation(session, settings, options,
                                SandboxProvider(sim.config["PUBLIC_BASE_URL"]), people)
        simulation.populate()
        with quiet_logs() as warnings:
            stats = simulation.run(_progress_bar(job))
        stats.warnings = warnings
        started = time.perf_counter()
        result = _read_back(session, options, catalog, people, chat is not None)
        session.commit()
        result.stats = stats
        result.report_seconds = time.perf_counter() - started
        session.close()
        connection.close()
        db.engine.dispose()
    for person in result.people:  # the random streams stay behind
        person.rng = None  # type: ignore[assignment]
    return result


def _read_back(session: Any, options: SimulationOptions, catalog: Any, people: list[Person],
               with_llm: bool) -> ShardResult:
    from bot.intents.llm_classify import classification_ceiling_musd

    report = month_report(session, options.month, catalog)
    by_phone = {person.phone: person for person in people}
    index_of: dict[int, int] = {}
    phones: dict[int, str] = {}
    for address, account_id in session.execute(select(Contact.address, Contact.account_id)):
        person = by_phone.get(address.removeprefix("whatsapp:"))
        if person is not None:
            index_of[account_id] = person.index
            phones[person.index + 1] = mask_address(person.phone)
    persona_by_index = {person.index: person.persona for person in people}
    persona_of = {account: persona_by_index[index] for account, index in index_of.items()}
    classify_call = classification_ceiling_musd(catalog) if with_llm else 0
    results = loss_check(session, report, catalog, persona_of, options.days_in_month,
                         classify_call_musd=classify_call)
    rows = [replace(row, account_id=index_of[row.account_id] + 1) for row in report.people]
    results = [replace(r, account_id=index_of[r.account_id] + 1) for r in results]
    daily: dict[int, dict[str, tuple[int, int]]] = {}
    days = [day for day, _, _ in report.daily]
    for account_id, day, revenue, cost in session.execute(
            select(AccountDay.account_id, AccountDay.day, AccountDay.revenue_musd,
                   AccountDay.cost_musd)
            .where(AccountDay.day >= days[0], AccountDay.day <= days[-1])):
        daily.setdefault(index_of[account_id], {})[day] = (int(revenue or 0), int(cost or 0))
    intents = {
        name: (int(llm or 0), int(answers or 0)) for name, llm, answers in session.execute(
            select(AccountMonthIntent.intent, func.sum(AccountMonthIntent.cost_llm_musd),
                   func.sum(AccountMonthIntent.answers))
            .where(AccountMonthIntent.month == options.month)
            .group_by(AccountMonthIntent.intent))}
    return ShardResult(people=people, rows=rows, results=results, daily=daily,
                       intents=intents, phones=phones)


def migrate_template(environ: Mapping[str, str], path: Path) -> None:
    """Migrate a fresh SQLite file at `path` (copied for each shard)."""
    for stale in (path, path.with_name(path.name + "-journal")):
        stale.unlink(missing_ok=True)
    from flask_migrate import upgrade

    from app.extensions import db

    sim = simulation_app({**environ, "DATABASE_URL": f"sqlite:///{path.resolve()}"})
    with sim.app_context():
        upgrade()
        db.session.remove()
        db.engine.dispose()


def shard_paths(out: Path, shards: int) -> list[Path]:
    """The shards' SQLite files in `out`: simulation.db for one shard, else
    simulation-1.db ... simulation-N.db."""
    if shards == 1:
        return [out / "simulation.db"]
    return [out / f"simulation-{k + 1}.db" for k in range(shards)]


def run_sharded(options: SimulationOptions, environ: Mapping[str, str], out: Path,
                database: str | None = None) -> Merged:
    """Replay the population in `options.shards` shards, at most one process per core at a
    time (in this process for one shard), and merge their months. `database`: a URL to
    simulate in instead of fresh SQLite files (one shard only; it must hold no accounts)."""
    started = time.perf_counter()
    shards = max(1, options.shards)
    if database is not None:
        if shards != 1:
            raise SimulationError("--database takes one shard (--shards 1)")
        jobs = [ShardJob(options, {**environ, "DATABASE_URL": database}, 0, 1, migrate=True)]
    else:
        template = out / "template.db"
        migrate_template(environ, template)
        jobs = []
        for k, path in enumerate(shard_paths(out, shards)):
            for stale in (path, path.with_name(path.name + "-journal"),
                          path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                stale.unlink(missing_ok=True)
            shutil.copyfile(template, path)
            jobs.append(ShardJob(options, {**environ, "DATABASE_URL":
                                           f"sqlite:///{path.resolve()}"}, k, shards))
        template.unlink()
    if shards == 1:
        parts = [run_shard(jobs[0])]
    else:
        workers = min(shards, os.cpu_count() or 1)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(run_shard, jobs))
    return merge(options.month, parts, time.perf_counter() - started)


def merge(month: str, parts: list[ShardResult], wall_seconds: float = 0.0) -> Merged:
    """The shards' months as one: rows, results and people by person number, daily and
    per-intent sums added, stats added (wall seconds: the longest shard's replay)."""
    daily_totals: Counter[str] = Counter()
    daily_costs: Counter[str] = Counter()
    intents: dict[str, tuple[int, int]] = {}
    stats = RunStats()
    daily: dict[int, dict[str, tuple[int, int]]] = {}
    phones: dict[int, str] = {}
    for part in parts:
        stats.add(part.stats)
        daily.update(part.daily)
        phones.update(part.phones)
        for per_day in part.daily.values():
            for day, (revenue, cost) in per_day.items():
                daily_totals[day] += revenue
                daily_costs[day] += cost
        for name, (llm, answers) in part.intents.items():
            old = intents.get(name, (0, 0))
            intents[name] = (old[0] + llm, old[1] + answers)
    report = build_report(
        month, [row for part in parts for row in part.rows],
        {day: (daily_totals[day], daily_costs[day]) for day in daily_totals | daily_costs},
        intents)
    results = sorted((r for part in parts for r in part.results), key=lambda r: r.account_id)
    people = sorted((p for part in parts for p in part.people), key=lambda p: p.index)
    return Merged(report=report, results=results, people=people, daily=daily, phones=phones,
                  stats=stats, wall_seconds=wall_seconds,
                  report_seconds=max((p.report_seconds for p in parts), default=0.0))


# People per shard by default. A shard's CPU per message grows with its database (the same
# month measured at 2.48 ms a message with 625 people per shard, 2.66 ms with 2,500 and
# about 3 ms with 5,000), and people never interact, so small shards cost nothing in
# exactness; they run at most one per core at a time.
PEOPLE_PER_SHARD = 600


def default_shards(people: int) -> int:
    """Shards for `people`: one per `PEOPLE_PER_SHARD` people, rounded up to a multiple of
    the cores (`os.cpu_count()`) so that the last round of shards keeps every core busy
    (17 shards on 2 cores leave one core idle for a whole shard), and never more shards
    than people."""
    cores = os.cpu_count() or 1
    rounds = -(-people // (PEOPLE_PER_SHARD * cores))
    return max(1, min(people, rounds * cores))
