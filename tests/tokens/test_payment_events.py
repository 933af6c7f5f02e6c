"""`tokens.payment_events` called directly with an `EventContext`: the inbox (`receive_event`
keeps an event once; a repeat is None and changes nothing; an unknown type is kept and
ignored; unstorable text is cleaned), a checkout's completion crediting once whichever event
brings it, unpaid / foreign / mispriced / expired / failed checkouts, a refund repeated or
arriving before its checkout, the failed-event inbox (`record_failure`, `resolve_failure`)
and `prefetch`. Events are the real fixtures in testing/fixtures/stripe, pointed at our
checkout. The orders of refunds and disputes are in tests/tokens/test_payment_event_order.py.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from testing.payloads import event_from, load_fixture
from tests.tokens.ledger_checks import assert_consistent
from tokens import costs, ledger, money
from tokens.catalog import load_catalog
from tokens.payment_events import (
    EventContext,
    clean_text,
    grace_notices,
    prefetch,
    receipt_url,
    receive_event,
    record_failure,
    resolve_failure,
)
from tokens.payments import Checkout, FailedEvent, PaymentEvent, ProviderPayment
from tokens.providers import PaymentError

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()
COMPLETED = load_fixture("stripe/stripe_ruby_mock/checkout.session.completed.payment_mode.json")
REFUNDED = load_fixture("stripe/pay_rails/charge.refunded.json")
SUBSCRIPTION_UPDATED = load_fixture("stripe/stripe_ruby_mock/customer.subscription.updated.json")
CHARGE_SUCCEEDED = load_fixture("stripe/stripe_ruby_mock/charge.succeeded.json")


def ctx(now: datetime = NOW, fetched: dict[str, Any] | None = None) -> EventContext:
    return EventContext(catalog=CATALOG, provider="stripe", now=now, fetched=fetched or {})


def our_checkout(session) -> Checkout:
    """The Starter pack (500 cents: 100 + 20 bonus tokens) opened for a new account."""
    tag = uuid.uuid4().hex[:12]
    account_id = ledger.open_account(session, NOW).id
    row = Checkout(account_id=account_id, provider="stripe", mode="payment",
                   item_code="starter", amount_cents=500, currency="usd", tokens=100,
                   bonus_tokens=20, external_id=f"cs_{tag}", url="https://checkout.example",
                   status="open", created_at=NOW)
    session.add(row)
    session.commit()
    return row


def completion(checkout: Checkout, event_type: str | None = None, **changes: Any
               ) -> dict[str, Any]:
    fields = dict(id=checkout.external_id, amount_total=500, currency="usd",
                  payment_status="paid", payment_intent=f"pi_{checkout.external_id}")
    fields.update(changes)
    return event_from(COMPLETED, event_type, **fields)


def deliver(session, body: dict[str, Any], context: EventContext | None = None):
    result = receive_event(session, "stripe", body, context or ctx())
    session.commit()
    return result


def posted(session, account_id: int) -> int:
    session.expire_all()
    return ledger.balance(session, account_id, NOW).posted


def revenue_cents(session, account_id: int) -> int:
    total = session.scalar(select(func.coalesce(func.sum(costs.RevenueEntry.amount_musd), 0))
                           .where(costs.RevenueEntry.account_id == account_id))
    return int(total) // money.MUSD_PER_CENT


def inbox_count(session) -> int:
    return int(session.scalar(select(func.count()).select_from(PaymentEvent)))


# --- the inbox and checkouts -----------------------------------------------------------------


def test_a_completion_credits_the_pack_once_and_a_repeat_is_a_no_op(session):
    checkout = our_checkout(session)
    account_id = checkout.account_id
    body = completion(checkout)
    result = deliver(session, body)
    assert result.outcome == "credited 120 tokens"
    [notice] = result.notices
    assert (notice.account_id, notice.kind, dict(notice.params)) == (
        account_id, "pack_credited", {"tokens": 120, "available": 120})
    # The same event again: received before, so None, and nothing changes.
    assert deliver(session, copy.deepcopy(body)) is None
    # The same payment in another event (Stripe sends async_payment_succeeded too).
    again = deliver(session, completion(checkout, "checkout.session.async_payment_succeeded"))
    assert (again.outcome, again.notices) == ("already credited", ())
    assert posted(session, account_id) == 120
    assert revenue_cents(session, account_id) == 500
    session.refresh(checkout)
    assert (checkout.status, checkout.completed_at) == ("completed", NOW)
    assert checkout.payment_intent == f"pi_{checkout.external_id}"
    assert inbox_count(session) == 2
    assert_consistent(session, account_id, NOW)


def test_an_unknown_type_is_kept_and_ignored(session):
    body = event_from(COMPLETED, "checkout.session.reopened_someday")
    result = deliver(session, body)
    assert (result.outcome, result.notices) == ("ignored: no handler", ())
    row = session.scalar(select(PaymentEvent).where(PaymentEvent.event_id == body["id"]))
    assert (row.provider, row.type, row.outcome) == (
        "stripe", "checkout.session.reopened_someday", "ignored: no handler")
    assert row.object_id == body["data"]["object"]["id"]
    assert json.loads(row.payload) == body
    assert deliver(session, body) is None  # kept once, like any event


def test_unpaid_and_foreign_sessions_credit_nothing(session):
    checkout = our_checkout(session)
    assert deliver(session, completion(checkout, payment_status="unpaid")).outcome == \
        "waiting: not paid yet"
    assert deliver(session, completion(checkout, id="cs_someone_elses")).outcome == \
        "ignored: not a checkout of ours"
    session.refresh(checkout)
    assert checkout.status == "open" and posted(session, checkout.account_id) == 0
    # The payment completes later (a bank debit): credited then.
    assert deliver(session, completion(checkout, "checkout.session.async_payment_succeeded")
                   ).outcome == "credited 120 tokens"


@pytest.mark.parametrize(("amount", "currency"), [(499, "usd"), (500, "eur"), (None, "usd")])
def test_a_session_paid_at_another_price_is_flagged_and_credits_nothing(session, amount,
                                                                        currency):
    checkout = our_checkout(session)
    result = deliver(session, completion(checkout, amount_total=amount, currency=currency))
    assert result.outcome == f"flagged: paid {amount} {currency}, expected 500 usd"
    assert result.notices == ()
    session.refresh(checkout)
    assert checkout.status == "flagged"
    assert posted(session, checkout.account_id) == 0
    assert revenue_cents(session, checkout.account_id) == 0
    # A later event for the same session, even at the stored price, credits nothing: the
    # flag waits for an operator.
    later = deliver(session, completion(checkout, "checkout.session.async_payment_succeeded"))
    assert (later.outcome, later.notices) == ("already flagged", ())
    session.refresh(checkout)
    assert checkout.status == "flagged"
    assert posted(session, checkout.account_id) == 0
    assert revenue_cents(session, checkout.account_id) == 0


def test_expired_and_failed_sessions_close_an_open_checkout_only(session):
    expiring, failing = our_checkout(session), our_checkout(session)
    assert deliver(session, completion(expiring, "checkout.session.expired")).outcome == \
        "checkout expired"
    failed = deliver(session, completion(failing, "checkout.session.async_payment_failed"))
    assert failed.outcome == "payment failed"
    assert [(n.account_id, n.kind) for n in failed.notices] == [
        (failing.account_id, "payment_failed")]
    session.refresh(expiring)
    session.refresh(failing)
    assert (expiring.status, failing.status) == ("expired", "failed")
    # A late "expired" for a checkout already paid leaves it paid.
    paid = our_checkout(session)
    deliver(session, completion(paid))
    assert deliver(session, completion(paid, "checkout.session.expired")).outcome == \
        "checkout completed"
    assert deliver(session, completion(paid, id="cs_unknown")).outcome.startswith("ignored")


def test_text_no_database_can_store_is_cleaned_and_the_pack_still_credits(session):
    checkout = our_checkout(session)
    body = completion(checkout)
    body["data"]["object"]["customer_details"] = {"name": "Ana\x00 \ud800Lima"}
    result = deliver(session, body)
    # One string changed (two characters in it): the count is of strings.
    assert result.outcome.startswith("credited 120 tokens [text cleaned: 1 strings")
    row = session.scalar(select(PaymentEvent).where(PaymentEvent.event_id == body["id"]))
    stored = json.loads(row.payload)["data"]["object"]["customer_details"]["name"]
    assert stored == "Ana\ufffd \ufffdLima"
    assert len(row.outcome) <= 200
    assert posted(session, checkout.account_id) == 120
    assert clean_text({"k\x00": ["ok", "a\x00"]}) == ({"k\ufffd": ["ok", "a\ufffd"]}, 2)
    untouched = {"a": ["b"]}
    assert clean_text(untouched)[0] is untouched


# --- refunds ---------------------------------------------------------------------------------


def test_a_refund_first_is_kept_pending_then_the_pack_credits_net_and_repeats_do_nothing(
        session):
    checkout = our_checkout(session)
    intent, charge = f"pi_{checkout.external_id}", f"ch_{checkout.external_id}"
    refund = event_from(REFUNDED, id=charge, payment_intent=intent, amount=500,
                   amount_refunded=250, refunded=False)
    assert deliver(session, refund).outcome.startswith("pending: refund of 250 cents")
    assert posted(session, checkout.account_id) == 0
    payment = session.scalar(select(ProviderPayment).where(
        ProviderPayment.external_id == intent))
    assert (payment.status, payment.refunded_cents, payment.checkout_id) == (
        "pending", 250, None)

    result = deliver(session, completion(checkout))
    assert result.outcome == ("credited 120 tokens: 60 tokens clawed back, 250 cents reversed"
                              " at once (refunded or disputed before)")
    [notice] = result.notices
    assert notice.params["tokens"] == 60  # half the money back: half the pack taken back
    assert posted(session, checkout.account_id) == 60
    # The same cumulative refund in another event, or an older smaller one: nothing more.
    assert deliver(session, event_from(REFUNDED, id=charge, payment_intent=intent,
                                  amount_refunded=250)).outcome == "already processed"
    assert deliver(session, event_from(REFUNDED, id=charge, payment_intent=intent,
                                  amount_refunded=100)).outcome == "already processed"
    assert posted(session, checkout.account_id) == 60
    assert revenue_cents(session, checkout.account_id) == 250
    assert_consistent(session, checkout.account_id, NOW)


def test_a_charge_keeps_only_an_https_receipt(session):
    https = event_from(CHARGE_SUCCEEDED, id="ch_rcpt", payment_intent="pi_rcpt",
                  receipt_url="https://pay.stripe.com/receipts/x")
    assert deliver(session, https).outcome == "receipt kept"
    payment = session.scalar(select(ProviderPayment).where(
        ProviderPayment.external_id == "pi_rcpt"))
    assert payment.receipt_url == "https://pay.stripe.com/receipts/x"
    plain = event_from(CHARGE_SUCCEEDED, id="ch_plain", payment_intent="pi_plain",
                  receipt_url="javascript:alert(1)")
    assert deliver(session, plain).outcome == "ignored: no receipt"
    assert receipt_url("http://pay.stripe.com/r") is None
    assert receipt_url("https://pay.stripe.com/r x") is None


# --- failures and prefetch -------------------------------------------------------------------


def test_a_failed_event_is_counted_then_resolved_and_an_applied_one_is_not_recorded(session):
    body = event_from(COMPLETED)
    record_failure(session, "stripe", body, RuntimeError("db down"), NOW)
    record_failure(session, "stripe", body, ValueError("x" * 600), NOW + timedelta(minutes=5))
    session.commit()
    row = session.scalar(select(FailedEvent).where(FailedEvent.event_id == body["id"]))
    assert (row.attempts, row.first_failed_at, row.last_failed_at) == (
        2, NOW, NOW + timedelta(minutes=5))
    assert row.error.startswith("ValueError: xxx") and len(row.error) == 500
    resolve_failure(session, body["id"], NOW + timedelta(minutes=6))
    session.commit()
    assert row.resolved_at == NOW + timedelta(minutes=6)
    # Failing again after being resolved opens it again.
    record_failure(session, "stripe", body, RuntimeError("again"), NOW + timedelta(minutes=7))
    session.commit()
    assert (row.attempts, row.resolved_at, row.error) == (3, None, "RuntimeError: again")
    # An event applied meanwhile: a late failure changes nothing.
    applied = event_from(COMPLETED, "some.unhandled")
    deliver(session, applied)
    record_failure(session, "stripe", applied, RuntimeError("late"), NOW)
    session.commit()
    assert session.scalar(select(FailedEvent).where(FailedEvent.event_id == applied["id"])) \
        is None
    resolve_failure(session, "evt_never_failed", NOW)  # nothing to resolve: no error


class Provider:
    """A provider that answers fetches from `objects` or raises the given error."""

    name = "stripe"

    def __init__(self, objects: dict[str, Any] | None = None,
                 error: PaymentError | None = None) -> None:
        self.objects, self.error, self.fetches = objects or {}, error, []

    def _fetch(self, object_id: str) -> dict[str, Any]:
        self.fetches.append(object_id)
        if self.error is not None:
            raise self.error
        return self.objects[object_id]

    fetch_subscription = fetch_charge = fetch_invoice = _fetch


def test_prefetch_fetches_what_the_handler_needs_before_the_transaction():
    sub_id = SUBSCRIPTION_UPDATED["data"]["object"]["id"]
    found = {"id": sub_id, "status": "active"}
    provider = Provider({sub_id: found})
    assert prefetch(SUBSCRIPTION_UPDATED, provider) == {sub_id: found}
    # A pack's completion needs nothing from the provider.
    assert prefetch(COMPLETED, provider) == {} and provider.fetches == [sub_id]
    # A definite "no such object" is remembered as None; anything else is raised, so the
    # webhook answers 500 and the provider delivers the event again.
    assert prefetch(SUBSCRIPTION_UPDATED, Provider(error=PaymentError("gone", permanent=True))
                    ) == {sub_id: None}
    with pytest.raises(PaymentError):
        prefetch(SUBSCRIPTION_UPDATED, Provider(error=PaymentError("timeout")))


# --- subscriptions and invoices --------------------------------------------------------------

INVOICE_PAID = load_fixture("stripe/stripe_ruby_mock/invoice.paid.json")
GRACE = CATALOG.premium.grace_days


def subscriber(session) -> tuple[int, str, dict[str, Any]]:
    """A new account, its subscription's id, and the subscription as the provider has it
    (its metadata names the account, as our checkout sets it)."""
    account = ledger.open_account(session, NOW)
    session.commit()
    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    fresh = {"id": sub_id, "object": "subscription", "status": "active",
             "customer": "cus_sub", "cancel_at_period_end": False,
             "current_period_end": int((NOW + timedelta(days=30)).timestamp()),
             "metadata": {"account": account.public_id}}
    return account.id, sub_id, fresh


def subscription_event(sub_id: str, fresh: dict[str, Any], when: datetime = NOW):
    """`customer.subscription.updated` (a real body) with the provider's present state."""
    body = event_from(SUBSCRIPTION_UPDATED, id=sub_id, status="incomplete")  # stale in the body
    return body, ctx(when, {sub_id: dict(fresh)})


