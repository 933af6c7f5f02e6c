"""`bot.outbound` called directly with a fake sender: a stored reply planned, sent and recorded
once; skips (opted out, outside the WhatsApp window) and refusals that give a paid reply's
tokens back once; the template outside the window; retries of 429/5xx only; a timed-out send
left `unknown` (never resent) and adopted by its status callback; status callbacks kept once
and moving forward only; `give_up_unconfirmed`. Rows are made directly (account, contact, a
paid inbound message, its reply), not through the webhook. The statement counts are in
tests/bot/test_outbound_statements.py.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot import outbound
from bot.models import Contact, Message, MessageStatusEvent
from tests.tokens.ledger_checks import assert_consistent
from tokens import ledger
from tokens.catalog import load_catalog
from tokens.costs import CostEntry

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
PHONE = "+16505558893"
CATALOG = load_catalog()
PLAIN = outbound.OutboundSettings(max_attempts=3, backoff_seconds=0.0)
TEMPLATE = outbound.OutboundSettings(whatsapp_template_sid="HX" + "0" * 32, backoff_seconds=0.0)
CHARGE = 2
_people = itertools.count()


class Scripted:
    """A provider answering each send with the next of `answers` (a `Sent`, or a `SendError`
    to raise); "queued" sends with sids SM...1, SM...2 once the script runs out."""

    def __init__(self, *answers: outbound.Sent | outbound.SendError) -> None:
        self.answers = list(answers)
        self.sent: list[dict[str, Any]] = []

    def send(self, **call: Any) -> outbound.Sent:
        self.sent.append(call)
        answer = self.answers.pop(0) if self.answers else outbound.Sent(
            f"SM{len(self.sent):032d}", "queued")
        if isinstance(answer, outbound.SendError):
            raise answer
        return answer


@dataclass
class Paid:
    """A person who paid CHARGE tokens for an answer, and its stored replies."""

    account_id: int
    contact_id: int
    inbound_id: int
    replies: list[int]


def paid_answer(session, *, channel: str = "sms", bodies: tuple[str, ...] = ("Oats.",),
                last_inbound: datetime | None = NOW, address: str = PHONE) -> Paid:
    account_id = ledger.open_account(session, NOW).id
    ledger.grant(session, account_id, 100, key=f"start:{account_id}", now=NOW)
    contact = Contact(address=address, account_id=account_id, created_at=NOW,
                      last_channel=channel, last_inbound_at=last_inbound,
                      whatsapp_last_inbound_at=last_inbound if channel == "whatsapp" else None)
    session.add(contact)
    session.flush()
    sid = f"SMin{account_id:030d}"
    inbound = Message(contact_id=contact.id, direction="in", channel=channel, body="meal plan",
                      message_sid=sid, outcome="answered", tokens_charged=CHARGE, units=1,
                      created_at=NOW)
    session.add(inbound)
    ledger.lock_account(session, account_id)
    ledger.debit(session, account_id, CHARGE, key=f"debit:{sid}", now=NOW)
    session.flush()
    replies = []
    for body in bodies:
        reply = Message(contact_id=contact.id, direction="out", channel=channel, body=body,
                        units=1, in_reply_to_id=inbound.id, status="pending", created_at=NOW)
        session.add(reply)
        session.flush()
        replies.append(reply.id)
    session.commit()
    return Paid(account_id, contact.id, inbound.id, replies)


def send(session, message_id: int, sender: Scripted,
         settings: outbound.OutboundSettings = PLAIN) -> outbound.SendPlan | None:
    """What `app.jobs.send_pending` does for one row, every resend included."""
    plan = outbound.plan_send(session, message_id, settings, CATALOG, NOW)
    session.commit()
    first = plan
    while plan is not None:
        result = outbound.attempt_send(sender, plan, settings, sleep=lambda _: None)
        plan = outbound.record_send(session, plan, result, settings, CATALOG, NOW)
        session.commit()
    return first


def row(session, message_id: int) -> Message:
    session.expire_all()
    found = session.get(Message, message_id)
    assert found is not None
    return found


def available(session, account_id: int) -> int:
    session.expire_all()
    return ledger.balance(session, account_id, NOW).available


def status(session, sid: str, state: str, code: int | None = None, to: str | None = PHONE,
           **options: Any) -> bool:
    changed = outbound.apply_status(session, outbound.StatusUpdate(sid, state, code, to),
                                    NOW + timedelta(seconds=5), **options)
    session.commit()
    return changed


def test_a_reply_is_sent_once_and_costed_once(session):
    paid = paid_answer(session)
    [reply_id] = paid.replies
    assert outbound.pending_outbound(session, paid.inbound_id) == [reply_id]
    sender = Scripted()
    plan = send(session, reply_id, sender)
    assert (plan.channel, plan.to, plan.body, plan.is_template) == ("sms", PHONE, "Oats.", False)
    [call] = sender.sent
    assert (call["to"], call["body"], call["content_sid"]) == (PHONE, "Oats.", None)
    sent = row(session, reply_id)
    assert (sent.status, sent.message_sid) == ("queued", "SM" + "0" * 31 + "1")
    # Not pending any more: a retried job plans nothing and sends nothing.
    assert outbound.pending_outbound(session, paid.inbound_id) == []
    assert send(session, reply_id, sender) is None and len(sender.sent) == 1
    assert session.scalar(select(func.count()).select_from(CostEntry).where(
        CostEntry.idempotency_key == f"msg:out:{reply_id}")) == 1
    assert available(session, paid.account_id) == 100 - CHARGE  # the charge stays


def test_a_person_who_opted_out_is_skipped_and_gets_the_charge_back_once(session):
    paid = paid_answer(session, bodies=("Part 1.", "Part 2."))
    contact = session.get(Contact, paid.contact_id)
    contact.set_opted_out("sms", NOW - timedelta(minutes=1), "keyword")
    session.commit()
    sender = Scripted()
    for reply_id in paid.replies:
        assert send(session, reply_id, sender) is None
    assert sender.sent == []
    assert [row(session, r).status for r in paid.replies] == ["skipped", "skipped"]
    assert available(session, paid.account_id) == 100  # refunded once for the two parts
    assert outbound.release_charge(session, row(session, paid.replies[0]), NOW) == 0
    assert_consistent(session, paid.account_id, NOW)


def test_outside_the_whatsapp_window_without_a_template_the_answer_is_skipped(session):
    paid = paid_answer(session, channel="whatsapp", last_inbound=NOW - timedelta(hours=24))
    sender = Scripted()
    assert send(session, paid.replies[0], sender) is None
    skipped = row(session, paid.replies[0])
    assert (skipped.status, skipped.error_code) == ("skipped", outbound.OUTSIDE_WINDOW)
    assert sender.sent == [] and available(session, paid.account_id) == 100


def test_outside_the_window_one_template_goes_out_and_the_answer_waits_for_more(session):
    paid = paid_answer(session, channel="whatsapp", bodies=("Day 1.", "Day 2."),
                       last_inbound=NOW - timedelta(days=2))
    sender = Scripted()
    plan = send(session, paid.replies[0], sender, TEMPLATE)
    assert plan.is_template and plan.body is None
    assert plan.content_sid == TEMPLATE.whatsapp_template_sid
    assert CATALOG.bot_name in plan.content_variables
    [call] = sender.sent
    assert call["channel"] == "whatsapp" and call["content_sid"] == plan.content_sid
    first, second = (row(session, r) for r in paid.replies)
    assert (first.status, first.error_code) == ("queued", outbound.OUTSIDE_WINDOW)
    assert (second.status, second.error_code) == ("skipped", outbound.OUTSIDE_WINDOW)
    assert session.get(Contact, paid.contact_id).more_text == "Day 1.\nDay 2."
    assert available(session, paid.account_id) == 100 - CHARGE  # the answer is still given


@pytest.mark.parametrize(("error", "tries"), [
    (outbound.SendError("busy", http_status=429), 3),
    (outbound.SendError("down", http_status=503), 3),
    (outbound.SendError("refused", connect_failed=True), 3),
    (outbound.SendError("bad to", code=21211, http_status=400), 1),
    (outbound.SendError("no answer", timed_out=True), 1),  # may have been sent: never again
])
def test_only_429_5xx_and_unopened_connections_are_retried(error, tries):
    sender = Scripted(*[error] * 5)
    delays: list[float] = []
    plan = outbound.SendPlan(1, "sms", PHONE, "hi")
    settings = outbound.OutboundSettings(max_attempts=3, backoff_seconds=1.0)
    assert outbound.attempt_send(sender, plan, settings, sleep=delays.append) is error
    assert len(sender.sent) == tries
    assert len(delays) == tries - 1
    assert all(0 <= d <= 2 ** i for i, d in enumerate(delays))  # full jitter, doubling
    # A later success ends the retries.
    recovering = Scripted(outbound.SendError("busy", http_status=429))
    sent = outbound.attempt_send(recovering, plan, settings, sleep=lambda _: None)
    assert isinstance(sent, outbound.Sent) and len(recovering.sent) == 2


def test_a_refusal_fails_the_row_and_21610_marks_the_person_opted_out(session):
    paid = paid_answer(session)
    refusal = outbound.SendError("unsubscribed", code=outbound.OPTED_OUT, http_status=400)
    send(session, paid.replies[0], Scripted(refusal))
    failed = row(session, paid.replies[0])
    assert (failed.status, failed.error_code) == ("failed", outbound.OPTED_OUT)
    contact = session.get(Contact, paid.contact_id)
    assert contact.sms_opted_out_at == NOW and contact.opt_out_source == "twilio_21610:sms"
    assert contact.whatsapp_opted_out_at is None
    assert available(session, paid.account_id) == 100
    assert_consistent(session, paid.account_id, NOW)


def test_a_timed_out_send_is_unknown_until_its_callback_adopts_it(session):
    paid = paid_answer(session)
    sender = Scripted(outbound.SendError("read timeout", timed_out=True))
    send(session, paid.replies[0], sender)
    assert row(session, paid.replies[0]).status == "unknown"
    assert send(session, paid.replies[0], sender) is None and len(sender.sent) == 1
    # Twilio got it after all: its callback names the recipient, and the row takes the sid.
    assert status(session, "SMlate", "delivered", catalog=CATALOG)
    adopted = row(session, paid.replies[0])
    assert (adopted.message_sid, adopted.status) == ("SMlate", "delivered")
    assert available(session, paid.account_id) == 100 - CHARGE
    # A callback for a sid we never sent, to nobody we wait for, changes nothing.
    assert not status(session, "SMstranger", "delivered", to="+15550000000")
    assert not status(session, "SMnobody", "delivered", to=None)


def test_status_callbacks_are_kept_once_and_only_move_forward(session):
    paid = paid_answer(session)
    send(session, paid.replies[0], Scripted(outbound.Sent("SMout1", "queued")))
    assert status(session, "SMout1", "sent")
    assert not status(session, "SMout1", "sent")  # a repeat
    assert status(session, "SMout1", "delivered")
    assert not status(session, "SMout1", "sending")  # late and older: ignored
    assert not status(session, "SMout1", "undelivered", 30003)  # delivered is not undone
    assert row(session, paid.replies[0]).status == "delivered"
    assert status(session, "SMout1", "read")
    assert row(session, paid.replies[0]).status == "read"
    kept = session.scalars(select(MessageStatusEvent.status).where(
        MessageStatusEvent.message_sid == "SMout1").order_by(MessageStatusEvent.id)).all()
    assert kept == ["sent", "delivered", "sending", "undelivered", "read"]
    assert available(session, paid.account_id) == 100 - CHARGE


def _one_by_one(result: str, kept: list[tuple[str, int | None]]) -> tuple[str, int | None]:
    """Where a row being sent ends, by the rule: the send's status first, then the callbacks
    kept before it in rank order, each applied if it is forward (its code kept)."""
    state, code = "submitting", None
    for status_now, code_now in [(result, None), *sorted(
            kept, key=lambda item: outbound.STATUS_RANK.get(item[0], -1))]:
        if outbound._is_forward(state, status_now):
            state, code = status_now, code_now if code_now is not None else code
    return state, code


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kept=st.lists(st.tuples(st.sampled_from([*sorted(outbound.STATUS_RANK), "skipped",
                                                "mystery"]),
                               st.sampled_from([None, None, None, 30003])),
                     max_size=4, unique_by=lambda item: item[0]),
       result=st.sampled_from(["accepted", "scheduled", "queued", "sending", "sent"]))
def test_callbacks_that_beat_the_send_end_where_applying_them_one_by_one_would(
        session, kept, result):
    """Twilio may call back before the send's result is stored. Those callbacks are kept and
    applied when it is: the plain ones in the send's own `UPDATE`, any other with all of them
    in rank order under the account's lock. Either way the row ends where the rule ends."""
    address = f"+1650777{next(_people):04d}"
    paid = paid_answer(session, address=address)
    [reply_id] = paid.replies
    plan = outbound.plan_send(session, reply_id, PLAIN, CATALOG, NOW)
    session.commit()
    assert plan is not None
    sid = f"SMbeat{reply_id:028d}"
    for state, code in kept:  # the row has no sid yet: each is kept, none applied
        assert not status(session, sid, state, code, to=address)
    assert row(session, reply_id).status == "submitting"
    outbound.record_send(session, plan, outbound.Sent(sid, result), PLAIN, CATALOG, NOW)
    session.commit()
    stored = row(session, reply_id)
    expected, code = _one_by_one(result, kept)
    assert stored.message_sid == sid
    # Two states of one rank (accepted and scheduled; failed, undelivered and canceled) may be
    # applied in either order; the rank and the code are the rule's.
    assert outbound.STATUS_RANK.get(stored.status) == outbound.STATUS_RANK.get(expected)
    if stored.status == expected:
        assert stored.error_code == code
    undelivered = expected in outbound.NOT_DELIVERED
    assert available(session, paid.account_id) == 100 - (0 if undelivered else CHARGE)


