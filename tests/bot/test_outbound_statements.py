"""How many SQL statements `bot.outbound` sends on the hot path: one send of a stored reply,
and the status callbacks that follow it (bot/outbound.py, "Statements").

Counted with the engine's `before_cursor_execute` event, so everything the database receives is
counted, SQLite's `BEGIN IMMEDIATE` (one per transaction) included. The messaging cost is
`tokens.costs.record_messaging` (one statement on PostgreSQL, at most three on SQLite).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from app.extensions import bot_settings, db
from bot import outbound
from bot.models import Contact, Message, MessageStatusEvent
from testing.deployment import post_signed
from testing.payloads import sms, twilio_fields
from tests.support.statements import counted
from tokens.costs import CostEntry

PHONE = "+16505558893"
STATUS_PATH = "/webhooks/twilio/status"
DELIVERED_SMS = "sms_status_delivered__vendor_doc_sample.json"

# Upper bounds, per backend. SQLite adds its `BEGIN IMMEDIATE` to every transaction.
# claim; the recipient's lock (PostgreSQL, bot.outbound.RECIPIENT_LOCK); store the sid; the
# cost (1 on PostgreSQL, 3 on SQLite)
SEND = {"postgresql": 4, "sqlite": 7}
FORWARD = {"postgresql": 1, "sqlite": 3}  # keep the event; move the row (one statement on PG)
NOT_FORWARD = {"postgresql": 1, "sqlite": 2}  # keep the event (or find it kept)
# A callback no message has the sid of yet: keep the event (taking the recipient's lock on
# PostgreSQL), then look for the sid once more, as committed once the lock was ours.
EARLY = {"postgresql": 2, "sqlite": 2}
RECORD = {"postgresql": 3, "sqlite": 5}  # SEND without the claim


class Accepting:
    """A provider that accepts every send as "queued", with sids SM000...1, SM000...2, ..."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, **call: Any) -> outbound.Sent:
        self.sent.append(call)
        return outbound.Sent(f"SM{len(self.sent):032d}", "queued")


def backend() -> str:
    return db.engine.dialect.name


def stored_reply(client, session, *, channel: str = "sms") -> Message:
    """A paid answer's reply stored `pending`, as the router stores it for REST (no cost yet)."""
    post_signed(client, sms("meal plan", sender=PHONE))
    inbound = session.scalar(select(Message).where(Message.direction == "in"))
    reply = Message(contact_id=inbound.contact_id, direction="out", channel=channel,
                    body="Your meal plan: oats, lentils, greens.", units=1,
                    in_reply_to_id=inbound.id, status="pending")
    session.add(reply)
    session.commit()
    return reply


def send(app, session, message_id: int, sender: Accepting) -> None:
    """The job's send of one row (app.jobs.send_pending): plan, commit, call, record, commit."""
    options = outbound.OutboundSettings()
    catalog = bot_settings(app).catalog
    plan = outbound.plan_send(session, message_id, options, catalog)
    session.commit()
    assert plan is not None
    result = outbound.attempt_send(sender, plan, options)
    assert outbound.record_send(session, plan, result, options, catalog) is None
    session.commit()


def callback(session, sid: str, status: str) -> bool:
    changed = outbound.apply_status(session, outbound.StatusUpdate(sid, status, None, PHONE))
    session.commit()
    return changed


def test_pending_outbound_is_one_statement(client, session):
    reply = stored_reply(client, session)
    reply_id, inbound_id = reply.id, reply.in_reply_to_id
    session.commit()
    with counted(begin=True) as statements:
        ids = outbound.pending_outbound(session, inbound_id)
        session.commit()
    assert ids == [reply_id]
    assert len(statements) <= {"postgresql": 1, "sqlite": 2}[backend()], statements


def test_one_send_of_a_stored_reply(app, client, session):
    reply = stored_reply(client, session)
    reply_id, body = reply.id, reply.body
    session.commit()
    sender = Accepting()
    with counted(begin=True) as statements:
        send(app, session, reply_id, sender)
    assert len(statements) <= SEND[backend()], statements

    [call] = sender.sent
    assert (call["channel"], call["to"], call["body"]) == ("sms", PHONE, body)
    session.expire_all()
    row = session.get(Message, reply_id)
    assert (row.message_sid, row.status) == ("SM" + "0" * 31 + "1", "queued")
    assert session.scalar(select(func.count()).select_from(CostEntry)
                          .where(CostEntry.idempotency_key == f"msg:out:{reply_id}")) == 1
    # Sent once: the row is no longer pending, so a second job finds nothing to send.
    options = outbound.OutboundSettings()
    assert outbound.plan_send(session, reply_id, options,
                              bot_settings(app).catalog) is None
    session.commit()


def test_a_loaded_row_sees_the_send(app, client, session):
    """The Core statements bypass the ORM; a row loaded in the session is not left stale."""
    reply = stored_reply(client, session)
    options = outbound.OutboundSettings()
    catalog = bot_settings(app).catalog
    assert reply.status == "pending"  # loaded
    plan = outbound.plan_send(session, reply.id, options, catalog)
    assert plan is not None and reply.status == "submitting"
    outbound.record_send(session, plan, outbound.Sent("SMloaded", "queued"), options, catalog)
    assert (reply.message_sid, reply.status) == ("SMloaded", "queued")
    session.commit()


