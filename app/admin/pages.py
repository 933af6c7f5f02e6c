"""The report pages: the month's overview with charts, the people table, and one person's page
with their ledger and the operator's actions (docs/economy.md, "Reports"; issue #7).

Everything money is integer µUSD (costs, revenue) or cents; it is formatted for display by the
`usd` filter, never converted to float. Phone numbers appear masked (`mask_address`), and no
message body is shown anywhere.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import Flask, Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from app.admin import charts
from app.admin.web import actor, bp
from app.extensions import bot_settings, db
from bot.contacts import consent_log, mask_address
from bot.models import Contact, Message
from tokens import admin, costs, ledger, levels, money, payments
from tokens.base import utcnow
from tokens.costs import AccountMonth
from tokens.errors import TokensError
from tokens.periods import Month
from tokens.reports import month_report, people_csv

PAGE_SIZE = 50
LEDGER_ROWS = 200
MESSAGE_ROWS = 50
CONSENT_ROWS = 100
COST = AccountMonth.cost_musd
REVENUE = AccountMonth.revenue_musd
SORTS: dict[str, ColumnElement[Any]] = {
    "account": AccountMonth.account_id,
    "cost": COST,
    "revenue": REVENUE,
    "profit": REVENUE - COST,
    "exposure": AccountMonth.exposure_musd,  # the level follows exposure
    "balance": ledger.Account.balance - ledger.Account.held,
    "messages": AccountMonth.messages_in,
    "tokens": AccountMonth.tokens_charged,
}


@bp.app_template_filter("usd")
def usd(amount_musd: int | None, places: int | None = None) -> str:
    """µUSD as dollars for display, a minus sign before the dollar sign. With `places`,
    rounded (half even) to that many decimals, e.g. usd(9_486_410, 2) -> "$9.49"; without,
    exact: all six decimals less trailing zeros, at least two, e.g. 15_800 -> "$0.0158",
    32 -> "$0.000032", 5_000_000 -> "$5.00"."""
    if amount_musd is None:
        return "-"
    return money.format_usd(amount_musd, places, trim=True, grouping=True)


@bp.app_template_filter("cents")
def cents(amount: int | None) -> str:
    """Cents as dollars, e.g. 999 -> "$9.99"."""
    return "-" if amount is None else usd(money.cents_to_musd(amount), 2)


@bp.app_template_filter("share")
def share(ratio: Decimal | None) -> str:
    """A ratio as a percentage with one decimal, e.g. Decimal("0.9346") -> "93.5%"."""
    if ratio is None:
        return "-"
    return f"{(ratio * 100).quantize(Decimal('0.1'))}%"


@bp.app_template_filter("when")
def when(moment: datetime | None) -> str:
    """A UTC time as "YYYY-MM-DD HH:MM"."""
    return "-" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M}"


def _month_arg() -> Month:
    """`?month=YYYY-MM`, default this month (UTC); a malformed one is a 400 with the reason."""
    label = request.args.get("month")
    if not label:
        return Month.of(utcnow())
    try:
        return Month.parse(label)
    except ValueError:
        from werkzeug.exceptions import BadRequest

        raise BadRequest("month must be YYYY-MM, e.g. 2026-11") from None


def _is_month(text: str) -> bool:
    """Whether `text` is a month "YYYY-MM"."""
    try:
        Month.parse(text)
    except ValueError:
        return False
    return True


def _catalog(app: Flask | None = None) -> Any:
    return bot_settings(app).catalog


@bp.get("/")
def overview() -> ResponseReturnValue:
    """The month's KPIs (docs/economy.md "Reports") and five charts: daily revenue against cost,
    profit distribution, level distribution, revenue mix, top intents by LLM cost."""
    month = _month_arg()
    report = month_report(db.session, str(month), _catalog())
    drawn = {
        "daily": charts.daily_revenue_and_cost(report),
        "profit": charts.profit_distribution(report),
        "levels": charts.level_distribution(report),
        "mix": charts.revenue_mix(report),
        "intents": charts.top_intents(report),
    }
    return render_template("admin/overview.html", report=report, charts=drawn,
                           before=str(month.previous), after=str(month.next))


@bp.get("/consent.csv")
def consent_csv() -> ResponseReturnValue:
    """The consent log as CSV, newest first: everyone's, or one account's with `?account=N`
    (masked numbers; 400 for an account that is not a whole number)."""
    raw = request.args.get("account")
    account_id = None
    if raw is not None:
        if not raw.isdigit() or len(raw) > 18:
            return Response("account must be a whole number\n", status=400,
                            content_type="text/plain; charset=utf-8")
        account_id = int(raw)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["at", "account_id", "contact", "channel", "action", "keyword", "source"])
    for line in consent_log(db.session, account_id):
        writer.writerow([line.at.isoformat(), line.account_id, line.contact, line.channel,
                         line.action, line.keyword, line.source])
    name = f"consent-{account_id}.csv" if account_id is not None else "consent.csv"
    return Response(out.getvalue(), content_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/report.csv")
def report_csv() -> ResponseReturnValue:
    """The month's people as CSV (masked phones), as `/admin/api/report?format=csv` gives with
    the bearer token."""
    from app.admin.api import masked_phones

    label = str(_month_arg())
    report = month_report(db.session, label, _catalog())
    return Response(people_csv(report, masked_phones()), content_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="report-{label}.csv"'})


@dataclass(frozen=True)
class PersonLine:
    """One row of the people table (µUSD amounts, tokens)."""

    account_id: int
    phone: str
    level: str
    available: int
    cost_musd: int
    revenue_musd: int
    messages_in: int
    tokens_charged: int
    suspended: bool
    flooded_day: str | None = None  # the last UTC day their inbound passed the flood threshold

    @property
    def profit_musd(self) -> int:
        return self.revenue_musd - self.cost_musd


def search_filter(query: str) -> ColumnElement[bool] | None:
    """The people table's search: "#<id>" an account id; digits (with or without "+", spaces
    or dashes) the end of a phone number (at least 2 digits); anything else an account's
    public id. None for an empty query."""
    text = query.strip()
    if not text:
        return None
    if re.fullmatch(r"#\d{1,18}", text):
        return AccountMonth.account_id == int(text[1:])
    digits = re.sub(r"[\s().+-]", "", text)
    if digits.isdigit() and len(digits) >= 2:
        return AccountMonth.account_id.in_(
            select(Contact.account_id).where(Contact.address.like(f"%{digits}")))
    return ledger.Account.public_id == text


@bp.get("/people")
def people() -> ResponseReturnValue:
    """The month's people: masked phone, level, balance, cost, revenue, profit; sortable
    (`?sort=` one of `SORTS`, `&dir=asc|desc`), searchable (`?q=`, see `search_filter`),
    `PAGE_SIZE` per page (`?page=`)."""
    label = str(_month_arg())
    sort = request.args.get("sort", "profit")
    if sort not in SORTS:
        sort = "profit"
    direction = "asc" if request.args.get("dir") == "asc" else "desc"
    query = request.args.get("q", "")
    statement = (
        select(AccountMonth, ledger.Account.balance, ledger.Account.held,
               ledger.Account.suspended_at, levels.LevelState.flooded_day)
        .join(ledger.Account, ledger.Account.id == AccountMonth.account_id)
        .outerjoin(levels.LevelState, levels.LevelState.account_id == AccountMonth.account_id)
        .where(AccountMonth.month == label, or_(COST != 0, REVENUE != 0,
                                                AccountMonth.messages_in > 0))
    )
    found = search_filter(query)
    if found is not None:
        statement = statement.where(found)
    total = db.session.scalar(select(func.count()).select_from(statement.subquery())) or 0
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(max(1, request.args.get("page", 1, type=int) or 1), pages)
    order = SORTS[sort].asc() if direction == "asc" else SORTS[sort].desc()
    rows = db.session.execute(statement.order_by(order, AccountMonth.account_id)
                              .offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE)).all()
    phones = _phones(db.session, [row[0].account_id for row in rows])
    zero = dict.fromkeys(levels.LEVELS, 0)
    catalog = _catalog()
    lines = [
        PersonLine(
            account_id=month.account_id, phone=phones.get(month.account_id, "-"),
            level=levels.decide(month.exposure_musd, zero, catalog, paying=False),
            available=balance - held, cost_musd=month.cost_musd,
            revenue_musd=month.revenue_musd, messages_in=month.messages_in,
            tokens_charged=month.tokens_charged, suspended=suspended is not None,
            flooded_day=flooded if flooded and flooded.startswith(label) else None)
        for month, balance, held, suspended, flooded in rows
    ]
    return render_template("admin/people.html", lines=lines, month=label, sort=sort,
                           direction=direction, page=page, pages=pages, total=total, q=query)


SEARCH_DIGITS = 6


@bp.post("/people/search")
def people_search() -> ResponseReturnValue:
    """The search form posts here, so a full phone number typed into it never lands in a URL
    (browser history, proxy logs): a number is cut to its last `SEARCH_DIGITS` digits, then
    303 to the people table."""
    query = request.form.get("q", "").strip()
    digits = re.sub(r"[\s().+-]", "", query)
    if digits.isdigit():
        query = digits[-SEARCH_DIGITS:]
    month = request.form.get("month", "")
    return redirect(url_for(
        "admin.people", month=month if _is_month(month) else None, q=query or None,
        sort=request.form.get("sort") if request.form.get("sort") in SORTS else None,
        dir="asc" if request.form.get("dir") == "asc" else None), code=303)


def _phones(session: Session, account_ids: list[int]) -> dict[int, str]:
    """Account id -> its masked phone (the first contact's), for the given accounts."""
    if not account_ids:
        return {}
    found: dict[int, str] = {}
    for account_id, address in session.execute(
            select(Contact.account_id, Contact.address)
            .where(Contact.account_id.in_(account_ids)).order_by(Contact.id)):
        found.setdefault(account_id, mask_address(address))
    return found


@bp.get("/people/<id:account_id>")
def person(account_id: int) -> ResponseReturnValue:
    """One person: contacts (masked) and opt-out state, balance by bucket, this month's cost
    and revenue, the ledger with a running balance (latest `LEDGER_ROWS`, or `?entries=all`),
    holds, purchases, subscriptions, message metadata (no bodies), the audit trail, and the
    action forms. 404 for an unknown account."""
    return _person_page(account_id)


def _person_page(account_id: int, error: str | None = None, status: int = 200
                 ) -> ResponseReturnValue:
    session = db.session
    account = session.get(ledger.Account, account_id)
    if account is None:
        return render_template("admin/error.html", title="Not found",
                               message=f"No account #{account_id}."), 404
    now = utcnow()
    contacts = list(session.scalars(
        select(Contact).where(Contact.account_id == account_id).order_by(Contact.id)))
    entries = session.scalar(select(func.count()).select_from(ledger.LedgerEntry)
                             .where(ledger.LedgerEntry.account_id == account_id)) or 0
    limit = entries if request.args.get("entries") == "all" else LEDGER_ROWS
    catalog = _catalog()
    month = costs.month(session, account_id, now)
    zero = dict.fromkeys(levels.LEVELS, 0)
    state = session.get(levels.LevelState, account_id)
    context = {
        "account": account,
        "contacts": [(mask_address(c.address), c) for c in contacts],
        "balance": ledger.balance(session, account_id, now),
        "month": month,
        "level": levels.decide(month.exposure_musd, zero, catalog, paying=False),
        "override": levels.override_of(session, account_id, now),
        "override_until": state.override_until if state else None,
        "flooded_day": state.flooded_day if state else None,
        "history": ledger.history(session, account_id, limit=max(limit, 1)),
        "entries": entries,
        "holds": list(session.scalars(
            select(ledger.Hold).where(ledger.Hold.account_id == account_id)
            .order_by(ledger.Hold.id.desc()).limit(50))),
        "checkouts": list(session.scalars(
            select(payments.Checkout).where(payments.Checkout.account_id == account_id)
            .order_by(payments.Checkout.id.desc()).limit(50))),
        "subscriptions": list(session.scalars(
            select(payments.Subscription)
            .where(payments.Subscription.account_id == account_id)
            .order_by(payments.Subscription.id.desc()))),
        "messages": list(session.scalars(
            select(Message).where(Message.contact_id.in_([c.id for c in contacts]))
            .order_by(Message.id.desc()).limit(MESSAGE_ROWS))),
        "actions": list(session.execute(
            select(admin.AdminAction, admin.AdminUser.username)
            .join(admin.AdminUser, admin.AdminUser.id == admin.AdminAction.admin_id)
            .where(admin.AdminAction.account_id == account_id)
            .order_by(admin.AdminAction.id.desc()).limit(50))),
        "consent": consent_log(session, account_id, limit=CONSENT_ROWS),
        "levels": levels.LEVELS,
        "form_key": uuid.uuid4().hex,
        "error": error,
        "default_until": f"{now + timedelta(days=7):%Y-%m-%dT%H:%M}",
    }
    return render_template("admin/person.html", **context), status


def _act(account_id: int, done: str, action: Any) -> ResponseReturnValue:
    """Run one action in a transaction: on success commit, flash `done` and redirect (303) to
    the person's page; on a refused input roll back and show the page again with 400 and the
    reason."""
    try:
        action()
    except (TokensError, ValueError) as exc:
        db.session.rollback()
        return _person_page(account_id, error=str(exc), status=400)
    db.session.commit()
    flash(done)
    return redirect(url_for("admin.person", account_id=account_id), code=303)


def _tokens_field(name: str) -> int:
    """A whole number of tokens from the form; ValueError with the reason otherwise."""
    raw = request.form.get(name, "").strip()
    if not re.fullmatch(r"[+-]?\d{1,9}", raw):
        raise ValueError("tokens must be a whole number, e.g. 50 or -5")
    return int(raw)


def _key() -> str:
    """The form's idempotency key (a fresh uuid per rendered form)."""
    raw = request.form.get("key", "")
    if not re.fullmatch(r"[0-9a-f]{32}", raw):
        raise ValueError("the form has no valid key: reload the page")
    return raw


@bp.post("/people/<id:account_id>/grant")
def grant(account_id: int) -> ResponseReturnValue:
    """Grant goodwill tokens (bucket "bonus") with a reason; once per form."""
    def run() -> None:
        tokens = _tokens_field("tokens")
        admin.grant_tokens(db.session, actor(), account_id, tokens,
                           request.form.get("reason", ""), _key())
    return _act(account_id, "Tokens granted.", run)


@bp.post("/people/<id:account_id>/adjust")
def adjust(account_id: int) -> ResponseReturnValue:
    """Correct the balance by a signed number of tokens with a reason; once per form."""
    def run() -> None:
        tokens = _tokens_field("tokens")
        admin.adjust_tokens(db.session, actor(), account_id, tokens,
                            request.form.get("reason", ""), _key())
    return _act(account_id, "Balance adjusted.", run)


@bp.post("/people/<id:account_id>/suspend")
def suspend(account_id: int) -> ResponseReturnValue:
    """Suspend the person (no answers, nothing charged) with a reason."""
    return _act(account_id, "Suspended.", lambda: admin.suspend(
        db.session, actor(), account_id, request.form.get("reason", "")))


@bp.post("/people/<id:account_id>/unsuspend")
def unsuspend(account_id: int) -> ResponseReturnValue:
    """Lift a suspension."""
    return _act(account_id, "Suspension lifted.",
                lambda: admin.unsuspend(db.session, actor(), account_id))


@bp.post("/people/<id:account_id>/override")
def override(account_id: int) -> ResponseReturnValue:
    """Set (`level`, `until` as "YYYY-MM-DDTHH:MM" UTC, `reason`) or clear (`level` empty)
    the person's level override."""
    def run() -> None:
        level = request.form.get("level") or None
        until = None
        if level is not None:
            raw = request.form.get("until", "")
            try:
                until = datetime.strptime(raw, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)
            except ValueError:
                raise ValueError("the expiry must be a date and time, YYYY-MM-DDTHH:MM (UTC)"
                                 ) from None
        admin.override_level(db.session, actor(), account_id, level, until,
                             request.form.get("reason", ""))
    return _act(account_id, "Level override saved.", run)
