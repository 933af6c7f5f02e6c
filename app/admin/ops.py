"""Operations pages (issue #7): payments, affiliates, the webhook inbox and queue health.

- `GET /admin/payments`: the month's completed checkouts (count and amount per currency),
  every checkout newest first (50 a page), and the subscriptions.
- `GET /admin/affiliates`: per partner and per network, the month's offer links, clicks
  (one per person, link and hour) and openings, conversions by state (pending, approved,
  reversed) and the commission booked as revenue in the month; the pending commission; the
  latest clicks and conversions.
- `GET /admin/webhooks`: payment events whose handling failed (unresolved first, each with a
  Reprocess button) and the latest events received. Payloads are never shown: they hold
  customers' emails.
- `GET /admin/queues`: per RQ queue, the jobs queued, started, failed, scheduled, deferred and
  finished, the workers listening, and the latest failed jobs (with a Requeue button). Job
  arguments are never shown.

Both POSTs (reprocess, requeue) are CSRF-checked by the blueprint, write an `AdminAction`, and
answer 303 back to their page with a flashed message. Money is integer cents or µUSD shown
through `Decimal`; times are UTC, "%Y-%m-%d %H:%M".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from flask import (
    Flask,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from rq import Queue, Worker
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from app.admin.web import actor, bp
from app.billing import apply_event, payment_provider
from app.extensions import bot_settings, db
from app.queue import QUEUE_NAME, redis_connection
from tokens import admin
from tokens.affiliates import Click, Conversion, OfferLink
from tokens.base import utcnow
from tokens.money import format_cents, format_usd
from tokens.payment_events import resolve_failure
from tokens.payments import Checkout, FailedEvent, PaymentEvent, Subscription
from tokens.periods import Month

log = logging.getLogger(__name__)
# Rows per page of the checkouts table.
PAGE_SIZE = 50
# Rows in each "latest ..." table.
LATEST_ROWS = 50
# Failed events shown (unresolved ones, and separately the latest resolved ones).
FAILED_EVENT_ROWS = 100
# Failed jobs listed per queue.
FAILED_JOB_ROWS = 20
# The RQ queues the app uses: answers and notice deliveries both go to `app.queue.QUEUE_NAME`.
QUEUE_NAMES = (QUEUE_NAME,)
NO_REDIS = "No Redis configured: answers run inline in the web process."


# --- formatting ---------------------------------------------------------------------------


def when(moment: datetime | None) -> str:
    """A UTC time as "%Y-%m-%d %H:%M", or "-" for None."""
    if moment is None:
        return "-"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M}"


def money(cents: int, currency: str = "usd") -> str:
    """Integer minor units as a person reads them: 1234 usd -> "$12.34" (see
    `tokens.money.format_cents`; other currencies "12.34 EUR"). A negative amount gets a
    leading "-"."""
    return format_cents(int(cents), currency.lower())


def usd_musd(musd: int) -> str:
    """µUSD as dollars: two decimals when it is whole cents ("$1.25"), else six
    ("$0.012345"). Integer arithmetic and `Decimal` only."""
    return format_usd(int(musd))


def last_line(text: str | None) -> str:
    """The last non-blank line of a traceback (the exception's type and message), or ""."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


HELPERS: dict[str, Callable[..., str]] = {"when": when, "money": money, "usd": usd_musd}


# --- the month ----------------------------------------------------------------------------

MONTH_YEARS = range(2000, 9999)
"""The years a page's `?month=` may name (2000-01 to 9998-12)."""


def _requested_month() -> Month | None:
    """`?month=YYYY-MM` (spaces around it ignored), the current UTC month when it is absent
    or empty; None when it is not a month of `MONTH_YEARS`."""
    value = request.args.get("month")
    if not value:
        return Month.of(utcnow())
    try:
        return Month.parse(value.strip(), years=MONTH_YEARS)
    except ValueError:
        return None


def _bad_month() -> ResponseReturnValue:
    return render_template("admin/error.html", title="Bad month",
                           message="The month must be given as YYYY-MM, e.g. 2026-11."), 400


def _session() -> Session:
    """This request's session (the object behind the `db.session` proxy)."""
    session: Session = db.session()
    return session


def _app() -> Flask:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


# --- payments -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CurrencyTotal:
    """Completed checkouts of one currency in a month: count, amount and refunds (cents)."""

    currency: str
    count: int
    amount_cents: int
    refunded_cents: int


def completed_totals(session: Session, month: Month) -> list[CurrencyTotal]:
    """Checkouts completed in `month` (by `completed_at`), per currency, most paid first.

    Subscription checkouts count with their first payment; later invoices are not checkouts.
    """
    rows = session.execute(
        select(Checkout.currency, func.count(), func.sum(Checkout.amount_cents),
               func.sum(Checkout.refunded_cents))
        .where(Checkout.status == "completed", Checkout.completed_at >= month.start,
               Checkout.completed_at < month.end)
        .group_by(Checkout.currency)
    ).all()
    totals = [CurrencyTotal(str(currency), int(count), int(amount or 0), int(refunded or 0))
              for currency, count, amount, refunded in rows]
    return sorted(totals, key=lambda t: (-t.amount_cents, t.currency))


def _count_by(session: Session, column: Any, *where: Any) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).where(*where).group_by(column)).all()
    return {str(key): int(count) for key, count in rows}


