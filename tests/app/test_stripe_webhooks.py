"""Stripe: pay links create Checkout Sessions (against a local Stripe API stand-in), and
`POST /webhooks/stripe` applies the real fixture events, signed with the real algorithm, once.

Fixtures are the real payloads in testing/fixtures/stripe (old and current API shapes); a test
edits a copy where it needs our ids (our session id, amounts, payment intent).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.extensions import bot_settings, db
from bot.models import Contact, Message
from testing.deployment import (
    PUBLIC_BASE_URL,
    STRIPE_WEBHOOK_SECRET,
    post_signed,
)
from testing.payloads import sms
from testing.stripe_standin import sign_event, stripe_event_bytes
from tests.tokens.ledger_checks import assert_consistent
from tokens import costs, ledger
from tokens.ledger import Hold
from tokens.payments import Checkout, Invoice, PaymentEvent, Subscription

PHONE = "+16505558893"
PI = "pi_3Test0000000000000000"


@pytest.fixture
def client(stripe_app: Flask):
    return stripe_app.test_client()


@pytest.fixture
def session(stripe_app: Flask):
    return db.session


def fixture(path: str) -> dict[str, Any]:
    return json.loads(stripe_event_bytes(path))


def post_event(client, event: dict[str, Any] | bytes, *, timestamp: int | None = None,
               signature: str | None = None):
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    header = (signature if signature is not None
              else sign_event(body, STRIPE_WEBHOOK_SECRET, timestamp))
    return client.post("/webhooks/stripe", data=body,
                       headers={"Stripe-Signature": header, "Content-Type": "application/json"})


def edited(path: str, event_id: str | None = None, **changes: Any) -> dict[str, Any]:
    """A copy of a real fixture event with `changes` applied to its object."""
    event = copy.deepcopy(fixture(path))
    if event_id:
        event["id"] = event_id
    event["data"]["object"].update(changes)
    return event


def buy(client, session, text: str = "BUY") -> tuple[str, int]:
    """Text BUY (or BUY PREMIUM), open the pay link; (the Checkout Session id, account id)."""
    reply = post_signed(client, sms(text)).get_data(as_text=True)
    match = re.search(re.escape(PUBLIC_BASE_URL) + r"(/pay/[A-Za-z0-9_-]+)", reply)
    assert match, reply
    response = client.get(match.group(1))
    assert response.status_code == 303, response.get_data(as_text=True)
    checkout = session.scalar(select(Checkout).order_by(Checkout.id.desc()))
    assert response.headers["Location"] == checkout.url
    account = session.scalar(select(Contact.account_id).where(Contact.address == PHONE))
    return checkout.external_id, account


def completed(session_id: str, event_id: str = "evt_completed_1", **changes: Any
              ) -> dict[str, Any]:
    fields = {"id": session_id, "amount_total": 500, "currency": "usd", "payment_intent": PI,
              **changes}
    return edited("stripe_ruby_mock/checkout.session.completed.payment_mode.json", event_id,
                  **fields)


def events_stored(session) -> int:
    return session.scalar(select(func.count()).select_from(PaymentEvent))


# --- creating the Checkout Session -----------------------------------------------------------


def test_the_pay_link_creates_a_checkout_session_from_the_catalog(client, session, stripe_api):
    session_id, account = buy(client, session)
    [request] = stripe_api.requests_to("/v1/checkout/sessions")
    params = request["params"]
    public_id = session.get(ledger.Account, account).public_id
    assert params["mode"] == "payment"
    assert params["client_reference_id"] == public_id
    item = params["line_items"][0]
    assert item["quantity"] == "1"
    assert item["price_data"]["unit_amount"] == "500" and item["price_data"]["currency"] == "usd"
    assert params["metadata"] == {"account": public_id, "item": "starter", "mode": "payment",
                                  "tokens": "100", "bonus_tokens": "20"}
    assert params["payment_intent_data"]["metadata"] == params["metadata"]
    assert re.fullmatch(r"paylink-[0-9a-f]{32}-1", request["idempotency_key"])
    assert PHONE not in json.dumps(request["form"])  # no phone number goes to Stripe
    assert session_id == request["object_id"]


def test_a_second_click_reuses_the_open_session(client, session, stripe_api):
    reply = post_signed(client, sms("BUY")).get_data(as_text=True)
    path = re.search(r"(/pay/[A-Za-z0-9_-]+)", reply).group(1)
    first = client.get(path).headers["Location"]
    assert client.get(path).headers["Location"] == first
    assert len(stripe_api.requests_to("/v1/checkout/sessions")) == 1


def test_stripe_refusing_the_session_shows_a_page_and_charges_nothing(client, session,
                                                                      stripe_api):
    stripe_api.fail_next(402, "card_error", times=3)
    reply = post_signed(client, sms("BUY")).get_data(as_text=True)
    path = re.search(r"(/pay/[A-Za-z0-9_-]+)", reply).group(1)
    response = client.get(path)
    assert response.status_code == 502
    assert "could not start the payment" in response.get_data(as_text=True)
    assert session.scalar(select(func.count()).select_from(Checkout)) == 0


# --- checkout.session.completed: exactly once ------------------------------------------------


def test_a_completed_session_credits_the_pack_once_and_tells_the_person(client, session,
                                                                       twilio_api):
    session_id, account = buy(client, session)
    response = post_event(client, completed(session_id))
    assert response.status_code == 200 and response.get_json()["outcome"] == \
        "credited 120 tokens"
    balance = ledger.balance(session, account)
    assert balance.available == 220 and balance.by_bucket["paid"] == 100
    assert costs.month(session, account).revenue_pack_musd == 5_000_000
    [notice] = twilio_api.accepted
    assert notice["To"] == PHONE and "120 tokens were added" in notice["Body"]

    # The same event again, and the same session through another event: no more tokens.
    assert post_event(client, completed(session_id)).get_json()["duplicate"] is True
    again = completed(session_id, "evt_async_1")
    again["type"] = "checkout.session.async_payment_succeeded"
    assert post_event(client, again).status_code == 200
    assert ledger.balance(session, account).available == 220
    assert costs.month(session, account).revenue_pack_musd == 5_000_000
    assert len(twilio_api.accepted) == 1
    assert_consistent(session, account)


@pytest.mark.backends("postgresql")
def test_five_concurrent_deliveries_credit_once(stripe_app, client, session):
    session_id, account = buy(client, session)
    body = json.dumps(completed(session_id)).encode()
    header = sign_event(body, STRIPE_WEBHOOK_SECRET)
    statuses: list[int] = []
    barrier = threading.Barrier(5)

    def deliver() -> None:
        with stripe_app.app_context():
            barrier.wait()
            response = stripe_app.test_client().post(
                "/webhooks/stripe", data=body,
                headers={"Stripe-Signature": header, "Content-Type": "application/json"})
            statuses.append(response.status_code)
            db.session.remove()

    threads = [threading.Thread(target=deliver) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200] * 5
    session.expire_all()
    assert ledger.balance(session, account).posted == 220
    assert events_stored(session) == 1
    assert_consistent(session, account)


def test_an_unpaid_session_credits_nothing_yet(client, session):
    session_id, account = buy(client, session)
    post_event(client, completed(session_id, payment_status="unpaid"))
    assert ledger.balance(session, account).available == 100


def test_a_session_whose_amount_differs_is_flagged_and_credits_nothing(client, session):
    session_id, account = buy(client, session)
    response = post_event(client, completed(session_id, amount_total=50))
    assert response.get_json()["outcome"].startswith("flagged")
    assert ledger.balance(session, account).available == 100
    assert session.scalar(select(Checkout.status)) == "flagged"
    post_event(client, completed(session_id, "evt_other_currency", currency="eur"))
    assert ledger.balance(session, account).available == 100


def test_the_current_api_shape_without_amounts_is_flagged_not_credited(client, session):
    session_id, account = buy(client, session)
    event = edited("openapi_current_shape/checkout.session.completed.json", id=session_id)
    assert event["data"]["object"]["amount_total"] is None
    post_event(client, event)
    assert ledger.balance(session, account).available == 100


def test_a_session_that_is_not_ours_is_ignored(client, session):
    response = post_event(client, fixture(
        "stripe_ruby_mock/checkout.session.completed.payment_mode.json"))
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "ignored: not a checkout of ours"


# --- signatures ------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["tampered", "stale", "future", "missing", "wrong secret"])
def test_a_bad_signature_is_a_400_that_changes_nothing(client, session, problem):
    session_id, account = buy(client, session)
    body = json.dumps(completed(session_id)).encode()
    header = sign_event(body, STRIPE_WEBHOOK_SECRET)
    if problem == "tampered":
        body = body.replace(b'"amount_total": 500', b'"amount_total": 501')
    elif problem == "stale":
        header = sign_event(body, STRIPE_WEBHOOK_SECRET, timestamp=int(time.time()) - 301)
    elif problem == "future":  # an hour ahead: replayable for an hour more than allowed
        header = sign_event(body, STRIPE_WEBHOOK_SECRET, timestamp=int(time.time()) + 3600)
    elif problem == "missing":
        header = ""
    else:
        header = sign_event(body, "whsec_someone_else")
    response = client.post("/webhooks/stripe", data=body, headers=(
        {"Stripe-Signature": header} if header else {}))
    assert response.status_code == 400 and response.get_data(as_text=True).strip()
    assert events_stored(session) == 0
    assert ledger.balance(session, account).available == 100


def test_an_unknown_event_type_is_kept_and_ignored(client, session):
    # A real event of a type no handler takes (charge.succeeded is handled: receipts).
    event = edited("stripe_ruby_mock/charge.succeeded.json", "evt_captured")
    event["type"] = "charge.captured"
    response = post_event(client, event)
    assert response.status_code == 200 and response.get_json()["outcome"] == \
        "ignored: no handler"
    assert events_stored(session) == 1


# --- refunds ---------------------------------------------------------------------------------


def refund(charge_amount_refunded: int, event_id: str) -> dict[str, Any]:
    return edited("pay_rails/charge.refunded.json", event_id, id="ch_test_1", amount=500,
                  amount_refunded=charge_amount_refunded, payment_intent=PI,
                  refunded=charge_amount_refunded == 500)


def test_a_partial_then_full_refund_claws_back_proportionally_and_cumulatively(client,
                                                                                session):
    session_id, account = buy(client, session)
    post_event(client, completed(session_id))
    # The person spends 150 tokens: the 100 free ones, the 20 bonus, then 30 paid.
    ledger.adjust(session, account, -150, key="adjust:spend", reason="test spend", actor="test")
    session.commit()
    assert ledger.balance(session, account).by_bucket == {"paid": 70}

    post_event(client, refund(250, "evt_refund_half"))
    # Half the money back: half the pack's 120 tokens (60), at most what is unspent (70, all
    # paid: the bonus is spent already). Half the revenue reversed.
    assert ledger.balance(session, account).by_bucket == {"paid": 10}
    month = costs.month(session, account)
    assert month.revenue_pack_musd == 2_500_000

    post_event(client, refund(250, "evt_refund_half_again"))  # an older, repeated state
    assert ledger.balance(session, account).by_bucket == {"paid": 10}

    post_event(client, refund(500, "evt_refund_full"))
    # All of it back: 120 - 60 already taken = 60 more, but only 10 are left unspent.
    assert ledger.balance(session, account).available == 0
    assert costs.month(session, account).revenue_pack_musd == 0
    clawbacks = [line.entry for line in ledger.history(session, account, 50)
                 if line.entry.kind == "clawback"]
    assert [-e.amount for e in clawbacks] == [60, 10]
    assert session.scalar(select(Checkout.refunded_cents)) == 500
    assert_consistent(session, account)


def test_a_refund_of_an_unspent_pack_takes_back_paid_and_bonus(client, session):
    session_id, account = buy(client, session)
    post_event(client, completed(session_id))
    post_event(client, refund(500, "evt_refund_all"))
    assert ledger.balance(session, account).by_bucket == {"free": 100}


# --- disputes --------------------------------------------------------------------------------


def dispute(event_path: str, event_id: str, status: str, **changes: Any) -> dict[str, Any]:
    return edited(event_path, event_id, id="dp_test_1", charge="ch_test_1", amount=500,
                  payment_intent=PI, status=status, **changes)


def test_a_dispute_freezes_then_won_releases(client, session):
    session_id, account = buy(client, session)
    post_event(client, completed(session_id))
    post_event(client, dispute("openapi_current_shape/charge.dispute.created.json",
                               "evt_dp_created", "needs_response"))
    balance = ledger.balance(session, account)
    assert balance.posted == 220 and balance.held == 120 and balance.available == 100
    post_event(client, dispute("stripe_ruby_mock/charge.dispute.closed.json", "evt_dp_won",
                               "won"))
    balance = ledger.balance(session, account)
    assert balance.held == 0 and balance.available == 220
    assert costs.month(session, account).revenue_pack_musd == 5_000_000


def test_a_lost_dispute_claws_back_and_reverses_revenue(client, session):
    session_id, account = buy(client, session)
    post_event(client, completed(session_id))
    post_event(client, dispute("openapi_current_shape/charge.dispute.created.json",
                               "evt_dp_created", "needs_response"))
    post_event(client, dispute("stripe_ruby_mock/charge.dispute.closed.json", "evt_dp_lost",
                               "lost"))
    balance = ledger.balance(session, account)
    assert balance.held == 0 and balance.by_bucket == {"free": 100}
    assert costs.month(session, account).revenue_pack_musd == 0
    assert_consistent(session, account)


def test_an_inquiry_freezes_nothing(client, session):
    session_id, account = buy(client, session)
    post_event(client, completed(session_id))
    post_event(client, dispute("stripe_ruby_mock/charge.dispute.created.json", "evt_inquiry",
                               "warning_needs_response"))
    assert ledger.balance(session, account).held == 0


def test_an_old_shape_dispute_finds_the_payment_through_the_charge(client, session,
                                                                   stripe_api):
    session_id, account = buy(client, session)
    post_event(client, completed(session_id))
    stripe_api.charges["ch_old_1"] = {"id": "ch_old_1", "object": "charge", "amount": 500,
                                      "payment_intent": PI}
    event = edited("stripe_ruby_mock/charge.dispute.funds_withdrawn.json", "evt_dp_old",
                   id="dp_old_1", charge="ch_old_1", amount=500)
    event["type"] = "charge.dispute.created"
    assert "payment_intent" not in event["data"]["object"] or \
        event["data"]["object"]["payment_intent"] is None
    post_event(client, event)
    assert ledger.balance(session, account).held == 120


# --- premium ---------------------------------------------------------------------------------


def subscribe(client, session, stripe_api, status: str = "active") -> tuple[int, str]:
    session_id, account = buy(client, session, "BUY PREMIUM")
    stripe_api.subscriptions["sub_test_1"] = {
        "id": "sub_test_1", "object": "subscription", "status": status,
        "customer": "cus_test_1", "cancel_at_period_end": False,
        "items": {"data": [{"current_period_end": int(time.time()) + 30 * 86400}]},
    }
    event = edited("pay_rails/checkout.session.completed.json", "evt_sub_checkout",
                   id=session_id, subscription="sub_test_1", customer="cus_test_1")
    assert post_event(client, event).status_code == 200
    return account, session_id


def test_buy_premium_opens_a_subscription_checkout(client, session, stripe_api):
    subscribe(client, session, stripe_api)
    [request] = stripe_api.requests_to("/v1/checkout/sessions")
    params = request["params"]
    assert params["mode"] == "subscription"
    price = params["line_items"][0]["price_data"]
    assert price["unit_amount"] == "500" and price["recurring"] == {"interval": "month"}
    assert params["subscription_data"]["metadata"]["item"] == "premium"
    row = session.scalar(select(Subscription))
    assert (row.external_id, row.status, row.customer_id) == ("sub_test_1", "active",
                                                              "cus_test_1")


def invoice(event_id: str, invoice_id: str, path: str = "pay_rails/invoice.payment_failed.json",
            **changes: Any) -> dict[str, Any]:
    event = edited(path, event_id, id=invoice_id, **changes)
    event["data"]["object"]["parent"] = {
        "type": "subscription_details",
        "subscription_details": {"metadata": {}, "subscription": "sub_test_1"}}
    return event


def test_each_paid_invoice_grants_the_monthly_tokens_once(client, session, stripe_api):
    account, _ = subscribe(client, session, stripe_api)
    paid = invoice("evt_inv_paid", "in_test_1", "stripe_ruby_mock/invoice.paid.json",
                   amount_paid=500, subscription=None, billing_reason="subscription_create")
    post_event(client, paid)
    again = copy.deepcopy(paid)
    again["id"], again["type"] = "evt_inv_succeeded", "invoice.payment_succeeded"
    post_event(client, again)
    balance = ledger.balance(session, account)
    assert balance.by_bucket == {"free": 100, "subscription": 120}
    assert costs.month(session, account).revenue_subscription_musd == 5_000_000
    # The paid invoice's page is kept as its receipt (the account page links it).
    receipt = session.scalar(select(Invoice.receipt_url).where(Invoice.external_id == "in_test_1"))
    assert receipt == paid["data"]["object"]["hosted_invoice_url"]
    assert receipt.startswith("https://invoice.stripe.com/")
    # The old API shape names the subscription on the invoice itself.
    old = edited("stripe_ruby_mock/invoice.paid.json", "evt_inv_old", id="in_test_2",
                 amount_paid=500, subscription="sub_test_1", billing_reason="subscription_cycle")
    post_event(client, old)
    assert ledger.balance(session, account).by_bucket["subscription"] == 240
    # A manual invoice (or a proration) pays for no month: no tokens.
    manual = edited("stripe_ruby_mock/invoice.paid.json", "evt_inv_manual", id="in_test_3",
                    amount_paid=500, subscription="sub_test_1")
    assert manual["data"]["object"]["billing_reason"] == "manual"
    post_event(client, manual)
    assert ledger.balance(session, account).by_bucket["subscription"] == 240


def test_subscription_events_out_of_order_end_at_the_present_state(client, session,
                                                                  stripe_api):
    account, _ = subscribe(client, session, stripe_api)
    updated = edited("openapi_current_shape/customer.subscription.updated.json",
                     "evt_sub_updated", id="sub_test_1", status="past_due")
    deleted = edited("pay_rails/customer.subscription.deleted.json", "evt_sub_deleted",
                     id="sub_test_1")
    stripe_api.subscriptions["sub_test_1"]["status"] = "canceled"
    post_event(client, deleted)  # the newest event first
    post_event(client, updated)  # then a stale one that says past_due
    row = session.scalar(select(Subscription))
    session.refresh(row)
    assert row.status == "canceled" and not row.premium(row.updated_at, 3)
    assert ledger.balance(session, account).available == 100  # tokens stay


def test_a_failed_subscription_payment_sends_a_billing_portal_link(client, session,
                                                                   stripe_api, twilio_api):
    subscribe(client, session, stripe_api)
    twilio_api.reset()
    post_event(client, invoice("evt_inv_failed", "in_failed_1"))
    [notice] = twilio_api.accepted
    match = re.search(re.escape(PUBLIC_BASE_URL) + r"(/pay/[A-Za-z0-9_-]+)", notice["Body"])
    assert match and "update your card" in notice["Body"]
    portal = client.get(match.group(1))
    assert portal.status_code == 303
    assert portal.headers["Location"].startswith("https://billing.stripe.com/")
    [request] = stripe_api.requests_to("/v1/billing_portal/sessions")
    assert request["params"]["customer"] == "cus_test_1"


def test_a_provider_error_while_applying_is_a_500_and_a_retry_works(client, session,
                                                                    stripe_api):
    account, _ = subscribe(client, session, stripe_api)
    stripe_api.fail_next(500, times=3)  # the client's own retries included
    updated = edited("openapi_current_shape/customer.subscription.updated.json",
                     "evt_sub_retry", id="sub_test_1")
    assert post_event(client, updated).status_code == 500
    assert session.scalar(select(func.count()).select_from(PaymentEvent).where(
        PaymentEvent.event_id == "evt_sub_retry")) == 0
    assert post_event(client, updated).status_code == 200


def test_no_notice_goes_to_a_person_who_opted_out(client, session, twilio_api):
    session_id, account = buy(client, session)
    post_signed(client, sms("STOP"))
    post_event(client, completed(session_id))
    assert ledger.balance(session, account).available == 220
    assert twilio_api.sent == []
    assert session.scalar(select(func.count()).select_from(Message).where(
        Message.status == "pending")) == 0


def test_holds_of_a_dispute_are_named_for_it(client, session):
    session_id, account = buy(client, session)
    post_event(client, completed(session_id))
    post_event(client, dispute("openapi_current_shape/charge.dispute.created.json",
                               "evt_dp_created", "needs_response"))
    hold = session.scalar(select(Hold).where(Hold.idempotency_key == "dispute:dp_test_1"))
    assert hold is not None and hold.amount == 120 and hold.status == "pending"


def test_an_expired_session_is_forgotten_and_the_link_opens_a_new_one(client, session,
                                                                      stripe_api):
    reply = post_signed(client, sms("BUY")).get_data(as_text=True)
    path = re.search(r"(/pay/[A-Za-z0-9_-]+)", reply).group(1)
    first = client.get(path).headers["Location"]
    session_id = session.scalar(select(Checkout.external_id))
    expired = completed(session_id, "evt_expired", status="expired", payment_status="unpaid")
    expired["type"] = "checkout.session.expired"
    post_event(client, expired)
    assert session.scalar(select(Checkout.status)) == "expired"
    second = client.get(path).headers["Location"]
    assert second != first
    keys = [r["idempotency_key"] for r in stripe_api.requests_to("/v1/checkout/sessions")]
    assert keys[0].endswith("-1") and keys[1].endswith("-2")


def test_a_failed_delayed_payment_tells_the_person_and_credits_nothing(client, session,
                                                                       twilio_api):
    session_id, account = buy(client, session)
    failed = completed(session_id, "evt_async_failed", payment_status="unpaid")
    failed["type"] = "checkout.session.async_payment_failed"
    post_event(client, failed)
    assert ledger.balance(session, account).available == 100
    [notice] = twilio_api.accepted
    assert "did not go through" in notice["Body"]


def test_a_paid_invoice_before_the_checkout_event_still_grants(client, session, stripe_api):
    """Stripe sends a new subscription's events in no fixed order: the invoice can come
    first. The subscription's metadata (set at checkout) names the account."""
    session_id, account = buy(client, session, "BUY PREMIUM")
    [request] = stripe_api.requests_to("/v1/checkout/sessions")
    stripe_api.subscriptions["sub_test_1"] = {
        "id": "sub_test_1", "object": "subscription", "status": "active",
        "customer": "cus_test_1", "metadata": request["params"]["subscription_data"]["metadata"],
    }
    paid = invoice("evt_inv_first", "in_first", "stripe_ruby_mock/invoice.paid.json",
                   amount_paid=500, subscription=None, billing_reason="subscription_create")
    assert post_event(client, paid).get_json()["outcome"] == "granted 120 subscription tokens"
    event = edited("pay_rails/checkout.session.completed.json", "evt_sub_checkout",
                   id=session_id, subscription="sub_test_1", customer="cus_test_1")
    post_event(client, event)
    assert ledger.balance(session, account).by_bucket == {"free": 100, "subscription": 120}
    assert session.scalar(select(Subscription.account_id)) == account


