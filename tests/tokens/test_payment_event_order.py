"""Refunds and disputes settle right in any order (`tokens.payment_events`), on SQLite and
PostgreSQL: worked examples in plain words, every order of one charge's events, and a property
test over random orders with repeats.

Events are the real fixtures (testing/fixtures/stripe), pointed at our checkout, and go through
`receive_event` as the webhook's do, one transaction each. Ana buys the Starter pack: 500
cents for 100 paid + 20 bonus tokens, paid by one payment intent and charge.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from testing.payloads import event_from
from testing.stripe_standin import stripe_event_bytes
from tests.tokens.ledger_checks import assert_consistent
from tokens import costs, ledger, money
from tokens.catalog import load_catalog
from tokens.payment_events import EventContext, receive_event
from tokens.payments import Checkout, Invoice, PaymentDispute, ProviderPayment, Subscription

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
AMOUNT = 500
PACK = 120  # 100 paid + 20 bonus
CATALOG = load_catalog()


def fixture(path: str) -> dict[str, Any]:
    return json.loads(stripe_event_bytes(path))


COMPLETED = fixture("stripe_ruby_mock/checkout.session.completed.payment_mode.json")
REFUNDED = fixture("pay_rails/charge.refunded.json")
DISPUTE_CREATED = fixture("openapi_current_shape/charge.dispute.created.json")
DISPUTE_CLOSED = fixture("stripe_ruby_mock/charge.dispute.closed.json")
INVOICE_PAID = fixture("stripe_ruby_mock/invoice.paid.json")


@dataclass
class Sale:
    """One pack sold to a fresh account: our checkout and the provider's ids for it."""

    account_id: int
    session_id: str
    intent: str
    charge: str
    dispute: str


def sell(session) -> Sale:
    tag = uuid.uuid4().hex[:12]
    account_id = ledger.open_account(session, NOV).id
    sale = Sale(account_id, f"cs_{tag}", f"pi_{tag}", f"ch_{tag}", f"dp_{tag}")
    session.add(Checkout(account_id=account_id, provider="stripe", mode="payment",
                         item_code="starter", amount_cents=AMOUNT, currency="usd", tokens=100,
                         bonus_tokens=20, external_id=sale.session_id, url="https://x",
                         status="open", created_at=NOV))
    session.commit()
    return sale


def completion(sale: Sale) -> dict[str, Any]:
    return event_from(COMPLETED, id=sale.session_id, amount_total=AMOUNT, currency="usd",
                 payment_status="paid", payment_intent=sale.intent)


def refund(sale: Sale, refunded: int) -> dict[str, Any]:
    return event_from(REFUNDED, id=sale.charge, payment_intent=sale.intent, amount=AMOUNT,
                 amount_refunded=refunded, refunded=refunded == AMOUNT)


def dispute_created(sale: Sale, amount: int = AMOUNT) -> dict[str, Any]:
    return event_from(DISPUTE_CREATED, id=sale.dispute, charge=sale.charge,
                 payment_intent=sale.intent, amount=amount, status="needs_response")


def dispute_closed(sale: Sale, outcome: str, amount: int = AMOUNT) -> dict[str, Any]:
    return event_from(DISPUTE_CLOSED, id=sale.dispute, charge=sale.charge,
                 payment_intent=sale.intent, amount=amount, status=outcome)


def deliver(session, body: dict[str, Any], fetched: dict[str, Any] | None = None):
    ctx = EventContext(catalog=CATALOG, provider="stripe", now=NOV, fetched=fetched or {})
    result = receive_event(session, "stripe", body, ctx)
    session.commit()
    return result


def revenue(session, account_id: int, kind: str = "pack") -> int:
    """The account's recorded revenue of `kind`, µUSD (the sum of its entries)."""
    return int(session.scalar(select(func.coalesce(func.sum(costs.RevenueEntry.amount_musd), 0))
                              .where(costs.RevenueEntry.account_id == account_id,
                                     costs.RevenueEntry.kind == kind)))


def state(session, account_id: int) -> tuple[int, int, int]:
    """(posted tokens, held tokens, pack revenue in cents)."""
    session.expire_all()
    balance = ledger.balance(session, account_id, NOV)
    return balance.posted, balance.held, revenue(session, account_id) // money.MUSD_PER_CENT


# --- worked examples ----------------------------------------------------------------------


