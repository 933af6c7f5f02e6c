"""Queued answers: Redis + RQ, OpenAI, the Twilio REST API (all real or local stand-ins).

With Redis the webhook only acknowledges: a signed "meal plan" is stored in the inbox and gets
`<Response/>` at once; the worker routes it, places and captures the hold, sends the answer
through the (stand-in) Twilio API, and the LLM cost shows on the person's month; an LLM
failure charges nothing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import timedelta

import pytest
import redis
from flask import Flask
from rq import Queue
from sqlalchemy import select

from app.extensions import bot_settings, outbound_settings
from app.jobs import answer_job
from app.queue import QUEUE_NAME, enqueue_answer, job_id_for, redis_connection
from bot import replies
from bot.models import Contact, InboxMessage, Message, OutcomeKind
from testing.deployment import (
    PUBLIC_BASE_URL,
    SMS_FROM,
    WHATSAPP_FROM,
    post_signed,
    routed_not_answered,
    run_worker,
)
from testing.payloads import sms, whatsapp
from tests.tokens.ledger_checks import assert_consistent
from tokens import costs, ledger
from tokens.ledger import Hold

PHONE = "+16505558893"


@pytest.fixture
def session(queued_app: Flask):
    """The queued app's session (the shared `session` fixture would push another app)."""
    from app.extensions import db

    return db.session
EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response />'


def account_of(session, phone: str = PHONE) -> int:
    contact = session.scalar(select(Contact).where(Contact.address == phone))
    assert contact is not None
    return contact.account_id


def hold_of(session, sid: str) -> Hold:
    hold = session.scalar(select(Hold).where(Hold.idempotency_key == f"hold:{sid}"))
    assert hold is not None
    session.refresh(hold)
    return hold


def test_meal_plan_is_queued_then_answered_by_the_worker(queued_app: Flask, session, twilio_api,
                                                         openai_api):
    client = queued_app.test_client()
    openai_api.reply = "Day 1: oats, lentil soup, tofu stir-fry. About 1800 kcal."
    response = post_signed(client, sms("meal plan", sid="SMqueued1"))

    # The webhook answers at once, with nothing: the answer comes later by REST.
    assert response.status_code == 200
    assert response.get_data(as_text=True) == EMPTY
    # It is stored in the inbox only: no contact, no hold yet; one job waits.
    [row] = session.scalars(select(InboxMessage)).all()
    assert (row.message_sid, row.sender, row.channel) == ("SMqueued1", PHONE, "sms")
    assert session.scalar(select(Contact)) is None
    queue = Queue(QUEUE_NAME, connection=redis_connection(queued_app))
    assert queue.job_ids == [job_id_for("SMqueued1")]
    assert twilio_api.sent == [] and openai_api.requests == []

    assert run_worker(queued_app) == 1
    account = account_of(session)
    assert session.scalar(select(InboxMessage)) is None  # routed, so taken from the inbox

    [send] = twilio_api.accepted
    assert send["To"] == PHONE and send["From"] == SMS_FROM
    assert send["Body"] == openai_api.reply
    assert send["StatusCallback"] == f"{PUBLIC_BASE_URL}/webhooks/twilio/status"
    session.expire_all()
    assert hold_of(session, "SMqueued1").status == "captured"
    balance = ledger.balance(session, account)
    assert balance.posted == 95 and balance.available == 95
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    assert reply.status == "queued" and reply.message_sid == send["sid"]
    inbound = session.scalar(select(Message).where(Message.message_sid == "SMqueued1"))
    assert inbound.outcome == OutcomeKind.ANSWERED and inbound.tokens_charged == 5

    # The LLM cost is on the person's month, priced from the response's usage.
    [call] = openai_api.bodies
    assert call["model"] == "gpt-4o-mini" and call["max_tokens"] == 400
    label = costs.month(session, account).month
    [llm] = [e for e in costs.entries(session, account, label) if e.kind == "llm"]
    price = bot_settings(queued_app).catalog.costs.model("gpt-4o-mini")
    assert llm.amount_musd == price.cost_musd(llm.prompt_tokens, llm.completion_tokens) > 0
    month = costs.month(session, account)
    assert month.cost_llm_musd == llm.amount_musd and month.llm_calls == 1
    assert month.tokens_charged == 5
    # Messaging: one SMS segment in, one out; plus the platform's per-interaction cost.
    assert month.messages_in == 1 and month.messages_out == 1
    assert month.cost_messaging_musd == 2 * 7900 and month.cost_platform_musd == 200
    assert_consistent(session, account)


