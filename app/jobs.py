"""RQ jobs, run by `flask --app wsgi worker` inside the app context.

`answer_job` answers the person behind one inbound message (docs/pipeline.md):

1. It knocks on the person's turn (`app.turns`). If another job holds it, that job will
   answer this message too, and this one ends.
2. Holding the turn, it answers the person's inbox oldest first (`router.drain_person`):
   each message is routed, its skill run with no transaction open, its hold captured or
   voided, and its replies sent through the Twilio REST API (`bot.outbound`, committing the
   row before and the result after each call) before the next message is read.
3. It settles and sends what repeat deliveries asked for (`router.resume_answer`: a message
   whose answer an earlier attempt left unsettled, replies stored but never accepted), then
   gives the turn back, or goes round again if someone knocked meanwhile.

An RQ retry or a duplicate job resumes where the last one stopped: `settle` answers only a
message still marked "queued" (checked under the account's lock), and only `pending` reply rows
are sent; a row whose send may have reached Twilio is never sent again.

`answer_inline` is the same answer given by the web process itself, as TwiML, when Redis
cannot be reached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from flask import Flask, current_app
from sqlalchemy import String, bindparam, or_, select
from sqlalchemy.orm import Session, aliased

from app import metrics
from app.extensions import bot_settings, db, outbound_settings
from app.queue import JOB_TIMEOUT_SECONDS, enqueue_answer, redis_connection
from app.turns import PersonTurn
from bot import outbound, router
from bot.channels.twilio import TwilioRestSender
from bot.messages import InboundMessage
from bot.models import Contact, InboxMessage, Message, OutcomeKind
from bot.router.pipeline import INBOX_OF_SENDER_OF
from tokens.base import execute_core, one_statement_transaction

log = logging.getLogger(__name__)
# A job stops taking the next message of its person after this long and hands the rest to a
# new job, so it ends well within RQ's job timeout.
DRAIN_BUDGET_SECONDS = JOB_TIMEOUT_SECONDS / 2


def answer_job(message_sid: str) -> str:
    """Answer the person who sent `message_sid`, all their waiting messages in order; returns
    what happened: "answered N", "handed over" (another job holds the person's turn and
    will answer it) or "nothing to do".

    Raises:
        app.turns.TurnLost: the turn expired while held (RQ retries the job).
        sqlalchemy.exc.SQLAlchemyError: the database failed (RQ retries the job).
    """
    with _job_session() as (app, session):
        return _answer_person(app, session, message_sid)


def answer_inline(app: Flask, msg: InboundMessage, inbox_id: int | None = None
                  ) -> router.Outcome:
    """Answer `msg` in this process and return the outcome with the replies for TwiML (no
    queue, or Redis unreachable); the skill runs with no transaction open.

    Args:
        inbox_id: the inbox row `msg` was stored in, taken by this answer.
    """
    settings = bot_settings(app)
    return router.answer_message(db.session, msg, settings, transport="twiml",
                                 inbox_id=inbox_id)


_REPLY = aliased(Message)
_UNFINISHED_SENDER = (
    select(Contact.address).join(Message, Message.contact_id == Contact.id)
    .where(Message.message_sid == bindparam("sid", type_=String()),
           or_(Message.outcome == OutcomeKind.QUEUED,
               select(_REPLY.id)
               .where(_REPLY.in_reply_to_id == Message.id, _REPLY.status == "pending")
               .exists()))
)


def sender_of(session: Session, message_sid: str) -> str | None:
    """The person (`InboundMessage.sender`) who sent `message_sid`, when something is left to
    do for it: from the inbox while it waits there, else from the routed message's contact
    while its deferred answer is unsettled ("queued") or a reply to it is still `pending`.
    None when the message is unknown, or answered and its replies handed to the provider (the
    job of a message that an earlier job of the same person already answered)."""
    return _sender_and_rows(session, message_sid)[0]


def _sender_and_rows(session: Session, message_sid: str
                     ) -> tuple[str | None, list[tuple[int, str, datetime]] | None]:
    """`sender_of`, with the person's oldest inbox rows when `message_sid` waits there (read
    in the same statement, for `router.drain_person`'s first round); None for the rows when
    it does not."""
    one_statement_transaction(session)  # two reads at most, each its own snapshot anyway
    rows = execute_core(session, INBOX_OF_SENDER_OF, {"sid": message_sid}).all()
    if rows:
        session.commit()
        return rows[0].sender, [(r.id, r.payload, r.received_at) for r in rows]
    sender = session.scalar(_UNFINISHED_SENDER, {"sid": message_sid})
    session.commit()
    return sender, None


def _answer_person(app: Flask, session: Session, message_sid: str) -> str:
    settings = bot_settings(app)
    sender, first_rows = _sender_and_rows(session, message_sid)
    if sender is None:
        log.info("answer job with nothing left to do", extra={"message_sid": message_sid})
        return "nothing to do"
    connection = redis_connection(app)
    assert connection is not None, "jobs run only with Redis"
    turn = PersonTurn(connection, sender)
    if not turn.knock(message_sid):
        return "handed over"
    deadline = time.monotonic() + DRAIN_BUDGET_SECONDS

    def keep_going() -> bool:
        return time.monotonic() < deadline and turn.refresh()

    def send(db_session: Session, inbound_id: int) -> int:
        return deliver(app, db_session, inbound_id)

    answered: list[str] = []
    waiting: list[str] = []
    try:
        while True:
            waiting = turn.take_waiting()
            done = router.drain_person(session, sender, settings, deliver=send,
                                       keep_going=keep_going, answered_hook=_measured,
                                       first_rows=first_rows)
            first_rows = None
            answered.extend(done)
            for sid in set(waiting) - set(done):
                # repeat deliveries: settle or send what an earlier attempt left
                router.resume_answer(session, sid, settings, transport="rest", deliver=send)
            waiting = []
            if time.monotonic() >= deadline:
                _hand_over(app, session, sender, turn)
                break
            if turn.leave():
                break
    except BaseException:
        turn.give_up(waiting)
        raise
    return f"answered {len(answered)}"


def _measured(outcome: router.Outcome, seconds: float) -> None:
    metrics.answered(outcome.kind, seconds)


def _hand_over(app: Flask, session: Session, sender: str, turn: PersonTurn) -> None:
    """Out of time with messages left: give the turn back and enqueue a job for the oldest."""
    turn.give_up([])
    next_sid = session.scalar(select(InboxMessage.message_sid)
                              .where(InboxMessage.sender == sender)
                              .order_by(InboxMessage.id).limit(1))
    session.commit()
    if next_sid is not None:
        enqueue_answer(app, next_sid)


def deliver_messages(message_ids: list[int]) -> int:
    """Send stored `pending` messages (notices) by id; returns how many sends were tried."""
    with _job_session() as (app, session):
        return send_pending(app, session, message_ids)


def deliver(app: Flask, session: Session, inbound_id: int) -> int:
    """Send the `pending` replies to one inbound message; returns how many were tried. The
    replies this session just stored are known by id (`router.stored_reply_ids`: no
    statement); a resumed answer's are read (`outbound.pending_outbound`)."""
    ids = router.stored_reply_ids(session, inbound_id)
    if ids is None:
        ids = outbound.pending_outbound(session, inbound_id)
    return send_pending(app, session, ids)


def send_pending(app: Flask, session: Session, message_ids: list[int]) -> int:
    """Send each of `message_ids` that is still `pending`, in order; returns sends tried."""
    settings = bot_settings(app)
    options = outbound_settings(app)
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
            pool_size=config["WORKER_CONCURRENCY"],
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