def test_a_refund_before_the_completion_is_kept_and_the_pack_credits_net(session):
    """Stripe sends Ana's full refund before the checkout's completion: the refund waits
    (pending), and the completion then credits the pack and takes it back at once: no tokens,
    no revenue, no "120 tokens added" message."""
    sale = sell(session)
    first = deliver(session, refund(sale, AMOUNT))
    assert first.outcome.startswith("pending: refund of 500 cents")
    payment = session.scalar(select(ProviderPayment).where(
        ProviderPayment.external_id == sale.intent))
    assert (payment.status, payment.refunded_cents, payment.settled_cents) == (
        "pending", AMOUNT, 0)
    assert state(session, sale.account_id) == (0, 0, 0)

    done = deliver(session, completion(sale))
    assert done.outcome.startswith("credited 120 tokens: 120 tokens clawed back, 500 cents")
    assert done.notices == ()  # nothing was credited net: nothing to tell
    assert state(session, sale.account_id) == (0, 0, 0)
    session.refresh(payment)
    assert (payment.status, payment.settled_cents) == ("applied", AMOUNT)
    checkout = session.scalar(select(Checkout).where(Checkout.external_id == sale.session_id))
    assert (checkout.status, checkout.refunded_cents, checkout.charge_id) == (
        "completed", AMOUNT, sale.charge)
    assert_consistent(session, sale.account_id, NOV)


def test_a_partial_refund_first_credits_the_rest_and_says_so(session):
    sale = sell(session)
    deliver(session, refund(sale, 250))
    done = deliver(session, completion(sale))
    [notice] = done.notices
    assert notice.kind == "pack_credited" and notice.params == {"tokens": 60, "available": 60}
    assert state(session, sale.account_id) == (60, 0, 250)


def test_a_lost_dispute_then_a_refund_reverses_the_money_once(session):
    """The money left once: the lost dispute took the 500 cents back; a refund of the same
    charge afterwards reverses nothing more."""
    sale = sell(session)
    deliver(session, completion(sale))
    deliver(session, dispute_created(sale))
    assert state(session, sale.account_id) == (PACK, PACK, AMOUNT)
    deliver(session, dispute_closed(sale, "lost"))
    assert state(session, sale.account_id) == (0, 0, 0)
    again = deliver(session, refund(sale, AMOUNT))
    assert again.outcome == "refund of 500 cents"  # nothing clawed, nothing reversed
    assert state(session, sale.account_id) == (0, 0, 0)
    reversals = session.scalars(select(costs.RevenueEntry.amount_musd).where(
        costs.RevenueEntry.account_id == sale.account_id,
        costs.RevenueEntry.amount_musd < 0)).all()
    assert reversals == [-AMOUNT * money.MUSD_PER_CENT]
    assert_consistent(session, sale.account_id, NOV)


def test_a_won_dispute_after_a_refund_leaves_the_refund_standing(session):
    """Ana was refunded half, then disputed the charge and lost (we won): winning releases
    the freeze and gives nothing back, the refund stands."""
    sale = sell(session)
    deliver(session, completion(sale))
    deliver(session, refund(sale, 250))
    deliver(session, dispute_created(sale, 250))
    assert state(session, sale.account_id) == (60, 60, 250)  # what is left is frozen
    deliver(session, dispute_closed(sale, "won", 250))
    assert state(session, sale.account_id) == (60, 0, 250)
    assert_consistent(session, sale.account_id, NOV)


def test_a_refund_during_a_dispute_claws_back_from_under_the_freeze(session):
    """The freeze is released and placed again around the clawback, so the refund takes
    its full share, and what is left stays frozen."""
    sale = sell(session)
    deliver(session, completion(sale))
    deliver(session, dispute_created(sale))
    assert state(session, sale.account_id) == (PACK, PACK, AMOUNT)
    deliver(session, refund(sale, 250))
    assert state(session, sale.account_id) == (60, 60, 250)
    dispute = session.scalar(select(PaymentDispute).where(
        PaymentDispute.external_id == sale.dispute))
    assert dispute.hold_key == f"dispute:{sale.dispute}:250"
    keys = session.scalars(select(ledger.Hold.idempotency_key).where(
        ledger.Hold.account_id == sale.account_id).order_by(ledger.Hold.id)).all()
    assert keys == [f"dispute:{sale.dispute}", f"dispute:{sale.dispute}:250"]
    assert_consistent(session, sale.account_id, NOV)


def test_a_dispute_before_the_completion_freezes_the_pack_when_it_is_credited(session):
    sale = sell(session)
    assert deliver(session, dispute_created(sale)).outcome.startswith("pending: dispute open")
    done = deliver(session, completion(sale))
    assert done.outcome == "credited 120 tokens: 120 tokens frozen"
    assert state(session, sale.account_id) == (PACK, PACK, AMOUNT)
    deliver(session, dispute_closed(sale, "won"))
    assert state(session, sale.account_id) == (PACK, 0, AMOUNT)


