"""`POST /webhooks/twilio/status`: signed, deduped, forward-only, and paid replies that were not
delivered give their tokens back. The payloads are the real callbacks in fixtures/twilio."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.extensions import bot_settings
from bot import outbound
from bot.models import Contact, Message, MessageStatusEvent
from testing.deployment import post_signed
from testing.payloads import sms, twilio_fields, whatsapp
from tests.tokens.ledger_checks import assert_consistent
from tokens import costs, ledger
from tokens.base import utcnow

STATUS_PATH = "/webhooks/twilio/status"
DELIVERED_SMS = "sms_status_delivered__vendor_doc_sample.json"
WA_SENT = "whatsapp_status_sent__botbuilder_test.json"
WA_DELIVERED = "whatsapp_status_delivered__botbuilder_test.json"
WA_READ = "whatsapp_status_read__bottender_test.json"
WA_FAILED = "whatsapp_status_failed_63016__100eyes_fixture.json"


def paid_reply(client, session, app, *, channel: str, sid: str) -> Message:
    """A priced message answered (5 tokens charged) whose reply went out by REST with `sid`."""
    fields = whatsapp("meal plan") if channel == "whatsapp" else sms("meal plan")
    post_signed(client, fields)
    inbound = session.scalar(select(Message).where(Message.direction == "in"))
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    assert inbound.tokens_charged == 5
    reply.message_sid = sid
    reply.status = "queued"
    session.commit()
    return reply


def status(client, fixture: str, **changes: str):
    return post_signed(client, twilio_fields(fixture, **changes), path=STATUS_PATH)


def test_a_bad_signature_is_refused_and_nothing_is_stored(client, session):
    fields = twilio_fields(DELIVERED_SMS)
    response = client.post(STATUS_PATH, data=fields, headers={"X-Twilio-Signature": "bad"})
    assert response.status_code == 403
    assert session.scalar(select(func.count()).select_from(MessageStatusEvent)) == 0


def test_a_form_without_a_status_is_a_400_with_the_reason(client):
    fields = twilio_fields(DELIVERED_SMS)
    del fields["MessageStatus"], fields["SmsStatus"]
    response = post_signed(client, fields, path=STATUS_PATH)
    assert response.status_code == 400
    assert "MessageStatus" in response.get_data(as_text=True)


def test_an_unknown_sid_is_taken_and_ignored(client, session):
    assert status(client, DELIVERED_SMS).status_code == 204
    assert session.scalar(select(func.count()).select_from(MessageStatusEvent)) == 1


def test_status_moves_forward_only(client, session, app):
    sid = twilio_fields(WA_SENT)["MessageSid"]
    reply = paid_reply(client, session, app, channel="whatsapp", sid=sid)
    assert status(client, WA_DELIVERED, MessageSid=sid, SmsSid=sid).status_code == 204
    assert status(client, WA_SENT).status_code == 204  # late "sent": ignored
    session.refresh(reply)
    assert reply.status == "delivered"
    assert status(client, WA_READ, MessageSid=sid, SmsSid=sid).status_code == 204
    session.refresh(reply)
    assert reply.status == "read"
    # A repeat of a (sid, status) pair is stored once.
    status(client, WA_READ, MessageSid=sid, SmsSid=sid)
    assert session.scalar(
        select(func.count()).select_from(MessageStatusEvent)
        .where(MessageStatusEvent.message_sid == sid)
    ) == 3


def test_an_undelivered_paid_reply_gives_its_tokens_back_once(client, session, app):
    sid = twilio_fields(WA_FAILED)["MessageSid"]
    reply = paid_reply(client, session, app, channel="whatsapp", sid=sid)
    contact = session.get(Contact, reply.contact_id)
    account = contact.account_id
    assert ledger.balance(session, account).available == 95

    assert status(client, WA_FAILED).status_code == 204
    session.expire_all()
    reply = session.get(Message, reply.id)
    assert (reply.status, reply.error_code) == ("failed", 63016)
    assert ledger.balance(session, account).available == 100
    assert costs.month(session, account).tokens_charged == 0
    # Twilio retries the callback, and a late "delivered" cannot undo "failed".
    status(client, WA_FAILED)
    status(client, WA_DELIVERED, MessageSid=sid, SmsSid=sid)
    session.expire_all()
    assert session.get(Message, reply.id).status == "failed"
    assert ledger.balance(session, account).available == 100
    refunds = [line.entry for line in ledger.history(session, account)
               if line.entry.kind == "reversal"]
    assert sum(e.amount for e in refunds) == 5
    assert_consistent(session, account)


def test_a_delivered_sms_keeps_its_charge(client, session, app):
    sid = twilio_fields(DELIVERED_SMS)["MessageSid"]
    reply = paid_reply(client, session, app, channel="sms", sid=sid)
    assert status(client, DELIVERED_SMS).status_code == 204
    session.refresh(reply)
    assert reply.status == "delivered"
    contact = session.get(Contact, reply.contact_id)
    assert ledger.balance(session, contact.account_id).available == 95


def test_21610_in_a_callback_marks_the_channel_opted_out(client, session, app):
    sid = "SM" + "1" * 32
    reply = paid_reply(client, session, app, channel="sms", sid=sid)
    fields = twilio_fields(DELIVERED_SMS, MessageSid=sid, SmsSid=sid, MessageStatus="undelivered",
                           SmsStatus="undelivered", ErrorCode="21610")
    assert post_signed(client, fields, path=STATUS_PATH).status_code == 204
    session.expire_all()
    contact = session.get(Contact, reply.contact_id)
    assert contact.sms_opted_out_at is not None
    assert session.get(Message, reply.id).status == "undelivered"
    assert ledger.balance(session, contact.account_id).available == 100


def test_a_free_reply_that_fails_reverses_nothing(client, session):
    post_signed(client, sms("BALANCE"))
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    reply.message_sid, reply.status = "SMfree", "queued"
    session.commit()
    fields = twilio_fields(DELIVERED_SMS, MessageSid="SMfree", SmsSid="SMfree",
                           MessageStatus="failed", SmsStatus="failed", ErrorCode="30003")
    post_signed(client, fields, path=STATUS_PATH)
    session.expire_all()
    assert session.get(Message, reply.id).status == "failed"
    contact = session.get(Contact, reply.contact_id)
    assert ledger.balance(session, contact.account_id).available == 100
    assert not [line for line in ledger.history(session, contact.account_id)
                if line.entry.kind == "reversal"]


@pytest.mark.parametrize(
    ("hours_since_inbound", "template", "expected"),
    [(1, None, "send"), (25, None, "skipped"), (25, "HX" + "b" * 32, "template")],
)
def test_the_whatsapp_24_hour_window(client, session, app, hours_since_inbound, template,
                                     expected):
    """Free-form WhatsApp only within 24 h of the person's last message; after it, the
    approved template (the answer waits for MORE), or skip and give the tokens back."""
    post_signed(client, whatsapp("meal plan"))
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    reply.status = "pending"
    contact = session.get(Contact, reply.contact_id)
    # The last message is moved back rather than the send forward: a send 25 h later would
    # fall in the next month on a month's last day, past the free tokens' expiry.
    now = utcnow()
    contact.whatsapp_last_inbound_at = now - timedelta(hours=hours_since_inbound)
    session.commit()
    options = outbound.OutboundSettings(whatsapp_template_sid=template)
    catalog = bot_settings(app).catalog
    plan = outbound.plan_send(session, reply.id, options, catalog, now=now)
    session.commit()
    balance = ledger.balance(session, contact.account_id, now).available
    if expected == "send":
        assert plan is not None and plan.body == reply.body and not plan.is_template
        assert balance == 95
    elif expected == "skipped":
        assert plan is None
        session.refresh(reply)
        assert (reply.status, reply.error_code) == ("skipped", 63016)
        assert balance == 100
    else:
        assert plan is not None and plan.content_sid == template and plan.body is None
        session.refresh(contact)
        assert contact.more_text == reply.body
        assert balance == 95


def test_settle_is_not_repeated_for_a_captured_hold(client, session, app):
    """A job that runs twice cannot charge twice: the second finds no pending answer."""
    from bot.router import pending_answer

    settings = bot_settings(app)
    post_signed(client, sms("meal plan", sid="SMonce"))
    assert pending_answer(session, "SMonce", settings) is None
    assert pending_answer(session, "SMnever", settings) is None


@pytest.mark.parametrize("with_to", [True, False])
def test_a_callback_that_beats_the_send_result_is_not_lost(client, session, app, with_to):
    """Twilio may call back before the worker stores the sid. The row is `submitting`, so the
    callback does not adopt it (only a timed-out `unknown` row is adopted); the kept event is
    applied when the sid is stored, and the status ends forward ("delivered"), never back at
    "queued"."""
    post_signed(client, sms("meal plan"))
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    reply.status = "pending"
    session.commit()
    options = outbound.OutboundSettings()
    catalog = bot_settings(app).catalog
    plan = outbound.plan_send(session, reply.id, options, catalog)
    session.commit()
    assert plan is not None and session.get(Message, reply.id).status == "submitting"

    sid = "SM" + "e" * 32
    to = "+16505558893" if with_to else None
    assert outbound.apply_status(session, outbound.StatusUpdate(sid, "delivered", None, to)) \
        is False
    session.commit()
    outbound.record_send(session, plan, outbound.Sent(sid, "queued"), options, catalog)
    session.commit()
    session.expire_all()
    row = session.get(Message, reply.id)
    assert (row.message_sid, row.status) == (sid, "delivered")


def test_unconfirmed_sends_are_given_up_and_their_charge_reversed(client, session, app):
    """A send that timed out and that no callback confirmed within the sweep's delay fails,
    and a paid reply's tokens come back (nobody pays for a reply they did not get)."""
    post_signed(client, sms("meal plan"))
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    contact = session.get(Contact, reply.contact_id)
    reply.status, reply.status_at = "unknown", reply.created_at
    session.commit()
    assert ledger.balance(session, contact.account_id).available == 95
    later = reply.created_at + timedelta(minutes=14)
    assert outbound.give_up_unconfirmed(session, timedelta(minutes=15), later) == 0
    later = reply.created_at + timedelta(minutes=16)
    assert outbound.give_up_unconfirmed(session, timedelta(minutes=15), later) == 1
    session.commit()
    session.expire_all()
    assert session.get(Message, reply.id).status == "failed"
    assert ledger.balance(session, contact.account_id).available == 100
    assert outbound.give_up_unconfirmed(session, timedelta(minutes=15), later) == 0


