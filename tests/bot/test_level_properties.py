"""docs/economy.md's four rules, over random histories through the router (hypothesis), and the
bounded loss under concurrent messages (PostgreSQL, queued answers).

1. Bounded loss: an answer at a level never carries exposure past that level's bound, so never
   past the cutoff; past it only throttled refusals go out.
2. Monotonic: within a month and without payments, a person's level never gets better.
3. Paid tokens are honoured: a purchase restores NORMAL at once; nobody pays tokens for a
   refused, offered or failed request.
4. Plain language: each restricted level is explained, with the balance and what restores full
   service; nothing claims "unlimited".
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from app.extensions import bot_settings, db
from bot.messages import InboundMessage
from bot.models import Contact, Message
from bot.router import handle_inbound
from testing.deployment import post_signed, run_worker
from testing.payloads import sms
from tokens import costs, ledger, levels
from tokens.costs import LlmUsage
from tokens.ledger import LedgerEntry
from tokens.levels import LEVELS, NORMAL, PAYMENT_REQUIRED

START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
RANK = {level: rank for rank, level in enumerate(LEVELS)}
TEXTS = ("what is a good snack?", "meal plan", "recipe for soup", "calories in an egg",
         "tips for a vegan diet", "grocery list for the week")
NOTICES = {"REDUCED": "Free service is reduced this month",
           "BASIC": "most of this month's free service",
           "AFFILIATE": "free service is nearly used up"}


def preload(app: Flask, account: int, exposure_musd: int, when: datetime) -> None:
    """Give the person a month-to-date cost of about `exposure_musd` (an LLM cost entry)."""
    if exposure_musd <= 0:
        return
    catalog = bot_settings(app).catalog
    price = catalog.costs.model("gpt-4o-mini")
    usage = LlmUsage("gpt-4o-mini", int(exposure_musd / price.input_usd_per_million), 0)
    costs.record_llm(db.session, account, usage, price, key=f"preload:{account}", now=when)
    db.session.commit()


step = st.one_of(
    st.tuples(st.just("ask"), st.sampled_from(TEXTS), st.integers(20, 2500)),
    st.tuples(st.just("wait"), st.integers(1, 600), st.just(0)),
    st.tuples(st.just("buy"), st.just(""), st.just(0)),
)


@pytest.mark.backends("sqlite")
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(start_exposure=st.one_of(
           st.sampled_from([0, 450_000, 1_450_000, 1_700_000, 1_950_000, 2_050_000]),
           st.integers(0, 2_200_000)),
       steps=st.lists(step, min_size=5, max_size=40),
       fail_llm=st.booleans())
@example(start_exposure=0, steps=[("ask", "what is a good snack?", 2000)] * 3, fail_llm=False)
@example(start_exposure=1_450_000, steps=[("ask", "meal plan", 400)] * 4, fail_llm=False)
@example(start_exposure=1_700_000, steps=[("ask", "meal plan", 400), ("ask", "hi", 50)] * 2,
         fail_llm=False)
@example(start_exposure=1_950_000, steps=[("ask", "recipe for soup", 900)] * 6, fail_llm=True)
@example(start_exposure=2_050_000,
         steps=[("ask", "meal plan", 100)] * 5 + [("buy", "", 0), ("ask", "meal plan", 100)],
         fail_llm=False)
def test_the_four_rules_hold_over_random_histories(llm_app, openai_api, start_exposure, steps,
                                                   fail_llm):
    catalog = bot_settings(llm_app).catalog
    bounds = levels.upper_bounds(catalog)
    sender = f"+1555{uuid.uuid4().int % 10**7:07d}"
    now = START
    sid = f"SM{uuid.uuid4().hex}"
    handle_inbound(db.session, InboundMessage("sms", sender, "BALANCE", sid),
                   bot_settings(llm_app), now=now)
    db.session.commit()
    account = db.session.scalar(select(Contact.account_id).where(Contact.address == sender))
    preload(llm_app, account, start_exposure, now)
    last_rank = -1
    explained: set[str] = set()
    paid = False
    for kind, text, size in steps:
        if kind == "wait":
            now += timedelta(minutes=text if isinstance(text, int) else size)
            continue
        if kind == "buy":
            key = f"checkout:cs_{uuid.uuid4().hex}"
            ledger.purchase(db.session, account, 100, 20, key=key, now=now)
            costs.record_revenue(db.session, account, "pack", 5_000_000, key=f"revenue:{key}",
                                 now=now)
            db.session.commit()
            paid, last_rank = True, -1
            continue
        now += timedelta(minutes=1)
        openai_api.reply = ("Eat more beans and greens. " * 200)[:size]
        if fail_llm:
            openai_api.fail_next(500)
        sid = f"SM{uuid.uuid4().hex}"
        outcome = handle_inbound(db.session, InboundMessage("sms", sender, text, sid),
                                 bot_settings(llm_app), now=now)
        db.session.commit()
        openai_api.reset()
        reply = "\n".join(outcome.replies)
        assert "unlimited" not in reply.lower()  # rule 4
        message = db.session.scalar(select(Message).where(Message.message_sid == sid))
        debits = db.session.scalar(select(func.count()).select_from(LedgerEntry).where(
            LedgerEntry.operation_key == f"debit:{sid}"))
        if outcome.kind != "answered":  # rule 3: refused, offered, failed: no tokens
            assert outcome.tokens_charged == 0 and debits == 0, outcome.kind
        if message.level is None:
            continue  # below the price: a free refusal with a pay link
        if paid:
            assert message.level == NORMAL  # rule 3: a purchase restores NORMAL at once
            continue
        exposure = costs.month(db.session, account, now).exposure_musd
        if outcome.kind == "answered":
            assert exposure < bounds[message.level], (message.level, exposure)  # rule 1
        assert RANK[message.level] >= last_rank  # rule 2
        last_rank = RANK[message.level]
        if outcome.kind == "answered" and message.level in NOTICES and \
                message.level not in explained:
            assert NOTICES[message.level] in reply  # rule 4: told on reaching the level
            assert "You have" in reply and "Text BUY" in reply
            explained.add(message.level)


@pytest.mark.backends("postgresql")
def test_concurrent_messages_cannot_cross_the_cutoff(queued_app, openai_api):
    """Eight priced messages from one person arrive together, with exposure just under the
    cutoff: each decision counts the ceilings of the answers still queued, so together they
    stay under it; the rest are refused (free)."""
    catalog = bot_settings(queued_app).catalog
    sender = "+16505551234"
    client = queued_app.test_client()
    post_signed(client, sms("BALANCE", sender=sender))
    run_worker(queued_app)  # the worker routes it: the contact and account now exist
    account = db.session.scalar(select(Contact.account_id).where(Contact.address == sender))
    spec = catalog.intent("chat")
    ceiling = levels.ceilings(catalog, spec, "sms", llm_enabled=True)
    start = catalog.levels.payment_required_musd - 4 * ceiling[levels.AFFILIATE]
    preload(queued_app, account, start - costs.month(db.session, account).exposure_musd,
            datetime.now(UTC))
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            with queued_app.app_context():
                barrier.wait()
                post_signed(queued_app.test_client(), sms("what is a good snack?",
                                                          sid=f"SMconc{i}", sender=sender))
                db.session.remove()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    run_worker(queued_app)
    db.session.expire_all()
    rows = db.session.scalars(select(Message).where(Message.message_sid.like("SMconc%"))).all()
    refused = [m for m in rows if m.level == PAYMENT_REQUIRED]
    answered = [m for m in rows if m.outcome == "answered"]
    assert refused and answered
    exposure = costs.month(db.session, account).exposure_musd
    refusal_out = len(refused) * catalog.sms_max_segments * \
        catalog.costs.messaging["sms"].outbound_musd
    inbound = len(rows) * (catalog.costs.messaging["sms"].inbound_musd
                           + catalog.costs.platform_musd)
    # What the answers cost stays under the cutoff; beyond it only refusals and inbound.
    assert exposure - refusal_out - inbound < catalog.levels.payment_required_musd
