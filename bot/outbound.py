"""Outbound messages through a provider's REST API, and their delivery status callbacks.

The rules (docs/messaging.md, "Outbound"):

- The outbound row is written (`pending`) and committed before the provider is called; the
  sid it returns is stored. The caller (a job) commits between `plan_send` (which marks the
  row `submitting`), the network call (`attempt_send`, no transaction open) and `record_send`.
- No idempotency key exists for sending, so a row that may have reached the provider is never
  sent again: a read timeout marks it `unknown`, and a process that dies mid-call leaves it
  `submitting`. A later status callback for the same address adopts an `unknown` row
  (`apply_status`); `give_up_unconfirmed` fails the ones no callback confirmed (and reverses
  their charge).
  Only 429 and 5xx (and a connection that never opened) are retried, with jittered
  exponential backoff.
- A transaction here that writes anything but one outbound row locks the person's account
  row before it writes anything, as the router and the ledger do, so a callback or a job never
  deadlocks with a webhook. The two hot transitions write one `messages` row only and take no
  account lock: claiming a row for sending (`plan_send`) and moving a row forward on a
  delivery status (`apply_status`, after inserting its own status event, which only a repeat
  of that callback can wait for). Such a transaction waits for at most that row, and holds
  nothing meanwhile that the row's holder could wait for, so no deadlock cycle can go through
  it. Whatever writes more (a skip, a reversal, an opt-out, a cost, an adoption) takes the
  account lock first. A claim does not wait for a webhook holding the lock: a STOP being
  committed at that moment counts from the next send, as if it had come a moment later.
- Permanent errors end the row `failed` with the error code: 21610 (the person replied STOP)
  also marks the contact opted out on that channel; 63016 (outside WhatsApp's 24-hour window)
  falls back to the approved template when one is configured, whether Twilio refuses the
  send or, as usually happens, accepts it and reports 63016 in the status callback. Then the
  answer waits on the contact for MORE, the template carries the notice, and the charge
  stays (charged once; a template that fails too gives it back). An outbound row whose
  `error_code` is 63016 went out, or goes out, as the template.
- WhatsApp free-form messages go out only within 24 hours of the person's last inbound
  message; outside it the template (`ContentSid`) is sent instead, with the answer kept for
  MORE, or the message is skipped.
- Status callbacks are kept once per (MessageSid, MessageStatus) and only move the status
  forward (queued < sending < sent < delivered < read; failed and undelivered are final), so a
  late "sent" never overwrites "delivered".
- A paid reply that is skipped, fails or is undelivered gives its tokens back
  (`ledger.reverse_debit`, once per inbound message).

Statements (on every answered message's path, so counted: tests/bot/test_outbound_statements.py).
The common cases are SQLAlchemy Core statements on the tables, not ORM loads:

- `pending_outbound`: one `SELECT`.
- `plan_send` of a row that can go out as it is: one `UPDATE ... WHERE status = 'pending' AND
  <the contact can receive it> RETURNING` that claims the row (`submitting`) and reads what
  the plan needs, the contact's address included. Anything else (a row not pending, a skip,
  the WhatsApp template) takes the account lock and decides with the loaded rows.
- `record_send` of an accepted send: on PostgreSQL first the recipient's advisory lock
  (`RECIPIENT_LOCK`, below); then one `UPDATE` storing the sid and the status (forward
  only) that returns the units, the account and whether status callbacks came first that it
  could not apply; on PostgreSQL it locks the account row in the same statement (a `FOR NO
  KEY UPDATE` CTE); then the messaging cost (`costs.record_messaging`). The callbacks that
  beat the send's result (Twilio may call back before its answer to the send reaches us) are
  applied by the same `UPDATE` when each is a plain forward status (no error code, not a
  not-delivered end): the row takes the highest-ranked of them and the send's status, which
  is where applying them one by one in rank order ends. Any other kept callback is applied
  under the account's lock with the rows loaded, all of them in rank order. SQLite takes no
  account lock statement: every transaction there starts `BEGIN IMMEDIATE`
  (app.extensions.configure_sqlite), which already serialises writers, and
  `ledger.lock_account` would be a plain `SELECT`.
- `apply_status`: one `INSERT ... ON CONFLICT DO NOTHING RETURNING` of the event, which also
  reads the message's id, direction and status, and, when no message has the sid yet, the
  `unknown` row the callback would adopt (a repeat ends here; so does a status that is not
  forward, and a callback that beat its send's result: kept for `record_send`); then, for a
  forward move to a state that neither ends the row undelivered nor carries 21610, one
  conditional `UPDATE` whose `WHERE` holds the order rule (on PostgreSQL a data-modifying CTE
  of the same statement, `_KEEP_AND_ADVANCE`). Only a not-delivered end, a 21610
  or an adoption goes through the account lock and the ORM. On PostgreSQL, a callback that
  finds no message with its sid takes the recipient's advisory lock in that `INSERT` and then
  looks for the sid once more (one `SELECT`).

On SQLite each transaction also sends its `BEGIN IMMEDIATE`.

A callback may commit while the worker stores its send's sid: the worker's `UPDATE` reads the
kept callbacks as of its start, and the callback cannot see the uncommitted sid, so without an
order neither would apply it (and an `undelivered` paid reply would keep its charge). On
PostgreSQL the recipient's transaction-level advisory lock orders them: the worker takes it in
a statement of its own before its `UPDATE`, the callback inside its `INSERT` (only when no
message has the sid) before it looks again, and whichever comes second sees the first one's
commit (tests/bot/test_outbound_races.py). A send that timed out takes the lock too, so a
callback meanwhile adopts its `unknown` row once that is committed. One that commits before
such a worker stores `unknown` stays kept (the event does not name the recipient): the sid's
next callback adopts the row, or the sweep gives it up as any unconfirmed send. The worker
holds nothing while it waits, and a callback only its own event's key (which only a repeat of
it waits for), so the lock closes no deadlock cycle. SQLite's `BEGIN IMMEDIATE` serialises
the two already.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    column,
    exists,
    func,
    literal_column,
    not_,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from bot.contacts import mask_address
from bot.errors import BotError
from bot.models import Contact, Message, MessageStatusEvent
from tokens import costs, ledger
from tokens.base import (
    UTCDateTime,
    execute_compiled,
    execute_core,
    on_postgresql,
    one_statement_transaction,
    utcnow,
)
from tokens.catalog import Catalog

log = logging.getLogger(__name__)

# Twilio error codes (https://www.twilio.com/docs/api/errors).
OPTED_OUT = 21610  # "Attempt to send to unsubscribed recipient"
OUTSIDE_WINDOW = 63016  # "Failed to send freeform message because you are outside the window"
# Anything but 429 and 5xx is permanent, e.g. 21211 (invalid 'To'), 21610, 21614 (not a
# mobile), 63014 (the person blocked the business), 63016, 63024 (invalid WhatsApp recipient).
WHATSAPP_WINDOW = timedelta(hours=24)
# How old an `unknown` row (its send timed out) a status callback of an unknown sid to the same
# recipient may adopt: the send reached the provider after all.
ADOPT_WITHIN = timedelta(days=1)

# Forward order of delivery states; a status only replaces one of lower rank. Final states
# never change again (docs/messaging.md: "failed/undelivered are final").
STATUS_RANK = {
    "pending": 0, "submitting": 0, "unknown": 0,
    "accepted": 1, "scheduled": 1, "queued": 2, "sending": 3, "sent": 4,
    "failed": 5, "undelivered": 5, "canceled": 5,
    "delivered": 6, "read": 7,
}
# PostgreSQL: the class of the transaction-level advisory lock, keyed by the recipient's address
# (`hashtext`), that orders storing a send's result (accepted, or timed out) against a status
# callback that finds no message with its sid: whichever takes it second sees what the first
# committed (`record_send`, `apply_status`). The value spells "outb"; nothing else here takes
# advisory locks.
RECIPIENT_LOCK = 0x6F757462
FINAL_STATES = frozenset({"failed", "undelivered", "canceled", "read", "skipped"})
NOT_DELIVERED = frozenset({"failed", "undelivered", "canceled", "skipped"})


class SendError(BotError):
    """A provider refused or did not answer a send.

    Attributes:
        code: the provider's error code (Twilio's, e.g. 21610), when it gave one.
        http_status: the HTTP status, when there was a response.
        timed_out: no answer within the timeout after the request was sent: the message may
            or may not exist at the provider.
        connect_failed: the connection never opened: nothing was sent.
    """

    def __init__(
        self,
        reason: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        timed_out: bool = False,
        connect_failed: bool = False,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.http_status = http_status
        self.timed_out = timed_out
        self.connect_failed = connect_failed

    @property
    def retryable(self) -> bool:
        """429, 5xx, or a connection that never opened; never a timeout after sending."""
        if self.timed_out:
            return False
        if self.connect_failed:
            return True
        return self.http_status is not None and (
            self.http_status == 429 or self.http_status >= 500
        )


@dataclass(frozen=True)
class Sent:
    """A send the provider accepted: its message sid and initial status (e.g. "queued")."""

    sid: str
    status: str


class Sender(Protocol):
    """A provider's send call (Twilio's Messages resource; a stand-in in tests)."""

    def send(
        self,
        *,
        channel: str,
        to: str,
        body: str | None = None,
        content_sid: str | None = None,
        content_variables: str | None = None,
        status_callback: str | None = None,
    ) -> Sent:
        """Send one message. Raises `SendError`."""
        ...


@dataclass(frozen=True)
class OutboundSettings:
    """How replies are sent.

    Attributes:
        status_callback_url: where the provider posts delivery status (None: no callbacks).
        whatsapp_template_sid: the approved template (`ContentSid`) sent outside the WhatsApp
            24-hour window; None: such a message is skipped.
        max_attempts: sends tried per message when the provider answers 429 or 5xx.
        backoff_seconds: the first retry's delay; each next one doubles, with full jitter.
    """

    status_callback_url: str | None = None
    whatsapp_template_sid: str | None = None
    max_attempts: int = 3
    backoff_seconds: float = 0.5


@dataclass(frozen=True)
class SendPlan:
    """One send to make: to whom, and the body or the template."""

    message_id: int
    channel: str
    to: str
    body: str | None
    content_sid: str | None = None
    content_variables: str | None = None

    @property
    def is_template(self) -> bool:
        return self.content_sid is not None


@dataclass(frozen=True)
class StatusUpdate:
    """A delivery status callback, normalised by the channel adapter.

    Attributes:
        message_sid: the outbound message's sid.
        status: Twilio's `MessageStatus`, lower case.
        error_code: `ErrorCode`, if any.
        to: the recipient as the provider wrote it ("+1555..." or "whatsapp:+1555..."), if any.
    """

    message_sid: str
    status: str
    error_code: int | None = None
    to: str | None = None


def plan_send(
    session: Session,
    message_id: int,
    settings: OutboundSettings,
    catalog: Catalog,
    now: datetime | None = None,
) -> SendPlan | None:
    """Decide how a `pending` outbound row goes out, or mark it `skipped`.

    Skipped (with the charge of a paid reply given back): the person opted out on the
    channel, has no phone number to send to, or is outside the WhatsApp 24-hour window with
    no template configured. Outside the window with a template: one template goes out for the
    whole answer, which waits on the contact for MORE.

    A row about to be sent is marked `submitting` first: if the process dies during the call,
    a retry does not send it again (there is no idempotency key for sending). A row that can
    go out as it is, is claimed and read in one statement (`UPDATE ... WHERE status =
    'pending' ... RETURNING`, no account lock: it writes that row only); any other row is
    decided under the account's lock. When the session has no transaction open, the claim
    commits on its own on PostgreSQL (`tokens.base.one_statement_transaction`), and a row it
    did not take is decided in a transaction of its own.

    Returns:
        The `SendPlan`, or None when there is nothing to send (the row is not pending, or was
        skipped now). Flushes; the caller commits before sending.
    """
    now = now or utcnow()
    session.flush()  # the claim reads the contact as stored
    # With nothing else in the transaction, the claim is one: it commits on its own.
    alone = one_statement_transaction(session)
    claimed = execute_core(session, _CLAIM, {"row_id": message_id, "now": now,
                                             "window_start": now - WHATSAPP_WINDOW}).first()
    if claimed is not None:
        _expire_loaded(session, message_id)
        channel, body, address = claimed
        return SendPlan(message_id, channel, address, body)
    if alone:
        session.commit()  # the claim changed nothing; the locked path needs a transaction
    return _plan_locked(session, message_id, settings, catalog, now)


def _plan_locked(
    session: Session, message_id: int, settings: OutboundSettings, catalog: Catalog,
    now: datetime,
) -> SendPlan | None:
    """`plan_send` for a row the claim did not take: under the account's lock, with the row
    and the contact loaded. The row may be sendable after all (its contact changed between
    the two statements)."""
    found = _lock_row(session, message_id)
    if found is None:
        return None
    row, contact = found
    if row.direction != "out" or row.status != "pending":
        return None
    if contact.opted_out_at(row.channel) is not None:
        _finish(session, row, "skipped", None, now)
        return None
    if not contact.address.startswith("+"):
        _finish(session, row, "skipped", None, now)  # a WhatsApp user id with no number
        return None
    plan: SendPlan | None = SendPlan(row.id, row.channel, contact.address, row.body)
    if row.channel == "whatsapp":
        last_inbound = contact.whatsapp_last_inbound_at
        if (row.error_code == OUTSIDE_WINDOW or last_inbound is None
                or now - last_inbound >= WHATSAPP_WINDOW):
            plan = _template_or_skip(session, row, contact, settings, catalog, now)
    if plan is not None:
        row.status = "submitting"
        row.status_at = now
    session.flush()
    return plan


def attempt_send(
    sender: Sender,
    plan: SendPlan,
    settings: OutboundSettings,
    sleep: Callable[[float], None] = time.sleep,
) -> Sent | SendError:
    """Call the provider, retrying 429, 5xx and unopened connections with jittered backoff.

    Touches no database. Returns what the provider accepted, or the last `SendError`.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return sender.send(
                channel=plan.channel, to=plan.to, body=plan.body,
                content_sid=plan.content_sid, content_variables=plan.content_variables,
                status_callback=settings.status_callback_url,
            )
        except SendError as exc:
            if not exc.retryable or attempt >= settings.max_attempts:
                return exc
            delay = settings.backoff_seconds * (2 ** (attempt - 1))
            log.info("send retried", extra={"code": exc.code, "http_status": exc.http_status,
                                            "attempt": attempt})
            sleep(random.uniform(0, delay))


