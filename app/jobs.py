"""RQ jobs, run by `flask --app wsgi worker` inside the app context.

`answer_job` answers one priced message whose hold the webhook placed:

1. Under the person's lock (Redis), read the pending answer and commit: no transaction stays
   open while the LLM thinks.
2. Run the skill (LLM or offline), then in one transaction capture or void the hold, record
   the LLM cost and store the replies as `pending` outbound rows.
3. Send each pending reply through the Twilio REST API (`bot.outbound`), committing the row
   before and the result after each call.

An RQ retry or a duplicate job resumes where the last one stopped: `settle` answers only a
message still marked "queued" (checked under the account's lock), and only `pending` reply rows
are sent; a row whose send may have reached Twilio is never sent again.

`answer_inline` is the same answer given by the web process itself, as TwiML: when an LLM is
configured but no queue (so the webhook's transaction is not held open while it answers), and
when Redis cannot be reached.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from flask import Flask, current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.extensions import db
from app.queue import JOB_TIMEOUT_SECONDS, redis_connection
from bot import outbound, router
from bot.channels.twilio import TwilioRestSender
from bot.models import Contact, Message
from bot.router import BotSettings
from tokens.base import utcnow

log = logging.getLogger(__name__)
# How long a job waits for another job of the same person before RQ retries it later.
LOCK_WAIT_SECONDS = 30


class AccountBusy(RuntimeError):
    """Another job holds the person's lock for longer than `LOCK_WAIT_SECONDS`; RQ retries."""


def answer_job(message_sid: str) -> str:
    """Answer the priced message `message_sid` and send the reply; returns what happened
    ("answered", "failed", "resent", "nothing to do").

    Raises:
        AccountBusy: the person's lock stayed taken (RQ retries the job).
    """
    with _job_session() as (app, session):
        return _answer(app, session, message_sid)


def answer_inline(app: Flask, message_sid: str) -> router.Outcome:
    """Answer a "queued" message in this process and return the replies for TwiML.

    The skill runs between two transactions (none open while an LLM answers); the caller has
    committed the message and its hold.
    """
    settings: BotSettings = app.extensions["bot_settings"]
    session = db.session
    pending = router.pending_answer(session, message_sid, settings)
    session.commit()
    if pending is None:
        return router.Outcome(kind="duplicate")
    result = router.run_skill(settings, pending)
    router.record_llm_cost(session, pending, result, settings)
    session.commit()
    outcome = router.settle(session, pending, result, settings, transport="twiml",
                            now=utcnow())
    session.commit()
    return outcome


def _answer(app: Flask, session: Session, message_sid: str) -> str:
    settings: BotSettings = app.extensions["bot_settings"]
    row = session.execute(
        select(Message.id, Contact.account_id)
        .join(Contact, Contact.id == Message.contact_id)
        .where(Message.message_sid == message_sid)
    ).first()
    session.commit()
    if row is None:
        log.warning("answer job for an unknown message", extra={"message_sid": message_sid})
        return "nothing to do"
    inbound_id, account_id = row
    with account_lock(app, account_id):
        pending = router.pending_answer(session, message_sid, settings)
        session.commit()
        kind = "resent"
        if pending is not None:
            result = router.run_skill(settings, pending)
            router.record_llm_cost(session, pending, result, settings)
            session.commit()
            outcome = router.settle(session, pending, result, settings, transport="rest",
                                    now=utcnow())
            session.commit()
            kind = outcome.kind
            log.info("answer settled", extra={"message_sid": message_sid, "outcome": kind,
                                              "tokens": outcome.tokens_charged})
        sent = deliver(app, session, inbound_id)
    return kind if sent or kind != "resent" else "nothing to do"


def deliver_messages(message_ids: list[int]) -> int:
    """Send stored `pending` messages (notices) by id; returns how many sends were tried."""
    with _job_session() as (app, session):
        return send_pending(app, session, message_ids)


def deliver(app: Flask, session: Session, inbound_id: int) -> int:
    """Send the `pending` replies to one inbound message; returns how many were tried."""
    return send_pending(app, session, outbound.pending_outbound(session, inbound_id))


def send_pending(app: Flask, session: Session, message_ids: list[int]) -> int:
    """Send each of `message_ids` that is still `pending`, in order; returns sends tried."""
    settings: BotSettings = app.extensions["bot_settings"]
    options: outbound.OutboundSettings = app.extensions["outbound"]
    sender = twilio_sender(app)
    tried = 0
    for message_id in message_ids:
        plan = outbound.plan_send(session, message_id, options, settings.catalog)
        session.commit()  # the row (and any skip) is stored before the provider is called
        while plan is not None:
            tried += 1
            result = outbound.attempt_send(sender, plan, options)
            plan = outbound.record_send(session, plan, result, options, settings.catalog)
            session.commit()
    return tried


def twilio_sender(app: Flask) -> outbound.Sender:
    """The app's REST sender (one client, reused), or the one a test put in its place."""
    sender: outbound.Sender | None = app.extensions.get("sender")
    if sender is None:
        config = app.config
        sender = TwilioRestSender(
            config["TWILIO_ACCOUNT_SID"] or "",
            config["TWILIO_AUTH_TOKEN"],
            sms_from=config["TWILIO_SMS_FROM"],
            whatsapp_from=config["TWILIO_WHATSAPP_FROM"],
            messaging_service_sid=config["TWILIO_MESSAGING_SERVICE_SID"],
            api_base=config["TWILIO_API_BASE"],
            timeout_seconds=config["TWILIO_TIMEOUT_SECONDS"],
        )
        app.extensions["sender"] = sender
    return sender


@contextmanager
def _job_session() -> Iterator[tuple[Flask, Any]]:
    """The app and its session for one job; the session is removed afterwards, which rolls
    back whatever a failing job left uncommitted."""
    from rq import get_current_job

    from app.logs import bind_job_id

    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    job = get_current_job()
    bind_job_id(job.id if job is not None else None)
    try:
        yield app, db.session
    finally:
        db.session.remove()


@contextmanager
def account_lock(app: Flask, account_id: int) -> Iterator[Any]:
    """One job at a time per person (messaging.md, "Per-person order"): a Redis lock that
    expires on its own if a worker dies while holding it.

    Without Redis the database row lock of each transaction serialises.

    Raises:
        AccountBusy: not acquired within `LOCK_WAIT_SECONDS`.
    """
    connection = redis_connection(app)
    if connection is None:
        yield None
        return
    lock = connection.lock(f"bot:lock:account:{account_id}", timeout=JOB_TIMEOUT_SECONDS + 60,
                           blocking_timeout=LOCK_WAIT_SECONDS)
    if not lock.acquire():
        raise AccountBusy(f"account {account_id} is busy with another job")
    try:
        yield lock
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            # It expired while the job ran (far past the job timeout); nothing to release.
            log.warning("account lock expired before release", extra={"account": account_id})
