"""A status callback racing the worker that stores its send's result, on PostgreSQL.

Twilio may call back while the worker is storing the sid its send returned. The callback then
finds no message with that sid, and the worker's statement cannot see the callback's event, kept
by a transaction that has not committed. Without an order between them the event is kept and
never applied: an `undelivered` paid reply keeps its charge. The recipient's advisory lock
(`bot.outbound.RECIPIENT_LOCK`) orders them: whichever comes second waits for the first to commit
and applies the event. SQLite needs no lock: `BEGIN IMMEDIATE` serialises its writers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session as DbSession

from app.extensions import bot_settings, db
from bot import outbound
from bot.models import Contact, Message
from tests.bot.test_outbound_statements import PHONE, stored_reply
from tokens import ledger

pytestmark = pytest.mark.backends("postgresql")
CODES = {"undelivered": 30005, "delivered": None}


def second_waits_for_first(app, first: DbSession,
                          second: Callable[[DbSession], object], waits: bool = True) -> list:
    """With `first` (a session that has done its part, uncommitted) open, run `second(session)`
    and commit in a thread with its own session; check that it waits for `first` (or, not
    `waits`, that it does not: `first` committed already), then commit `first`. Returns what
    `second` returned, or the error it raised, in a list."""
    outcome: list = []

    def run() -> None:
        try:
            with app.app_context():
                outcome.append(second(db.session))
                db.session.commit()
                db.session.remove()
        except BaseException as exc:  # surfaced by the caller's assertion on the outcome
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(0.5 if waits else 10)
    waited = thread.is_alive()
    first.commit()
    first.close()
    thread.join(10)
    assert waited == waits, outcome  # the second waited for the first one's commit, or not
    return outcome


def prepared(app, client, session) -> tuple[int, int, int, outbound.SendPlan]:
    """A paid reply claimed for sending: (its id, its account, the balance before a refund,
    the plan)."""
    reply = stored_reply(client, session)
    reply_id = reply.id
    account = session.get(Contact, reply.contact_id).account_id
    before = ledger.balance(session, account).available
    plan = outbound.plan_send(session, reply_id, outbound.OutboundSettings(),
                              bot_settings(app).catalog)
    session.commit()
    assert plan is not None
    return reply_id, account, before, plan


def charged(session, reply_id: int) -> int:
    inbound = session.get(Message, session.get(Message, reply_id).in_reply_to_id)
    return int(inbound.tokens_charged)


def ends(session, reply_id: int, account: int, before: int, state: str) -> None:
    session.expire_all()
    row = session.get(Message, reply_id)
    assert (row.message_sid, row.status) == ("SMrace", state)
    refund = charged(session, reply_id) if state == "undelivered" else 0
    assert ledger.balance(session, account).available == before + refund


@pytest.mark.parametrize("state", sorted(CODES))
def test_a_callback_while_the_send_result_is_being_stored_waits_and_is_applied(
        app, client, session, state):
    reply_id, account, before, plan = prepared(app, client, session)
    worker = DbSession(db.engine)
    outbound.record_send(worker, plan, outbound.Sent("SMrace", "queued"),
                         outbound.OutboundSettings(), bot_settings(app).catalog)
    assert second_waits_for_first(app, worker, lambda callback: outbound.apply_status(
        callback, outbound.StatusUpdate("SMrace", state, CODES[state], PHONE))) == [True]
    ends(session, reply_id, account, before, state)


@pytest.mark.parametrize("state", sorted(CODES))
@pytest.mark.parametrize("open_before", [True, False], ids=["in-a-transaction", "alone"])
def test_a_send_result_stored_while_a_callback_that_beat_it_commits_sees_it(
        app, client, session, state, open_before):
    reply_id, account, before, plan = prepared(app, client, session)
    callback = DbSession(db.engine)
    if open_before:  # the callback's statement is not the first of its transaction
        callback.connection()
    assert outbound.apply_status(  # kept for the send's result, not committed yet
        callback, outbound.StatusUpdate("SMrace", state, CODES[state], PHONE)) is False
    # Alone, a plain callback's statement committed on its own (its event, and the lock it
    # took, with it): the worker has nothing to wait for and sees the event.
    waits = open_before or state != "delivered"
    assert second_waits_for_first(app, callback, lambda worker: outbound.record_send(
        worker, plan, outbound.Sent("SMrace", "queued"), outbound.OutboundSettings(),
        bot_settings(app).catalog), waits=waits) == [None]
    ends(session, reply_id, account, before, state)


def test_a_callback_while_a_timed_out_send_is_being_stored_waits_and_adopts_it(
        app, client, session):
    """The send timed out, so the worker stores `unknown` with no sid; a callback for the sid
    Twilio did give the message comes meanwhile. It waits for the worker, then adopts the row
    (and its cost), instead of being kept for a sid nobody will store."""
    reply_id, account, before, plan = prepared(app, client, session)
    catalog = bot_settings(app).catalog
    worker = DbSession(db.engine)
    outbound.record_send(worker, plan, outbound.SendError("read timed out", timed_out=True),
                         outbound.OutboundSettings(), catalog)
    assert second_waits_for_first(app, worker, lambda callback: outbound.apply_status(
        callback, outbound.StatusUpdate("SMrace", "delivered", None, PHONE),
        catalog=catalog)) == [True]
    ends(session, reply_id, account, before, "delivered")
