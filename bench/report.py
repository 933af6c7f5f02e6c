"""Benchmark (not a test): the month report and the admin pages for many people on PostgreSQL.

The report reads one rollup row per person (`tokens.reports.month_report`) and one per person
and active day for the daily chart, so its time grows with people, not events. This fills a
throwaway PostgreSQL server with `--people` accounts, their contacts, month rows, a few
intents and ten active days each, then times the report, and the overview (report + five
charts + template) and the people table as an admin's browser gets them (Flask test client).

    .venv/bin/python -m bench.report [--people 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import time
from collections.abc import Callable

from sqlalchemy import create_engine, insert
from sqlalchemy.orm import Session

from bench.ledger import database
from bot.models import Contact
from tokens.catalog import load_catalog
from tokens.costs import AccountDay, AccountMonth, AccountMonthIntent
from tokens.ledger import Account
from tokens.reports import month_report

MONTH = "2026-11"
INTENTS = ("meal_plan", "grocery_list", "recipe_search", "nutrition_analysis", "chat")


def fill(url: str, people: int, seed: int = 7) -> None:
    """`people` accounts, each with a contact, a month row, three intent rows and ten days."""
    rng = random.Random(seed)
    engine = create_engine(url)
    with Session(engine) as session:
        session.execute(insert(Account), [
            {"id": i, "public_id": secrets.token_hex(16), "balance": 0, "held": 0}
            for i in range(1, people + 1)
        ])
        session.execute(insert(AccountMonth), [
            {"account_id": i, "month": MONTH, "messages_in": rng.randint(1, 200),
             "messages_out": rng.randint(1, 200), "cost_llm_musd": rng.randint(0, 400_000),
             "cost_messaging_musd": rng.randint(7_900, 3_000_000),
             "cost_platform_musd": rng.randint(200, 40_000),
             "revenue_pack_musd": rng.choice((0, 0, 0, 5_000_000)),
             "revenue_subscription_musd": rng.choice((0, 0, 0, 0, 5_000_000)),
             "tokens_charged": rng.randint(0, 300)}
            for i in range(1, people + 1)
        ])
        session.execute(insert(Contact), [
            {"id": i, "account_id": i, "address": f"+1555{i:07d}"} for i in range(1, people + 1)
        ])
        session.execute(insert(AccountDay), [
            {"account_id": i, "day": f"{MONTH}-{day:02d}", "cost_musd": rng.randint(0, 300_000),
             "revenue_musd": rng.choice((0, 0, 0, 0, 0, 0, 0, 0, 0, 5_000_000))}
            for i in range(1, people + 1) for day in rng.sample(range(1, 31), 10)
        ])
        session.execute(insert(AccountMonthIntent), [
            {"account_id": i, "month": MONTH, "intent": intent,
             "answers": rng.randint(1, 30), "cost_llm_musd": rng.randint(0, 100_000)}
            for i in range(1, people + 1) for intent in rng.sample(INTENTS, 3)
        ])
        session.commit()
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    catalog = load_catalog()
    with database(None) as url:
        fill(url, args.people)
        engine = create_engine(url)

        def report() -> None:
            with Session(engine) as session:
                assert month_report(session, MONTH, catalog).active_people == args.people

        show("month report", args, report)
        engine.dispose()
        client = admin_client(url)
        for name, path in (("overview page", f"/admin/?month={MONTH}"),
                           ("people page, by profit", f"/admin/people?month={MONTH}"),
                           ("people page, search", f"/admin/people?month={MONTH}&q=0004242")):
            show(name, args, lambda path=path: _get(client, path))


def show(name: str, args: argparse.Namespace, run: Callable[[], None]) -> None:
    """Time `run` `args.runs` times and print the median, best and worst."""
    timings = []
    for _ in range(args.runs):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    print(f"{name}, {args.people} people on PostgreSQL: median "
          f"{statistics.median(timings) * 1000:.1f} ms, best {min(timings) * 1000:.1f} ms, "
          f"worst {max(timings) * 1000:.1f} ms over {args.runs} runs")


def admin_client(url: str) -> object:
    """A test client of the app on `url`, logged in as a new admin."""
    from app import create_app
    from testing.admin import logged_in
    from testing.deployment import config_for

    app = create_app(config_for(url))
    with app.app_context():
        return logged_in(app, "bench")


def _get(client: object, path: str) -> None:
    response = client.get(path)  # type: ignore[attr-defined]
    assert response.status_code == 200, response.status_code


if __name__ == "__main__":
    main()
