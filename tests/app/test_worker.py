"""The worker (app.worker.ThreadedWorker): many answers in flight in one process, one person's
messages still one at a time and in order."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import select

from app.extensions import bot_settings
from app.worker import ThreadedWorker
from bot.models import Contact, InboxMessage, Message
from testing.deployment import post_signed, run_worker
from testing.payloads import sms
from tests.tokens.ledger_checks import assert_consistent


@pytest.fixture
def session(queued_app: Flask):
    from app.extensions import db

    return db.session


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("cpu_slots", [None, 1])
def test_one_process_keeps_many_llm_calls_in_flight(queued_app, session, openai_api, twilio_api,
                                                    cpu_slots):
    """40 people ask at once while the LLM takes 3 s: one worker process has most of them in
    flight together (the stand-in counts the overlap; routing each one first takes CPU), and
    each is answered once; with a CPU gate of one slot too, since a job gives its slot up
    while it waits on the LLM (`bot.waits`)."""
    client = queued_app.test_client()
    people = [f"+1650555{i:04d}" for i in range(40)]
    for i, phone in enumerate(people):
        post_signed(client, sms(f"meal plan number {i}", sid=f"SMmany{i:03d}", sender=phone))
    openai_api.delay_seconds = 3.0
    chat = bot_settings(queued_app).chat.client  # the suite's 2 s timeout, raised
    chat.client = chat.client.with_options(timeout=20)
    assert run_worker(queued_app, concurrency=64, cpu_slots=cpu_slots) == 40
    assert openai_api.max_concurrent >= 20  # not one at a time
    assert len(twilio_api.accepted) == 40
    assert sorted(s["To"] for s in twilio_api.accepted) == sorted(people)
    session.expire_all()
    outcomes = session.scalars(select(Message.outcome).where(Message.direction == "in")).all()
    assert outcomes == ["answered"] * 40
    assert session.scalar(select(InboxMessage)) is None


def test_one_persons_messages_are_answered_in_the_order_they_arrived(queued_app, session,
                                                                    openai_api, twilio_api):
    """A BUY, then a meal plan, then BALANCE from one person, with many worker threads free:
    the replies go out in that order, each after the one before was sent."""
    client = queued_app.test_client()
    for i, body in enumerate(["BUY", "meal plan", "BALANCE", "recipe for soup"]):
        post_signed(client, sms(body, sid=f"SMorder{i}"))
    openai_api.delay_seconds = 0.3
    assert run_worker(queued_app, concurrency=8) >= 1
    bodies = [send["Body"] for send in twilio_api.accepted]
    assert len(bodies) == 4
    assert "/pay/" in bodies[0]
    assert bodies[1] == "Here is your answer about: meal plan"
    assert "tokens" in bodies[2]
    assert bodies[3] == "Here is your answer about: recipe for soup"
    assert openai_api.max_concurrent == 1
    session.expire_all()
    inbound = session.scalars(select(Message).where(Message.direction == "in")
                              .order_by(Message.id)).all()
    assert [m.message_sid for m in inbound] == [f"SMorder{i}" for i in range(4)]
    assert_consistent(session, int(session.scalar(select(Contact.account_id))))


def test_a_worker_needs_a_slot(queued_app):
    from app.queue import answers_queue, redis_connection

    with pytest.raises(ValueError, match="at least one slot"):
        ThreadedWorker([answers_queue(queued_app)], connection=redis_connection(queued_app),
                       app=queued_app, concurrency=0)
    with pytest.raises(ValueError, match="at least one slot"):
        ThreadedWorker([answers_queue(queued_app)], connection=redis_connection(queued_app),
                       app=queued_app, cpu_slots=0)