def test_a_dispute_closed_before_its_created_event_freezes_nothing(client, session):
    session_id, account = buy(client, session)
    post_event(client, completed(session_id))
    post_event(client, dispute("stripe_ruby_mock/charge.dispute.closed.json", "evt_dp_won",
                               "won"))
    post_event(client, dispute("openapi_current_shape/charge.dispute.created.json",
                               "evt_dp_created_late", "needs_response"))
    assert ledger.balance(session, account).held == 0


def test_a_charge_lookup_that_fails_is_a_500_so_stripe_retries(client, session, stripe_api):
    session_id, account = buy(client, session)
    post_event(client, completed(session_id))
    stripe_api.charges["ch_old_1"] = {"id": "ch_old_1", "object": "charge", "amount": 500,
                                      "payment_intent": PI}
    event = edited("stripe_ruby_mock/charge.dispute.closed.json", "evt_dp_old_lost",
                   id="dp_old_2", charge="ch_old_1", amount=500, status="lost")
    stripe_api.fail_next(500, times=3)
    assert post_event(client, event).status_code == 500
    assert events_stored(session) == 1  # only the completed event
    assert post_event(client, event).status_code == 200
    assert ledger.balance(session, account).by_bucket == {"free": 100}


def test_buy_premium_from_a_subscriber_sends_the_billing_portal(client, session, stripe_api):
    subscribe(client, session, stripe_api)
    reply = post_signed(client, sms("BUY PREMIUM")).get_data(as_text=True)
    assert "Manage or cancel" in reply
    path = re.search(r"(/pay/[A-Za-z0-9_-]+)", reply).group(1)
    assert client.get(path).headers["Location"].startswith("https://billing.stripe.com/")
    assert len(stripe_api.requests_to("/v1/checkout/sessions")) == 1  # no second subscription