def record_send(
    session: Session,
    plan: SendPlan,
    result: Sent | SendError,
    settings: OutboundSettings,
    catalog: Catalog,
    now: datetime | None = None,
) -> SendPlan | None:
    """Store the outcome of a send on its row.

    Accepted: the sid and status, and the messaging cost; status callbacks that arrived
    before the sid was stored are applied now. Timed out: `unknown` (never resent). Refused:
    `failed` with the code (21610 marks the contact opted out; a paid reply's charge is given
    back), except 63016 on a free-form WhatsApp message when a template is configured.

    An accepted or timed-out send first takes the recipient's advisory lock on PostgreSQL
    (`RECIPIENT_LOCK`: a callback committing meanwhile is seen, or sees this). An accepted
    send is stored in one `UPDATE ... RETURNING` (on PostgreSQL taking the account's lock in
    the same statement) and costed (`costs.record_messaging`); callbacks that came first, and
    every refusal, are handled under the account's lock with the rows loaded.

    Returns:
        A new `SendPlan` (the template) when the free-form message must be resent as one;
        otherwise None. Flushes; the caller commits.
    """
    now = now or utcnow()
    if isinstance(result, Sent) or result.timed_out:  # the provider may have the message
        _lock_recipient(session, plan.to)
    if isinstance(result, Sent):
        status = result.status if result.status in STATUS_RANK else "queued"
        if status not in NOT_DELIVERED and _record_accepted(session, plan, result.sid, status,
                                                            catalog, now):
            return None
    return _record_locked(session, plan, result, settings, catalog, now)