def test_a_deferred_answer_is_not_read_back(queued_app: Flask, session, twilio_api,
                                            openai_api):
    """The turn that places the hold builds what the skill needs (`Outcome.pending`): the job
    reads neither the message's pending answer nor the hold back, and writes the LLM cost
    once; the hold is still captured, the cost still recorded."""
    from tests.support.statements import counted

    client = queued_app.test_client()
    post_signed(client, sms("meal plan", sid="SMwarm1"))
    assert run_worker(queued_app) == 1
    post_signed(client, sms("a meal plan for two days", sid="SMnotread"))
    with counted() as sent:
        assert run_worker(queued_app) == 1
    lowered = [statement.lower() for statement in sent]
    assert not [s for s in lowered if "from ledger_holds" in s and "select" in s[:20]], sent
    # One cost entry each: the inbound segment, the LLM call, the reply's segment.
    assert len([s for s in lowered if "insert into cost_entries" in s]) == 3, sent
    session.expire_all()
    assert hold_of(session, "SMnotread").status == "captured"
    account = account_of(session)
    month = costs.month(session, account)
    assert month.llm_calls == 2 and month.tokens_charged == 10
    assert_consistent(session, account)


def test_llm_failure_sends_the_offline_answer_and_charges_nothing(queued_app, session,
                                                                  twilio_api, openai_api):
    client = queued_app.test_client()
    openai_api.fail_next(500, times=5)
    post_signed(client, whatsapp("meal plan", sid="SMfail1"))
    run_worker(queued_app)

    [send] = twilio_api.accepted
    assert send["To"] == f"whatsapp:{PHONE}" and send["From"] == f"whatsapp:{WHATSAPP_FROM}"
    assert send["Body"].startswith(replies.OFFLINE_FREE) and "Breakfast" in send["Body"]
    session.expire_all()
    account = account_of(session)
    assert hold_of(session, "SMfail1").status == "voided"
    assert ledger.balance(session, account).available == 100
    month = costs.month(session, account)
    assert month.tokens_charged == 0 and month.cost_llm_musd == 0
    assert_consistent(session, account)


def test_llm_timeout_charges_nothing(queued_app, session, twilio_api, openai_api):
    openai_chat = bot_settings(queued_app).chat.client
    openai_chat.client = openai_chat.client.with_options(timeout=0.3, max_retries=0)
    openai_api.delay_seconds = 1.0
    post_signed(queued_app.test_client(), sms("grocery list for the week", sid="SMslow1"))
    run_worker(queued_app)

    [send] = twilio_api.accepted
    assert send["Body"].startswith(replies.OFFLINE_FREE)
    session.expire_all()
    assert hold_of(session, "SMslow1").status == "voided"
    assert ledger.balance(session, account_of(session)).available == 100


def test_a_repeated_delivery_or_enqueue_makes_one_job_and_one_send(queued_app, session,
                                                                   twilio_api):
    client = queued_app.test_client()
    fields = sms("recipe for pancakes", sid="SMtwice1")
    assert post_signed(client, fields).status_code == 200
    assert post_signed(client, fields).get_data(as_text=True) == EMPTY
    assert enqueue_answer(queued_app, "SMtwice1")  # a duplicate enqueue is a no-op
    queue = Queue(QUEUE_NAME, connection=redis_connection(queued_app))
    assert queue.count == 1
    run_worker(queued_app)
    # A job run again (an RQ retry) finds nothing left to answer or send.
    assert answer_job("SMtwice1") == "nothing to do"
    assert len(twilio_api.sent) == 1
    session.expire_all()
    assert ledger.balance(session, account_of(session)).available == 98


def test_free_commands_answer_by_rest_with_redis(queued_app, twilio_api):
    response = post_signed(queued_app.test_client(), sms("BALANCE"))
    assert response.get_data(as_text=True) == EMPTY
    assert twilio_api.sent == []
    run_worker(queued_app)
    [send] = twilio_api.accepted
    assert "You have 100 tokens" in send["Body"]