@pytest.mark.backends("postgresql")
def test_subscription_events_arriving_together_do_not_deadlock(stripe_app, client, session,
                                                               stripe_api):
    session_id, account = buy(client, session, "BUY PREMIUM")
    [request] = stripe_api.requests_to("/v1/checkout/sessions")
    stripe_api.subscriptions["sub_test_1"] = {
        "id": "sub_test_1", "object": "subscription", "status": "active",
        "customer": "cus_test_1", "metadata": request["params"]["subscription_data"]["metadata"],
    }
    bodies = [
        edited("pay_rails/checkout.session.completed.json", "evt_together_1", id=session_id,
               subscription="sub_test_1", customer="cus_test_1"),
        edited("stripe_ruby_mock/customer.subscription.created.json", "evt_together_2",
               id="sub_test_1"),
        invoice("evt_together_3", "in_together", "stripe_ruby_mock/invoice.paid.json",
                amount_paid=500, subscription=None, billing_reason="subscription_create"),
    ]
    statuses: list[int] = []
    barrier = threading.Barrier(len(bodies))

    def deliver(event: dict[str, Any]) -> None:
        with stripe_app.app_context():
            barrier.wait()
            statuses.append(post_event(stripe_app.test_client(), event).status_code)
            db.session.remove()

    threads = [threading.Thread(target=deliver, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200, 200, 200]
    session.expire_all()
    assert ledger.balance(session, account).by_bucket == {"free": 100, "subscription": 120}
    assert session.scalar(select(Subscription.status)) == "active"


# --- telling the person of subscription changes (issue #16) ---------------------------------


def test_past_due_says_when_premium_stops_and_buy_premium_gives_the_portal(
        client, session, stripe_api, twilio_api):
    account, _ = subscribe(client, session, stripe_api)
    twilio_api.reset()
    stripe_api.subscriptions["sub_test_1"]["status"] = "past_due"
    updated = edited("openapi_current_shape/customer.subscription.updated.json",
                     "evt_sub_past_due", id="sub_test_1", status="past_due")
    post_event(client, updated)
    [notice] = twilio_api.accepted
    assert "stays on until" in notice["Body"] and "/pay/" in notice["Body"]
    post_event(client, copy.deepcopy(updated) | {"id": "evt_sub_past_due_2"})
    assert len(twilio_api.accepted) == 1  # told once per episode
    row = session.scalar(select(Subscription))
    session.refresh(row)
    # Past the grace period premium stops; BUY PREMIUM still opens the portal, never a second
    # subscription checkout.
    row.past_due_since = row.past_due_since - timedelta(days=30)
    session.commit()
    reply = post_signed(client, sms("BUY PREMIUM")).get_data(as_text=True)
    assert "Update your card" in reply, reply
    path = re.search(r"(/pay/[A-Za-z0-9_-]+)", reply).group(1)
    assert client.get(path).headers["Location"].startswith("https://billing.stripe.com/")
    assert len(stripe_api.requests_to("/v1/checkout/sessions")) == 1


def test_the_sweep_tells_once_that_the_grace_period_ended(stripe_app, client, session,
                                                          stripe_api, twilio_api):
    subscribe(client, session, stripe_api)
    stripe_api.subscriptions["sub_test_1"]["status"] = "past_due"
    post_event(client, edited("openapi_current_shape/customer.subscription.updated.json",
                              "evt_sub_past_due", id="sub_test_1", status="past_due"))
    row = session.scalar(select(Subscription))
    session.refresh(row)
    row.past_due_since = row.past_due_since - timedelta(days=30)
    session.commit()
    twilio_api.reset()
    runner = stripe_app.test_cli_runner()
    for _ in range(2):
        result = runner.invoke(args=["messages", "sweep"])
        assert result.exit_code == 0, result.output
    [notice] = twilio_api.accepted
    assert "paused" in notice["Body"] and "/pay/" in notice["Body"]


def test_a_cancellation_at_the_period_end_says_when_premium_ends(client, session, stripe_api,
                                                                 twilio_api):
    subscribe(client, session, stripe_api)
    twilio_api.reset()
    end = int(time.time()) + 20 * 86400
    stripe_api.subscriptions["sub_test_1"].update(
        cancel_at_period_end=True, items={"data": [{"current_period_end": end}]})
    post_event(client, edited("openapi_current_shape/customer.subscription.updated.json",
                              "evt_sub_cancel", id="sub_test_1", status="active"))
    [notice] = twilio_api.accepted
    assert "is cancelled and ends on" in notice["Body"]


# --- receipts (the account page, docs/account.md) --------------------------------------------


@pytest.mark.parametrize("charge_first", [True, False])
def test_a_packs_charge_receipt_is_kept_whichever_event_comes_first(client, session,
                                                                     charge_first):
    from tokens import statement
    from tokens.base import utcnow

    session_id, account = buy(client, session)
    charge = edited("stripe_ruby_mock/charge.succeeded.json", "evt_charge_ok",
                    id="ch_test_1", payment_intent=PI)
    receipt = charge["data"]["object"]["receipt_url"]
    events = [charge, completed(session_id)] if charge_first else [completed(session_id),
                                                                   charge]
    for event in events:
        assert post_event(client, event).status_code == 200
    catalog = bot_settings(client.application).catalog
    (bought,) = statement.purchases_of(session, account)
    assert bought.kind == "pack" and bought.receipt_url == receipt
    assert receipt.startswith("https://pay.stripe.com/receipts/")
    assert statement.statement(session, account, catalog, utcnow()).purchases == (bought,)
    # A receipt link that is not https is never kept.
    hostile = edited("stripe_ruby_mock/charge.succeeded.json", "evt_charge_bad",
                     id="ch_test_1", payment_intent=PI, receipt_url="javascript:alert(1)")
    post_event(client, hostile)
    assert statement.purchases_of(session, account)[0].receipt_url == receipt