def _lock_recipient(session: Session, address: str) -> None:
    """PostgreSQL: take the `RECIPIENT_LOCK` of `address` (held until the transaction ends),
    as the first statement of the transaction that stores a send's result, so that every
    statement after it reads the status callbacks kept by a transaction that held the lock
    first. SQLite: nothing (its `BEGIN IMMEDIATE` already serialises writers)."""
    if on_postgresql(session):
        execute_core(session, _LOCK_RECIPIENT, {"address": address})


def _record_accepted(
    session: Session, plan: SendPlan, sid: str, status: str, catalog: Catalog, now: datetime
) -> bool:
    """Store an accepted send (`status` not a not-delivered one) and its cost; apply the
    callbacks kept for `sid` before it was stored (in the same statement when all are plain,
    see `_record_statement`). False when the row is gone (nothing done)."""
    session.flush()
    # Compiled once per driver and sent as driver SQL: walking this statement for
    # SQLAlchemy's cache key on every send would cost more than running it.
    stored = execute_compiled(
        session.connection(), "bot.outbound.record",
        lambda dialect: _record_statement(locking=dialect == "postgresql"),
        {"row_id": plan.message_id, "sid": sid, "new_status": status,
         "rank": STATUS_RANK[status], "now": now}).first()
    if stored is None:
        return False
    _expire_loaded(session, plan.message_id)
    channel, units, account_id, early = stored
    costs.record_messaging(session, account_id, catalog.costs, channel, "out",
                           1 if plan.is_template else units, key=f"msg:out:{plan.message_id}",
                           now=now)
    if early:  # callbacks that beat the send's result, not all plain: applied in rank order
        row = session.get(Message, plan.message_id, populate_existing=True)
        assert row is not None
        kept = session.execute(
            select(MessageStatusEvent.status, MessageStatusEvent.error_code)
            .where(MessageStatusEvent.message_sid == sid)
        ).all()
        for event_status, code in sorted(kept, key=lambda item: STATUS_RANK.get(item[0], -1)):
            _advance(session, row, event_status, code, now)
        session.flush()
    return True


