"""Benchmark (not a test): the month report for many people on PostgreSQL.

The report reads one rollup row per person (`tokens.reports.month_report`), so its time grows
with people, not events. This fills a throwaway PostgreSQL server with `--people` accounts and
their month rows (and a few intents each), then times the report.

    .venv/bin/python -m bench.report [--people 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import time

from sqlalchemy import create_engine, insert
from sqlalchemy.orm import Session

from bench.ledger import database
from tokens.catalog import load_catalog
from tokens.costs import AccountMonth, AccountMonthIntent
from tokens.ledger import Account
from tokens.reports import month_report

MONTH = "2026-11"
INTENTS = ("meal_plan", "grocery_list", "recipe_search", "nutrition_analysis", "chat")


def fill(url: str, people: int, seed: int = 7) -> None:
    """`people` accounts, each with a month row and three intent rows."""
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
        timings = []
        for _ in range(args.runs):
            with Session(engine) as session:
                started = time.perf_counter()
                report = month_report(session, MONTH, catalog)
                timings.append(time.perf_counter() - started)
        engine.dispose()
    assert report.active_people == args.people
    print(f"month report, {args.people} people on PostgreSQL: median "
          f"{statistics.median(timings) * 1000:.1f} ms, best {min(timings) * 1000:.1f} ms, "
          f"worst {max(timings) * 1000:.1f} ms over {args.runs} runs")


if __name__ == "__main__":
    main()
