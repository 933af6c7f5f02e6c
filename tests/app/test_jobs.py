"""`app.jobs` called directly (not through the worker), with Redis, the Twilio stand-in and
OpenAI stand-in of `queued_app`: `answer_job` answers an inbox row once (a retry has nothing
to do), hands over when another job holds the person's turn; `sender_of` says whether
anything is left for a message; `answer_inline` answers for TwiML without REST; `deliver` /
`send_pending` send only `pending` rows, in order, through `twilio_sender` (the app's sender
or a test's). Inbox rows and messages are made directly, not by the webhook.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app import jobs
from app.queue import redis_connection
from app.turns import PersonTurn
from bot import outbound
from bot.channels.twilio import TwilioRestSender
from bot.contacts import resolve_contact
from bot.messages import InboundMessage, to_payload
from bot.models import Contact, InboxMessage, Message
from testing.deployment import SMS_FROM

PHONE = "+16505558893"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
def session(queued_app: Flask):
    """The queued app's session (the shared `session` fixture would push another app)."""
    from app.extensions import db

    return db.session


class Recording:
    """A sender that accepts everything ("queued") and records the calls."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, **call: Any) -> outbound.Sent:
        self.sent.append(call)
        return outbound.Sent(f"SMrec{len(self.sent)}", "queued")


def inbound(text: str, sid: str, sender: str = PHONE) -> InboundMessage:
    return InboundMessage(channel="sms", sender=sender, text=text, message_sid=sid, to=SMS_FROM)


def into_inbox(session, msg: InboundMessage) -> None:
    """What the webhook stores with Redis configured (before it enqueues the job)."""
    session.add(InboxMessage(message_sid=msg.message_sid, sender=msg.sender,
                             channel=msg.channel, payload=to_payload(msg)))
    session.commit()


def routed(session, sid: str, *, outcome: str = "answered",
           replies: tuple[str, ...] = ()) -> tuple[Message, list[int]]:
    """A routed inbound message of PHONE and its replies, with the given statuses."""
    contact = resolve_contact(session, PHONE, NOW)
    message = Message(contact_id=contact.id, direction="in", channel="sms", body="hi",
                      message_sid=sid, outcome=outcome, created_at=NOW)
    session.add(message)
    session.flush()
    ids = []
    for n, state in enumerate(replies):
        reply = Message(contact_id=contact.id, direction="out", channel="sms",
                        body=f"reply {n}", units=1, in_reply_to_id=message.id, status=state,
                        created_at=NOW)
        session.add(reply)
        session.flush()
        ids.append(reply.id)
    session.commit()
    return message, ids


def test_answer_job_answers_an_inbox_row_once(queued_app, session, twilio_api):
    into_inbox(session, inbound("BALANCE", "SMjob1"))
    assert jobs.sender_of(session, "SMjob1") == PHONE
    assert jobs.answer_job("SMjob1") == "answered 1"
    [send] = twilio_api.accepted
    assert send["To"] == PHONE and "You have 100 tokens" in send["Body"]
    assert session.scalar(select(InboxMessage)) is None  # taken from the inbox
    stored = session.scalar(select(Message).where(Message.message_sid == "SMjob1"))
    [reply] = session.scalars(select(Message).where(Message.in_reply_to_id == stored.id)).all()
    assert reply.message_sid == send["sid"] and reply.status != "pending"
    # An RQ retry, or the job of a message already answered: nothing left, nothing sent.
    assert jobs.sender_of(session, "SMjob1") is None
    assert jobs.answer_job("SMjob1") == "nothing to do"
    assert jobs.answer_job("SMnever") == "nothing to do"
    assert len(twilio_api.sent) == 1


def test_one_job_answers_the_persons_waiting_messages_in_order(queued_app, session,
                                                               twilio_api):
    into_inbox(session, inbound("BALANCE", "SMorder1"))
    into_inbox(session, inbound("HELP", "SMorder2"))
    into_inbox(session, inbound("BALANCE", "SMother1", sender="+16505550000"))
    assert jobs.answer_job("SMorder2") == "answered 2"  # the person's, oldest first
    assert [s["To"] for s in twilio_api.accepted] == [PHONE] * len(twilio_api.accepted)
    assert "You have 100 tokens" in twilio_api.accepted[0]["Body"]
    answered = session.scalars(select(Message.message_sid).where(Message.direction == "in")
                               .order_by(Message.id)).all()
    assert answered == ["SMorder1", "SMorder2"]
    # Another person's message waits for its own job.
    assert session.scalars(select(InboxMessage.message_sid)).all() == ["SMother1"]


def test_a_job_hands_over_to_the_one_holding_the_persons_turn(queued_app, session,
                                                              twilio_api):
    holder = PersonTurn(redis_connection(queued_app), PHONE)
    assert holder.knock("SMholder")
    into_inbox(session, inbound("BALANCE", "SMjob2"))
    assert jobs.answer_job("SMjob2") == "handed over"
    assert twilio_api.sent == []
    assert session.scalar(select(InboxMessage.message_sid)) == "SMjob2"  # still waiting
    # The holder is told: this message knocked while it held the turn.
    assert holder.take_waiting() == ["SMholder"]
    assert holder.take_waiting() == ["SMjob2"]
    assert holder.leave()
    assert jobs.answer_job("SMjob2") == "answered 1"  # once the turn is free


def test_sender_of_knows_what_is_left_to_do_for_a_routed_message(queued_app, session):
    routed(session, "SMdone", replies=("queued",))
    routed(session, "SMunsent", replies=("sent", "pending"))
    routed(session, "SMdeferred", outcome="queued")
    assert jobs.sender_of(session, "SMdone") is None
    assert jobs.sender_of(session, "SMunsent") == PHONE
    assert jobs.sender_of(session, "SMdeferred") == PHONE
    assert jobs.sender_of(session, "SMunknown") is None


def test_answer_inline_answers_for_twiml_without_rest(queued_app, session, twilio_api):
    into_inbox(session, inbound("BALANCE", "SMinline"))
    inbox_id = session.scalar(select(InboxMessage.id))
    outcome = jobs.answer_inline(queued_app, inbound("BALANCE", "SMinline"), inbox_id)
    session.commit()
    assert outcome.kind == "balance"
    assert any("You have 100 tokens" in reply for reply in outcome.replies)
    assert twilio_api.sent == []  # the web process answers in TwiML
    assert session.scalar(select(InboxMessage)) is None
    assert session.scalar(select(Contact.address)) == PHONE
    assert jobs.answer_job("SMinline") == "nothing to do"


def test_send_pending_sends_only_pending_rows_in_order(queued_app, session):
    sender = Recording()
    queued_app.extensions["sender"] = sender
    assert jobs.twilio_sender(queued_app) is sender
    message, ids = routed(session, "SMsend", replies=("pending", "queued", "pending"))
    assert jobs.send_pending(queued_app, session, [ids[2], ids[1], ids[0]]) == 2
    assert [call["body"] for call in sender.sent] == ["reply 2", "reply 0"]
    session.expire_all()
    assert [session.get(Message, i).message_sid for i in ids] == ["SMrec2", None, "SMrec1"]
    # Sent rows are not pending any more: `deliver` of a resumed answer finds nothing.
    assert jobs.deliver(queued_app, session, message.id) == 0
    assert len(sender.sent) == 2


def test_deliver_reads_a_resumed_answers_pending_replies(queued_app, session):
    sender = Recording()
    queued_app.extensions["sender"] = sender
    message, ids = routed(session, "SMresume", replies=("pending", "pending"))
    assert jobs.deliver(queued_app, session, message.id) == 2
    assert [call["to"] for call in sender.sent] == [PHONE, PHONE]
    session.expire_all()
    assert [session.get(Message, i).status for i in ids] == ["queued", "queued"]


def test_the_apps_twilio_sender_is_built_once_from_its_config(queued_app, twilio_api):
    queued_app.extensions.pop("sender", None)
    sender = jobs.twilio_sender(queued_app)
    assert isinstance(sender, TwilioRestSender)
    assert jobs.twilio_sender(queued_app) is sender
    sent = sender.send(channel="sms", to=PHONE, body="hello")
    [request] = twilio_api.accepted
    assert (request["sid"], request["To"], request["From"], request["Body"]) == (
        sent.sid, PHONE, SMS_FROM, "hello")


def test_the_twilio_sender_keeps_a_connection_per_send_in_flight(queued_app):
    # requests keeps 10 connections a host by default: with more sends in flight, the others
    # would be closed after each send and the next would pay a new TLS handshake.
    queued_app.extensions.pop("sender", None)
    sender = jobs.twilio_sender(queued_app)
    assert isinstance(sender, TwilioRestSender)
    http_client = sender.client.http_client
    for url in ("https://api.twilio.com/2010-04-01/Accounts", http_client.base.geturl()):
        adapter = http_client.session.get_adapter(url)
        assert adapter._pool_maxsize == queued_app.config["WORKER_CONCURRENCY"] > 10