@bp.get("/payments")
def payments() -> ResponseReturnValue:
    """Payments: the month's completed checkouts (`?month=YYYY-MM`, default the current UTC
    month), checkouts newest first (`?page=N`, 50 a page) and the latest subscriptions.

    A malformed month is a 400 page; a page past the end shows the last page.
    """
    month = _requested_month()
    if month is None:
        return _bad_month()
    session = _session()
    total_rows = int(session.scalar(select(func.count()).select_from(Checkout)) or 0)
    pages = max(1, -(-total_rows // PAGE_SIZE))
    page = min(max(1, request.args.get("page", 1, type=int) or 1), pages)
    checkouts = session.scalars(
        select(Checkout).order_by(Checkout.id.desc())
        .offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE)
    ).all()
    totals = completed_totals(session, month)
    opened = _count_by(session, Checkout.status, Checkout.created_at >= month.start,
                       Checkout.created_at < month.end)
    subscriptions = session.scalars(
        select(Subscription).order_by(Subscription.updated_at.desc(), Subscription.id.desc())
        .limit(LATEST_ROWS)
    ).all()
    subscription_counts = _count_by(session, Subscription.status)
    return render_template(
        "admin/payments.html", month=month, totals=totals,
        completed_count=sum(t.count for t in totals), opened=opened,
        checkouts=checkouts, page=page, pages=pages, total_rows=total_rows,
        subscriptions=subscriptions, subscription_counts=subscription_counts, **HELPERS)


# --- affiliates ---------------------------------------------------------------------------


@dataclass
class PartnerMonth:
    """One partner's month.

    Attributes:
        links: offer links issued in the month.
        clicks: clicks in the month (one per person, link and clock hour); `opens` the
            openings they counted.
        conversions, sale_cents: attributed conversions reported in the month and their sales
            (cents); `pending`, `reversed` how many of them are in that state now.
        commission_musd: commission booked as revenue in the month, µUSD: approvals in the
            month less reversals in the month of approved conversions (whenever reported).
    """

    code: str
    name: str
    links: int = 0
    clicks: int = 0
    conversions: int = 0
    sale_cents: int = 0
    commission_musd: int = 0
    opens: int = 0
    pending: int = 0
    reversed: int = 0


@dataclass
class NetworkMonth:
    """One network's month: conversions reported in it, attributed and not, their sales
    (cents), the commission (µUSD) of the unattributed ones (no revenue), and how many of them
    are pending, approved and reversed now; `commission_musd` is the revenue booked in the
    month (approvals less reversals of approved conversions, by their time, µUSD)."""

    network: str
    attributed: int = 0
    unattributed: int = 0
    sale_cents: int = 0
    commission_musd: int = 0
    unattributed_commission_musd: int = 0
    pending: int = 0
    approved: int = 0
    reversed: int = 0


def booked_in_month(session: Session, month: Month, by: Any) -> dict[str, int]:
    """Affiliate revenue booked in `month` per value of the `Conversion` column `by`, µUSD:
    commissions of conversions approved in the month, less those of approved conversions
    reversed in it (what `tokens.affiliates.record_conversion` booked; the same sums as the
    revenue entries of kind "affiliate")."""
    totals: dict[str, int] = {}
    for when, sign in ((Conversion.approved_at, 1), (Conversion.reversed_at, -1)):
        for key, amount in session.execute(
                select(by, func.sum(Conversion.booked_musd))
                .where(Conversion.account_id.is_not(None), Conversion.booked_musd > 0,
                       when >= month.start, when < month.end)
                .group_by(by)).all():
            totals[str(key)] = totals.get(str(key), 0) + sign * int(amount or 0)
    return totals


def partner_months(session: Session, month: Month, names: dict[str, str]) -> list[PartnerMonth]:
    """Per partner code, the month's links, clicks and attributed conversions; partners of the
    catalog (`names`: code -> name) first, in its order, then codes no longer in it."""
    rows: dict[str, PartnerMonth] = {code: PartnerMonth(code, name)
                                     for code, name in names.items()}

    def row(code: str) -> PartnerMonth:
        return rows.setdefault(code, PartnerMonth(code, code))

    for code, count in session.execute(
            select(OfferLink.partner_code, func.count())
            .where(OfferLink.created_at >= month.start, OfferLink.created_at < month.end)
            .group_by(OfferLink.partner_code)).all():
        row(str(code)).links = int(count)
    for code, count, opens in session.execute(
            select(Click.partner_code, func.count(), func.sum(Click.opens))
            .where(Click.created_at >= month.start, Click.created_at < month.end)
            .group_by(Click.partner_code)).all():
        target = row(str(code))
        target.clicks, target.opens = int(count), int(opens or 0)
    for code, status, count, sale in session.execute(
            select(Conversion.partner_code, Conversion.status, func.count(),
                   func.sum(Conversion.sale_amount_cents))
            .where(Conversion.partner_code.is_not(None),
                   Conversion.created_at >= month.start, Conversion.created_at < month.end)
            .group_by(Conversion.partner_code, Conversion.status)).all():
        target = row(str(code))
        target.conversions += int(count)
        target.sale_cents += int(sale or 0)
        if status == "pending":
            target.pending += int(count)
        elif status == "reversed":
            target.reversed += int(count)
    for code, amount in booked_in_month(session, month, Conversion.partner_code).items():
        row(code).commission_musd = amount
    return list(rows.values())


def network_months(session: Session, month: Month) -> list[NetworkMonth]:
    """Per network, the month's conversions (by `created_at`) and revenue booked (by the
    approval's and reversal's time), by name."""
    rows: dict[str, NetworkMonth] = {}
    for network, attributed, status, count, sale, commission in session.execute(
            select(Conversion.network, Conversion.account_id.is_not(None), Conversion.status,
                   func.count(), func.sum(Conversion.sale_amount_cents),
                   func.sum(Conversion.commission_musd))
            .where(Conversion.created_at >= month.start, Conversion.created_at < month.end)
            .group_by(Conversion.network, Conversion.account_id.is_not(None),
                      Conversion.status)).all():
        target = rows.setdefault(str(network), NetworkMonth(str(network)))
        target.sale_cents += int(sale or 0)
        if status == "pending":
            target.pending += int(count)
        elif status == "approved":
            target.approved += int(count)
        else:
            target.reversed += int(count)
        if attributed:
            target.attributed += int(count)
        else:
            target.unattributed += int(count)
            target.unattributed_commission_musd += int(commission or 0)
    for network, amount in booked_in_month(session, month, Conversion.network).items():
        rows.setdefault(network, NetworkMonth(network)).commission_musd = amount
    return [rows[name] for name in sorted(rows)]


@bp.get("/affiliates")
def affiliates() -> ResponseReturnValue:
    """Affiliates: per partner and per network the month's offer links, clicks (one per
    person, link and hour, with their openings), conversions by state, and the commission
    booked as revenue in the month (`?month=YYYY-MM`, default the current UTC month); the
    pending commission awaiting approval (all months); the latest clicks and conversions. A
    malformed month is a 400 page."""
    month = _requested_month()
    if month is None:
        return _bad_month()
    session = _session()
    settings = bot_settings(_app())
    names = {p.code: p.name for p in settings.catalog.affiliates.partners}
    partners = partner_months(session, month, names)
    networks = network_months(session, month)
    clicks = session.scalars(select(Click).order_by(Click.id.desc()).limit(LATEST_ROWS)).all()
    conversions = session.scalars(
        select(Conversion).order_by(Conversion.id.desc()).limit(LATEST_ROWS)).all()
    pending_count, pending_musd = session.execute(
        select(func.count(), func.coalesce(func.sum(Conversion.commission_musd), 0))
        .where(Conversion.status == "pending", Conversion.account_id.is_not(None))).one()
    totals = PartnerMonth("", "All partners",
                          links=sum(p.links for p in partners),
                          clicks=sum(p.clicks for p in partners),
                          conversions=sum(p.conversions for p in partners),
                          sale_cents=sum(p.sale_cents for p in partners),
                          commission_musd=sum(p.commission_musd for p in partners),
                          opens=sum(p.opens for p in partners),
                          pending=sum(p.pending for p in partners),
                          reversed=sum(p.reversed for p in partners))
    return render_template(
        "admin/affiliates.html", month=month, partners=partners, networks=networks,
        totals=totals, unattributed=sum(n.unattributed for n in networks),
        pending_count=int(pending_count), pending_musd=int(pending_musd),
        clicks=clicks, conversions=conversions, names=names, **HELPERS)


# --- the webhook inbox --------------------------------------------------------------------


@bp.get("/webhooks")
def webhooks() -> ResponseReturnValue:
    """The webhook inbox: failed payment events (unresolved ones, each with a Reprocess form,
    then the latest resolved ones) and the latest events received, without their payloads."""
    session = _session()
    unresolved = session.scalars(
        select(FailedEvent).options(defer(FailedEvent.payload))
        .where(FailedEvent.resolved_at.is_(None))
        .order_by(FailedEvent.last_failed_at.desc(), FailedEvent.id.desc())
        .limit(FAILED_EVENT_ROWS)
    ).all()
    resolved = session.scalars(
        select(FailedEvent).options(defer(FailedEvent.payload))
        .where(FailedEvent.resolved_at.is_not(None))
        .order_by(FailedEvent.resolved_at.desc(), FailedEvent.id.desc())
        .limit(FAILED_EVENT_ROWS)
    ).all()
    unresolved_count = int(session.scalar(select(func.count()).select_from(FailedEvent).where(
        FailedEvent.resolved_at.is_(None))) or 0)
    events = session.scalars(
        select(PaymentEvent).options(defer(PaymentEvent.payload))
        .order_by(PaymentEvent.id.desc()).limit(LATEST_ROWS)
    ).all()
    flagged_count = int(session.scalar(select(func.count()).select_from(PaymentEvent).where(
        PaymentEvent.outcome.like("flagged%"))) or 0)
    return render_template(
        "admin/webhooks.html", unresolved=unresolved, resolved=resolved,
        unresolved_count=unresolved_count, events=events, flagged_count=flagged_count,
        **HELPERS)


def _to_inbox() -> ResponseReturnValue:
    return redirect(url_for("admin.webhooks"), code=303)


@bp.post("/webhooks/<id:failed_id>/reprocess")
def reprocess(failed_id: int) -> ResponseReturnValue:
    """Apply a failed payment event again through `app.billing.apply_event`.

    404 for an unknown id. An event already resolved, one from another provider than the
    configured one (or with payments off), or one whose handling fails again changes nothing
    but the failure's count and error (`apply_event` records them); each is flashed as an
    error. On success (or when the event was applied meanwhile: a duplicate) the failure is
    marked resolved and an `AdminAction` "reprocess" is recorded. Always a 303 to the inbox.
    """
    row = db.session.get(FailedEvent, failed_id)
    if row is None:
        abort(404)
    if row.resolved_at is not None:
        flash(f"{row.type} {row.event_id} was already handled.")
        return _to_inbox()
    # Plain values: applying an event may send notices, which ends this session's objects.
    kind, event_id, source, payload = row.type, row.event_id, row.provider, row.payload
    app = _app()
    provider = payment_provider(app)
    if provider is None or provider.name != source:
        configured = provider.name if provider is not None else "none (payments are off)"
        flash(f"{kind} {event_id} came from {source}; the configured provider is "
              f"{configured}. Nothing was done.", "error")
        return _to_inbox()
    try:
        event = json.loads(payload)
    except ValueError as exc:
        flash(f"{kind} {event_id}: the stored event is not JSON ({exc}).", "error")
        return _to_inbox()
    if not isinstance(event, dict):
        flash(f"{kind} {event_id}: the stored event is not a JSON object.", "error")
        return _to_inbox()
    # End this request's read transaction first: on SQLite it holds the write lock
    # (BEGIN IMMEDIATE), and apply_event calls the provider before it writes anything.
    db.session.commit()
    try:
        result = apply_event(app, provider, event)
    except Exception as exc:
        log.warning("reprocessing a payment event failed",
                    extra={"event": event_id, "error": type(exc).__name__})
        flash(f"{kind} {event_id} failed again: {type(exc).__name__}: {exc}", "error")
        return _to_inbox()
    session = _session()
    if result is None:
        resolve_failure(session, event_id, utcnow())
    outcome = result.outcome if result is not None else "duplicate"
    admin.record(session, actor(), "reprocess", f"{kind} {event_id}: {outcome}")
    session.commit()
    flash(f"Reprocessed {kind} {event_id}: {outcome}.")
    return _to_inbox()


# --- queues -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedJob:
    """A job in a queue's failed registry, as the page shows it: no arguments, and only the
    last line of the traceback."""

    id: str
    func_name: str
    ended_at: datetime | None
    error: str


@dataclass(frozen=True)
class QueueHealth:
    """One RQ queue's counts (jobs) and its latest failed jobs."""

    name: str
    queued: int
    started: int
    failed: int
    scheduled: int
    deferred: int
    finished: int
    workers: int
    failed_jobs: list[FailedJob] = field(default_factory=list)


def failed_job(job: Job) -> FailedJob:
    """What the page shows of a failed job: id, function name, end time, last error line."""
    try:
        func_name = job.func_name or "?"
    except (DeserializationError, ValueError, AttributeError, ImportError):
        func_name = "(unreadable)"
    result = job.latest_result()
    error = last_line(result.exc_string if result is not None else None)
    ended_at = job.ended_at.replace(tzinfo=UTC) if job.ended_at and \
        job.ended_at.tzinfo is None else job.ended_at
    return FailedJob(job.id, func_name, ended_at, error)


def queue_health(connection: redis.Redis, name: str, failed_rows: int = FAILED_JOB_ROWS
                 ) -> QueueHealth:
    """Counts of the queue `name` and up to `failed_rows` of its failed jobs, the latest first.

    Raises:
        redis.RedisError: Redis cannot be reached.
    """
    queue = Queue(name, connection=connection)
    failed_ids = queue.failed_job_registry.get_job_ids(0, failed_rows - 1, desc=True)
    jobs = [job for job in Job.fetch_many(failed_ids, connection=connection) if job is not None]
    return QueueHealth(
        name=name,
        queued=len(queue),
        started=queue.started_job_registry.count,
        failed=queue.failed_job_registry.count,
        scheduled=queue.scheduled_job_registry.count,
        deferred=queue.deferred_job_registry.count,
        finished=queue.finished_job_registry.count,
        workers=Worker.count(connection=connection, queue=queue),
        failed_jobs=[failed_job(job) for job in jobs],
    )


@bp.get("/queues")
def queues() -> ResponseReturnValue:
    """Queue health: per queue of `QUEUE_NAMES`, its counts, workers and latest failed jobs.
    Without `REDIS_URL` it says so; with Redis down it names the error (200, not 500)."""
    connection = redis_connection(_app())
    health: list[QueueHealth] = []
    error = None
    if connection is not None:
        try:
            health = [queue_health(connection, name) for name in QUEUE_NAMES]
        except redis.RedisError as exc:
            error = type(exc).__name__
            log.warning("queue health: Redis cannot be reached", extra={"error": error})
    return render_template("admin/queues.html", configured=connection is not None,
                           no_redis=NO_REDIS, health=health, error=error, **HELPERS)


@bp.post("/queues/<queue_name>/failed/<job_id>/requeue")
def requeue(queue_name: str, job_id: str) -> ResponseReturnValue:
    """Put a failed job back on its queue (`FailedJobRegistry.requeue`) and record an
    `AdminAction` "requeue". 404 for a queue the app does not use; no Redis, Redis down, or a
    job that is not in the failed registry is flashed as an error. Always a 303 to the page."""
    if queue_name not in QUEUE_NAMES:
        abort(404)
    back = redirect(url_for("admin.queues"), code=303)
    connection = redis_connection(_app())
    if connection is None:
        flash(NO_REDIS, "error")
        return back
    try:
        Queue(queue_name, connection=connection).failed_job_registry.requeue(job_id)
    except (NoSuchJobError, InvalidJobOperation):
        flash(f"No failed job {job_id} in the {queue_name} queue.", "error")
        return back
    except redis.RedisError as exc:
        flash(f"Redis cannot be reached ({type(exc).__name__}); nothing was requeued.",
              "error")
        return back
    admin.record(_session(), actor(), "requeue", f"{queue_name} {job_id}")
    _session().commit()
    flash(f"Requeued {job_id} on the {queue_name} queue.")
    return back
