"""The PNG charts: profit per person, daily revenue and cost, levels at the month's end and over
the month, profit by persona, loss against the bound, the revenue mix, and the A/B comparison.

matplotlib is not a production requirement: it comes with `pip install -r
requirements-sim.txt`. Without it `available()` is False and the command skips the charts
(saying how to install it); the figures (JSON, markdown) do not need it. Money is µUSD
until it is handed to matplotlib, where it becomes a float of dollars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sim.personas import PERSONAS
from sim.report import MUSD, PersonResult
from tokens import levels
from tokens.reports import MonthReport

INSTALL_HINT = "pip install -r requirements-sim.txt"
COLOURS = {"casual": "#4c72b0", "active": "#55a868", "power": "#dd8452", "abusive": "#c44e52",
           "flooder": "#8172b2", "toggler": "#937860", "prober": "#da8bc3"}


def available() -> bool:
    """Whether matplotlib can be imported (the simulator's optional extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dollars(musd: int) -> float:
    """µUSD as a float of dollars, for drawing only."""
    return musd / MUSD


def write_charts(out: Path, report: MonthReport, results: Sequence[PersonResult],
                 levels_daily: Mapping[str, Mapping[str, int]] | None = None) -> list[Path]:
    """Draw the PNG charts into `out` and return their paths: the profit distribution by
    persona, daily revenue vs cost, the level distribution by persona, profit per persona (box
    plot), each person's loss as a share of their ceiling, the revenue mix, and (with
    `levels_daily`: day -> level -> people) the levels over the month."""
    plt = _pyplot()

    names = [name for name in PERSONAS if any(r.persona == name for r in results)]
    colours = COLOURS
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

    fig, ax = plt.subplots(figsize=(9, 5))
    kinds = list(report.revenue_by_kind)
    stack = [0.0] * len(names)
    for kind in kinds:
        values = [dollars(sum(getattr(r, f"revenue_{kind}_musd") for r in results
                              if r.persona == n)) for n in names]
        ax.bar(names, values, bottom=stack, label=kind)
        stack = [b + v for b, v in zip(stack, values, strict=True)]
    ax.set(title=f"Revenue mix by persona, {report.month}", ylabel="revenue (USD)")
    ax.legend()
    paths.append(_save(fig, out / "revenue_mix.png"))

    if levels_daily:
        fig, ax = plt.subplots(figsize=(9, 5))
        days = list(levels_daily)
        ax.stackplot([d[-2:] for d in days],
                     [[levels_daily[d].get(level, 0) for d in days] for level in levels.LEVELS],
                     labels=levels.LEVELS)
        ax.set(title=f"Level over the month (month-to-date exposure), {report.month}",
               xlabel="day", ylabel="people")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(loc="upper left", fontsize=8)
        paths.append(_save(fig, out / "levels_over_month.png"))
    return paths


def compare_chart(out: Path, labels: Sequence[str], rows: Mapping[str, Sequence[int]],
                  levels: Mapping[str, Sequence[int]]) -> Path:
    """The A/B comparison as one PNG (compare.png): money (µUSD, as dollars) side by side per
    catalog, and the share of people at each level per catalog. `rows`: figure -> one value
    per catalog; `levels`: level -> people per catalog."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    width = 0.8 / max(1, len(labels))
    names = list(rows)
    for i, label in enumerate(labels):
        left.bar([x + i * width for x in range(len(names))],
                 [dollars(rows[n][i]) for n in names], width, label=label)
        right.bar([x + i * width for x in range(len(levels))],
                  [levels[level][i] for level in levels], width, label=label)
    left.set_xticks([x + width / 2 for x in range(len(names))], names)
    left.set(title="Money by catalog", ylabel="USD")
    left.legend()
    right.set_xticks([x + width / 2 for x in range(len(levels))], list(levels), fontsize=7)
    right.set(title="People by level at the month's end", ylabel="people")
    right.legend()
    return _save(fig, out / "compare.png")


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