def _record_locked(
    session: Session,
    plan: SendPlan,
    result: Sent | SendError,
    settings: OutboundSettings,
    catalog: Catalog,
    now: datetime,
) -> SendPlan | None:
    """`record_send` under the account's lock, with the row and the contact loaded: a
    refusal, a timeout, or an accepted send whose status is already a not-delivered one."""
    found = _lock_row(session, plan.message_id)
    assert found is not None
    row, contact = found
    if isinstance(result, Sent):
        if row.message_sid is None:  # a callback may have adopted the row already
            row.message_sid = result.sid
        _advance(session, row, result.status if result.status in STATUS_RANK else "queued",
                 None, now)
        units = row.units if not plan.is_template else 1
        costs.record_messaging(session, contact.account_id, catalog.costs, row.channel, "out",
                               units, key=f"msg:out:{row.id}", now=now)
        early = session.execute(
            select(MessageStatusEvent.status, MessageStatusEvent.error_code)
            .where(MessageStatusEvent.message_sid == result.sid)
        ).all()
        for status, code in sorted(early, key=lambda item: STATUS_RANK.get(item[0], -1)):
            _advance(session, row, status, code, now)
        session.flush()
        return None
    log.warning("send failed", extra={"code": result.code, "http_status": result.http_status,
                                      "timed_out": result.timed_out,
                                      "to": mask_address(contact.address)})
    if result.timed_out:
        row.status = "unknown"
        row.status_at = now
        session.flush()
        return None
    if result.code == OPTED_OUT:
        contact.set_opted_out(row.channel, now, f"twilio_21610:{row.channel}")
    if (result.code == OUTSIDE_WINDOW and not plan.is_template
            and settings.whatsapp_template_sid is not None):
        row.error_code = OUTSIDE_WINDOW
        return _template_or_skip(session, row, contact, settings, catalog, now)
    _finish(session, row, "failed", result.code, now)
    return None


def apply_status(
    session: Session, update: StatusUpdate, now: datetime | None = None,
    catalog: Catalog | None = None, settings: OutboundSettings | None = None,
    resends: list[int] | None = None,
) -> bool:
    """Apply one delivery status callback.

    Kept once per (MessageSid, MessageStatus); the row's status only moves forward; the error
    code is kept; 21610 marks the contact opted out; an undelivered or failed paid reply gives
    its tokens back. A callback for a sid we do not know adopts the newest `unknown` row (a
    send that timed out) to the same address, within a day; one for a row still being sent is
    kept and applied when the send's result is stored; on PostgreSQL it first waits for a
    worker storing a send's result to the same recipient (`RECIPIENT_LOCK`), so one that is
    storing this sid right now is seen.

    A row adopted this way is costed now (its send's result never came back), given the
    `catalog`'s rates.

    63016 (outside WhatsApp's 24-hour window) on a free-form WhatsApp message, with a template
    in `settings`: the row ends `failed` without giving the charge back, and a new `pending`
    row (`error_code` 63016: "send as the template") carries the answer; its id is appended to
    `resends` for the caller to send after committing. One such row per answer: a second part
    of the same answer failing joins the first (`_resend_as_template`).

    Statements: a repeat, and a status that is not forward, take one (the event's `INSERT ...
    ON CONFLICT DO NOTHING`); a forward move takes a second, a conditional `UPDATE` of the
    row. On PostgreSQL a plain forward move (neither a not-delivered end nor 21610) is one:
    the `UPDATE` is a data-modifying CTE of the `INSERT`'s statement (`_KEEP_AND_ADVANCE`),
    which, with no transaction open in `session`, commits on its own
    (`tokens.base.one_statement_transaction`: one round trip in all). A not-delivered end,
    a 21610 and an adoption are applied under the account's lock. On PostgreSQL a callback
    for a sid no message has yet takes a second (`_LOOK_AGAIN`), in a transaction of its
    own after an autocommitted first.

    Returns:
        True when the row changed; False for a repeat, an out-of-order (older) status or an
        unknown message. Flushes; the caller commits.
    """
    now = now or utcnow()
    session.flush()
    to = update.to or ""
    # Neither a not-delivered end nor 21610: applying it only moves the row forward.
    plain = update.status not in NOT_DELIVERED and update.error_code != OPTED_OUT
    # With nothing else in the transaction, a plain callback on PostgreSQL is one statement
    # that commits on its own; whatever must follow it goes in a transaction of its own.
    alone = plain and one_statement_transaction(session)
    postgres = on_postgresql(session)
    looked_up = {"sid": update.message_sid, "address": to.removeprefix("whatsapp:") or None,
                 "channel": "whatsapp" if to.startswith("whatsapp:") else "sms",
                 "since": now - ADOPT_WITHIN}
    params = {**looked_up, "new_status": update.status, "code": update.error_code, "now": now}
    at_once = plain and postgres  # the event kept and the row moved in one statement
    if at_once:
        params["rank"] = STATUS_RANK.get(update.status, -1)
    kept = execute_core(session, _KEEP_AND_ADVANCE if at_once else
                        _KEEP_EVENT_LOCKING if postgres else _KEEP_EVENT, params).first()
    if kept is None:
        return False  # a repeat of this (sid, status)
    row_id, direction, current, adopted = kept[:4]
    if at_once:
        if kept.moved_id is not None:
            _expire_loaded(session, row_id)
            return True
        if row_id is None and alone:
            session.commit()  # it changed nothing but the event; the rest needs a transaction
    tried = at_once and row_id is not None  # the statement's UPDATE found the row unmovable
    if row_id is None and adopted is None and postgres and looked_up["address"] is not None:
        # The statement took the recipient's lock: a send's result stored meanwhile (the sid,
        # or `unknown` after a timeout), which it could not see, is committed by now.
        again = execute_core(session, _LOOK_AGAIN, looked_up).first()
        assert again is not None  # a SELECT without FROM: always one row
        row_id, direction, current, adopted = again
    if row_id is None:  # not sent with this sid, or its send's result is not stored yet
        if adopted is None:
            log.info("status callback for an unknown message", extra={"status": update.status})
            return False
        return _apply_locked(session, adopted, update, now, catalog, adopting=True,
                             settings=settings, resends=resends)
    if direction != "out":
        log.info("status callback for an unknown message", extra={"status": update.status})
        return False
    if not _is_forward(current, update.status):
        return False  # states only move forward, so it cannot have become forward since
    if not plain:
        return _apply_locked(session, row_id, update, now, catalog, adopting=False,
                             settings=settings, resends=resends)
    if tried:
        return False  # another callback moved it further meanwhile
    moved = execute_core(session, _ADVANCE, {
        "row_id": row_id, "new_status": update.status, "rank": STATUS_RANK[update.status],
        "code": update.error_code, "now": now}).first()
    if moved is None:
        return False  # another callback moved it further meanwhile
    _expire_loaded(session, row_id)
    return True