def test_twilio_429_is_retried_with_backoff(queued_app, session, twilio_api):
    twilio_api.fail_next(429, 20429, times=2)
    post_signed(queued_app.test_client(), sms("calories in 2 eggs", sid="SM429"))
    run_worker(queued_app)
    assert [s["response_status"] for s in twilio_api.sent] == [429, 429, 201]
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    session.refresh(reply)
    assert reply.status == "queued"


def test_21610_marks_the_contact_opted_out_and_gives_the_tokens_back(queued_app, session,
                                                                     twilio_api):
    twilio_api.fail_next(400, 21610, "Attempt to send to unsubscribed recipient")
    post_signed(queued_app.test_client(), sms("meal plan", sid="SM21610"))
    run_worker(queued_app)

    assert len(twilio_api.sent) == 1  # permanent: not retried
    session.expire_all()
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    assert (reply.status, reply.error_code) == ("failed", 21610)
    contact = session.scalar(select(Contact).where(Contact.address == PHONE))
    assert contact.sms_opted_out_at is not None and contact.whatsapp_opted_out_at is None
    account = contact.account_id
    assert ledger.balance(session, account).available == 100  # the 5 tokens came back
    assert costs.month(session, account).tokens_charged == 0
    assert costs.month(session, account).messages_out == 0  # Twilio sent nothing
    assert_consistent(session, account)
    # Nothing is ever sent to the opted-out channel afterwards.
    post_signed(queued_app.test_client(), sms("recipe for soup", sid="SMafter"))
    run_worker(queued_app)
    assert len(twilio_api.sent) == 1


def test_63016_falls_back_to_the_configured_template(queued_app, session, twilio_api):
    queued_app.extensions["outbound"] = type(outbound_settings(queued_app))(
        status_callback_url=None, whatsapp_template_sid="HX" + "a" * 32, backoff_seconds=0
    )
    twilio_api.fail_next(400, 63016, "outside the allowed window")
    post_signed(queued_app.test_client(), whatsapp("meal plan", sid="SM63016"))
    run_worker(queued_app)

    first, second = twilio_api.sent
    assert first["response_status"] == 400 and "Body" in first
    assert second["ContentSid"] == "HX" + "a" * 32 and "Body" not in second
    session.expire_all()
    contact = session.scalar(select(Contact).where(Contact.address == PHONE))
    assert contact.more_text  # the answer waits for MORE
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    assert reply.status == "queued"
    assert ledger.balance(session, contact.account_id).available == 95


def test_63016_without_a_template_fails_and_reverses_the_charge(queued_app, session, twilio_api):
    twilio_api.fail_next(400, 63016, "outside the allowed window")
    post_signed(queued_app.test_client(), whatsapp("meal plan", sid="SM63016b"))
    run_worker(queued_app)
    assert len(twilio_api.sent) == 1
    session.expire_all()
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    assert (reply.status, reply.error_code) == ("failed", 63016)
    assert ledger.balance(session, account_of(session)).available == 100


def test_a_send_that_times_out_is_unknown_and_never_resent(queued_app, session, twilio_api):
    sender = queued_app.extensions.get("sender")
    assert sender is None
    from app.jobs import twilio_sender

    twilio_sender(queued_app).client.http_client.timeout = 0.3
    twilio_api.delay_seconds = 1.0
    post_signed(queued_app.test_client(), sms("recipe for soup", sid="SMtimeout"))
    run_worker(queued_app)
    twilio_api.delay_seconds = 0
    deadline = time.monotonic() + 5
    while not twilio_api.sent and time.monotonic() < deadline:
        time.sleep(0.05)  # the stand-in records the send once its delay is over

    assert len(twilio_api.sent) == 1
    session.expire_all()
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    assert reply.status == "unknown" and reply.message_sid is None
    reply_id = reply.id
    assert answer_job("SMtimeout") == "nothing to do"  # a retry does not resend
    assert len(twilio_api.sent) == 1
    # Its status callback arrives after all: the row adopts the sid and moves on.
    sid = twilio_api.sent[0]["sid"]
    callback = {"MessageSid": sid, "MessageStatus": "delivered", "To": PHONE,
                "AccountSid": "AC1"}
    assert post_signed(queued_app.test_client(), callback,
                       path="/webhooks/twilio/status").status_code == 204
    session.expire_all()
    reply = session.get(Message, reply_id)
    assert (reply.message_sid, reply.status) == (sid, "delivered")


