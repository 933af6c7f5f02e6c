"""`flask --app wsgi simulate`: a small synthetic month through the real pipeline, sharded.

The runs are short (a few days, tens of people) so that the suite stays fast; the 10,000-people
month is measured by hand (docs/simulator.md, "Speed").
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

from app.simulate import simulate
from bot.models import Message
from sim import charts as sim_charts
from sim.clock import SimulatedClockStorage
from sim.personas import TEXTS, TEXTS_ES, parse_mix, persona_counts
from sim.population import check_texts
from sim.report import TIMINGS, percentiles, usd
from testing.deployment import running_app
from tests.tokens.ledger_checks import assert_consistent
from tokens.catalog import load_catalog
from tokens.ledger import Account
from tokens.levels import monthly_loss_ceiling_musd
from tokens.reports import month_report

MONTH = "2026-11"
CHARTS = ("profit_distribution.png", "daily_revenue_cost.png", "levels.png",
          "persona_profit_boxplot.png", "loss_vs_ceiling.png", "revenue_mix.png",
          "levels_over_month.png")
MIX = "casual=0.6,active=0.25,power=0.125,abusive=0.025"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(tmp: Path, *args: str) -> Result:
    """Run `simulate` through Flask's CLI runner on an app whose own database is never
    touched (the simulation gets a fresh SQLite file in --out unless --database says)."""
    with running_app(f"sqlite:///{tmp / 'app.db'}") as app:
        result = app.test_cli_runner().invoke(simulate,
                                              ["--month", MONTH, "--no-progress", *args])
    assert not (tmp / "app.db").exists() or (tmp / "app.db").stat().st_size == 0
    return result


def read(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text())


def without_timings(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in TIMINGS}


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path]:
    """40 people (four personas, one abusive) through the first 3 days of the month, in three
    shards (three databases, at most one process per core at a time: on two cores a process
    replays a second shard after its first)."""
    tmp = tmp_path_factory.mktemp("simulate")
    out = tmp / "out"
    result = invoke(tmp, "--people", "40", "--days", "3", "--seed", "7", "--out", str(out),
                    "--mix", MIX, "--shards", "3")
    return result, out


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path]:
    """The same 40 people, seed and days in one shard (this process, one database)."""
    tmp = tmp_path_factory.mktemp("simulate1")
    out = tmp / "out"
    result = invoke(tmp, "--people", "40", "--days", "3", "--seed", "7", "--out", str(out),
                    "--mix", MIX, "--shards", "1", "--no-charts")
    return result, out


def test_one_shard_and_three_shards_give_the_same_month(
        month: tuple[Result, Path], one_shard: tuple[Result, Path]) -> None:
    (three, out2), (one, out1) = month, one_shard
    assert three.exit_code == one.exit_code == 0, three.output + one.output
    assert read(out1, "report.json") == read(out2, "report.json")
    assert (out1 / "people.csv").read_text() == (out2 / "people.csv").read_text()
    first, second = read(out1, "summary.json"), read(out2, "summary.json")
    assert (first["shards"], second["shards"]) == (1, 3)
    assert without_timings(first) == without_timings(second)
    assert sorted(p.name for p in out2.glob("simulation*.db")) == [
        "simulation-1.db", "simulation-2.db", "simulation-3.db"]


def test_the_merged_report_is_the_database_s_own(one_shard: tuple[Result, Path]) -> None:
    """With one shard, the merge (`sim.report.build_report`) gives the figures
    `tokens.reports.month_report` reads from the database (people renumbered only)."""
    _, out = one_shard
    merged = read(out, "report.json")
    engine = create_engine(f"sqlite:///{out / 'simulation.db'}")
    try:
        with Session(engine) as session:
            own = month_report(session, MONTH, load_catalog()).as_json()
    finally:
        engine.dispose()
    for key in ("active_people", "paying_people", "revenue_musd", "cost_musd", "profit_musd",
                "gross_margin", "arpu_musd", "average_cost_musd", "share_profitable",
                "share_at_target", "revenue_mix", "revenue_by_kind", "level_distribution",
                "top_intents", "pack_conversion", "daily"):
        assert merged[key] == own[key], key
    strip = [{k: v for k, v in p.items() if k != "account_id"} for p in own["people"]]
    assert sorted(map(str, strip)) == sorted(
        str({k: v for k, v in p.items() if k != "account_id"}) for p in merged["people"])


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
    assert "The seed's targets" in (out / "summary.md").read_text()


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
    assert set(personas) == {"casual", "active", "power", "abusive"}
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
    inbound = 0
    for path in sorted(out.glob("simulation-*.db")):
        engine = create_engine(f"sqlite:///{path}")
        try:
            with Session(engine) as session:
                accounts = session.scalars(select(Account.id)).all()
                assert accounts
                end = datetime(2026, 11, 4, tzinfo=UTC)
                for account_id in accounts:
                    assert_consistent(session, account_id, end)
                inbound += session.scalar(select(func.count()).select_from(Message)
                                          .where(Message.direction == "in")) or 0
        finally:
            engine.dispose()
    assert inbound == read(out, "summary.json")["messages"]


def test_a_seed_gives_the_same_month(tmp_path: Path) -> None:
    args = ("--people", "12", "--days", "2", "--seed", "3", "--no-charts", "--shards", "1",
            "--mix", "casual=0.5,active=0.3,power=0.2")
    first = invoke(tmp_path, *args, "--out", str(tmp_path / "a"))
    second = invoke(tmp_path, *args, "--out", str(tmp_path / "b"))
    assert first.exit_code == second.exit_code == 0, first.output + second.output
    assert read(tmp_path / "a", "report.json") == read(tmp_path / "b", "report.json")
    one, two = (without_timings(read(tmp_path / name, "summary.json")) for name in ("a", "b"))
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
    assert set(TEXTS) == set(TEXTS_ES) == {spec.name for spec in load_catalog().intents}


def test_the_targets_are_measured_by_persona(month: tuple[Result, Path]) -> None:
    _, out = month
    summary = read(out, "summary.json")
    targets = summary["targets"]
    assert list(targets) == ["all", "casual", "active", "power", "abusive"]
    everyone = targets["all"]
    assert everyone["people"] == summary["within_ceiling"]["of"]
    assert everyone["within_bound"] == "100.00 %"
    assert everyone["cost_musd"] == read(out, "report.json")["cost_musd"]
    assert sum(row["people"] for name, row in targets.items() if name != "all") == \
        everyone["people"]
    # People who paid nothing are never profitable unless they cost nothing.
    assert targets["abusive"]["profitable"] == "0.00 %"
    levels = summary["levels_by_day"]
    assert len(levels) == 30 and sum(levels["2026-11-03"].values()) == everyone["people"]


def test_presets_and_propensities(tmp_path: Path) -> None:
    result = invoke(tmp_path, "--people", "30", "--days", "2", "--seed", "5", "--shards", "1",
                    "--no-charts", "--preset", "abuse-wave", "--spanish-propensity", "1",
                    "--out", str(tmp_path / "wave"))
    assert result.exit_code == 0, result.output
    summary = read(tmp_path / "wave", "summary.json")
    assert summary["preset"] == "abuse-wave"
    assert {"flooder", "toggler", "prober"} <= set(summary["personas"])
    assert all(row["spanish"] == row["people"] for row in summary["personas"].values())
    assert summary["within_ceiling"]["share"] == "100.00 %"
    bad = invoke(tmp_path, "--preset", "nope")
    assert bad.exit_code == 2


def test_compare_runs_one_population_under_two_catalogs(tmp_path: Path) -> None:
    catalog = Path(__file__).resolve().parents[2] / "tokens" / "economy.yaml"
    other = tmp_path / "other.yaml"
    other.write_text(catalog.read_text().replace('basic: "0.40"', 'basic: "0.30"'))
    out = tmp_path / "ab"
    result = invoke(tmp_path, "--people", "10", "--days", "2", "--seed", "2", "--shards", "1",
                    "--compare", str(catalog), str(other), "--out", str(out))
    assert result.exit_code == 0, result.output
    columns = read(out, "compare.json")
    first, second = columns.values()
    assert first["thresholds_musd"]["REDUCED"] == 400_000
    assert second["thresholds_musd"]["REDUCED"] == 300_000
    assert first["messages"] > 0
    assert "| revenue |" in (out / "compare.md").read_text() and "last - first" in result.output
    assert (out / "compare.png").read_bytes()[:8] == PNG_MAGIC


def test_without_matplotlib_the_charts_are_skipped_with_a_hint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_charts, "available", lambda: False)
    result = invoke(tmp_path, "--people", "3", "--days", "1", "--shards", "1",
                    "--out", str(tmp_path / "bare"))
    assert result.exit_code == 0, result.output
    assert "pip install -r requirements-sim.txt" in result.output
    assert not list((tmp_path / "bare").glob("*.png"))
    assert read(tmp_path / "bare", "summary.json")["messages"] >= 0
