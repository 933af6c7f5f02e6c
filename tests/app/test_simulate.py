"""`flask --app wsgi simulate`: a small synthetic month through the real pipeline.

The runs are short (a few days, tens of people) so that the suite stays fast; the 10,000-people
month is measured by hand (see `app/simulate.py`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from app import create_app
from app.simulate import (
    PERSONAS,
    TEXTS,
    SimulatedClockStorage,
    check_texts,
    parse_mix,
    percentiles,
    persona_counts,
    simulate,
    usd,
)
from bot.models import Message
from tests.conftest import config_for
from tests.tokens.ledger_checks import assert_consistent
from tokens.catalog import load_catalog
from tokens.ledger import Account
from tokens.levels import monthly_loss_ceiling_musd

MONTH = "2026-11"
CHARTS = ("profit_distribution.png", "daily_revenue_cost.png", "levels.png",
          "persona_profit_boxplot.png", "loss_vs_ceiling.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(tmp: Path, *args: str) -> Result:
    """Run `simulate` through Flask's CLI runner on an app whose own database is never
    touched (the simulation gets a fresh SQLite file in --out unless --database says)."""
    app = create_app(config_for(f"sqlite:///{tmp / 'app.db'}"))
    result = app.test_cli_runner().invoke(simulate, ["--month", MONTH, "--no-progress", *args])
    assert not (tmp / "app.db").exists() or (tmp / "app.db").stat().st_size == 0
    return result


def read(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text())


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path]:
    """40 people (every persona, one abusive) through the first 3 days of the month."""
    tmp = tmp_path_factory.mktemp("simulate")
    out = tmp / "out"
    result = invoke(tmp, "--people", "40", "--days", "3", "--seed", "7", "--out", str(out),
                    "--mix", "casual=0.6,active=0.25,power=0.125,abusive=0.025")
    return result, out


def test_the_command_exits_0_and_writes_its_outputs(month: tuple[Result, Path]) -> None:
    result, out = month
    assert result.exit_code == 0, result.output
    for name in CHARTS:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert read(out, "report.json")["month"] == MONTH
    summary = read(out, "summary.json")
    assert summary["errors"] == {} and summary["messages"] > 0
    assert (out / "people.csv").read_text().startswith("phone,account_id,")
    assert "Within the monthly loss ceiling" in result.output
    assert "Revenue $" in result.output and "messages/s" in result.output


def test_everyone_stays_within_the_loss_ceiling(month: tuple[Result, Path]) -> None:
    _, out = month
    ceiling = read(out, "summary.json")["within_ceiling"]
    assert ceiling["people"] == ceiling["of"] > 0
    assert ceiling["share"] == "100.00 %"
    assert ceiling["worst_loss_musd"] <= ceiling["worst_ceiling_musd"]
    catalog = load_catalog()
    assert ceiling["ceiling_musd"] == monthly_loss_ceiling_musd(catalog, 30)


def test_every_persona_appears_and_the_totals_add_up(month: tuple[Result, Path]) -> None:
    _, out = month
    summary, report = read(out, "summary.json"), read(out, "report.json")
    personas = summary["personas"]
    assert set(personas) == set(PERSONAS)
    assert sum(row["people"] for row in personas.values()) == report["active_people"]
    assert sum(row["revenue_musd"] for row in personas.values()) == report["revenue_musd"]
    assert sum(row["cost_musd"] for row in personas.values()) == report["cost_musd"]
    assert sum(row["messages_in"] for row in personas.values()) == summary["messages"]


def test_abusive_people_pay_nothing_and_end_restricted(month: tuple[Result, Path]) -> None:
    _, out = month
    abusive = read(out, "summary.json")["personas"]["abusive"]
    assert abusive["revenue_musd"] == 0 and abusive["paying"] == 0
    assert abusive["packs"] == abusive["subscriptions"] == 0
    # Their floods are throttled and refused: they end past NORMAL, most at the cutoff.
    assert "NORMAL" not in abusive["levels"]
    assert set(abusive["levels"]) <= {"REDUCED", "BASIC", "AFFILIATE", "PAYMENT_REQUIRED"}
    report = read(out, "report.json")
    catalog = load_catalog()
    abusers = [p for p in report["people"] if p["revenue_musd"] == 0]
    assert all(p["tokens_charged"] <= catalog.free_monthly_allowance for p in abusers)


def test_the_ledger_of_every_simulated_person_is_consistent(month: tuple[Result, Path]) -> None:
    _, out = month
    engine = create_engine(f"sqlite:///{out / 'simulation.db'}")
    try:
        with Session(engine) as session:
            accounts = session.scalars(select(Account.id)).all()
            assert accounts
            end = datetime(2026, 11, 4, tzinfo=UTC)
            for account_id in accounts:
                assert_consistent(session, account_id, end)
            inbound = session.scalar(select(func.count()).select_from(Message)
                                     .where(Message.direction == "in"))
            assert inbound == read(out, "summary.json")["messages"]
    finally:
        engine.dispose()


def test_a_seed_gives_the_same_month(tmp_path: Path) -> None:
    args = ("--people", "12", "--days", "2", "--seed", "3", "--no-charts",
            "--mix", "casual=0.5,active=0.3,power=0.2")
    first = invoke(tmp_path, *args, "--out", str(tmp_path / "a"))
    second = invoke(tmp_path, *args, "--out", str(tmp_path / "b"))
    assert first.exit_code == second.exit_code == 0, first.output + second.output
    assert read(tmp_path / "a", "report.json") == read(tmp_path / "b", "report.json")
    timings = {"seconds", "cpu_seconds", "messages_per_second", "report_seconds"}
    one, two = (
        {k: v for k, v in read(tmp_path / name, "summary.json").items() if k not in timings}
        for name in ("a", "b"))
    assert one == two


@pytest.mark.backends("postgresql")
def test_it_simulates_into_a_postgresql_database(database_url: str, tmp_path: Path) -> None:
    result = invoke(tmp_path, "--people", "6", "--days", "2", "--mix", "casual=0.5,power=0.5",
                    "--no-charts", "--database", database_url, "--out", str(tmp_path / "pg"))
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "pg" / "simulation.db").exists()
    assert read(tmp_path / "pg", "summary.json")["within_ceiling"]["share"] == "100.00 %"
    again = invoke(tmp_path, "--people", "6", "--days", "2", "--database", database_url,
                   "--out", str(tmp_path / "pg2"))
    assert again.exit_code != 0 and "already has accounts" in again.output


def test_options_are_checked(tmp_path: Path) -> None:
    bad_mix = invoke(tmp_path, "--mix", "casual=1,trolls=2")
    assert bad_mix.exit_code == 2 and "--mix" in bad_mix.output
    bad_month = invoke(tmp_path, "--people", "1", "--month", "2026-13")
    assert bad_month.exit_code == 2
    bad_buy = invoke(tmp_path, "--buy-propensity", "1.5")
    assert bad_buy.exit_code == 2 and "--buy-propensity" in bad_buy.output


def test_helpers() -> None:
    assert persona_counts(10, parse_mix("casual=0.6,active=0.25,power=0.1,abusive=0.05")) == {
        "casual": 6, "active": 3, "power": 1, "abusive": 0}
    assert sum(persona_counts(10_000, parse_mix("casual=1,abusive=2")).values()) == 10_000
    assert percentiles([5, 1, 3, 2, 4], (0, 50, 100)) == {"p0": 1, "p50": 3, "p100": 5}
    assert usd(-1_234_567) == "-$1.23" and usd(12_345, 4) == "$0.0123"
    check_texts(load_catalog())  # every text classifies as the intent it stands for


def test_rate_limit_counters_expire_on_the_simulated_clock() -> None:
    clock = SimulatedClockStorage()
    clock.now = 1_000.0
    assert clock.incr("a", 60) == 1 and clock.incr("a", 60) == 2
    assert clock.get_expiry("a") == 1_060.0
    clock.now = 1_059.0
    assert clock.get("a") == 2
    clock.now = 1_060.0
    assert clock.get("a") == 0 and clock.incr("a", 60) == 1
    assert set(TEXTS) == {spec.name for spec in load_catalog().intents}
