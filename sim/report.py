"""The simulation's figures: each person's month against the loss bound (`PersonResult`,
`loss_check`), the merge of the shards' reports into one `MonthReport`, the seed's targets
measured by persona (`targets`), the summary (JSON-ready) and its printing.

Money is integer µUSD throughout; shares are decimal strings ("99.95 %").
"""

from __future__ import annotations

import calendar
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from bot.models import Contact, Message
from sim.personas import PERSONAS
from sim.population import Person
from tokens import levels
from tokens.catalog import Catalog
from tokens.costs import CostEntry
from tokens.money import MUSD_PER_USD
from tokens.periods import Month
from tokens.reports import (
    DEFAULT_TARGET_MUSD,
    TOP_INTENTS,
    MonthReport,
    PersonRow,
    report_from_rows,
)

MUSD = MUSD_PER_USD
PERCENTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)
# The guaranteed-profit design's promises (docs/simulator.md, "The seed's targets").
TARGET_PROFITABLE = Decimal("0.95")  # "95 %+ users profitable in month 1"
TARGET_PROFIT_MUSD = DEFAULT_TARGET_MUSD  # "$3.00 minimum profit per user by month 6"
TARGET_COST_MUSD = 2 * MUSD  # "cost per user < $2"
TARGET_MARGIN = Decimal("0.90")  # "90 %+ margin"


@dataclass(frozen=True)
class PersonResult:
    """One person's month as the report and the loss check see it (µUSD).

    Attributes:
        loss_musd: what the loss ceiling bounds: cost - revenue, without the person's own
            inbound messages (messaging in and the per-interaction platform cost); every reply
            the bot sends counts (`monthly_loss_ceiling_musd`).
        carrier_replies_musd: what the replies to HELP, STOP and START cost (reported; part
            of the loss, from the daily budget of free replies).
        raw_loss_musd: cost - revenue, everything counted.
        ceiling_musd: the person's monthly loss ceiling (with the free allowance's answers
            added when they bought something this month).
    """

    account_id: int
    persona: str
    level: str
    messages_in: int
    cost_musd: int
    revenue_musd: int
    inbound_musd: int
    platform_musd: int
    carrier_replies_musd: int
    loss_musd: int
    raw_loss_musd: int
    ceiling_musd: int
    bought: bool
    revenue_pack_musd: int = 0
    revenue_subscription_musd: int = 0
    revenue_affiliate_musd: int = 0

    @property
    def profit_musd(self) -> int:
        """Revenue - cost, µUSD."""
        return self.revenue_musd - self.cost_musd

    @property
    def within(self) -> bool:
        """The loss stays within the ceiling."""
        return self.loss_musd <= self.ceiling_musd


