"""`flask --app wsgi simulate`: the economy simulator's command (docs/simulator.md).

A thin command over the `sim` package: it reads the options, builds the population's
`sim.replay.SimulationOptions` (a --preset's mix and propensities, explicit options on top),
and runs `sim.run.simulate_month` (or, with --compare, `sim.compare.compare_catalogs`).
The replay goes through the real router and ledger on throwaway SQLite files, one per shard,
never into the app's own database unless --database names one.

    flask --app wsgi simulate --people 10000 --month 2026-11 --seed 1
    flask --app wsgi simulate --people 500 --preset abuse-wave --days 7 --out /tmp/sim
    flask --app wsgi simulate --people 300 --compare tokens/economy.yaml other.yaml

(registered in `app.cli.register_cli` with `app.cli.add_command(simulate)`). The charts and
the progress bar need `pip install -r requirements-sim.txt`; without it they are skipped,
with one line saying so, and the figures are written all the same.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from sim.compare import compare_catalogs
from sim.personas import DEFAULT_MIX, PERSONAS, PROPENSITIES, parse_mix, with_propensities
from sim.population import check_texts
from sim.presets import PRESETS
from sim.replay import SimulationOptions, simulation_environ
from sim.run import catalog_of, simulate_month
from sim.shard import SimulationError, default_shards


def _month(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    if value is None:
        return f"{datetime.now(UTC):%Y-%m}"
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", value):
        raise click.BadParameter("use YYYY-MM, e.g. 2026-11")
    return value


def _propensity_options(command: Any) -> Any:
    for name in reversed(PROPENSITIES):
        flag = f"--{name.replace('_', '-')}-propensity"
        command = click.option(
            flag, name, default=None, metavar="P|persona=P,...",
            help=f"The {name.replace('_', ' ')} chance: one number for every persona that "
                 "pays (for spanish: every persona), or per persona. Default: the preset's, "
                 "else the persona table's.")(command)
    return command


@click.command("simulate")
@click.option("--people", default=1000, show_default=True, type=click.IntRange(min=1),
              help="How many people.")
@click.option("--month", default=None, callback=_month, metavar="YYYY-MM",
              help="The simulated month (UTC); default this month.")
@click.option("--days", default=None, type=click.IntRange(1, 31),
              help="Simulate only the month's first DAYS days (quick runs).")
@click.option("--seed", default=1, show_default=True, type=int,
              help="Random seed: the same seed gives the same month.")
@click.option("--preset", default=None, type=click.Choice(sorted(PRESETS)),
              help="A named population (mix and propensities); explicit options override.")
@click.option("--mix", default=None,
              help=f"Share of each persona ({', '.join(PERSONAS)}); default the preset's, "
                   f"else {DEFAULT_MIX}.")
@_propensity_options
@click.option("--llm/--no-llm", default=True, show_default=True,
              help="Answer with a simulated LLM (realistic usage and cost, no network) or "
                   "with the offline skills.")
@click.option("--llm-failure-rate", default=0.01, show_default=True,
              type=click.FloatRange(0, 1), help="Share of simulated LLM calls that time out.")
@click.option("--shards", default=None, type=click.IntRange(min=1),
              help="Shards to split the people across, each with its own database, run "
                   "one per core at a time; default one per 600 people, rounded up to a "
                   "multiple of the cores.")
@click.option("--catalog", "catalog_file", default=None, type=click.Path(dir_okay=False,
              exists=True), help="Simulate under this economy catalog (YAML) instead of "
                                 "the app's.")
@click.option("--compare", "compare", default=None, nargs=2,
              type=click.Path(dir_okay=False, exists=True), metavar="A.yaml B.yaml",
              help="Simulate the same population and seed under both catalogs and print "
                   "the differences side by side.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder; default instance/simulation/<month>.")
@click.option("--database", default=None, metavar="URL",
              help="Database URL to simulate in (e.g. postgresql://...; one shard); default "
                   "fresh SQLite files in the output folder. It must hold no accounts.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar per shard (needs tqdm).")
@click.option("--charts/--no-charts", default=True, show_default=True,
              help="Draw the PNG charts (needs matplotlib).")
@with_appcontext
def simulate(people: int, month: str, days: int | None, seed: int, preset: str | None,
             mix: str | None, llm: bool, llm_failure_rate: float, shards: int | None,
             catalog_file: str | None, compare: tuple[str, str] | None,
             out_dir: str | None, database: str | None, progress: bool, charts: bool,
             **propensities: str | None) -> None:
    """Replay a synthetic population over a simulated month through the real pipeline and
    report the month's economy: revenue, COGS, margin, the share of people within the loss
    ceiling (must be 100 %), the seed's targets by persona, the profit distribution, a table
    per persona, and PNG charts.

    Exits 1 when someone's loss passes the ceiling or the pipeline raised.
    """
    outer: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    chosen = PRESETS[preset] if preset else None
    personas = dict(PERSONAS)
    for name in PROPENSITIES:
        value = propensities.get(name)
        if value is None and chosen is not None:
            value = chosen.propensities.get(name)
        personas = with_propensities(personas, name, value)
    population_mix = parse_mix(mix or (chosen.mix if chosen else DEFAULT_MIX))
    if shards is None:
        shards = 1 if database else default_shards(people)
    if progress:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            click.echo("No progress bar: tqdm is not installed "
                       "(pip install -r requirements-sim.txt)")
            progress = False
    options = SimulationOptions(people=people, month=month, seed=seed, mix=population_mix,
                                personas=personas, days=days, llm=llm,
                                llm_failure_rate=llm_failure_rate, progress=progress,
                                shards=shards)
    out = Path(out_dir) if out_dir else Path(outer.instance_path) / "simulation" / month
    out.mkdir(parents=True, exist_ok=True)
    environ = simulation_environ(outer, "sqlite://", catalog_file)
    for path in compare or ((catalog_file,) if catalog_file else ()) or (None,):
        check_texts(catalog_of({**environ, "ECONOMY_FILE": path or environ.get(
            "ECONOMY_FILE", "")}))
    click.echo(f"Simulating {people:,} people over {month} ({options.days_simulated} of "
               f"{options.days_in_month} days), seed {seed}, preset {preset or 'none'}, "
               f"{shards} shard(s); LLM: {'simulated' if llm else 'off (offline skills)'}")
    try:
        if compare:
            if database:
                raise click.UsageError("--compare simulates in fresh SQLite files: "
                                       "leave out --database")
            compare_catalogs(options, environ, compare, out, charts=charts, preset=preset)
            return
        summary, _ = simulate_month(options, environ, out, charts=charts, database=database,
                                    preset=preset)
    except SimulationError as exc:
        raise click.ClickException(str(exc)) from None
    failed = summary["within_ceiling"]["people"] != summary["within_ceiling"]["of"]
    if failed or summary["errors"]:
        raise SystemExit(1)