def _apply_locked(
    session: Session, row_id: int, update: StatusUpdate, now: datetime,
    catalog: Catalog | None, *, adopting: bool, settings: OutboundSettings | None = None,
    resends: list[int] | None = None,
) -> bool:
    """`apply_status` under the account's lock, with the row loaded: a not-delivered end, a
    21610, or the adoption of the `unknown` row `row_id`; a 63016 end re-sent as the
    template (`_resend_as_template`)."""
    found = _lock_row(session, row_id)
    if found is None or found[0].direction != "out":
        log.info("status callback for an unknown message", extra={"status": update.status})
        return False
    row = found[0]
    if adopting:
        if row.status != "unknown" or row.message_sid is not None:
            return False  # settled meanwhile; the event stays kept
        row.message_sid = update.message_sid
        if catalog is not None and update.status not in NOT_DELIVERED:
            account_id = found[1].account_id
            costs.record_messaging(session, account_id, catalog.costs, row.channel, "out",
                                   row.units, key=f"msg:out:{row.id}", now=now)
    if (update.error_code == OUTSIDE_WINDOW and update.status in NOT_DELIVERED
            and row.channel == "whatsapp" and row.error_code != OUTSIDE_WINDOW
            and settings is not None and settings.whatsapp_template_sid is not None
            and _is_forward(row.status, update.status)):
        _finish(session, row, update.status, OUTSIDE_WINDOW, now, release=False)
        resent = _resend_as_template(session, row, found[1], now)
        if resent is not None and resends is not None:
            resends.append(resent)
        session.flush()
        return True
    changed = _advance(session, row, update.status, update.error_code, now)
    session.flush()
    return changed


def _resend_as_template(session: Session, row: Message, contact: Contact, now: datetime
                        ) -> int | None:
    """After a 63016 callback on the free-form WhatsApp message `row` (now `failed`): the id
    of a new `pending` row to send as the template, carrying `row`'s text for MORE; or None
    when another part of the same answer already has one (the text joins it: its body while
    it waits, the contact's MORE text once it went out). The caller holds the account's lock.

    The new row is free (the answer's charge stays on the inbound message, once) and counts
    one message unit, what the template costs.
    """
    if row.in_reply_to_id is not None:
        earlier = session.scalars(
            select(Message)
            .where(Message.in_reply_to_id == row.in_reply_to_id, Message.id != row.id,
                   Message.direction == "out", Message.error_code == OUTSIDE_WINDOW,
                   Message.status.not_in(tuple(NOT_DELIVERED)))
            .order_by(Message.id.desc())
            .limit(1)
        ).first()
        if earlier is not None:
            if earlier.status == "pending":
                earlier.body = f"{earlier.body}\n{row.body}"
            else:
                contact.more_text = "\n".join(t for t in (contact.more_text, row.body) if t)
            return None
    resend = Message(contact_id=row.contact_id, direction="out", channel="whatsapp",
                     body=row.body, in_reply_to_id=row.in_reply_to_id, status="pending",
                     error_code=OUTSIDE_WINDOW, units=1, created_at=now, status_at=now)
    session.add(resend)
    session.flush()
    log.info("63016 in a status callback: the answer goes out as the template",
             extra={"to": mask_address(contact.address)})
    return resend.id


def give_up_unconfirmed(session: Session, older_than: timedelta, now: datetime | None = None
                        ) -> int:
    """Fail the replies whose send may or may not have reached the provider (`unknown`,
    `submitting`) and that no status callback confirmed within `older_than`; a paid one gives
    its tokens back (nobody pays for a reply they did not get). Returns how many.

    Run it from the sweep (`flask --app wsgi messages sweep`); Twilio's callbacks normally
    arrive within seconds, so 15 minutes is a safe default.
    """
    now = now or utcnow()
    ids = session.scalars(
        select(Message.id).where(Message.status.in_(("unknown", "submitting")),
                                 Message.status_at <= now - older_than)
    ).all()
    failed = 0
    for message_id in ids:
        found = _lock_row(session, message_id)
        if found is None or found[0].status not in ("unknown", "submitting"):
            continue
        _finish(session, found[0], "failed", None, now)
        failed += 1
    return failed


