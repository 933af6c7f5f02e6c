"""What-if: the same population and seed under two catalogs, side by side.

`compare_catalogs` simulates the month once per catalog (each in its own subfolder of the
output folder) and prints the differences: revenue, COGS, profit, margin, the share of people
at each level, purchases, offer clicks and conversions, and the targets. It writes
compare.json, compare.md and (with matplotlib) compare.png.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from sim import charts as charts_module
from sim.replay import SimulationOptions
from sim.report import share, usd
from sim.run import simulate_month
from tokens import levels


def compare_catalogs(options: SimulationOptions, environ: Mapping[str, str],
                     catalogs: Sequence[str], out: Path, *, charts: bool = True,
                     preset: str | None = None) -> dict[str, Any]:
    """Simulate `options` under each catalog file of `catalogs` (two or more) and print the
    figures side by side; returns what compare.json holds: per catalog (by file name) its
    money (µUSD), level shares and counts, plus the summary's targets."""
    columns: dict[str, dict[str, Any]] = {}
    for number, path in enumerate(catalogs, start=1):
        label = f"{number}:{Path(path).name}"
        folder = out / f"catalog-{number}"
        click.echo(f"Simulating under {path} ...")
        summary, merged = simulate_month(options, {**environ, "ECONOMY_FILE": str(path)},
                                         folder, charts=charts, preset=preset, echo=False)
        report = merged.report
        active = report.active_people
        columns[label] = {
            "catalog": str(path),
            "thresholds_musd": summary["thresholds_musd"],
            "revenue_musd": report.revenue_musd,
            "cost_musd": report.cost_musd,
            "profit_musd": report.profit_musd,
            "revenue_by_kind_musd": dict(report.revenue_by_kind),
            "margin": str(report.gross_margin),
            "levels": dict(report.level_distribution),
            "level_shares": {k: share(v, active) for k, v in report.level_distribution.items()},
            "ever_reached": _ever_reached(summary["levels_by_day"]),
            "payments": summary["payments"],
            "clicks": summary["clicks"],
            "conversions": summary["conversions"],
            "messages": summary["messages"],
            "messages_per_second": summary["messages_per_second"],
            "within_bound": summary["within_ceiling"]["share"],
            "targets": summary["targets"].get("all", {}),
        }
    (out / "compare.json").write_text(json.dumps(columns, indent=2))
    text = compare_markdown(columns)
    (out / "compare.md").write_text(text)
    click.echo("\n" + text)
    if charts and charts_module.available():
        labels = list(columns)
        money = {name: [columns[c][f"{name}_musd"] for c in labels]
                 for name in ("revenue", "cost", "profit")}
        by_level = {level: [columns[c]["levels"][level] for c in labels]
                    for level in levels.LEVELS}
        click.echo(f"Wrote {charts_module.compare_chart(out, labels, money, by_level)}")
    elif charts:
        click.echo(f"Chart skipped: matplotlib is not installed ({charts_module.INSTALL_HINT})")
    return columns


def _ever_reached(levels_by_day: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """The most people at each level on any one day of the month."""
    best = dict.fromkeys(levels.LEVELS, 0)
    for counts in levels_by_day.values():
        for level, count in counts.items():
            best[level] = max(best[level], count)
    return best


def compare_markdown(columns: Mapping[str, Mapping[str, Any]]) -> str:
    """The comparison as a markdown table: one row per figure, one column per catalog, and a
    last column with the difference of the last catalog from the first."""
    labels = list(columns)
    first, last = columns[labels[0]], columns[labels[-1]]

    def money(key: str, sub: str | None = None) -> list[str]:
        values = [c[key][sub] if sub else c[key] for c in columns.values()]
        a = first[key][sub] if sub else first[key]
        b = last[key][sub] if sub else last[key]
        return [usd(v) for v in values] + [usd(b - a)]

    def count(values: list[int]) -> list[str]:
        return [f"{v:,}" for v in values] + [f"{values[-1] - values[0]:+,}"]

    rows: list[tuple[str, list[str]]] = [
        ("thresholds reduced/basic/affiliate/payment_required",
         ["/".join(usd(v) for v in c["thresholds_musd"].values()) for c in columns.values()]
         + [""]),
        ("revenue", money("revenue_musd")),
        ("  packs", money("revenue_by_kind_musd", "pack")),
        ("  subscriptions", money("revenue_by_kind_musd", "subscription")),
        ("  affiliate", money("revenue_by_kind_musd", "affiliate")),
        ("COGS", money("cost_musd")),
        ("profit", money("profit_musd")),
        ("gross margin", [c["margin"] for c in columns.values()] + [""]),
    ]
    for level in levels.LEVELS:
        rows.append((f"at {level} at the end",
                     [f"{c['levels'][level]:,} ({c['level_shares'][level]})"
                      for c in columns.values()]
                     + [f"{last['levels'][level] - first['levels'][level]:+,}"]))
    for level in levels.LEVELS[1:]:
        rows.append((f"most at {level} on one day",
                     count([c["ever_reached"][level] for c in columns.values()])))
    rows += [
        ("packs bought", count([c["payments"].get("pack", 0) for c in columns.values()])),
        ("subscriptions", count([c["payments"].get("premium", 0) for c in columns.values()])),
        ("offer clicks", count([c["clicks"] for c in columns.values()])),
        ("conversions", count([c["conversions"] for c in columns.values()])),
        ("profitable people", [c["targets"].get("profitable", "") for c in columns.values()]
         + [""]),
        ("people at >= $3.00", [c["targets"].get("at_3_usd", "") for c in columns.values()]
         + [""]),
        ("within the loss bound", [c["within_bound"] for c in columns.values()] + [""]),
    ]
    head = "| figure | " + " | ".join(labels) + " | last - first |"
    lines = [head, "|---|" + "---:|" * (len(labels) + 1)]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in rows]
    return "\n".join(lines)