def test_an_older_dispute_event_does_not_reopen_a_closed_dispute(session):
    sale = sell(session)
    deliver(session, completion(sale))
    deliver(session, dispute_closed(sale, "lost"))
    deliver(session, dispute_created(sale))
    dispute = session.scalar(select(PaymentDispute).where(
        PaymentDispute.external_id == sale.dispute))
    assert (dispute.state, dispute.status) == ("lost", "lost")
    assert state(session, sale.account_id) == (0, 0, 0)


def test_an_inquiry_freezes_nothing_and_a_dispute_after_it_does(session):
    sale = sell(session)
    deliver(session, completion(sale))
    inquiry = dispute_created(sale)
    inquiry["data"]["object"]["status"] = "warning_needs_response"
    deliver(session, inquiry)
    assert state(session, sale.account_id) == (PACK, 0, AMOUNT)
    deliver(session, dispute_created(sale))  # escalated to a dispute
    assert state(session, sale.account_id) == (PACK, PACK, AMOUNT)
    deliver(session, inquiry | {"id": f"evt_{uuid.uuid4().hex}"})  # an older inquiry event
    assert state(session, sale.account_id) == (PACK, PACK, AMOUNT)


# --- premium invoices -----------------------------------------------------------------------


def premium_subscriber(session) -> tuple[int, str]:
    """Ben subscribed to premium: his account and its subscription row."""
    account_id = ledger.open_account(session, NOV).id
    external_id = f"sub_{uuid.uuid4().hex[:12]}"
    session.add(Subscription(account_id=account_id, provider="stripe", external_id=external_id,
                             status="active", notified="active", updated_at=NOV))
    session.commit()
    return account_id, external_id


def paid_invoice(subscription: str, invoice_id: str, **payment: Any) -> dict[str, Any]:
    return event_from(INVOICE_PAID, id=invoice_id, subscription=subscription, amount_paid=AMOUNT,
                 billing_reason="subscription_cycle", **payment)


@pytest.mark.parametrize("refund_first", [False, True], ids=["invoice-first", "refund-first"])
def test_a_refunded_premium_invoice_claws_back_its_grant_in_proportion(session, refund_first):
    """Ben's month (120 tokens for 500 cents) is refunded half: 60 tokens clawed back and
    250 cents of subscription revenue reversed, whichever event came first."""
    account_id, subscription = premium_subscriber(session)
    invoice_id, intent, charge = (f"in_{uuid.uuid4().hex[:12]}", f"pi_{uuid.uuid4().hex[:12]}",
                                  f"ch_{uuid.uuid4().hex[:12]}")
    refunded = event_from(REFUNDED, id=charge, payment_intent=intent, amount=AMOUNT,
                     amount_refunded=250)
    paid = paid_invoice(subscription, invoice_id, payment_intent=intent, charge=charge)
    for body in ([refunded, paid] if refund_first else [paid, refunded]):
        deliver(session, body)
    session.expire_all()
    assert ledger.balance(session, account_id, NOV).by_bucket == {"subscription": 60}
    assert revenue(session, account_id, "subscription") == 250 * money.MUSD_PER_CENT
    invoice = session.scalar(select(Invoice).where(Invoice.external_id == invoice_id))
    assert (invoice.amount_cents, invoice.tokens, invoice.account_id) == (
        AMOUNT, 120, account_id)
    payment = session.scalar(select(ProviderPayment).where(
        ProviderPayment.external_id == intent))
    assert (payment.status, payment.invoice_id, payment.settled_cents) == (
        "applied", invoice.id, 250)
    assert_consistent(session, account_id, NOV)


def test_a_current_shape_invoice_finds_its_payment_in_the_fetched_payments(session):
    """The current API shape's invoice names no charge or payment intent; the invoice fetched
    with its `payments` does, and a lost dispute of that payment intent reverses the month."""
    account_id, subscription = premium_subscriber(session)
    invoice_id, intent = f"in_{uuid.uuid4().hex[:12]}", f"pi_{uuid.uuid4().hex[:12]}"
    body = event_from(fixture("openapi_current_shape/invoice.payment_failed.json"), "invoice.paid",
                 id=invoice_id, amount_paid=AMOUNT, status="paid",
                 billing_reason="subscription_cycle",
                 parent={"type": "subscription_details",
                         "subscription_details": {"subscription": subscription}})
    assert "payment_intent" not in body["data"]["object"]
    fetched = {invoice_id: {"id": invoice_id, "payments": {"data": [{
        "object": "invoice_payment", "status": "paid",
        "payment": {"type": "payment_intent", "payment_intent": intent}}]}}}
    deliver(session, body, fetched)
    lost = event_from(DISPUTE_CLOSED, id=f"dp_{uuid.uuid4().hex[:8]}", charge="ch_x",
                 payment_intent=intent, amount=AMOUNT, status="lost")
    assert deliver(session, lost).outcome.startswith("dispute lost: 120 tokens clawed back")
    session.expire_all()
    assert ledger.balance(session, account_id, NOV).posted == 0
    assert revenue(session, account_id, "subscription") == 0


