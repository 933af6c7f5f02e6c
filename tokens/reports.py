"""The month's profitability report, read from the monthly rollups (docs/economy.md, "Reports").

It reads one `AccountMonth` row per person, the per-intent rows for the top intents and the
per-day rows (`AccountDay`) for the daily chart, so its time grows with the number of people
(and days), not of events. The month's people are everyone with activity in it: a message, a
cost or revenue (a subscriber who did not write still brings revenue). Money is integer µUSD;
ratios are `Decimal`, rounded to 4 places.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from tokens import costs, levels
from tokens.catalog import Catalog
from tokens.costs import AccountDay, AccountMonth, AccountMonthIntent
from tokens.money import MUSD_PER_USD
from tokens.periods import Month

# docs/economy.md, "Reports": the share of people at or above a $3.00 target (profit per person).
DEFAULT_TARGET_MUSD = 3 * MUSD_PER_USD
RATIO = Decimal("0.0001")
# The report's top intents: the intents that cost the most LLM µUSD in the month.
TOP_INTENTS = 10


@dataclass(frozen=True)
class PersonRow:
    """One person's month (µUSD amounts; tokens)."""

    account_id: int
    level: str
    messages_in: int
    messages_out: int
    tokens_charged: int
    cost_llm_musd: int
    cost_messaging_musd: int
    cost_platform_musd: int
    revenue_pack_musd: int
    revenue_subscription_musd: int
    revenue_affiliate_musd: int

    @property
    def cost_musd(self) -> int:
        """The month's COGS, µUSD (`tokens.costs.cogs_musd`)."""
        amount: int = costs.cogs_musd(self)
        return amount

    @property
    def revenue_musd(self) -> int:
        """The month's net revenue, µUSD (`tokens.costs.revenue_musd`)."""
        amount: int = costs.revenue_musd(self)
        return amount

    @property
    def profit_musd(self) -> int:
        """Revenue - COGS, µUSD."""
        return self.revenue_musd - self.cost_musd