def test_redis_down_answers_inline_as_twiml(make_app, twilio_api, openai_api):
    """Without a reachable Redis the web process answers itself, as TwiML, after the commit."""
    from app.extensions import db
    from testing.deployment import queued_environment

    env = queued_environment("redis://127.0.0.1:1/0", twilio_api, openai_api)
    application = make_app(**env)
    with application.app_context():
        response = post_signed(application.test_client(), sms("meal plan", sid="SMnoredis"))
        assert "<Message>Here is your answer about: meal plan</Message>" in response.get_data(
            as_text=True)
        assert twilio_api.sent == []
        account = account_of(db.session)
        assert ledger.balance(db.session, account).available == 95
        assert db.session.scalar(
            select(Message.outcome).where(Message.message_sid == "SMnoredis")) == "answered"
        assert db.session.scalar(select(InboxMessage)) is None
        db.session.remove()
        db.engine.dispose()


@pytest.mark.backends("postgresql")
def test_one_persons_jobs_run_one_at_a_time(queued_app, session, openai_api, twilio_api):
    """Two quick messages from one person never race: one job holds the person's turn and
    answers both, in order; two different people's jobs run side by side."""
    client = queued_app.test_client()
    post_signed(client, sms("meal plan", sid="SMa1"))
    post_signed(client, sms("recipe for soup", sid="SMa2"))
    post_signed(client, sms("vegan meal plan", sid="SMb1", sender="+16505550001"))
    openai_api.delay_seconds = 0.4

    def run(sids: list[str]) -> None:
        errors: list[BaseException] = []

        def one(sid: str) -> None:
            try:
                with queued_app.app_context():
                    answer_job(sid)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(sid,)) for sid in sids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors

    run(["SMa1", "SMa2"])
    assert openai_api.max_concurrent == 1
    bodies = [body["messages"][-1]["content"] for body in openai_api.bodies]
    assert bodies == ["meal plan", "recipe for soup"]
    openai_api.reset()
    # Both calls overlap even if one thread starts late on a loaded machine (the suite's
    # OpenAI timeout is 2 s).
    openai_api.delay_seconds = 1.5
    post_signed(client, sms("recipe for cake", sid="SMa3"))
    run(["SMa3", "SMb1"])
    assert openai_api.max_concurrent == 2
    session.expire_all()
    assert ledger.balance(session, account_of(session)).available == 100 - 5 - 2 - 2
    assert len(twilio_api.accepted) == 4


def test_worker_command_needs_redis(make_app):

    result = make_app().test_cli_runner().invoke(
        args=["worker", "--burst"])
    assert result.exit_code != 0
    assert "REDIS_URL is not set" in result.output


def test_worker_command_runs_queued_jobs(queued_app, twilio_api):
    post_signed(queued_app.test_client(), sms("meal plan", sid="SMcli"))
    result = queued_app.test_cli_runner().invoke(args=["worker", "--burst"])
    assert result.exit_code == 0, result.output
    assert len(twilio_api.accepted) == 1


def test_the_turn_is_given_back_after_a_job(queued_app):
    post_signed(queued_app.test_client(), sms("meal plan", sid="SMlock"))
    run_worker(queued_app)
    connection = redis_connection(queued_app)
    assert isinstance(connection, redis.Redis)
    assert connection.keys("bot:turn:*") == []


def test_readyz_checks_redis_when_configured(queued_app, make_app, twilio_api):
    assert queued_app.test_client().get("/readyz").get_json() == {
        "status": "ok", "database": "ok", "redis": "ok"}
    from testing.deployment import queued_environment

    down = make_app(**queued_environment("redis://127.0.0.1:1/0", twilio_api, None))
    with down.app_context():
        response = down.test_client().get("/readyz")
    assert response.status_code == 503 and response.get_json()["redis"] == "unreachable"


def test_two_runs_of_one_answer_settle_once(queued_app, session, twilio_api, openai_api):
    """Both runs read the message as waiting; only the first settles (checked under the
    account's lock), so one charge and one reply."""
    from bot import router

    routed_not_answered(queued_app, session, sms("meal plan", sid="SMrace"))
    settings = bot_settings(queued_app)
    first = router.pending_answer(session, "SMrace", settings)
    second = router.pending_answer(session, "SMrace", settings)
    session.commit()
    assert first is not None and second is not None
    results = [router.run_skill(settings, p) for p in (first, second)]
    outcomes = [router.settle(session, p, r, settings, transport="rest")
                for p, r in zip((first, second), results, strict=True)]
    session.commit()
    assert [o.kind for o in outcomes] == ["answered", "duplicate"]
    assert len(session.scalars(select(Message).where(Message.direction == "out")).all()) == 1
    assert ledger.balance(session, account_of(session)).available == 95
    assert router.pending_answer(session, "SMrace", settings) is None


