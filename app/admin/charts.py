"""The overview's charts, drawn on the server as inline SVG with pygal (no script: the admin
pages' CSP allows none, and pygal's own script, fetched from a CDN by default, is turned off).

Each function takes the month's report (`tokens.reports.MonthReport`) and returns SVG markup.
Dollar values are converted from integer µUSD to `Decimal` dollars only for drawing.
"""

from __future__ import annotations

from decimal import Decimal
from xml.etree import ElementTree

import pygal
from markupsafe import Markup
from pygal.style import Style

from tokens.money import musd_to_usd, usd_to_musd
from tokens.reports import MonthReport

STYLE = Style(background="white", plot_background="white", font_family="system-ui, sans-serif",
              colors=("#1b7f3b", "#b3261e", "#1f5fbf", "#c77c02", "#6a1b9a", "#00838f"))
_COMMON = {"style": STYLE, "js": [], "disable_xml_declaration": True, "width": 720,
           "height": 320, "explicit_size": False, "print_values": False,
           "legend_at_bottom": True, "truncate_legend": -1, "truncate_label": -1}
PROFIT_BINS_USD = (-2, -1, -0.5, -0.25, 0, 0.25, 1, 3, 10)


def _usd(musd: int) -> float:
    """µUSD as dollars for plotting (pygal plots floats; the stored amount stays integer)."""
    return float(musd_to_usd(musd))


def _dollars(value: float) -> str:
    """An axis label in dollars: cents for amounts of a dollar or more, else six decimals (LLM
    costs are fractions of a cent)."""
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.6f}".rstrip("0").rstrip(".")


def _count_labels(counts: list[int]) -> list[int]:
    """Whole-number ticks for an axis of people counted (at most about 8)."""
    top = max(counts, default=0)
    step = max(1, -(-top // 8))
    return list(range(0, top + step, step))


def _svg(chart: pygal.graph.graph.Graph) -> Markup:
    """The chart as SVG markup without pygal's inline config script (the CSP blocks scripts,
    and the chart needs none)."""
    root = chart.render_tree()
    for parent in list(root.iter()):
        for child in list(parent):
            if isinstance(child.tag, str) and child.tag.rsplit("}", 1)[-1] == "script":
                parent.remove(child)
    return Markup(ElementTree.tostring(root, encoding="unicode"))  # pygal escapes its labels


def daily_revenue_and_cost(report: MonthReport) -> Markup:
    """Bars of revenue and COGS per day of the month, USD."""
    chart = pygal.Bar(title="Revenue and cost by day (USD)", x_label_rotation=0,
                      show_minor_x_labels=False, value_formatter=_dollars, **_COMMON)
    chart.x_labels = [day[-2:] for day, _, _ in report.daily]
    chart.x_labels_major = [day[-2:] for day, _, _ in report.daily][::5]
    chart.add("Revenue", [_usd(revenue) for _, revenue, _ in report.daily])
    chart.add("Cost", [_usd(cost) for _, _, cost in report.daily])
    return _svg(chart)


def profit_distribution(report: MonthReport) -> Markup:
    """A histogram of people by their month's profit (USD bins, `PROFIT_BINS_USD`)."""
    edges = [usd_to_musd(Decimal(str(edge))) for edge in PROFIT_BINS_USD]
    labels = ([f"< {PROFIT_BINS_USD[0]}"]
              + [f"{lo} to {hi}" for lo, hi in zip(PROFIT_BINS_USD, PROFIT_BINS_USD[1:],
                                                  strict=False)]
              + [f">= {PROFIT_BINS_USD[-1]}"])
    counts = [0] * (len(edges) + 1)
    for person in report.people:
        index = sum(1 for edge in edges if person.profit_musd >= edge)
        counts[index] += 1
    chart = pygal.Bar(title="People by profit this month (USD)", x_label_rotation=20,
                      show_legend=False, y_labels=_count_labels(counts), **_COMMON)
    chart.x_labels = labels
    chart.add("People", counts)
    return _svg(chart)


def level_distribution(report: MonthReport) -> Markup:
    """People by restriction level (by their month's exposure)."""
    chart = pygal.HorizontalBar(title="People by level", show_legend=False,
                                y_labels=_count_labels(list(report.level_distribution.values())),
                                **_COMMON)
    chart.x_labels = list(report.level_distribution)
    chart.add("People", list(report.level_distribution.values()))
    return _svg(chart)


def revenue_mix(report: MonthReport) -> Markup:
    """Revenue by kind (pack, subscription, affiliate), USD."""
    chart = pygal.Pie(title="Revenue mix (USD)", inner_radius=.45, value_formatter=_dollars,
                      **_COMMON)
    for kind, amount in report.revenue_by_kind.items():
        chart.add(kind, _usd(amount))
    return _svg(chart)


def top_intents(report: MonthReport) -> Markup:
    """The intents that cost the most LLM spend this month, USD."""
    chart = pygal.HorizontalBar(title="Top intents by LLM cost (USD)", show_legend=False,
                                value_formatter=_dollars, **_COMMON)
    chart.x_labels = [name for name, _, _ in report.top_intents]
    chart.add("LLM cost", [_usd(llm) for _, llm, _ in report.top_intents])
    return _svg(chart)