def test_status_callbacks_sent_delivered_and_a_repeat(app, client, session):
    reply = stored_reply(client, session)
    reply_id = reply.id
    session.commit()
    send(app, session, reply_id, Accepting())
    sid = "SM" + "0" * 31 + "1"
    bounds = backend()

    with counted(begin=True) as statements:
        assert callback(session, sid, "sent") is True
    assert len(statements) <= FORWARD[bounds], statements
    with counted(begin=True) as statements:
        assert callback(session, sid, "delivered") is True
    assert len(statements) <= FORWARD[bounds], statements
    with counted(begin=True) as statements:
        assert callback(session, sid, "delivered") is False  # Twilio's retry: kept once
    assert len(statements) <= NOT_FORWARD[bounds], statements
    with counted(begin=True) as statements:
        assert callback(session, sid, "queued") is False  # late and older: ignored
    assert len(statements) <= NOT_FORWARD[bounds], statements

    session.expire_all()
    assert session.get(Message, reply_id).status == "delivered"
    kept = session.scalars(select(MessageStatusEvent.status)
                           .where(MessageStatusEvent.message_sid == sid)).all()
    assert sorted(kept) == ["delivered", "queued", "sent"]


def test_callbacks_that_beat_the_send_result_cost_no_statement_more(app, client, session):
    """Twilio may call back before the worker stores the send's sid: each such callback is
    kept in its statement (nothing to adopt; on PostgreSQL one more looks for the sid after
    the recipient's lock), and storing the sid applies them in its own `UPDATE`, with no
    statement more than a send nobody called back about."""
    reply = stored_reply(client, session)
    reply_id = reply.id
    session.commit()
    options = outbound.OutboundSettings()
    catalog = bot_settings(app).catalog
    plan = outbound.plan_send(session, reply_id, options, catalog)
    session.commit()
    assert plan is not None
    sid = "SM" + "b" * 32
    bounds = backend()
    for state in ("sent", "delivered"):
        with counted(begin=True) as statements:
            assert callback(session, sid, state) is False  # kept for the send's result
        assert len(statements) <= EARLY[bounds], statements
    with counted(begin=True) as statements:
        outbound.record_send(session, plan, outbound.Sent(sid, "queued"), options, catalog)
        session.commit()
    assert len(statements) <= RECORD[bounds], statements
    session.expire_all()
    row = session.get(Message, reply_id)
    assert (row.message_sid, row.status) == (sid, "delivered")


def test_the_status_webhook_end_to_end(app, client, session):
    reply = stored_reply(client, session)
    reply_id = reply.id
    session.commit()
    send(app, session, reply_id, Accepting())
    sid = "SM" + "0" * 31 + "1"
    fields = twilio_fields(DELIVERED_SMS, MessageSid=sid, SmsSid=sid, To=PHONE)
    with counted(begin=True) as statements:
        assert post_signed(client, fields, path=STATUS_PATH).status_code == 204
    assert len(statements) <= FORWARD[backend()], statements
    with counted(begin=True) as statements:
        assert post_signed(client, fields, path=STATUS_PATH).status_code == 204
    assert len(statements) <= NOT_FORWARD[backend()], statements
    session.expire_all()
    assert session.get(Message, reply_id).status == "delivered"


@pytest.mark.parametrize("status", ["undelivered", "failed"])
def test_a_not_delivered_end_still_reverses_the_charge(app, client, session, status):
    """The slow path (the account's lock, the refund) is kept for what the fast one skips."""
    from tokens import ledger

    reply = stored_reply(client, session)
    reply_id = reply.id
    account = session.get(Contact, reply.contact_id).account_id
    inbound = session.get(Message, reply.in_reply_to_id)
    charged = inbound.tokens_charged
    assert charged > 0
    before = ledger.balance(session, account).available
    send(app, session, reply_id, Accepting())
    assert callback(session, "SM" + "0" * 31 + "1", status) is True
    session.expire_all()
    assert session.get(Message, reply_id).status == status
    assert ledger.balance(session, account).available == before + charged


@pytest.mark.backends("postgresql")
def test_storing_a_send_waits_for_the_account_lock(app, client, session):
    """`record_send` writes the cost rollups, so it takes the person's account lock (inside its
    UPDATE on PostgreSQL) before writing: it waits for a webhook of the same person."""
    import threading

    from sqlalchemy.orm import Session as DbSession

    from tokens import ledger

    reply = stored_reply(client, session)
    reply_id = reply.id
    account = session.get(Contact, reply.contact_id).account_id
    options = outbound.OutboundSettings()
    catalog = bot_settings(app).catalog
    plan = outbound.plan_send(session, reply_id, options, catalog)
    session.commit()
    assert plan is not None
    webhook = DbSession(db.engine)
    ledger.lock_account(webhook, account)
    errors: list[BaseException] = []

    def store() -> None:
        try:
            with app.app_context():
                outbound.record_send(db.session, plan, outbound.Sent("SMwaits", "queued"),
                                     options, catalog)
                db.session.commit()
                db.session.remove()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=store)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive()  # waiting on the account lock
    webhook.commit()
    webhook.close()
    thread.join(10)
    assert not errors
    session.expire_all()
    assert session.get(Message, reply_id).message_sid == "SMwaits"