def test_a_job_that_comes_after_the_hold_lapsed_apologises_free(queued_app, session,
                                                                twilio_api, openai_api):
    routed_not_answered(queued_app, session, sms("meal plan", sid="SMlate"))
    account = account_of(session)
    # The worker was down longer than the hold's TTL; a sweep expired the hold.
    later = hold_of(session, "SMlate").expires_at
    assert ledger.expire_holds(session, later) == 1
    session.commit()
    enqueue_answer(queued_app, "SMlate")  # the sweep, or Twilio's repeat delivery
    run_worker(queued_app)
    [send] = twilio_api.accepted
    assert send["Body"] == replies.TOOK_TOO_LONG
    assert openai_api.requests == []  # no LLM cost for an answer nobody pays for
    session.expire_all()
    assert ledger.balance(session, account).available == 100
    assert session.scalar(
        select(Message.outcome).where(Message.message_sid == "SMlate")) == "failed"


def test_stop_between_asking_and_answering_gets_no_answer(queued_app, session, twilio_api,
                                                         openai_api):
    client = queued_app.test_client()
    post_signed(client, sms("meal plan", sid="SMask"))
    post_signed(client, sms("STOP", sid="SMstop"))
    run_worker(queued_app)
    # The STOP overtakes the meal plan still waiting: no LLM call, no send, no hold.
    assert twilio_api.sent == [] and openai_api.requests == []
    session.expire_all()
    assert session.scalars(select(Hold)).all() == []
    assert costs.month(session, account_of(session)).tokens_charged == 0
    outcomes = dict(session.execute(select(Message.message_sid, Message.outcome)).all())
    assert outcomes == {"SMstop": "opt_out", "SMask": "opted_out"}


def test_a_repeat_delivery_re_enqueues_a_lost_job(queued_app, session, twilio_api):
    fields = sms("meal plan", sid="SMlost")
    post_signed(queued_app.test_client(), fields)
    connection = redis_connection(queued_app)
    connection.flushdb()  # the job is lost (say Redis restarted without persistence)
    post_signed(queued_app.test_client(), fields)  # Twilio retries the webhook
    run_worker(queued_app)
    assert len(twilio_api.accepted) == 1


def test_the_sweep_re_enqueues_waiting_answers(queued_app, session, twilio_api):
    post_signed(queued_app.test_client(), sms("meal plan", sid="SMswept"))
    routed_not_answered(queued_app, session, sms("recipe for soup", sid="SMswept2"))
    redis_connection(queued_app).flushdb()
    # One message waits in the inbox, one was routed and waits "queued"; both jobs are lost.
    inbox = session.scalar(select(InboxMessage).where(InboxMessage.message_sid == "SMswept"))
    inbox.received_at = inbox.received_at - timedelta(days=365)
    inbound = session.scalar(select(Message).where(Message.message_sid == "SMswept2"))
    inbound.created_at = inbound.created_at - timedelta(days=365)
    session.commit()
    result = queued_app.test_cli_runner().invoke(args=["messages", "sweep"])
    assert result.exit_code == 0, result.output
    assert "re-enqueued 2 of 2 waiting answers" in result.output
    run_worker(queued_app)
    assert len(twilio_api.accepted) == 2


