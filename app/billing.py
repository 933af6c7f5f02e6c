"""The web layer's side of payments: the provider, applying events, telling people.

`apply_event` is shared by the Stripe webhook and the sandbox's Pay button, so both run the
same fulfilment (`tokens.payment_events`). Notices are worded here (`bot.replies`), stored as
pending messages in the event's transaction, and sent after the commit: by a job when Redis is
configured, else right away through the REST API when Twilio is configured. Without Twilio
credentials nothing can be sent, and the pages themselves say what happened.
"""

from __future__ import annotations

import logging
from datetime import datetime

import redis
from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.extensions import bot_settings, db
from app.queue import enqueue_delivery
from bot import replies
from bot.models import Contact
from bot.notify import queue_notice
from tokens import auto_topup, levels, payments
from tokens.base import utcnow
from tokens.payment_events import (
    EventContext,
    EventResult,
    Notice,
    prefetch,
    receive_event,
    record_failure,
    resolve_failure,
)
from tokens.providers import PaymentProvider

log = logging.getLogger(__name__)


def payment_provider(app: Flask) -> PaymentProvider | None:
    """The configured provider: Stripe, the sandbox (development), or None (payments off)."""
    provider: PaymentProvider | None = app.extensions.get("payment_provider")
    return provider


def can_send(app: Flask) -> bool:
    """Whether messages can be sent through the Twilio REST API (credentials and a sender)."""
    config = app.config
    return bool(config["TWILIO_ACCOUNT_SID"] and (
        config["TWILIO_SMS_FROM"] or config["TWILIO_WHATSAPP_FROM"]
        or config["TWILIO_MESSAGING_SERVICE_SID"]))


def apply_event(app: Flask, provider: PaymentProvider, event: dict[str, object]
                ) -> EventResult | None:
    """Keep and apply one provider event, tell the people it concerns, and commit.

    Returns None for an event received before (nothing changes). A handler's exception rolls
    the transaction back and propagates, and so does `PaymentError` from fetching what the
    event names: the webhook answers 500 and the provider delivers the event again.
    """
    settings = bot_settings(app)
    session = db.session
    now = utcnow()
    try:
        # What the handler needs from the provider, fetched before the transaction: no lock
        # is held while the provider answers. A failure here is a 500, and the event comes
        # again.
        fetched = prefetch(event, provider)
        ctx = EventContext(catalog=settings.catalog, provider=provider.name, now=now,
                           fetched=fetched)
        result = receive_event(session, provider.name, event, ctx)
        ids = queue_notices(app, session, result.notices, now) if result else []
        resolve_failure(session, str(event.get("id", "")), now)
        session.commit()
    except Exception as exc:
        session.rollback()
        _keep_failure(provider, event, exc, now)
        raise
    except BaseException:
        session.rollback()
        raise
    deliver_notices(app, ids)
    return result


def _keep_failure(provider: PaymentProvider, event: dict[str, object], error: Exception,
                  now: datetime) -> None:
    """Note the failed event for the admin inbox, in its own transaction. If even that fails
    (the database is down), the provider's retry is what is left, so the error is logged and
    the original one propagates."""
    session = db.session
    try:
        record_failure(session, provider.name, event, error, now)
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        log.error("could not note a failed payment event",
                  extra={"error": type(exc).__name__})


# Notices that follow money in: the payment covers what they cost, so they are outside the
# daily budget of free replies (`tokens.levels.monthly_loss_ceiling_musd`).
PAID_NOTICES = frozenset({"pack_credited", "premium_started", "auto_topup_on",
                          "auto_topup_credited"})


def queue_notices(app: Flask, session: Session, notices: tuple[Notice, ...],
                  now: datetime | None = None) -> list[int]:
    """Word each notice and store it as pending messages; none when nothing can be sent.
    Notices other than `PAID_NOTICES` draw on the person's daily budget of free replies
    (`levels.take_free_reply`) and are dropped once it is spent. The caller holds the
    account's lock (the payment event's handler took it)."""
    if not can_send(app) or not notices:
        return []
    settings = bot_settings(app)
    moment = now or utcnow()
    ids: list[int] = []
    for notice in notices:
        if notice.kind not in PAID_NOTICES and not levels.take_free_reply(
                session, notice.account_id, settings.catalog, moment):
            log.info("notice dropped: the day's free replies are spent",
                     extra={"kind": notice.kind})
            continue
        text = notice_text(app, session, notice)
        if text:
            ids.extend(queue_notice(session, notice.account_id, text))
    return ids


