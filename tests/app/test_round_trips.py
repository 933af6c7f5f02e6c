"""Round trips the worker and the webhook save on PostgreSQL (docs/pipeline.md,
"Transactions of one statement"):

- a transaction of one statement (the inbox's INSERT, the worker's inbox read, the send's
  claim) runs in autocommit mode, so the statement commits on its own, without the `BEGIN`
  and `COMMIT` round trips (`tokens.base.one_statement_transaction`);
- the routed message's inbox row is deleted by the statement that stores the message
  (`bot.inbox.TAKE_IN_CTE`), a repeat delivery's too; on SQLite by a `DELETE` of its own.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, text

from app import jobs
from app.extensions import bot_settings, db, outbound_settings
from bot import outbound
from bot.inbox import store_in_inbox
from bot.messages import InboundMessage, to_payload
from bot.models import InboxMessage, Message
from testing.deployment import SMS_FROM
from tests.support.statements import counted
from tokens.base import one_statement_transaction

PHONE = "+16505558894"


@pytest.fixture
def session(queued_app: Flask):
    return db.session


def inbound(text_: str, sid: str) -> InboundMessage:
    return InboundMessage(channel="sms", sender=PHONE, text=text_, message_sid=sid,
                          to=SMS_FROM)


def into_inbox(session, msg: InboundMessage) -> None:
    session.add(InboxMessage(message_sid=msg.message_sid, sender=msg.sender,
                             channel=msg.channel, payload=to_payload(msg)))
    session.commit()


def seen_elsewhere(sql: str, **params: Any) -> Any:
    """What another connection, outside the session's transaction, reads now."""
    with db.engine.connect() as other:
        return other.execute(text(sql), params).scalar()


def deletes_of_the_inbox(sent: list[str]) -> list[str]:
    return [s for s in sent if "delete from inbox" in " ".join(s.lower().split())]


def test_the_routed_message_takes_its_inbox_row(queued_app, session, twilio_api):
    into_inbox(session, inbound("BALANCE", "SMtake1"))
    with counted() as sent:
        assert jobs.answer_job("SMtake1") == "answered 1"
    assert session.scalar(select(InboxMessage)) is None
    assert session.scalar(select(Message.outcome).where(Message.message_sid == "SMtake1"))
    [delete] = deletes_of_the_inbox(sent)
    stores_message = "insert into messages" in " ".join(delete.lower().split())
    assert stores_message == (db.engine.dialect.name == "postgresql"), sent
    assert len(twilio_api.accepted) == 1


def test_a_repeat_delivery_takes_its_inbox_row_and_sends_nothing(queued_app, session,
                                                                  twilio_api):
    into_inbox(session, inbound("BALANCE", "SMtake2"))
    assert jobs.answer_job("SMtake2") == "answered 1"
    into_inbox(session, inbound("BALANCE", "SMtake2"))  # Twilio delivers it again
    assert jobs.answer_job("SMtake2") == "answered 1"
    assert session.scalar(select(InboxMessage)) is None
    assert len(twilio_api.accepted) == 1
    assert session.scalar(select(Message.id).where(Message.message_sid == "SMtake2"))


@pytest.mark.backends("postgresql")
def test_a_one_statement_transaction_commits_on_its_own(queued_app, session):
    assert store_in_inbox(session, inbound("hi", "SMalone1")) is not None
    # Not yet committed by the session, yet stored: the INSERT committed on its own.
    assert seen_elsewhere("SELECT count(*) FROM inbox WHERE message_sid = 'SMalone1'") == 1
    session.commit()
    # The connection went back to the pool in its default mode: a transaction again.
    session.execute(text("INSERT INTO inbox (message_sid, sender, channel, payload, "
                         "received_at) VALUES ('SMalone2', 'x', 'sms', '{}', now())"))
    assert seen_elsewhere("SELECT count(*) FROM inbox WHERE message_sid = 'SMalone2'") == 0
    assert one_statement_transaction(session) is False  # a transaction is open
    session.rollback()
    assert seen_elsewhere("SELECT count(*) FROM inbox WHERE message_sid = 'SMalone2'") == 0


@pytest.mark.backends("sqlite")
def test_sqlite_keeps_its_transactions(queued_app, session):
    assert one_statement_transaction(session) is False
    store_in_inbox(session, inbound("hi", "SMalone3"))
    session.rollback()
    assert session.scalar(select(InboxMessage)) is None


@pytest.mark.backends("postgresql")
def test_the_claim_commits_on_its_own_and_an_unclaimed_row_is_decided_apart(
        queued_app, session, twilio_api):
    into_inbox(session, inbound("BALANCE", "SMclaim1"))
    jobs.answer_job("SMclaim1")
    inbound_row = session.scalar(select(Message).where(Message.message_sid == "SMclaim1"))
    reply = Message(contact_id=inbound_row.contact_id, direction="out", channel="sms",
                    body="one more", units=1, in_reply_to_id=inbound_row.id,
                    status="pending")
    session.add(reply)
    session.flush()
    reply_id = reply.id
    options, catalog = outbound_settings(queued_app), bot_settings(queued_app).catalog
    session.commit()  # no transaction open now, as in the worker
    plan = outbound.plan_send(session, reply_id, options, catalog)
    assert plan is not None and plan.message_id == reply_id
    status = "SELECT status FROM messages WHERE id = :id"
    assert seen_elsewhere(status, id=reply_id) == "submitting"  # before the caller's commit
    session.commit()
    # A row the claim does not take (no longer pending) goes the locked way, in a
    # transaction of its own, and is not sent.
    assert outbound.plan_send(session, reply_id, options, catalog) is None
    session.commit()
    assert seen_elsewhere(status, id=reply_id) == "submitting"


@pytest.mark.backends("postgresql")
def test_a_plain_callback_is_one_statement_that_commits_on_its_own(
        queued_app, session, twilio_api):
    into_inbox(session, inbound("BALANCE", "SMcb1"))
    assert jobs.answer_job("SMcb1") == "answered 1"
    [accepted] = twilio_api.accepted
    sid = accepted["sid"]
    session.commit()  # no transaction open now, as in the status callback's request
    status = "SELECT status FROM messages WHERE message_sid = :sid"
    events = "SELECT count(*) FROM message_status_events WHERE message_sid = :sid"
    with counted(begin=True) as sent:
        assert outbound.apply_status(
            session, outbound.StatusUpdate(sid, "delivered", None, PHONE)) is True
    assert len(sent) == 1, sent  # the event kept and the row moved by one statement
    # Before the caller's commit, both are stored: the statement committed on its own.
    assert seen_elsewhere(status, sid=sid) == "delivered"
    assert seen_elsewhere(events, sid=sid) == 1
    session.commit()
    # A not-delivered end goes under the account's lock in a transaction: nothing is seen
    # before the commit.
    assert outbound.apply_status(
        session, outbound.StatusUpdate(sid, "undelivered", 30005, PHONE)) is False  # final
    assert seen_elsewhere(events, sid=sid) == 1
    session.commit()
    assert seen_elsewhere(events, sid=sid) == 2