def pending_outbound(session: Session, inbound_id: int) -> list[int]:
    """Ids of the `pending` replies to one inbound message, in order."""
    return list(execute_core(session, _PENDING, {"inbound_id": inbound_id}).scalars())


def release_charge(session: Session, row: Message, now: datetime | None = None) -> int:
    """Give back what the inbound message `row` answers was charged; returns the tokens.

    Once per inbound message (key `reversal:<MessageSid>`), whichever of its replies failed. The
    month's tokens charged go down in the month of the charge. The caller holds the account's
    row lock.
    """
    if row.in_reply_to_id is None:
        return 0
    inbound = session.get(Message, row.in_reply_to_id)
    if inbound is None or not inbound.tokens_charged or inbound.message_sid is None:
        return 0
    now = now or utcnow()
    reversal = ledger.reverse_debit(
        session, f"debit:{inbound.message_sid}", key=f"reversal:{inbound.message_sid}",
        memo="reply not delivered", now=now,
    )
    if reversal.replayed or not reversal.amount:
        return 0
    account_id = session.scalar(select(Contact.account_id).where(Contact.id == inbound.contact_id))
    assert account_id is not None
    costs.note_tokens_charged(session, account_id, [(b, -n) for b, n in reversal.by_bucket],
                              inbound.created_at)
    log.info("charge released", extra={"tokens": reversal.amount, "status": row.status})
    return reversal.amount


def _lock_row(session: Session, message_id: int) -> tuple[Message, Contact] | None:
    """Lock the account of message `message_id`'s person, then load the message and the
    contact fresh (their state may have changed while we waited for the lock)."""
    account_id = session.scalar(
        select(Contact.account_id).join(Message, Message.contact_id == Contact.id)
        .where(Message.id == message_id)
    )
    if account_id is None:
        return None
    ledger.lock_account(session, account_id)
    row = session.get(Message, message_id, populate_existing=True)
    assert row is not None
    contact = session.get(Contact, row.contact_id, populate_existing=True)
    assert contact is not None
    return row, contact


def _advance(
    session: Session, row: Message, status: str, code: int | None, now: datetime
) -> bool:
    """Move `row` to `status` if that is forward; False when it is not (kept as it was).

    The caller holds the account's row lock.
    """
    if not _is_forward(row.status, status):
        return False
    if code == OPTED_OUT:
        contact = session.get(Contact, row.contact_id)
        assert contact is not None
        contact.set_opted_out(row.channel, now, f"twilio_21610:{row.channel}")
    if status in NOT_DELIVERED:
        _finish(session, row, status, code, now)
    else:
        row.status = status
        row.status_at = now
        if code is not None:
            row.error_code = code
    return True


def _finish(
    session: Session, row: Message, status: str, code: int | None, now: datetime,
    *, release: bool = True,
) -> None:
    """End a row in a not-delivered state and (by default) give back its charge."""
    row.status = status
    row.status_at = now
    if code is not None:
        row.error_code = code
    session.flush()
    if release:
        release_charge(session, row, now)


def _template_or_skip(
    session: Session,
    row: Message,
    contact: Contact,
    settings: OutboundSettings,
    catalog: Catalog,
    now: datetime,
) -> SendPlan | None:
    """Outside the WhatsApp window: one template for the whole answer, which waits on the
    contact for MORE (the answer's other parts are skipped, their charge kept); or skip it all."""
    if settings.whatsapp_template_sid is None:
        _finish(session, row, "skipped", OUTSIDE_WINDOW, now)
        return None
    siblings = session.scalars(
        select(Message)
        .where(Message.in_reply_to_id == row.in_reply_to_id, Message.id != row.id,
               Message.direction == "out", Message.status == "pending")
        .order_by(Message.id)
    ).all() if row.in_reply_to_id is not None else []
    row.error_code = OUTSIDE_WINDOW  # marks the row as sent as the template
    contact.more_text = "\n".join([row.body, *(s.body for s in siblings)])
    for sibling in siblings:
        _finish(session, sibling, "skipped", OUTSIDE_WINDOW, now, release=False)
    variables = json.dumps({"1": catalog.bot_name})
    log.info("outside the WhatsApp window: template sent",
             extra={"to": mask_address(contact.address)})
    return SendPlan(row.id, "whatsapp", contact.address, None,
                    content_sid=settings.whatsapp_template_sid, content_variables=variables)


def _is_forward(current: str | None, status: str) -> bool:
    """Whether `status` may replace `current` (None: "pending"): `current` is not final and
    `status` ranks higher (an unknown status ranks below every state, an unknown current one
    as "pending"). `_forward_in_sql` is the same rule as SQL."""
    current = current or "pending"
    return current not in FINAL_STATES and \
        STATUS_RANK.get(status, -1) > STATUS_RANK.get(current, 0)


def _expire_loaded(session: Session, message_id: int) -> None:
    """A Core `UPDATE` bypasses the identity map: let a loaded row reload what it changed."""
    row = session.identity_map.get(Session.identity_key(Message, message_id))
    if row is not None:
        session.expire(row, ["message_sid", "status", "status_at", "error_code"])


# --- the statements of the common cases (built once; see "Statements" above) -----------------

_MESSAGES = cast(Table, Message.__table__)
_CONTACTS = cast(Table, Contact.__table__)
_EVENTS = cast(Table, MessageStatusEvent.__table__)
_ACCOUNTS = cast(Table, ledger.Account.__table__)
_NOW = bindparam("now", type_=UTCDateTime())
_RANK = bindparam("rank", type_=Integer())
_STATUS = bindparam("new_status", type_=String())


def _sql(value: str) -> ColumnElement[str]:
    """A string constant of ours (a state, a channel) written into the SQL, not bound."""
    return literal_column(f"'{value}'", String())