def loss_check(session: Session, report: MonthReport, catalog: Catalog,
               persona_of: Mapping[int, str], days_in_month: int, *,
               classify_call_musd: int = 0) -> list[PersonResult]:
    """Every active person's loss against `levels.monthly_loss_ceiling_musd`.

    The ceiling leaves out the person's own inbound messages (its docstring), so those are
    taken out of the loss too: the inbound messaging cost (the `messaging` cost entries of
    direction "in") and the platform cost (recorded once per inbound message). The replies
    to HELP, STOP and START (units x the outbound rate) are reported and stay in the loss.
    `classify_call_musd`: one LLM classification call's ceiling when an LLM answers (0
    without), for the ceiling's classification term.
    """
    label = report.month
    inbound = dict(session.execute(
        select(CostEntry.account_id, func.sum(CostEntry.amount_musd))
        .where(CostEntry.month == label, CostEntry.kind == "messaging",
               CostEntry.direction == "in")
        .group_by(CostEntry.account_id)).tuples().all())
    year, month = (int(part) for part in label.split("-"))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = start + timedelta(days=calendar.monthrange(year, month)[1])
    out, into = aliased(Message), aliased(Message)
    rates = catalog.costs.messaging
    carrier: Counter[int] = Counter()
    for account_id, channel, units in session.execute(
            select(Contact.account_id, out.channel, func.sum(out.units))
            .join(into, into.id == out.in_reply_to_id)
            .join(Contact, Contact.id == out.contact_id)
            .where(out.direction == "out", out.created_at >= start, out.created_at < end,
                   into.outcome.in_(("help", "opt_out", "opt_in")))
            .group_by(Contact.account_id, out.channel)):
        carrier[account_id] += int(units or 0) * rates[channel].outbound_musd
    plain = levels.monthly_loss_ceiling_musd(catalog, days_in_month,
                                            classify_call_musd=classify_call_musd)
    buyer = levels.monthly_loss_ceiling_musd(catalog, days_in_month,
                                            holds_purchased_tokens=True,
                                            classify_call_musd=classify_call_musd)
    results = []
    for row in report.people:
        bought = row.revenue_pack_musd > 0 or row.revenue_subscription_musd > 0
        inbound_musd = int(inbound.get(row.account_id, 0) or 0)
        excluded = inbound_musd + row.cost_platform_musd
        results.append(PersonResult(
            account_id=row.account_id, persona=persona_of.get(row.account_id, "?"),
            level=row.level, messages_in=row.messages_in, cost_musd=row.cost_musd,
            revenue_musd=row.revenue_musd, inbound_musd=inbound_musd,
            platform_musd=row.cost_platform_musd,
            carrier_replies_musd=carrier[row.account_id],
            loss_musd=row.cost_musd - excluded - row.revenue_musd,
            raw_loss_musd=row.cost_musd - row.revenue_musd,
            ceiling_musd=buyer if bought else plain, bought=bought,
            revenue_pack_musd=row.revenue_pack_musd,
            revenue_subscription_musd=row.revenue_subscription_musd,
            revenue_affiliate_musd=row.revenue_affiliate_musd))
    return results


# --- summaries -------------------------------------------------------------------------------


PERCENTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)