def test_a_split_whatsapp_answer_outside_the_window_sends_one_template(
        queued_app, session, twilio_api, openai_api):
    queued_app.extensions["outbound"] = type(outbound_settings(queued_app))(
        status_callback_url=None, whatsapp_template_sid="HX" + "c" * 32, backoff_seconds=0
    )
    settings = bot_settings(queued_app)
    llm = settings.catalog.llm
    longer = replace(llm, tiers={**llm.tiers, "normal": replace(llm.tier(), max_tokens=1000)})
    queued_app.extensions["bot_settings"] = replace(
        settings, catalog=replace(settings.catalog, llm=longer))
    openai_api.reply = " ".join(f"Sentence number {i} about lentils." for i in range(100))
    routed_not_answered(queued_app, session, whatsapp("meal plan", sid="SMsplit"))
    contact = session.scalar(select(Contact).where(Contact.address == PHONE))
    contact.whatsapp_last_inbound_at -= timedelta(days=365)
    session.commit()
    enqueue_answer(queued_app, "SMsplit")
    run_worker(queued_app)
    [send] = twilio_api.sent
    assert send["ContentSid"] == "HX" + "c" * 32
    session.expire_all()
    contact = session.scalar(select(Contact).where(Contact.address == PHONE))
    parts = session.scalars(
        select(Message).where(Message.direction == "out").order_by(Message.id)).all()
    assert len(parts) >= 2  # the answer was split, yet one template went out
    assert [p.status for p in parts] == ["queued"] + ["skipped"] * (len(parts) - 1)
    assert contact.more_text.split() == " ".join(p.body for p in parts).split()
    assert ledger.balance(session, contact.account_id).available == 95


def test_63016_in_the_status_callback_resends_the_answer_as_the_template(
        queued_app, session, twilio_api):
    """The usual way: Twilio accepts the free-form message, then reports 63016 in its status
    callback. The answer goes out again as the approved template (it waits for MORE), the
    charge stays (once), a repeat of the callback sends nothing more, and a template that
    fails too gives the charge back."""
    from testing.payloads import twilio_fields

    template = "HX" + "d" * 32
    queued_app.extensions["outbound"] = type(outbound_settings(queued_app))(
        status_callback_url=None, whatsapp_template_sid=template, backoff_seconds=0
    )
    client = queued_app.test_client()
    post_signed(client, whatsapp("meal plan", sid="SMcb63016"))
    run_worker(queued_app)
    [free_form] = twilio_api.sent
    assert "Body" in free_form
    session.expire_all()
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    account = account_of(session)
    assert ledger.balance(session, account).available == 95

    def failed(sid: str):
        fields = twilio_fields("whatsapp_status_failed_63016__100eyes_fixture.json",
                               MessageSid=sid, SmsSid=sid, To=f"whatsapp:{PHONE}",
                               From=WHATSAPP_FROM)
        return post_signed(client, fields, path="/webhooks/twilio/status")

    assert failed(reply.message_sid).status_code == 204
    run_worker(queued_app)  # the resend goes by a job
    assert len(twilio_api.sent) == 2
    assert twilio_api.sent[1]["ContentSid"] == template and "Body" not in twilio_api.sent[1]
    session.expire_all()
    rows = session.scalars(
        select(Message).where(Message.direction == "out").order_by(Message.id)).all()
    assert [(r.status, r.error_code) for r in rows] == [("failed", 63016), ("queued", 63016)]
    contact = session.scalar(select(Contact).where(Contact.address == PHONE))
    assert contact.more_text == reply.body  # the answer waits for MORE
    assert ledger.balance(session, account).available == 95  # charged once, kept
    assert costs.month(session, account).messages_out == 2  # the template is costed

    # Twilio retries the callback: nothing more is sent or refunded.
    failed(reply.message_sid)
    run_worker(queued_app)
    assert len(twilio_api.sent) == 2
    # The template itself fails: the charge comes back, and no third send.
    failed(rows[1].message_sid)
    run_worker(queued_app)
    assert len(twilio_api.sent) == 2
    session.expire_all()
    assert ledger.balance(session, account).available == 100
    assert_consistent(session, account)


def test_63016_in_the_status_callback_without_a_template_reverses_the_charge(queued_app, session,
                                                                  twilio_api):
    from testing.payloads import twilio_fields

    client = queued_app.test_client()
    post_signed(client, whatsapp("meal plan", sid="SMcb63016b"))
    run_worker(queued_app)
    session.expire_all()
    reply = session.scalar(select(Message).where(Message.direction == "out"))
    fields = twilio_fields("whatsapp_status_failed_63016__100eyes_fixture.json",
                           MessageSid=reply.message_sid, SmsSid=reply.message_sid,
                           To=f"whatsapp:{PHONE}", From=WHATSAPP_FROM)
    post_signed(client, fields, path="/webhooks/twilio/status")
    run_worker(queued_app)
    assert len(twilio_api.sent) == 1
    session.expire_all()
    assert session.get(Message, reply.id).status == "failed"
    assert ledger.balance(session, account_of(session)).available == 100
