"""The Stripe stand-in works with the real `stripe` client, and `sign_event` with its verifier.

Every test talks to `testing.stripe_standin.StripeStandIn` through
`stripe.StripeClient(..., base_addresses={"api": standin.base_url})` exactly as the app does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import requests
import stripe
from stripe.params.checkout import SessionCreateParams

from testing.stripe_standin import (
    BILLING_PORTAL_SESSIONS,
    CHECKOUT_SESSIONS,
    PAYMENT_INTENTS,
    STRIPE_FIXTURES,
    StripeStandIn,
    event_for,
    invoice_payment,
    sign_event,
    stripe_event_bytes,
    unflatten,
)

API_KEY = "sk_test_standin_0123456789"
WEBHOOK_SECRET = "whsec_standin_test_secret"


@pytest.fixture()
def standin() -> Iterator[StripeStandIn]:
    with StripeStandIn(api_key=API_KEY) as server:
        yield server


def make_client(
    standin: StripeStandIn, retries: int = 2, key: str = API_KEY
) -> stripe.StripeClient:
    """The real client pointed at the stand-in, as the app builds it."""
    return stripe.StripeClient(
        key, base_addresses={"api": standin.base_url}, max_network_retries=retries
    )


@pytest.fixture()
def client(standin: StripeStandIn) -> stripe.StripeClient:
    return make_client(standin)


@pytest.fixture()
def fast_client(standin: StripeStandIn) -> stripe.StripeClient:
    """No retries: error tests answer at once instead of sleeping between tries."""
    return make_client(standin, retries=0)


def session_params(**overrides: Any) -> SessionCreateParams:
    """Create params for a one-time payment of 3 x 500 cents, with `overrides` applied."""
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 500,
                    "product_data": {"name": "100 tokens"},
                },
                "quantity": 3,
            }
        ],
        "client_reference_id": "acct-42",
        "metadata": {"account": "abc", "pack": "100"},
        "success_url": "https://app.example/paid?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "https://app.example/cancel",
    }
    params.update(overrides)
    return cast(SessionCreateParams, params)


# -- Checkout Sessions ------------------------------------------------------------------------


def test_checkout_session_create_records_form_and_key(
    standin: StripeStandIn, client: stripe.StripeClient
) -> None:
    before = int(time.time())
    session = client.v1.checkout.sessions.create(
        params=session_params(), options={"idempotency_key": "k1"}
    )

    assert isinstance(session, stripe.checkout.Session)
    assert session.id.startswith("cs_test_")
    assert session.object == "checkout.session"
    assert session.url == f"https://checkout.stripe.com/c/pay/{session.id}"
    assert session.mode == "payment"
    assert session.amount_total == 1500
    assert session.currency == "usd"
    assert session.client_reference_id == "acct-42"
    assert session.metadata is not None
    assert session.metadata.to_dict() == {"account": "abc", "pack": "100"}
    assert (session.payment_status, session.status) == ("unpaid", "open")
    assert session.payment_intent is None and session.customer is None
    assert session.subscription is None and session.livemode is False
    assert before + 24 * 3600 <= session.expires_at <= int(time.time()) + 24 * 3600
    assert session.success_url == "https://app.example/paid?session={CHECKOUT_SESSION_ID}"
    assert standin.sessions[session.id]["amount_total"] == 1500

    (request,) = standin.requests
    assert (request["method"], request["path"], request["status"]) == (
        "POST",
        CHECKOUT_SESSIONS,
        200,
    )
    assert request["idempotency_key"] == "k1"
    assert request["stripe_version"] == stripe.api_version
    assert request["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert request["form"] == {
        "mode": "payment",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "500",
        "line_items[0][price_data][product_data][name]": "100 tokens",
        "line_items[0][quantity]": "3",
        "client_reference_id": "acct-42",
        "metadata[account]": "abc",
        "metadata[pack]": "100",
        "success_url": "https://app.example/paid?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "https://app.example/cancel",
    }
    assert request["params"]["line_items"][0]["price_data"]["unit_amount"] == "500"
    assert request["object_id"] == session.id

    fetched = client.v1.checkout.sessions.retrieve(session.id)
    assert fetched.id == session.id and fetched.amount_total == 1500


def test_same_idempotency_key_returns_same_session(
    standin: StripeStandIn, client: stripe.StripeClient
) -> None:
    first = client.v1.checkout.sessions.create(
        params=session_params(), options={"idempotency_key": "k1"}
    )
    standin.sessions[first.id]["status"] = "complete"  # edited after the fact
    again = client.v1.checkout.sessions.create(
        params=session_params(), options={"idempotency_key": "k1"}
    )
    other = client.v1.checkout.sessions.create(
        params=session_params(), options={"idempotency_key": "k2"}
    )

    assert again.id == first.id
    assert again.status == "open"  # the replay is the first answer, as Stripe replays it
    assert other.id != first.id
    assert set(standin.sessions) == {first.id, other.id}
    recorded = standin.requests_to(CHECKOUT_SESSIONS)
    assert [r["idempotency_key"] for r in recorded] == ["k1", "k1", "k2"]
    assert [r["replayed"] for r in recorded] == [False, True, False]
    assert [r["object_id"] for r in recorded] == [first.id, first.id, other.id]


def test_same_idempotency_key_with_other_params_is_an_idempotency_error(
    standin: StripeStandIn, fast_client: stripe.StripeClient
) -> None:
    fast_client.v1.checkout.sessions.create(
        params=session_params(), options={"idempotency_key": "k1"}
    )
    with pytest.raises(stripe.IdempotencyError) as caught:
        fast_client.v1.checkout.sessions.create(
            params=session_params(client_reference_id="someone-else"),
            options={"idempotency_key": "k1"},
        )
    assert caught.value.http_status == 400
    assert caught.value.error is not None and caught.value.error.type == "idempotency_error"
    assert len(standin.sessions) == 1
    assert [r["status"] for r in standin.requests] == [200, 400]


def test_retry_after_500_reuses_the_key_and_creates_one_session(
    standin: StripeStandIn, client: stripe.StripeClient
) -> None:
    standin.fail_next(500)
    session = client.v1.checkout.sessions.create(params=session_params())

    recorded = standin.requests
    assert [r["status"] for r in recorded] == [500, 200]
    assert recorded[0]["idempotency_key"] == recorded[1]["idempotency_key"]
    assert list(standin.sessions) == [session.id]


def test_checkout_validation_mirrors_stripe(
    standin: StripeStandIn, fast_client: stripe.StripeClient
) -> None:
    no_quantity = session_params()
    del no_quantity["line_items"][0]["quantity"]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        fast_client.v1.checkout.sessions.create(params=no_quantity)
    assert caught.value.param == "line_items[0][quantity]"

    with pytest.raises(stripe.InvalidRequestError) as caught:
        fast_client.v1.checkout.sessions.create(
            params=session_params(
                mode="subscription", line_items=[{"price": "price_missing", "quantity": 1}]
            )
        )
    assert caught.value.code == "resource_missing"

    standin.prices["price_monthly"] = {
        "unit_amount": 900,
        "currency": "eur",
        "recurring": {"interval": "month"},
    }
    with pytest.raises(stripe.InvalidRequestError, match="recurring price"):
        fast_client.v1.checkout.sessions.create(
            params=session_params(line_items=[{"price": "price_monthly", "quantity": 1}])
        )
    subscription = fast_client.v1.checkout.sessions.create(
        params=session_params(
            mode="subscription", line_items=[{"price": "price_monthly", "quantity": 2}]
        )
    )
    assert (subscription.amount_total, subscription.currency) == (1800, "eur")
    assert list(standin.sessions) == [subscription.id]


# -- Saved cards and off-session payments ----------------------------------------------------


def off_session(customer: str, method: str, **overrides: Any) -> Any:
    params: dict[str, Any] = {"amount": 500, "currency": "usd", "customer": customer,
                              "payment_method": method, "off_session": True, "confirm": True,
                              "metadata": {"auto_topup": "auto_topup:1:1"}}
    params.update(overrides)
    return params


def test_customers_create_and_retrieve(standin: StripeStandIn,
                                       fast_client: stripe.StripeClient) -> None:
    customer = fast_client.v1.customers.create(params={"metadata": {"account": "abc"}})
    assert customer.id.startswith("cus_") and customer.object == "customer"
    assert fast_client.v1.customers.retrieve(customer.id).metadata.to_dict() == {
        "account": "abc"}
    with pytest.raises(stripe.InvalidRequestError):
        fast_client.v1.customers.retrieve("cus_missing")


def test_a_checkout_that_saves_the_card_attaches_it_to_a_new_customer(
    standin: StripeStandIn, client: stripe.StripeClient
) -> None:
    session = client.v1.checkout.sessions.create(params=session_params(
        customer_creation="always",
        payment_intent_data={"setup_future_usage": "off_session",
                             "metadata": {"account": "abc", "save_card": "off_session"}}))
    assert session.customer_creation == "always"
    assert "standin_setup_future_usage" not in session.to_dict()  # Stripe's shape only
    intent = standin.complete_session(session.id)
    assert (intent["status"], intent["amount"], intent["setup_future_usage"]) == (
        "succeeded", 1500, "off_session")
    assert intent["metadata"] == {"account": "abc", "save_card": "off_session"}
    method = standin.payment_methods[intent["payment_method"]]
    assert intent["customer"] in standin.customers and method["customer"] == intent["customer"]
    fetched = client.v1.checkout.sessions.retrieve(session.id)
    assert (fetched.payment_status, fetched.payment_intent) == ("paid", intent["id"])
    retrieved = client.v1.payment_intents.retrieve(intent["id"])
    assert retrieved.payment_method == method["id"]
    event = event_for(standin.payment_intents[intent["id"]], "payment_intent.succeeded")
    assert event["type"] == "payment_intent.succeeded"
    assert event["data"]["object"]["payment_method"] == method["id"]
    # The saved card can be charged off-session.
    charged = client.v1.payment_intents.create(
        params=off_session(intent["customer"], method["id"]))
    assert charged.status == "succeeded" and charged.latest_charge in standin.charges


def test_a_checkout_without_consent_leaves_the_card_unattached(
    standin: StripeStandIn, fast_client: stripe.StripeClient
) -> None:
    session = fast_client.v1.checkout.sessions.create(params=session_params())
    intent = standin.complete_session(session.id)
    assert intent["customer"] is None and intent["setup_future_usage"] is None
    assert standin.payment_methods[intent["payment_method"]]["customer"] is None
    with pytest.raises(stripe.InvalidRequestError):
        fast_client.v1.checkout.sessions.create(params=session_params(
            payment_intent_data={"setup_future_usage": "sometimes"}))


def test_off_session_payment_succeeds_once_per_idempotency_key(
    standin: StripeStandIn, client: stripe.StripeClient
) -> None:
    method = standin.saved_card()
    customer = standin.payment_methods[method]["customer"]
    first = client.v1.payment_intents.create(params=off_session(customer, method),
                                             options={"idempotency_key": "auto_topup:1:1"})
    again = client.v1.payment_intents.create(params=off_session(customer, method),
                                             options={"idempotency_key": "auto_topup:1:1"})
    assert first.id == again.id and first.status == "succeeded"
    assert first.amount_received == 500 and first.metadata.to_dict() == {
        "auto_topup": "auto_topup:1:1"}
    assert list(standin.payment_intents) == [first.id]
    assert [r["replayed"] for r in standin.requests_to(PAYMENT_INTENTS)] == [False, True]
    assert standin.requests_to(PAYMENT_INTENTS)[0]["form"]["off_session"] == "true"


@pytest.mark.parametrize(("card", "code", "decline_code"), [
    ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
    ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
    ("pm_card_authenticationRequired", "authentication_required", "authentication_required"),
])
def test_off_session_decline_and_3ds_are_402_naming_the_payment_intent_and_replayed(
    standin: StripeStandIn, fast_client: stripe.StripeClient, card: str, code: str,
    decline_code: str,
) -> None:
    method = standin.saved_card(card=card)
    customer = standin.payment_methods[method]["customer"]
    errors = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as caught:
            fast_client.v1.payment_intents.create(params=off_session(customer, method),
                                                  options={"idempotency_key": "k-" + card})
        errors.append(caught.value)
    for error in errors:
        assert error.http_status == 402 and error.code == code
        assert error.error is not None and error.error.decline_code == decline_code
        assert error.error.payment_intent is not None
        assert error.error.payment_intent.status == "requires_payment_method"
    assert errors[0].error.payment_intent.id == errors[1].error.payment_intent.id  # type: ignore
    assert len(standin.payment_intents) == 1  # the retry created nothing
    assert [r["replayed"] for r in standin.requests_to(PAYMENT_INTENTS)] == [False, True]


def test_off_session_payment_validation(standin: StripeStandIn,
                                        fast_client: stripe.StripeClient) -> None:
    method = standin.saved_card()
    customer = standin.payment_methods[method]["customer"]
    other = fast_client.v1.customers.create().id
    for params, message in (
        (off_session(customer, "pm_missing"), "No such PaymentMethod"),
        (off_session(other, method), "attach it to a Customer"),
        (off_session(customer, method, amount=10), "at least"),
        (off_session(customer, method, confirm=False), "off_session"),
    ):
        with pytest.raises(stripe.InvalidRequestError, match=message):
            fast_client.v1.payment_intents.create(params=params,
                                                  options={"idempotency_key": message})
    assert standin.payment_intents == {}


# -- Billing portal, retrievals, auth ---------------------------------------------------------


def test_billing_portal_session(standin: StripeStandIn, client: stripe.StripeClient) -> None:
    portal = client.v1.billing_portal.sessions.create(
        params={"customer": "cus_123", "return_url": "https://app.example/account"}
    )
    assert portal.id.startswith("bps_")
    assert portal.object == "billing_portal.session"
    assert portal.url.startswith("https://billing.stripe.com/p/session/")
    assert (portal.customer, portal.return_url) == ("cus_123", "https://app.example/account")
    (request,) = standin.requests_to(BILLING_PORTAL_SESSIONS)
    assert request["form"] == {"customer": "cus_123", "return_url": "https://app.example/account"}
    assert standin.portal_sessions[portal.id]["customer"] == "cus_123"


def test_subscription_retrieve_registered_and_missing(
    standin: StripeStandIn, fast_client: stripe.StripeClient
) -> None:
    standin.subscriptions["sub_123"] = {
        "status": "active",
        "customer": "cus_123",
        "metadata": {"account": "abc"},
        "items": {"object": "list", "data": [{"id": "si_1", "current_period_end": 1900000000}]},
    }
    subscription = fast_client.v1.subscriptions.retrieve("sub_123")
    assert isinstance(subscription, stripe.Subscription)
    assert (subscription.id, subscription.status) == ("sub_123", "active")
    assert subscription["items"]["data"][0]["current_period_end"] == 1900000000

    with pytest.raises(stripe.InvalidRequestError) as caught:
        fast_client.v1.subscriptions.retrieve("sub_missing")
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert "sub_missing" in str(caught.value.user_message)


def test_charge_retrieve(standin: StripeStandIn, fast_client: stripe.StripeClient) -> None:
    charge_event = json.loads(stripe_event_bytes("pay_rails/charge.refunded.json"))
    charge = charge_event["data"]["object"]
    standin.charges[charge["id"]] = charge
    fetched = fast_client.v1.charges.retrieve(charge["id"])
    assert isinstance(fetched, stripe.Charge)
    assert (fetched.amount, fetched.amount_refunded) == (1500, 500)
    with pytest.raises(stripe.InvalidRequestError):
        fast_client.v1.charges.retrieve("ch_missing")


def test_invoice_retrieve_includes_payments_only_when_expanded(
    standin: StripeStandIn, fast_client: stripe.StripeClient
) -> None:
    """Stripe leaves `payments` out of an invoice unless it is expanded; the app's
    `fetch_invoice` expands it to learn which payment intent paid the invoice."""
    fixture = json.loads(stripe_event_bytes("openapi_current_shape/objects/invoice.json"))
    assert "payments" not in fixture  # the current shape names no charge or payment intent
    standin.invoices["in_1"] = {**fixture, "id": "in_1", "payments": {
        "object": "list", "has_more": False, "url": "/v1/invoice_payments",
        "data": [invoice_payment("in_1", 500, payment_intent="pi_1")]}}
    plain = fast_client.v1.invoices.retrieve("in_1").to_dict()
    assert "payments" not in plain and plain["id"] == "in_1"
    expanded = fast_client.v1.invoices.retrieve("in_1", params={"expand": ["payments"]})
    [entry] = expanded.to_dict()["payments"]["data"]
    assert entry["payment"] == {"type": "payment_intent", "payment_intent": "pi_1"}
    assert entry["invoice"] == "in_1" and entry["status"] == "paid"
    assert standin.requests[-1]["query"] == {"expand[0]": "payments"}
    by_charge = invoice_payment("in_2", 500, charge="ch_1")
    assert by_charge["payment"] == {"type": "charge", "charge": "ch_1"}
    with pytest.raises(stripe.InvalidRequestError) as caught:
        fast_client.v1.invoices.retrieve("in_missing")
    assert caught.value.http_status == 404 and caught.value.code == "resource_missing"


def test_missing_or_wrong_api_key_is_401(standin: StripeStandIn) -> None:
    with pytest.raises(stripe.AuthenticationError) as caught:
        make_client(standin, retries=0, key="sk_test_wrong_key").v1.subscriptions.retrieve("x")
    assert caught.value.http_status == 401

    answer = requests.post(standin.base_url + CHECKOUT_SESSIONS, data={"mode": "payment"})
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "API key" in answer.json()["error"]["message"]
    basic = requests.get(standin.base_url + "/v1/charges/ch_x", auth=(API_KEY, ""))
    assert basic.status_code == 404  # authenticated by Basic, then not found


def test_trailing_slash_base_address_is_rejected(standin: StripeStandIn) -> None:
    client = stripe.StripeClient(
        API_KEY, base_addresses={"api": standin.base_url + "/"}, max_network_retries=0
    )
    with pytest.raises(stripe.InvalidRequestError, match="must not end with"):
        client.v1.subscriptions.retrieve("sub_123")
    assert standin.requests[0]["path"] == "//v1/subscriptions/sub_123"


# -- Injected failures ------------------------------------------------------------------------


def test_500_raises_api_error(standin: StripeStandIn, fast_client: stripe.StripeClient) -> None:
    standin.fail_next(500, message="Something went wrong")
    with pytest.raises(stripe.APIError) as caught:
        fast_client.v1.checkout.sessions.create(params=session_params())
    assert caught.value.http_status == 500
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")
    assert standin.sessions == {}
    # The failure was not stored under the key: the next request goes through.
    assert fast_client.v1.checkout.sessions.create(params=session_params()).amount_total == 1500


def test_card_error_and_rate_limit(
    standin: StripeStandIn, fast_client: stripe.StripeClient
) -> None:
    standin.fail_next(402, "card_error", decline_code="insufficient_funds")
    with pytest.raises(stripe.CardError) as card:
        fast_client.v1.checkout.sessions.create(params=session_params())
    assert card.value.http_status == 402 and card.value.code == "card_declined"
    assert card.value.error is not None
    assert card.value.error.decline_code == "insufficient_funds"

    standin.fail_next(429, "invalid_request_error", code="rate_limit", times=2)
    for _ in range(2):
        with pytest.raises(stripe.RateLimitError):
            fast_client.v1.subscriptions.retrieve("sub_any")
    standin.subscriptions["sub_any"] = {"status": "active"}
    assert fast_client.v1.subscriptions.retrieve("sub_any").status == "active"


def test_reset_forgets_everything(standin: StripeStandIn, client: stripe.StripeClient) -> None:
    client.v1.checkout.sessions.create(params=session_params(), options={"idempotency_key": "k"})
    standin.subscriptions["sub_1"] = {"status": "active"}
    standin.fail_next(500)
    standin.reset()
    assert (standin.requests, standin.sessions, standin.subscriptions) == ([], {}, {})
    again = client.v1.checkout.sessions.create(
        params=session_params(), options={"idempotency_key": "k"}
    )
    assert standin.requests[0]["replayed"] is False and list(standin.sessions) == [again.id]


# -- Webhook signatures -----------------------------------------------------------------------


EVENT_FIXTURES = sorted(
    path.relative_to(STRIPE_FIXTURES).as_posix()
    for path in STRIPE_FIXTURES.rglob("*.json")
    if json.loads(path.read_bytes()).get("object") == "event"
)


def test_fixtures_were_copied() -> None:
    folders = {name.split("/")[0] for name in EVENT_FIXTURES}
    assert folders == {"openapi_current_shape", "pay_rails", "stripe_ruby_mock"}
    assert (STRIPE_FIXTURES / "openapi_current_shape" / "objects" / "subscription.json").is_file()


@pytest.mark.parametrize("name", EVENT_FIXTURES)
def test_sign_event_is_accepted_by_construct_event(name: str) -> None:
    payload = stripe_event_bytes(name)
    header = sign_event(payload, WEBHOOK_SECRET)
    event = stripe.Webhook.construct_event(payload, header, WEBHOOK_SECRET)
    assert event.type == json.loads(payload)["type"]


def test_sign_event_matches_the_library_and_header_format() -> None:
    payload = b'{"id": "evt_1", "object": "event", "type": "charge.refunded"}'
    header = sign_event(payload, WEBHOOK_SECRET, timestamp=1_700_000_000)
    assert header == stripe.WebhookSignature.generate_signature_header(
        payload.decode(), WEBHOOK_SECRET, timestamp=1_700_000_000
    )
    t, v1 = header.split(",")
    assert t == "t=1700000000" and len(v1.removeprefix("v1=")) == 64


def test_sign_event_tampered_body_is_rejected() -> None:
    payload = stripe_event_bytes("pay_rails/charge.refunded.json")
    header = sign_event(payload, WEBHOOK_SECRET)
    tampered = payload.replace(b'"amount_refunded": 500', b'"amount_refunded": 1500')
    assert tampered != payload
    with pytest.raises(stripe.SignatureVerificationError, match="No signatures found"):
        stripe.Webhook.construct_event(tampered, header, WEBHOOK_SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_other_secret")


def test_sign_event_stale_timestamp_is_rejected() -> None:
    payload = stripe_event_bytes("stripe_ruby_mock/checkout.session.completed.json")
    stale = sign_event(payload, WEBHOOK_SECRET, timestamp=int(time.time()) - 301)
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(payload, stale, WEBHOOK_SECRET)
    recent = sign_event(payload, WEBHOOK_SECRET, timestamp=int(time.time()) - 200)
    assert stripe.Webhook.construct_event(payload, recent, WEBHOOK_SECRET).id


def test_unflatten_bracket_notation() -> None:
    fields = [
        ("line_items[0][price_data][unit_amount]", "500"),
        ("line_items[1][quantity]", "2"),
        ("metadata[0]", "zero"),
        ("expand[]", "a"),
        ("expand[]", "b"),
    ]
    assert unflatten(fields) == {
        "line_items": [{"price_data": {"unit_amount": "500"}}, {"quantity": "2"}],
        "metadata": {"0": "zero"},
        "expand": ["a", "b"],
    }