# A final state ranks above every status, so nothing replaces it.
_FINAL_RANK = max(STATUS_RANK.values()) + 1
_RANKS = {**STATUS_RANK, **dict.fromkeys(sorted(FINAL_STATES), _FINAL_RANK)}


def _rank_in_sql(status: Any, ranks: dict[str, int], otherwise: int) -> Any:
    """The rank of the SQL string `status` in `ranks`, as SQL; `otherwise` for any other."""
    return case({_sql(state): literal_column(str(value)) for state, value in ranks.items()},
                value=status, else_=literal_column(str(otherwise)))


def _forward_in_sql(rank: Any) -> ColumnElement[bool]:
    """`_is_forward` of the row's status as SQL: `rank` is the new status's `STATUS_RANK`."""
    current = func.coalesce(_MESSAGES.c.status, _sql("pending"))
    return cast(ColumnElement[bool], _rank_in_sql(current, _RANKS, 0) < rank)


def _of_contact(column: Any) -> Any:
    """`column` of the message's contact, as a correlated scalar subquery (of an UPDATE's
    RETURNING: on SQLite, SQLAlchemy writes its columns unqualified there, and SQLite's scoping
    still reads `id` as the contact's and `contact_id` as the message's)."""
    return (select(column).where(_CONTACTS.c.id == _MESSAGES.c.contact_id)
            .correlate(_MESSAGES).scalar_subquery())


_PENDING = (select(_MESSAGES.c.id)
            .where(_MESSAGES.c.in_reply_to_id == bindparam("inbound_id", type_=Integer()),
                   _MESSAGES.c.status == _sql("pending"))
            .order_by(_MESSAGES.c.id))

# plan_send: claim a pending row whose contact can receive it as it is (a phone number, not
# opted out on the channel, within the WhatsApp window), returning (channel, body, address).
_CLAIM = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("row_id", type_=Integer()),
           _MESSAGES.c.direction == _sql("out"), _MESSAGES.c.status == _sql("pending"),
           _MESSAGES.c.error_code.is_(None),  # 63016: to send as the template
           exists().where(
               _CONTACTS.c.id == _MESSAGES.c.contact_id,
               _CONTACTS.c.address.like(_sql("+%")),
               case((_MESSAGES.c.channel == _sql("whatsapp"), _CONTACTS.c.whatsapp_opted_out_at),
                    else_=_CONTACTS.c.sms_opted_out_at).is_(None),
               or_(_MESSAGES.c.channel != _sql("whatsapp"),
                   _CONTACTS.c.whatsapp_last_inbound_at
                   > bindparam("window_start", type_=UTCDateTime()))))
    .values(status=_sql("submitting"), status_at=_NOW)
    .returning(_MESSAGES.c.channel, _MESSAGES.c.body, _of_contact(_CONTACTS.c.address))
)


def _record_statement(locking: bool) -> Any:
    """record_send: store the sid (unless the row has one) and move the status forward to
    `new_status` (of rank `rank`) or, when every status callback kept for the sid is a plain
    one (no error code, not a not-delivered end), to the highest-ranked of them if it ranks
    higher (the CTE `target`); returning (channel, units, account id, whether callbacks are
    kept for the sid that this statement leaves to the caller). `locking` (PostgreSQL): lock
    the account row first, in the same statement."""
    sid = bindparam("sid", type_=String())
    of_sid = _EVENTS.c.message_sid == sid
    # Neither ends the row undelivered nor carries a code: `_advance` would only move it.
    plain = and_(_EVENTS.c.status.not_in([_sql(state) for state in sorted(NOT_DELIVERED)]),
                 _EVENTS.c.error_code.is_(None))
    left_over = exists().where(of_sid, not_(plain))
    event_rank = _rank_in_sql(_EVENTS.c.status, STATUS_RANK, -1)  # as `_is_forward` ranks it
    # The send's status, then the plain callbacks unless one is not plain: the highest rank
    # wins, the send's on a tie (applied first, it leaves an equal rank not forward).
    candidates = union_all(
        select(_STATUS.label("status"), _RANK.label("rank"), literal_column("1").label("is_send")),
        select(_EVENTS.c.status, event_rank, literal_column("0"))
        .where(of_sid, plain, not_(left_over)),
    ).subquery("candidates")
    target = (select(candidates.c.status, candidates.c.rank)
              .order_by(candidates.c.rank.desc(), candidates.c.is_send.desc())
              .limit(1).cte("target"))
    forward = _forward_in_sql(select(target.c.rank).scalar_subquery())
    statement = (
        update(_MESSAGES)
        .where(_MESSAGES.c.id == bindparam("row_id", type_=Integer()))
        .values(message_sid=func.coalesce(_MESSAGES.c.message_sid, sid),
                status=case((forward, select(target.c.status).scalar_subquery()),
                            else_=_MESSAGES.c.status),
                status_at=case((forward, _NOW), else_=_MESSAGES.c.status_at))
        .returning(_MESSAGES.c.channel, _MESSAGES.c.units, _of_contact(_CONTACTS.c.account_id),
                   left_over.label("early"))
    )
    if not locking:
        return statement
    # The account is locked before the message row: an UPDATE locks its row when the WHERE
    # has held, and the WHERE needs the CTE's row, which it locks as it reads it.
    message = _MESSAGES.alias("sent")
    locked = (select(_ACCOUNTS.c.id)
              .join(_CONTACTS, _CONTACTS.c.account_id == _ACCOUNTS.c.id)
              .join(message, message.c.contact_id == _CONTACTS.c.id)
              .where(message.c.id == bindparam("row_id", type_=Integer()))
              .with_for_update(key_share=True, of=_ACCOUNTS)
              .cte("locked"))
    return statement.where(exists(select(locked.c.id)))


