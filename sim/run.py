"""One simulated month end to end: shard, replay, merge, check, write, print.

Outputs in the output folder: report.json (the merged `MonthReport`, people keyed by person
number + 1), summary.json and summary.md (`sim.report.summarise`), people.csv, and the PNG
charts when matplotlib is installed (`sim.charts`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from sim import charts as charts_module
from sim.replay import SimulationOptions
from sim.report import levels_by_day, print_summary, summarise, summary_markdown
from sim.shard import Merged, run_sharded
from tokens.catalog import Catalog, load_catalog
from tokens.reports import people_csv


def catalog_of(environ: Mapping[str, str]) -> Catalog:
    """The catalog a shard app made from `environ` uses (its ECONOMY_FILE, else the
    shipped one)."""
    return load_catalog(environ.get("ECONOMY_FILE") or None)


def simulate_month(options: SimulationOptions, environ: Mapping[str, str], out: Path, *,
                   charts: bool = True, database: str | None = None,
                   preset: str | None = None, echo: bool = True
                   ) -> tuple[dict[str, Any], Merged]:
    """Simulate `options` with the shard apps' settings `environ` (catalog file, public URL,
    rate limits), write the outputs into `out`, print the summary (unless `echo` is False);
    returns the summary (as in summary.json) and the merged month."""
    out.mkdir(parents=True, exist_ok=True)
    catalog = catalog_of(environ)
    merged = run_sharded(options, environ, out, database)
    report = merged.report
    daily_levels = levels_by_day(merged.daily, options.month, catalog)
    summary = summarise(options, catalog, report, merged.results, merged.people,
                        merged.stats, merged.report_seconds, wall_seconds=merged.wall_seconds,
                        shards=max(1, options.shards), preset=preset,
                        levels_daily=daily_levels)
    (out / "report.json").write_text(json.dumps(report.as_json(), indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(summary_markdown(summary, report))
    (out / "people.csv").write_text(people_csv(report, merged.phones))
    written = [out / name for name in ("report.json", "summary.json", "summary.md",
                                       "people.csv")]
    if charts and charts_module.available():
        written += charts_module.write_charts(out, report, merged.results, daily_levels)
    elif charts and echo:
        click.echo(f"Charts skipped: matplotlib is not installed ({charts_module.INSTALL_HINT})")
    if echo:
        print_summary(summary, report, out, written)
    return summary, merged