# --- every order --------------------------------------------------------------------------


def expected(kinds: list[str], dispute_amount: int) -> tuple[int, int, int]:
    """(posted, held, revenue cents) after `kinds`, from what the money did: nothing before
    the completion; then min(500, refunded + lost) gone, its share of the pack clawed back,
    and what is left frozen while the dispute is open."""
    if "complete" not in kinds:
        return 0, 0, 0
    refunded = max([250 for k in kinds if k == "refund_partial"]
                   + [AMOUNT for k in kinds if k == "refund_full"] + [0])
    closed = [k for k in kinds if k in ("won", "lost")]
    lost = dispute_amount if closed and closed[0] == "lost" else 0
    gone = min(AMOUNT, refunded + lost)
    left = PACK - PACK * gone // AMOUNT
    held = left if "created" in kinds and not closed else 0
    return left, held, AMOUNT - gone


def run(session, kinds: list[str], replays: list[bool], dispute_amount: int = AMOUNT) -> None:
    sale = sell(session)
    build = {
        "complete": lambda: completion(sale),
        "refund_partial": lambda: refund(sale, 250),
        "refund_full": lambda: refund(sale, AMOUNT),
        "created": lambda: dispute_created(sale, dispute_amount),
        "won": lambda: dispute_closed(sale, "won", dispute_amount),
        "lost": lambda: dispute_closed(sale, "lost", dispute_amount),
    }
    sent: dict[str, dict[str, Any]] = {}
    for kind, replay in zip(kinds, replays, strict=True):
        body = sent[kind] if replay and kind in sent else build[kind]()
        result = deliver(session, body)
        assert (result is None) == (replay and kind in sent), (kind, result)
        sent[kind] = body
    assert state(session, sale.account_id) == expected(kinds, dispute_amount), kinds
    assert_consistent(session, sale.account_id, NOV)


@pytest.mark.backends("sqlite")
@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_every_order_of_one_charges_events_settles_the_same(session, outcome):
    """All 120 orders of completion, partial refund, full refund, dispute created and closed."""
    kinds = ["complete", "refund_partial", "refund_full", "created", outcome]
    for order in itertools.permutations(kinds):
        run(session, list(order), [False] * len(order))


histories = st.tuples(
    st.lists(st.sampled_from(["complete", "refund_partial", "refund_full", "created", "won",
                              "lost"]), min_size=1, max_size=9),
    st.sampled_from([250, AMOUNT]),
    st.randoms(use_true_random=False),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=histories)
def test_random_orders_with_repeats_match_what_the_money_did(session, history):
    """Any order, with repeats: the same delivery again (the inbox drops it) or the same fact
    in a new event (its effect keys drop it); a dispute closes once (won or lost)."""
    kinds, dispute_amount, rng = history
    outcome = next((k for k in kinds if k in ("won", "lost")), None)
    kinds = [outcome if k in ("won", "lost") else k for k in kinds]  # one dispute, one outcome
    replays = [rng.random() < 0.5 for _ in kinds]
    run(session, kinds, replays, dispute_amount)


def test_ana_spent_part_of_the_pack_before_the_refund_came(session):
    """The clawback never takes more than is unspent: Ana spent 100 of the 120 tokens, a full
    refund takes the 20 left; the revenue is reversed in full."""
    sale = sell(session)
    deliver(session, completion(sale))
    placed = ledger.hold(session, sale.account_id, 100, key=f"hold:{sale.session_id}", now=NOV)
    ledger.capture(session, placed.hold_id, key=f"debit:{sale.session_id}", now=NOV)
    session.commit()
    deliver(session, refund(sale, AMOUNT))
    assert state(session, sale.account_id) == (0, 0, 0)
    deliver(session, dispute_closed(sale, "lost"))
    assert state(session, sale.account_id) == (0, 0, 0)
    assert_consistent(session, sale.account_id, NOV + timedelta(seconds=1))