@pytest.mark.backends("postgresql")
def test_a_callback_waits_for_a_webhook_of_the_same_person(client, session, app):
    """A webhook holds the person's account row and writes their contact; a 21610 callback
    for their paid reply arrives meanwhile. It waits for the account lock (taken first
    everywhere) instead of deadlocking, then opts the channel out and refunds."""
    import threading

    from sqlalchemy.orm import Session as DbSession

    from app.extensions import db

    sid = "SM" + "7" * 32
    reply = paid_reply(client, session, app, channel="sms", sid=sid)
    contact_id, account = reply.contact_id, session.get(Contact, reply.contact_id).account_id
    webhook = DbSession(db.engine)
    ledger.lock_account(webhook, account)
    webhook.get(Contact, contact_id).last_channel = "sms"
    webhook.flush()
    errors: list[BaseException] = []

    def callback() -> None:
        try:
            with app.app_context():
                update = outbound.StatusUpdate(sid, "undelivered", 21610, None)
                outbound.apply_status(db.session, update)
                db.session.commit()
                db.session.remove()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=callback)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive()  # waiting on the account lock
    webhook.commit()
    webhook.close()
    thread.join(10)
    assert not errors
    session.expire_all()
    assert session.get(Contact, contact_id).sms_opted_out_at is not None
    assert ledger.balance(session, account).available == 100
