"""The one orchestrator of "answer a message", and one person's inbox answered in order.

`answer_message` owns the second half of every turn and its transaction boundaries:

    route (`handle_inbound`: store, keywords, level, hold) -> commit
    -> [deferred: skill, no transaction open (its inputs built by the turn; a resumed answer
        reads them first) -> LLM cost + capture or void + replies -> commit]
    -> send the stored replies (REST), each send committed before and after the provider call

The Twilio webhook without a queue (TwiML), the worker (REST), the inline fallback when Redis
is down, `flask chat` and the simulator all call it; nothing else orders those commits.

`drain_person` answers the unrouted inbox rows of one person oldest first; the worker calls it
while it holds the person's turn (`app.turns`), so one person's messages are answered, and
their replies sent, in the order they arrived (docs/pipeline.md, "Per-person order"). The one
exception is STOP, which overtakes the person's earlier messages still waiting on its
channel: once someone has said STOP, nothing more is sent to them there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import String, bindparam, select
from sqlalchemy.orm import Session

from bot.inbox import INBOX, take_from_inbox
from bot.intents.classifier import classify
from bot.intents.llm_classify import LlmClassification, classify_with_llm, unsure
from bot.messages import InboundMessage, from_payload
from bot.models import Message, OutcomeKind
from bot.router.answer import (
    REPLY_IDS,
    TOP_UPS,
    PendingAnswer,
    SkillResult,
    pending_answer,
    record_llm_cost,
    run_skill,
    settle,
)
from bot.router.steps import handle_inbound, keyword_family
from bot.router.turn import BotSettings, Outcome, is_free_command
from tokens.base import execute_core, one_statement_transaction, utcnow
from tokens.catalog import normalise_command

log = logging.getLogger(__name__)

# Sends the stored `pending` replies to one inbound message (by the inbound row's id) through
# the provider, committing around each call; returns how many sends were tried.
Deliver = Callable[[Session, int], int]
# How many of a person's waiting messages `drain_person` reads at once, to let a STOP among
# them overtake the ones before it.
LOOK_AHEAD = 20
# A person's oldest waiting rows: (id, payload, received at), oldest first.
_INBOX_OF_SENDER = (
    select(INBOX.c.id, INBOX.c.payload, INBOX.c.received_at)
    .where(INBOX.c.sender == bindparam("sender", type_=String()))
    .order_by(INBOX.c.id)
    .limit(LOOK_AHEAD)
)
# The same rows of the person who sent MessageSid `sid`, with that sender, in one statement
# (a job knows only the MessageSid): (id, payload, received at, sender).
INBOX_OF_SENDER_OF = (
    select(INBOX.c.id, INBOX.c.payload, INBOX.c.received_at, INBOX.c.sender)
    .where(INBOX.c.sender == select(INBOX.c.sender)
           .where(INBOX.c.message_sid == bindparam("sid", type_=String()))
           .scalar_subquery())
    .order_by(INBOX.c.id)
    .limit(LOOK_AHEAD)
)


def answer_message(
    session: Session,
    msg: InboundMessage,
    settings: BotSettings,
    *,
    transport: str,
    deliver: Deliver | None = None,
    inbox_id: int | None = None,
    now: datetime | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Outcome:
    """Answer one inbound message from end to end, committing at each boundary.

    Args:
        session: the caller's session, with no transaction of the caller's open; this function
            commits (and rolls back what a failing step left half done before re-raising).
        msg: the normalised inbound message.
        settings: the router's settings.
        transport: "twiml": the replies go back in the webhook's answer (costed now); "rest":
            they are stored `pending` and `deliver` sends them.
        deliver: sends the stored replies (REST); None: the caller sends them later.
        inbox_id: the inbox row `msg` came from; it is deleted in the transaction that stores
            the routed message, so a crash leaves either the inbox row or the message.
        now: the time the message is routed at (UTC); the simulator's clock. Later phases use
            `clock()` unless `now` is given, in which case they use `now` too.
        clock: the current time for the phases after the skill.

    Returns:
        The `Outcome`: the replies as they are (or will be) sent, the intent and the tokens
        charged. Kind "duplicate" when the MessageSid was routed before; then a deferred answer
        that an earlier attempt left unsettled is settled now, and replies stored but never
        accepted by the provider are sent (`resume_answer`).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; what was committed stays, and a
            repeat of the same call resumes from there.
    """
    later = (lambda: now) if now is not None else clock
    # Only what this answer's own commits record: the auto top-ups to charge, the reply ids.
    session.info.pop(TOP_UPS, None)
    session.info.pop(REPLY_IDS, None)
    classified = classify_before_turn(msg, settings, now or clock())
    try:
        outcome = handle_inbound(session, msg, settings, now,
                                 defer=settings.chat is not None, transport=transport,
                                 classified=classified, inbox_id=inbox_id)
        session.commit()
    except Exception:
        session.rollback()
        session.info.pop(TOP_UPS, None)
        raise
    if outcome.kind == "duplicate":
        return resume_answer(session, msg.message_sid, settings, transport=transport,
                             deliver=deliver, clock=later)
    message_id = outcome.message_id
    if outcome.kind == "queued":
        outcome = _answer_deferred(session, msg.message_sid, settings, transport, later,
                                   pending=outcome.pending)
    if deliver is not None and message_id is not None:
        deliver(session, message_id)
    run_top_ups(session, settings)
    return outcome


def classify_before_turn(msg: InboundMessage, settings: BotSettings, now: datetime
                         ) -> LlmClassification | None:
    """With an LLM configured, the message's classification before the turn, with no
    transaction open (so the LLM's wait holds no lock): one cheap call when the rules are
    unsure (`bot.intents.llm_classify.unsure`: small talk by the rules, but long or naming
    food, diets or calories), within the sender address's daily budget
    (`llm.classify_per_day`, counted with the rate limits; a storage failure asks nothing);
    otherwise the rules' classification, unasked, so that the turn does not classify again.
    None (the turn decides) without an LLM, and for keywords, commands and empty messages.
    The call's cost is recorded in the turn (`llm-classify:<MessageSid>`)."""
    chat, catalog, limits = settings.chat, settings.catalog, settings.sender_limits
    text = msg.text
    if chat is None or not text.strip() or keyword_family(msg) is not None:
        return None
    if is_free_command(normalise_command(text), catalog):
        return None
    rules = LlmClassification(classify(text, catalog))  # the turn uses it, not classify again
    if limits is None or not catalog.llm.classify_per_day or not unsure(text, rules.spec,
                                                                          catalog):
        return rules
    count = limits.count_day(msg.sender, now, kind="classify")
    if count is None or count > catalog.llm.classify_per_day:
        return rules
    return classify_with_llm(text, rules.spec, catalog, chat)


def run_top_ups(session: Session, settings: BotSettings) -> None:
    """Charge the auto top-ups this session's last commits recorded (`tokens.alerts`), with no
    transaction open (`BotSettings.top_up`). An attempt left uncharged (no `top_up`, a crash)
    stays open and is charged at the person's next debit under the threshold, with the same
    idempotency key."""
    dues = session.info.pop(TOP_UPS, None) or []
    if settings.top_up is None:
        return
    for due in dues:
        try:
            settings.top_up(session, due)
        except Exception:  # noqa: BLE001 - the answer is sent; the attempt stays open
            log.exception("auto top-up failed; it is retried at the next debit",
                          extra={"key": due.key})


def resume_answer(
    session: Session,
    message_sid: str,
    settings: BotSettings,
    *,
    transport: str,
    deliver: Deliver | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Outcome:
    """A message routed before: settle its deferred answer if an earlier attempt died before
    settling it (its outcome still "queued"), then send its replies still `pending`.

    A settled message's replies that the provider accepted, or whose send may have reached it
    ("unknown"), are never sent again; nothing is charged twice (`settle` checks the "queued"
    mark under the account's lock).

    Returns:
        The settled `Outcome`, or kind "duplicate" when there was nothing to settle.
    """
    outcome = Outcome(kind=OutcomeKind.DUPLICATE)
    routed = session.execute(select(Message.id, Message.outcome)
                             .where(Message.message_sid == message_sid)).first()
    session.commit()
    if routed is None:
        return outcome
    message_id, state = routed
    if state == "queued":
        outcome = _answer_deferred(session, message_sid, settings, transport, clock)
    if deliver is not None:
        deliver(session, message_id)
    return outcome


def drain_person(
    session: Session,
    sender: str,
    settings: BotSettings,
    *,
    deliver: Deliver,
    keep_going: Callable[[], bool] = lambda: True,
    clock: Callable[[], datetime] = utcnow,
    answered_hook: Callable[[Outcome, float], None] | None = None,
    first_rows: Sequence[tuple[int, str, datetime]] | None = None,
) -> list[str]:
    """Answer `sender`'s inbox rows oldest first, each fully (routed, answered, its replies
    sent) before the next is read; returns their MessageSids, in the order answered. It stops
    when the inbox is empty, or after answering the only row it found (messages stored later
    knock on the person's turn, `app.turns.PersonTurn`, and the caller comes round again).

    The caller holds the person's turn, so no other process answers this person meanwhile.

    Args:
        keep_going: asked before each row; False stops early (the worker's time budget), and
            the caller hands the rest to a new job.
        answered_hook: called after each answer with its outcome and the seconds since the
            message was acknowledged (the worker's metrics).
        first_rows: the person's oldest inbox rows as (id, payload, received at), at most
            `LOOK_AHEAD`, when the caller has just read them (`INBOX_OF_SENDER_OF`): the first
            round uses them instead of reading again. A row answered meanwhile by another
            worker is a repeat delivery, which changes nothing.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; the row stays in the inbox.
    """
    answered: list[str] = []
    prefetched = list(first_rows) if first_rows is not None else None
    while keep_going():
        if prefetched is not None:
            rows, prefetched = prefetched, None
        else:
            one_statement_transaction(session)
            rows = list(execute_core(session, _INBOX_OF_SENDER, {"sender": sender}).tuples())
            session.commit()
        if not rows:
            break
        waiting: list[tuple[int, InboundMessage]] = []
        received = {inbox_id: at for inbox_id, _, at in rows}
        for inbox_id, payload, _ in rows:
            try:
                waiting.append((inbox_id, from_payload(payload)))
            except ValueError as exc:
                # Written by another version of the app: nothing can answer it; keep no
                # poison in the inbox.
                log.error("inbox row unreadable, dropped", extra={"inbox_id": inbox_id,
                                                                  "error": str(exc)})
                take_from_inbox(session, inbox_id)
                session.commit()
        if not waiting:
            continue
        inbox_id, msg = _next_in_turn(waiting)
        started = time.perf_counter()
        outcome = answer_message(session, msg, settings, transport="rest", deliver=deliver,
                                 inbox_id=inbox_id, clock=clock)
        answered.append(msg.message_sid)
        if answered_hook is not None:
            answered_hook(outcome, (clock() - received[inbox_id]).total_seconds())
        log.info("answer given", extra={"message_sid": msg.message_sid,
                                        "outcome": outcome.kind,
                                        "tokens": outcome.tokens_charged,
                                        "seconds": round(time.perf_counter() - started, 3)})
        if len(rows) == 1:
            # It was the only one waiting: a message stored since has its own job, which
            # knocks on the turn, so the caller's `PersonTurn.leave` sends it round again;
            # reading the empty inbox once more would cost a statement per message.
            break
    return answered


def _next_in_turn(waiting: list[tuple[int, InboundMessage]]) -> tuple[int, InboundMessage]:
    """The oldest waiting message, except that a STOP overtakes the messages sent before it
    on its channel: after STOP nothing more is sent or charged on that channel (carrier
    rules), so those earlier messages then meet the opted-out silence."""
    first = waiting[0]
    for inbox_id, msg in waiting[1:]:
        if msg.channel == first[1].channel and keyword_family(msg) == "STOP":
            return inbox_id, msg
    return first


def _answer_deferred(session: Session, message_sid: str, settings: BotSettings,
                     transport: str, clock: Callable[[], datetime],
                     pending: PendingAnswer | None = None) -> Outcome:
    """Run the skill with no transaction open, then settle: the LLM cost, the capture or
    void and the replies in one transaction under the account's row lock.

    A billed call stays costed: when the settlement fails, the LLM cost alone is recorded in
    a transaction of its own before the error goes on (a retry answered from the cache would
    not see the usage again). Only a process that dies inside the settlement's transaction
    loses that record, as it would between the call and any first commit.

    `pending`: what the turn that placed the hold just built (`Outcome.pending`); None (a
    resumed answer): read it, in its own short transaction."""
    if pending is None:
        pending = pending_answer(session, message_sid, settings, clock())
        session.commit()
    if pending is None:
        return Outcome(kind=OutcomeKind.DUPLICATE)
    result = run_skill(settings, pending)
    try:
        outcome = settle(session, pending, result, settings, transport=transport, now=clock())
        session.commit()
    except Exception:
        session.rollback()
        session.info.pop(TOP_UPS, None)
        _keep_llm_cost(session, pending, result, settings, clock())
        raise
    return outcome


def _keep_llm_cost(session: Session, pending: PendingAnswer, result: SkillResult,
                   settings: BotSettings, now: datetime) -> None:
    """Record a failed settlement's LLM cost on its own (`record_llm_cost`), so that the call
    stays costed; a failure here is logged, and the settlement's error is what the caller
    sees (the job is retried, and the retry records it, keyed once)."""
    try:
        if record_llm_cost(session, pending, result, settings, now):
            session.commit()
    except Exception:  # noqa: BLE001 - the settlement's error is re-raised by the caller
        session.rollback()
        log.exception("the LLM cost of a failed settlement could not be recorded",
                      extra={"message_sid": pending.message_sid})