def test_a_subscription_tells_each_change_of_state_once(session):
    account_id, sub_id, fresh = subscriber(session)
    body, context = subscription_event(sub_id, fresh)
    result = deliver(session, body, context)
    assert result.outcome == "subscription active"  # the fetched state, not the body's
    assert [(n.account_id, n.kind) for n in result.notices] == [(account_id, "premium_started")]
    body, context = subscription_event(sub_id, fresh, NOW + timedelta(hours=1))
    assert deliver(session, body, context).notices == ()  # the same state: told already
    # Past due: premium for the grace period, said once, then ended by the sweep once.
    late = NOW + timedelta(days=1)
    body, context = subscription_event(sub_id, {**fresh, "status": "past_due"}, late)
    [notice] = deliver(session, body, context).notices
    assert notice.kind == "past_due"
    assert notice.params == {"grace_ends_at": late + timedelta(days=GRACE),
                             "customer": "cus_sub"}
    assert grace_notices(session, late + timedelta(days=GRACE - 1), GRACE) == []
    [ended] = grace_notices(session, late + timedelta(days=GRACE, hours=2), GRACE)
    assert (ended.kind, ended.params) == (
        "grace_ended", {"grace_ended_at": late + timedelta(days=GRACE)})
    assert grace_notices(session, late + timedelta(days=GRACE + 1), GRACE) == []
    session.commit()