# apply_status: keep the event once per (sid, status), returning the sid's message (id,
# direction, status; each NULL when no message has the sid) and, only when none has it, the
# `unknown` row the callback adopts: the newest one to the recipient (:address on :channel)
# created since :since that has no sid; no row for a repeat. A `text()`: SQLAlchemy's dialect
# `insert().on_conflict_do_nothing()` opts out of its statement cache and would be compiled
# anew for every callback (see tokens.base.insert_on_conflict). The same SQL serves PostgreSQL
# and SQLite, PostgreSQL's with one more column (`_KEEP_EVENT_LOCKING`); a CASE evaluates its
# subquery only when its branch is taken.
def _keep_event(returning: str) -> Any:
    """`_KEEP_EVENT`: the event's `INSERT`, returning `returning` (a row for a new event)."""
    return text(
        "INSERT INTO message_status_events (message_sid, status, error_code, created_at) "
        "VALUES (:sid, :new_status, :code, :now) "
        "ON CONFLICT (message_sid, status) DO NOTHING RETURNING " + returning
    ).bindparams(bindparam("new_status", type_=_EVENTS.c.status.type),
                 bindparam("code", type_=_EVENTS.c.error_code.type),
                 bindparam("now", type_=_EVENTS.c.created_at.type), *_FOUND_PARAMS)


_ABSENT = "NOT EXISTS (SELECT 1 FROM messages WHERE messages.message_sid = :sid)"
# The sid's message (id, direction, status) and, when no message has the sid, the row to adopt.
_FOUND_EXPRESSIONS = (
    *(f"(SELECT messages.{column} FROM messages WHERE messages.message_sid = :sid)"
      for column in ("id", "direction", "status")),
    f"CASE WHEN {_ABSENT} THEN ("
    "SELECT adopted.id FROM messages AS adopted "
    "JOIN contacts AS recipient ON recipient.id = adopted.contact_id "
    "WHERE recipient.address = :address AND adopted.channel = :channel "
    "AND adopted.status = 'unknown' AND adopted.message_sid IS NULL "
    "AND adopted.created_at >= :since ORDER BY adopted.id DESC LIMIT 1) END")
_FOUND = ", ".join(_FOUND_EXPRESSIONS)
# PostgreSQL: when no message has the sid, take the recipient's `RECIPIENT_LOCK` (a strict
# function: no lock without an address).
_LOCKING = (f"CASE WHEN {_ABSENT} THEN (SELECT 1 FROM pg_advisory_xact_lock("
            f"{RECIPIENT_LOCK}, hashtext(:address))) END")
_FOUND_PARAMS = (bindparam("sid", type_=_EVENTS.c.message_sid.type),
                 bindparam("address", type_=_CONTACTS.c.address.type),
                 bindparam("channel", type_=_MESSAGES.c.channel.type),
                 bindparam("since", type_=_MESSAGES.c.created_at.type))
_KEEP_EVENT = _keep_event(_FOUND)
# PostgreSQL's adds a column that takes the recipient's lock when no message has the sid.
_KEEP_EVENT_LOCKING = _keep_event(_FOUND + ", " + _LOCKING)

# apply_status, on PostgreSQL, after `_KEEP_EVENT_LOCKING` found neither a message with the
# sid nor a row to adopt and took the recipient's lock: the same look-ups, as committed since.
_LOOK_AGAIN = text("SELECT " + _FOUND).bindparams(*_FOUND_PARAMS)

# record_send, on PostgreSQL: the recipient's `RECIPIENT_LOCK`, until the transaction ends.
_LOCK_RECIPIENT = text(f"SELECT pg_advisory_xact_lock({RECIPIENT_LOCK}, hashtext(:address))"
                       ).bindparams(bindparam("address", type_=_CONTACTS.c.address.type))

# apply_status: move the row forward (the order rule in the WHERE); a row when it moved.
_ADVANCE = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("row_id", type_=Integer()),
           _MESSAGES.c.direction == _sql("out"), _forward_in_sql(_RANK))
    .values(status=_STATUS, status_at=_NOW,
            error_code=func.coalesce(bindparam("code", type_=Integer()),
                                     _MESSAGES.c.error_code))
    .returning(_MESSAGES.c.id)
)


def _keep_and_advance() -> Any:
    """apply_status on PostgreSQL, for a plain forward status (neither a not-delivered end
    nor 21610): `_KEEP_EVENT_LOCKING` and `_ADVANCE` in one statement, as data-modifying
    CTEs. The `UPDATE` runs only when the event was new, on the message with the sid, under
    `_ADVANCE`'s order rule; it returns (the message's id, direction and status as they were,
    the row to adopt, the lock's column, the id of the row moved or NULL); no row for a
    repeat. Both CTEs read the statement's snapshot, so the status returned is the one
    before the move."""
    returned = (column("found_id", Integer()), column("found_direction", String()),
                column("found_status", String()), column("adopted_id", Integer()),
                column("locked", Integer()))
    names = [returned_column.name for returned_column in returned]
    kept = _keep_event(", ".join(
        f"{expression} AS {name}"
        for expression, name in zip((*_FOUND_EXPRESSIONS, _LOCKING), names, strict=True))
    ).columns(*returned).cte("kept")
    moved = (
        update(_MESSAGES)
        .where(_MESSAGES.c.message_sid == bindparam("sid", type_=_EVENTS.c.message_sid.type),
               _MESSAGES.c.direction == _sql("out"), _forward_in_sql(_RANK),
               exists(select(kept.c.found_id)))
        .values(status=_STATUS, status_at=_NOW,
                error_code=func.coalesce(bindparam("code", type_=Integer()),
                                         _MESSAGES.c.error_code))
        .returning(_MESSAGES.c.id)
        .cte("moved")
    )
    return select(*(kept.c[name] for name in names),
                  select(moved.c.id).scalar_subquery().label("moved_id"))


_KEEP_AND_ADVANCE = _keep_and_advance()