def percentiles(values: Sequence[int], points: Sequence[int] = PERCENTILES) -> dict[str, int]:
    """Nearest-rank percentiles of integer `values` (µUSD stay integers): "p50" -> value."""
    ordered = sorted(values)
    if not ordered:
        return {}
    n = len(ordered)
    return {f"p{p}": ordered[max(0, -(-p * n // 100) - 1)] for p in points}


def usd(musd: int, places: int = 2) -> str:
    """µUSD as "$1,234.56" (or more places), rounded half-even; "-$0.12" when negative."""
    amount = (Decimal(musd) / MUSD).quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN)
    return f"-${-amount:,}" if amount < 0 else f"${amount:,}"


def share(part: int, whole: int) -> str:
    """A share as a percentage with two decimals, e.g. "99.95 %"."""
    if not whole:
        return "n/a"
    return f"{(Decimal(part) * 100 / whole).quantize(Decimal('0.01'), ROUND_HALF_EVEN)} %"


def persona_table(results: Sequence[PersonResult], people: Sequence[Person]
                  ) -> dict[str, dict[str, Any]]:
    """Per persona: people, messages, payers, revenue, cost, profit (µUSD), levels."""
    table: dict[str, dict[str, Any]] = {}
    actions: dict[str, Counter[str]] = {}
    for person in people:
        counter = actions.setdefault(person.persona, Counter())
        counter.update(person.counts())
    for name in PERSONAS:
        rows = [r for r in results if r.persona == name]
        if not rows:
            continue
        profits = [r.profit_musd for r in rows]
        by_level = Counter(r.level for r in rows)
        table[name] = {
            "people": len(rows),
            "messages_in": sum(r.messages_in for r in rows),
            "paying": sum(1 for r in rows if r.revenue_musd > 0),
            "revenue_musd": sum(r.revenue_musd for r in rows),
            "cost_musd": sum(r.cost_musd for r in rows),
            "profit_musd": sum(profits),
            "mean_profit_musd": sum(profits) // len(rows),
            "median_profit_musd": percentiles(profits, (50,))["p50"],
            "worst_loss_musd": max(r.loss_musd for r in rows),
            "worst_raw_loss_musd": max(r.raw_loss_musd for r in rows),
            "within_ceiling": sum(1 for r in rows if r.within),
            "levels": {level: by_level[level] for level in levels.LEVELS if by_level[level]},
            **dict(actions.get(name, Counter())),
        }
    return table


# --- the merge -----------------------------------------------------------------------------


def build_report(month: str, people: Iterable[PersonRow], daily: Mapping[str, tuple[int, int]],
                 intents: Mapping[str, tuple[int, int]],
                 target_musd: int = DEFAULT_TARGET_MUSD) -> MonthReport:
    """One `MonthReport` from per-person rows (any shards; sorted by `account_id`, which is
    the person's number + 1), per-day (revenue, cost) µUSD sums and per-intent (LLM µUSD,
    answers) sums, derived by `tokens.reports.report_from_rows`, the function behind
    `tokens.reports.month_report` on one database, so 1 shard and N shards give its report."""
    rows = sorted(people, key=lambda p: p.account_id)
    top = sorted(((name, llm, answers) for name, (llm, answers) in intents.items()),
                 key=lambda item: (-item[1], item[0]))[:TOP_INTENTS]
    return report_from_rows(month, rows, top,
                            [(day, *daily.get(day, (0, 0))) for day in Month.parse(month).days],
                            target_musd)


# --- the seed's targets ----------------------------------------------------------------------


def targets(results: Sequence[PersonResult]) -> dict[str, dict[str, Any]]:
    """The guaranteed-profit design's targets as measured, for everyone ("all") and by persona:
    share profitable (profit >= 0, target 95 %), share at >= $3.00 profit (the month-6 target,
    measured on this one month), cost per person (mean COGS, target < $2; also p95 and max),
    gross margin (profit / revenue, target 90 %), the revenue mix, the share of free people
    (no revenue: profitable only if they cost nothing, so the 95 % target cannot hold for
    them by construction), and the worst loss against its bound (within for 100 %)."""
    groups: dict[str, list[PersonResult]] = {"all": list(results)}
    for name in PERSONAS:
        rows = [r for r in results if r.persona == name]
        if rows:
            groups[name] = rows
    table: dict[str, dict[str, Any]] = {}
    for name, rows in groups.items():
        n = len(rows)
        revenue = sum(r.revenue_musd for r in rows)
        cost = sum(r.cost_musd for r in rows)
        costs = sorted(r.cost_musd for r in rows)
        free = [r for r in rows if r.revenue_musd == 0]
        paying = [r for r in rows if r.revenue_musd > 0]
        worst = max(rows, key=lambda r: (r.loss_musd - r.ceiling_musd, r.loss_musd))
        mix = {"pack": sum(r.revenue_pack_musd for r in rows),
               "subscription": sum(r.revenue_subscription_musd for r in rows),
               "affiliate": sum(r.revenue_affiliate_musd for r in rows)}
        table[name] = {
            "people": n,
            "profitable": share(sum(1 for r in rows if r.profit_musd >= 0), n),
            "profitable_target": "95 %",
            "at_3_usd": share(sum(1 for r in rows if r.profit_musd >= TARGET_PROFIT_MUSD), n),
            "cost_per_person_musd": cost // n if n else 0,
            "cost_p95_musd": percentiles(costs, (95,)).get("p95", 0),
            "cost_max_musd": costs[-1] if costs else 0,
            "cost_under_2_usd": share(sum(1 for c in costs if c < TARGET_COST_MUSD), n),
            "revenue_musd": revenue,
            "cost_musd": cost,
            "profit_musd": revenue - cost,
            "margin": share(revenue - cost, revenue),
            "revenue_mix": {k: share(v, revenue) for k, v in mix.items()},
            "free_people": share(len(free), n),
            "free_profitable": share(sum(1 for r in free if r.profit_musd >= 0), len(free)),
            "paying_profitable": share(sum(1 for r in paying if r.profit_musd >= 0),
                                       len(paying)),
            "within_bound": share(sum(1 for r in rows if r.within), n),
            "worst_loss_musd": worst.loss_musd,
            "worst_bound_musd": worst.ceiling_musd,
        }
    return table


def levels_by_day(daily: Mapping[int, Mapping[str, tuple[int, int]]], month: str,
                  catalog: Catalog) -> dict[str, dict[str, int]]:
    """For each day of `month`: level -> people, the level being decided on each person's
    month-to-date exposure (cost - revenue, µUSD) at the day's end, as the report decides the
    month's level; people count from their first active day. `daily`: person -> day ->
    (revenue, cost) µUSD."""
    zero = dict.fromkeys(levels.LEVELS, 0)
    days = Month.parse(month).days
    result = {day: dict.fromkeys(levels.LEVELS, 0) for day in days}
    for per_day in daily.values():
        exposure, seen = 0, False
        for day in days:
            if day in per_day:
                revenue, cost = per_day[day]
                exposure += cost - revenue
                seen = True
            if seen:
                result[day][levels.decide(exposure, zero, catalog, paying=False)] += 1
    return result


# --- the summary -------------------------------------------------------------------------------


def summarise(options: Any, catalog: Catalog, report: MonthReport,
              results: Sequence[PersonResult], people: Sequence[Person], stats: Any,
              report_seconds: float, *, wall_seconds: float = 0.0, shards: int = 1,
              preset: str | None = None, levels_daily: Mapping[str, Mapping[str, int]]
              | None = None) -> dict[str, Any]:
    """The run's summary (JSON-ready; money in µUSD integers, shares as strings).

    `options` is a `sim.replay.SimulationOptions`, `stats` its merged `RunStats`; the
    timing keys ("seconds", "cpu_seconds", "messages_per_second", "report_seconds",
    "wall_seconds", "shards") are the only ones that differ between runs of one seed.
    """
    worst = max(results, key=lambda r: (r.loss_musd - r.ceiling_musd, r.loss_musd),
                default=None)
    worst_raw = max(results, key=lambda r: r.raw_loss_musd, default=None)
    within = sum(1 for r in results if r.within)
    with_platform = sum(1 for r in results
                        if r.loss_musd + r.platform_musd <= r.ceiling_musd)
    catalog_days = options.days_in_month
    wall = wall_seconds or stats.seconds
    return {
        "month": options.month,
        "people": options.people,
        "days_simulated": options.days_simulated,
        "days_in_month": catalog_days,
        "seed": options.seed,
        "preset": preset,
        "mix": {name: str(value) for name, value in options.mix.items()},
        "llm": "simulated" if options.llm else "off",
        "thresholds_musd": dict(levels.upper_bounds(catalog)),
        "events": stats.events,
        "messages": stats.messages,
        "shards": shards,
        "seconds": round(stats.seconds, 1),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(stats.cpu_seconds, 1),
        "messages_per_second": round(stats.messages / wall, 1) if wall else 0,
        "cpu_ms_per_message": (round(1000 * stats.cpu_seconds / stats.messages, 2)
                               if stats.messages else 0),
        "report_seconds": round(report_seconds, 1),
        "outcomes": dict(sorted(stats.outcomes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "payments": dict(sorted(stats.payments.items())),
        "clicks": stats.clicks,
        "conversions": stats.conversions,
        "llm_calls": stats.llm_calls,
        "llm_failures": stats.llm_failures,
        "within_ceiling": {
            "people": within, "of": len(results), "share": share(within, len(results)),
            "worst_account": worst.account_id if worst else None,
            "worst_persona": worst.persona if worst else None,
            "worst_loss_musd": worst.loss_musd if worst else 0,
            "worst_ceiling_musd": worst.ceiling_musd if worst else 0,
            "ceiling_musd": levels.monthly_loss_ceiling_musd(catalog, catalog_days),
            "ceiling_buyer_musd": levels.monthly_loss_ceiling_musd(
                catalog, catalog_days, holds_purchased_tokens=True),
            "within_if_platform_counted": with_platform,
            "worst_raw_loss_musd": worst_raw.raw_loss_musd if worst_raw else 0,
            "worst_raw_loss_account": worst_raw.account_id if worst_raw else None,
            "worst_raw_loss_persona": worst_raw.persona if worst_raw else None,
        },
        "targets": targets(results) if results else {},
        "levels_by_day": {day: dict(v) for day, v in (levels_daily or {}).items()},
        "profit_percentiles_musd": percentiles([r.profit_musd for r in results]),
        "loss_percentiles_musd": percentiles([r.loss_musd for r in results]),
        "personas": persona_table(results, people),
        "errors": dict(sorted(stats.errors.items())),
        "first_errors": sorted(stats.first_errors),
        "warnings": dict(sorted(stats.warnings.items(), key=lambda kv: (-kv[1], kv[0]))[:20]),
    }


TIMINGS = frozenset({"seconds", "wall_seconds", "cpu_seconds", "messages_per_second",
                     "cpu_ms_per_message", "report_seconds", "shards"})


def targets_markdown(summary: Mapping[str, Any]) -> str:
    """The seed's targets as measured (`targets`), as a markdown table, one row a persona."""
    lines = ["| persona | people | profitable (95 %) | >= $3.00 | cost/person (< $2) | "
             "cost p95 | margin (90 %) | free people | revenue mix pack/sub/aff | "
             "worst loss / bound |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, row in summary["targets"].items():
        mix = row["revenue_mix"]
        lines.append(
            f"| {name} | {row['people']:,} | {row['profitable']} | {row['at_3_usd']} | "
            f"{usd(row['cost_per_person_musd'], 4)} | {usd(row['cost_p95_musd'], 4)} | "
            f"{row['margin']} | {row['free_people']} | {mix['pack']} / "
            f"{mix['subscription']} / {mix['affiliate']} | {usd(row['worst_loss_musd'], 4)} / "
            f"{usd(row['worst_bound_musd'], 4)} ({row['within_bound']} within) |")
    return "\n".join(lines)


def summary_markdown(summary: Mapping[str, Any], report: MonthReport) -> str:
    """The summary as a short markdown page (summary.md)."""
    ceiling = summary["within_ceiling"]
    free = summary["targets"].get("all", {})
    return "\n".join([
        f"# Simulated month {summary['month']}",
        "",
        f"{summary['people']:,} people ({summary['days_simulated']} of "
        f"{summary['days_in_month']} days), seed {summary['seed']}, preset "
        f"{summary['preset'] or 'none'}, mix "
        + ", ".join(f"{k} {v}" for k, v in summary["mix"].items()) + ".",
        f"{summary['messages']:,} messages in {summary['wall_seconds']} s on "
        f"{summary['shards']} shard(s): {summary['messages_per_second']} messages/s, "
        f"{summary['cpu_ms_per_message']} ms of CPU per message.",
        "",
        f"Revenue {usd(report.revenue_musd)}, COGS {usd(report.cost_musd)}, profit "
        f"{usd(report.profit_musd)}, gross margin {report.gross_margin}. Levels at the "
        "month's end: " + ", ".join(f"{k} {v:,}" for k, v in report.level_distribution.items())
        + f". Offer clicks {summary['clicks']:,}, conversions {summary['conversions']:,}.",
        "",
        f"Within the monthly loss bound: {ceiling['people']:,} of {ceiling['of']:,} "
        f"({ceiling['share']}); worst {usd(ceiling['worst_loss_musd'], 4)} of "
        f"{usd(ceiling['worst_ceiling_musd'], 4)} ({ceiling['worst_persona']}).",
        "",
        "## The seed's targets, measured",
        "",
        targets_markdown(summary),
        "",
        f"People who paid nothing ({free.get('free_people', 'n/a')} of everyone) cost "
        "something for every answer and bring no revenue: they cannot be profitable by "
        f"construction ({free.get('free_profitable', 'n/a')} of them are, the ones who cost "
        "nothing), so the 95 % target can hold at most for the paying share.",
        "",
    ])


def print_summary(summary: dict[str, Any], report: MonthReport, out: Path,
                  written: Sequence[Path]) -> None:
    """Print the month's report, the loss-bound check, the targets, the profit distribution
    and the persona table."""
    echo = click.echo
    echo(f"\nReplayed {summary['events']:,} events ({summary['messages']:,} messages) in "
         f"{summary['wall_seconds']:.1f} s on {summary['shards']} shard(s) "
         f"({summary['cpu_seconds']:.1f} s CPU, {summary['cpu_ms_per_message']} ms a message): "
         f"{summary['messages_per_second']:,.0f} messages/s; "
         f"report and checks {summary['report_seconds']:.1f} s")
    echo("Outcomes: " + ", ".join(f"{k} {v:,}" for k, v in summary["outcomes"].items()))
    echo(f"Payments: {summary['payments'] or 'none'}; offer clicks {summary['clicks']:,}, "
         f"conversions {summary['conversions']:,}; LLM calls {summary['llm_calls']:,} "
         f"({summary['llm_failures']:,} timed out)")
    echo(f"\nMonth {report.month}: {report.active_people:,} active people (of "
         f"{summary['people']:,} simulated), {report.paying_people:,} paying")
    echo(f"Revenue {usd(report.revenue_musd)}, COGS {usd(report.cost_musd)}, profit "
         f"{usd(report.profit_musd)}, gross margin {report.gross_margin}")
    echo(f"ARPU {usd(report.arpu_musd, 4)}, average cost {usd(report.average_cost_musd, 4)}, "
         f"profitable {report.share_profitable}, at the $3.00 target {report.share_at_target}, "
         f"pack conversion {report.pack_conversion}")
    echo("Revenue by kind: " + ", ".join(
        f"{k} {usd(v)} ({report.revenue_mix.get(k)})" for k, v in report.revenue_by_kind.items()))
    echo("Levels: " + ", ".join(f"{k} {v:,}" for k, v in report.level_distribution.items()))
    echo("Top intents by LLM cost: " + (", ".join(
        f"{name} {usd(llm, 4)} ({answers:,} answers)" for name, llm, answers
        in report.top_intents) or "none"))
    ceiling = summary["within_ceiling"]
    echo(f"\nWithin the monthly loss ceiling: {ceiling['people']:,} of {ceiling['of']:,} people "
         f"({ceiling['share']}) [loss = cost - revenue without own inbound messages, platform "
         "cost and HELP/STOP/START replies, as the ceiling is defined]")
    echo(f"Worst loss {usd(ceiling['worst_loss_musd'], 4)} vs its ceiling "
         f"{usd(ceiling['worst_ceiling_musd'], 4)} (person {ceiling['worst_account']}, "
         f"{ceiling['worst_persona']})")
    echo(f"Everything counted, the worst loss is {usd(ceiling['worst_raw_loss_musd'], 4)} "
         f"(person {ceiling['worst_raw_loss_account']}, {ceiling['worst_raw_loss_persona']}); "
         f"within the ceiling if the platform cost were counted: "
         f"{ceiling['within_if_platform_counted']:,} of {ceiling['of']:,}")
    echo("\nThe seed's targets, measured:\n" + targets_markdown(summary))
    echo("\nProfit per person: " + ", ".join(
        f"{k} {usd(v)}" for k, v in summary["profit_percentiles_musd"].items()))
    echo("\n" + f"{'persona':<8} {'people':>7} {'msgs in':>9} {'paying':>7} "
         f"{'revenue':>12} {'cost':>12} {'profit':>12} {'mean':>8} {'median':>8} "
         f"{'worst loss':>10} {'packs':>6} {'subs':>5} {'clicks':>6} {'conv':>5}  levels")
    for name, row in summary["personas"].items():
        by_level = ", ".join(f"{k} {v}" for k, v in row["levels"].items())
        echo(f"{name:<8} {row['people']:>7,} {row['messages_in']:>9,} {row['paying']:>7,} "
             f"{usd(row['revenue_musd']):>12} {usd(row['cost_musd']):>12} "
             f"{usd(row['profit_musd']):>12} {usd(row['mean_profit_musd']):>8} "
             f"{usd(row['median_profit_musd']):>8} {usd(row['worst_loss_musd']):>10} "
             f"{row.get('packs', 0):>6,} {row.get('subscriptions', 0):>5,} "
             f"{row.get('clicks', 0):>6,} {row.get('conversions', 0):>5,}  {by_level}")
    if summary["errors"]:
        echo("\nPipeline errors: " + "; ".join(f"{k} x{v}" for k, v in summary["errors"].items()))
    if summary["warnings"]:
        echo("Warnings logged: " + "; ".join(f"{k} x{v}"
                                             for k, v in summary["warnings"].items()))
    echo(f"\nWrote {out}: " + ", ".join(path.name for path in written))