def test_each_paid_subscription_month_grants_once_and_other_invoices_grant_nothing(session):
    account_id, sub_id, fresh = subscriber(session)
    month = event_from(INVOICE_PAID, id="in_month1", subscription=sub_id, amount_paid=900,
                  billing_reason="subscription_cycle", payment_intent="pi_month1",
                  charge="ch_month1")
    context = ctx(fetched={sub_id: fresh})
    result = deliver(session, month, context)
    assert result.outcome == f"granted {CATALOG.premium.monthly_tokens} subscription tokens"
    again = event_from(INVOICE_PAID, "invoice.payment_succeeded", id="in_month1",
                  subscription=sub_id, amount_paid=900, billing_reason="subscription_cycle",
                  payment_intent="pi_month1", charge="ch_month1")
    assert deliver(session, again, context).outcome == "already granted"
    manual = event_from(INVOICE_PAID, id="in_manual", subscription=sub_id, amount_paid=900,
                   billing_reason="manual")
    assert deliver(session, manual, context).outcome == \
        "no tokens: not a paid subscription month"
    assert deliver(session, event_from(INVOICE_PAID, id="in_other", subscription="sub_not_ours",
                                  billing_reason="subscription_cycle")).outcome == \
        "ignored: not a subscription of ours"
    assert posted(session, account_id) == CATALOG.premium.monthly_tokens
    assert revenue_cents(session, account_id) == 900
    assert_consistent(session, account_id, NOW)