@dataclass(frozen=True)
class MonthReport:
    """A month's totals and its people.

    Attributes:
        month: "YYYY-MM".
        active_people: people with activity this month (a message, a cost or revenue).
        paying_people: people with revenue this month.
        revenue_musd, cost_musd, profit_musd: totals, µUSD.
        gross_margin: profit / revenue (None without revenue).
        arpu_musd: revenue per active person, µUSD (rounded down).
        average_cost_musd: cost per active person, µUSD (rounded down).
        share_profitable: share of active people with profit >= 0.
        share_at_target: share of active people with profit >= the target.
        revenue_mix: kind -> share of revenue.
        revenue_by_kind: kind -> revenue, µUSD.
        level_distribution: level (by this month's exposure) -> active people.
        top_intents: (intent, LLM µUSD, answers), dearest first, at most 10.
        pack_conversion: share of active people who bought a pack this month.
        daily: (UTC day "YYYY-MM-DD", revenue µUSD, cost µUSD) for every day of the month.
        people: every active person's row, by account id.
    """

    month: str
    active_people: int
    paying_people: int
    revenue_musd: int
    cost_musd: int
    profit_musd: int
    gross_margin: Decimal | None
    arpu_musd: int
    average_cost_musd: int
    share_profitable: Decimal | None
    share_at_target: Decimal | None
    revenue_mix: dict[str, Decimal] = field(default_factory=dict)
    revenue_by_kind: dict[str, int] = field(default_factory=dict)
    level_distribution: dict[str, int] = field(default_factory=dict)
    top_intents: list[tuple[str, int, int]] = field(default_factory=list)
    pack_conversion: Decimal | None = None
    daily: list[tuple[str, int, int]] = field(default_factory=list)
    people: list[PersonRow] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict: Decimals as strings, µUSD as integers."""
        data = asdict(self)
        data["people"] = [
            {**asdict(p), "cost_musd": p.cost_musd, "revenue_musd": p.revenue_musd,
             "profit_musd": p.profit_musd} for p in self.people
        ]
        converted: dict[str, Any] = _decimals_as_strings(data)
        return converted


def month_report(session: Session, label: str, catalog: Catalog,
                 target_musd: int = DEFAULT_TARGET_MUSD) -> MonthReport:
    """The report of month `label` ("YYYY-MM")."""
    fields = [name for name in PersonRow.__dataclass_fields__ if name != "level"]
    # Plain rows, not ORM objects: a report of 10,000 people loads 10,000 rows.
    rows = session.execute(
        select(*(getattr(AccountMonth, name) for name in fields))
        .where(AccountMonth.month == label, or_(
            AccountMonth.messages_in > 0, AccountMonth.cost_llm_musd != 0,
            AccountMonth.cost_messaging_musd != 0, AccountMonth.cost_platform_musd != 0,
            AccountMonth.revenue_pack_musd != 0, AccountMonth.revenue_subscription_musd != 0,
            AccountMonth.revenue_affiliate_musd != 0))
        .order_by(AccountMonth.account_id)
    ).all()
    zero = dict.fromkeys(levels.LEVELS, 0)
    people = []
    for row in rows:
        exposure: int = costs.exposure_musd(row)  # a Row has its columns as attributes
        people.append(PersonRow(level=levels.decide(exposure, zero, catalog, paying=False),
                                **dict(zip(fields, row, strict=True))))
    intents = session.execute(
        select(AccountMonthIntent.intent, func.sum(AccountMonthIntent.cost_llm_musd),
               func.sum(AccountMonthIntent.answers))
        .where(AccountMonthIntent.month == label)
        .group_by(AccountMonthIntent.intent)
        .order_by(func.sum(AccountMonthIntent.cost_llm_musd).desc(), AccountMonthIntent.intent)
        .limit(TOP_INTENTS)
    ).all()
    return report_from_rows(
        label, people,
        [(name, int(llm or 0), int(answers or 0)) for name, llm, answers in intents],
        daily_totals(session, label), target_musd)


def report_from_rows(label: str, people: Sequence[PersonRow],
                     top_intents: Sequence[tuple[str, int, int]],
                     daily: Sequence[tuple[str, int, int]],
                     target_musd: int = DEFAULT_TARGET_MUSD) -> MonthReport:
    """The `MonthReport` of month `label` ("YYYY-MM") from its rows: `people` (one
    `PersonRow` each, in account order), `top_intents` ((intent, LLM µUSD, answers), most
    costly first, at most `TOP_INTENTS`) and `daily` ((day, revenue µUSD, cost µUSD) for every
    day). The one place the report's totals, ratios and level counts are derived, for
    `month_report` (one database) and the simulator's merge of shards (`sim.report`)."""
    active = len(people)
    revenue = sum(p.revenue_musd for p in people)
    cost = sum(p.cost_musd for p in people)
    mix = {
        "pack": sum(p.revenue_pack_musd for p in people),
        "subscription": sum(p.revenue_subscription_musd for p in people),
        "affiliate": sum(p.revenue_affiliate_musd for p in people),
    }
    by_level = dict.fromkeys(levels.LEVELS, 0)
    for person in people:
        by_level[person.level] += 1
    return MonthReport(
        month=label,
        active_people=active,
        paying_people=sum(1 for p in people if p.revenue_musd > 0),
        revenue_musd=revenue,
        cost_musd=cost,
        profit_musd=revenue - cost,
        gross_margin=_ratio(revenue - cost, revenue),
        arpu_musd=revenue // active if active else 0,
        average_cost_musd=cost // active if active else 0,
        share_profitable=_ratio(sum(1 for p in people if p.profit_musd >= 0), active),
        share_at_target=_ratio(sum(1 for p in people if p.profit_musd >= target_musd), active),
        revenue_mix={kind: _ratio(amount, revenue) or Decimal(0) for kind, amount in mix.items()},
        revenue_by_kind=mix,
        level_distribution=by_level,
        top_intents=list(top_intents),
        pack_conversion=_ratio(sum(1 for p in people if p.revenue_pack_musd > 0), active),
        daily=list(daily),
        people=list(people),
    )


def daily_totals(session: Session, label: str) -> list[tuple[str, int, int]]:
    """(day "YYYY-MM-DD", revenue µUSD, cost µUSD) for each day of month `label` (UTC), days
    without activity as zeros, from the per-account daily rollup."""
    days = Month.parse(label).days
    sums = {
        day: (int(revenue or 0), int(cost or 0))
        for day, revenue, cost in session.execute(
            select(AccountDay.day, func.sum(AccountDay.revenue_musd),
                   func.sum(AccountDay.cost_musd))
            .where(AccountDay.day >= days[0], AccountDay.day <= days[-1])
            .group_by(AccountDay.day))
    }
    return [(day, *sums.get(day, (0, 0))) for day in days]


CSV_FIELDS = ("account_id", "level", "messages_in", "messages_out", "tokens_charged",
              "cost_llm_musd", "cost_messaging_musd", "cost_platform_musd", "cost_musd",
              "revenue_pack_musd", "revenue_subscription_musd", "revenue_affiliate_musd",
              "revenue_musd", "profit_musd")


def people_csv(report: MonthReport, phones: Mapping[int, str] | None = None) -> str:
    """The report's people as CSV (one row each, µUSD amounts), with a header; with `phones`
    (account id -> masked phone), a first "phone" column."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    prefix = ("phone",) if phones is not None else ()
    writer.writerow((*prefix, *CSV_FIELDS))
    for person in report.people:
        phone = (phones.get(person.account_id, ""),) if phones is not None else ()
        writer.writerow((*phone, *(getattr(person, name) for name in CSV_FIELDS)))
    return out.getvalue()


def _ratio(part: int, whole: int) -> Decimal | None:
    if not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(RATIO, rounding=ROUND_HALF_EVEN)


def _decimals_as_strings(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _decimals_as_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decimals_as_strings(v) for v in value]
    return value