def test_an_undelivered_reply_gives_the_charge_back(session):
    paid = paid_answer(session)
    send(session, paid.replies[0], Scripted(outbound.Sent("SMout2", "queued")))
    assert status(session, "SMout2", "undelivered", 30005)
    gone = row(session, paid.replies[0])
    assert (gone.status, gone.error_code) == ("undelivered", 30005)
    assert available(session, paid.account_id) == 100
    assert not status(session, "SMout2", "delivered")  # final: stays undelivered
    assert_consistent(session, paid.account_id, NOW)


def test_a_63016_callback_resends_the_answer_as_the_template_keeping_the_charge(session):
    paid = paid_answer(session, channel="whatsapp")
    send(session, paid.replies[0], Scripted(outbound.Sent("SMwa1", "queued")), TEMPLATE)
    resends: list[int] = []
    assert status(session, "SMwa1", "undelivered", outbound.OUTSIDE_WINDOW,
                  to=f"whatsapp:{PHONE}", settings=TEMPLATE, resends=resends)
    [resend_id] = resends
    resend = row(session, resend_id)
    assert (resend.status, resend.error_code, resend.body) == (
        "pending", outbound.OUTSIDE_WINDOW, "Oats.")
    assert available(session, paid.account_id) == 100 - CHARGE
    plan = send(session, resend_id, Scripted(), TEMPLATE)
    assert plan.is_template
    assert session.get(Contact, paid.contact_id).more_text == "Oats."


def test_unconfirmed_sends_are_given_up_and_refunded_after_the_wait(session):
    paid = paid_answer(session)
    send(session, paid.replies[0], Scripted(outbound.SendError("timeout", timed_out=True)))
    assert outbound.give_up_unconfirmed(session, timedelta(minutes=15),
                                        NOW + timedelta(minutes=14)) == 0
    assert outbound.give_up_unconfirmed(session, timedelta(minutes=15),
                                        NOW + timedelta(minutes=15)) == 1
    session.commit()
    assert row(session, paid.replies[0]).status == "failed"
    assert available(session, paid.account_id) == 100
    assert outbound.give_up_unconfirmed(session, timedelta(minutes=15),
                                        NOW + timedelta(hours=1)) == 0