def notice_text(app: Flask, session: Session, notice: Notice) -> str | None:
    """What a notice says to the person, in their language (`notice_language`)."""
    settings = bot_settings(app)
    plan = settings.catalog.premium
    params = notice.params
    lang = notice_language(session, notice.account_id)
    if notice.kind == "pack_credited":
        return replies.pack_credited_text(int(params["tokens"]), int(params["available"]),
                                          lang)
    if notice.kind == "payment_failed":
        return replies.payment_failed_text(lang)
    if notice.kind == "auto_topup_on":
        return replies.auto_topup_on_text(settings.catalog, settings.catalog.auto_topup_pack(),
                                          lang)
    if notice.kind == "auto_topup_credited":
        return replies.auto_topup_credited_text(int(params["tokens"]),
                                                int(params["available"]), lang)
    if notice.kind == "auto_topup_failed":
        pack_code = str(params.get("pack") or settings.catalog.auto_topup_pack().code)
        link = payments.issue_pay_link(session, notice.account_id, pack_code,
                                       purpose="auto_topup",
                                       ttl_seconds=settings.catalog.pay_link_ttl_seconds)
        return replies.auto_topup_failed_text(settings.pay_url(link.token), lang)
    if notice.kind == "premium_started":
        return replies.premium_started_text(plan, lang)
    if notice.kind == "premium_ended":
        return replies.premium_ended_text(plan, lang)
    if notice.kind in ("invoice_failed", "past_due", "grace_ended", "premium_ending"):
        link = payments.issue_pay_link(session, notice.account_id, "", purpose="portal",
                                       ttl_seconds=settings.catalog.pay_link_ttl_seconds)
        url = settings.pay_url(link.token)
        if notice.kind == "past_due" and isinstance(params.get("grace_ends_at"), datetime):
            return replies.past_due_text(plan, params["grace_ends_at"], url, lang)
        if notice.kind == "grace_ended":
            return replies.grace_ended_text(plan, url, lang)
        if notice.kind == "premium_ending" and isinstance(params.get("ends_at"), datetime):
            return replies.premium_ending_text(plan, params["ends_at"], url, lang)
        return replies.billing_problem_text(url, lang)
    log.warning("no wording for notice %s", notice.kind)
    return None


def run_top_up(app: Flask, session: Session, due: auto_topup.TopUpDue) -> None:
    """Charge an auto top-up recorded by a settlement (`tokens.alerts.after_debit`), with no
    transaction open, then apply what the provider said and tell the person
    (`BotSettings.top_up`, called by `bot.router.pipeline.answer_message` after its commit).

    A transient failure leaves the attempt open: the next debit under the threshold asks
    `auto_topup.due` again and gets the same idempotency key, so nothing is charged twice.
    """
    provider = payment_provider(app)
    if provider is None:
        return
    settings = bot_settings(app)
    result = auto_topup.charge(provider, due)
    now = utcnow()
    try:
        settled = auto_topup.settle(session, due, result, settings.catalog, now)
        ids = queue_notices(app, session, settled.notices, now)
        session.commit()
    except Exception:
        session.rollback()
        raise
    log.info("auto top-up", extra={"outcome": settled.kind})
    deliver_notices(app, ids)


def notice_language(session: Session, account_id: int) -> str:
    """The language of the person a notice goes to: that of the contact that last wrote
    (the one `bot.notify.queue_notice` sends to), English when not known."""
    language = session.scalar(
        select(Contact.language).where(Contact.account_id == account_id)
        .order_by(Contact.last_inbound_at.desc().nulls_last(), Contact.id.desc()).limit(1))
    return replies.language(language)


def deliver_notices(app: Flask, ids: list[int]) -> None:
    """Send stored notices: by a job with Redis, else now through the REST API."""
    if not ids:
        return
    from app.jobs import deliver_messages

    try:
        if enqueue_delivery(app, ids):
            return
    except redis.RedisError as exc:
        log.error("enqueue failed, sending now", extra={"error": type(exc).__name__})
    deliver_messages(ids)
