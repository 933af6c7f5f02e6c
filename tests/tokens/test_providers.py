"""`tokens.providers` called directly: the Stripe provider's requests and answers against the
local Stripe stand-in (testing/stripe_standin.py) through the real `stripe` client
(checkout request shapes, idempotency keys, errors permanent or worth a retry, webhook
verification, off-session payments), and the sandbox provider's fake objects. No database.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from testing.deployment import STRIPE_API_KEY
from testing.stripe_standin import (
    CHECKOUT_SESSIONS,
    INVOICES,
    PAYMENT_INTENTS,
    StripeStandIn,
    sign_event,
    stripe_event_bytes,
)
from tokens.providers import (
    OFF_SESSION,
    SANDBOX_AUTHENTICATION_CARD,
    SANDBOX_DECLINED_CARD,
    CheckoutRequest,
    InvalidWebhook,
    OffSessionCharge,
    PaymentError,
    SandboxProvider,
    StripeProvider,
    sandbox_card_for,
)

SECRET = "whsec_providers_test"
EVENT_BODY = stripe_event_bytes("stripe_ruby_mock/checkout.session.completed.payment_mode.json")


def pack_request(**changes) -> CheckoutRequest:
    fields = dict(mode="payment", account_public_id="acct_pub_1", item_code="starter",
                  name="Starter: 120 tokens", amount_cents=500, currency="usd", tokens=100,
                  bonus_tokens=20, success_url="https://bot.example.com/pay/done",
                  cancel_url="https://bot.example.com/pay/cancel",
                  idempotency_key="paylink-abc-1")
    fields.update(changes)
    return CheckoutRequest(**fields)


def off_session(card: str, key: str = "auto_topup:1:1") -> OffSessionCharge:
    return OffSessionCharge(customer_id="cus_x", payment_method_id=card, amount_cents=500,
                            currency="usd", description="NutriBot Starter",
                            metadata={"auto_topup": key}, idempotency_key=key)


@pytest.fixture
def provider(stripe_api: StripeStandIn) -> StripeProvider:
    return StripeProvider(STRIPE_API_KEY, SECRET, api_base=stripe_api.base_url, timeout_seconds=5)


# --- Stripe: checkouts -----------------------------------------------------------------------


def test_a_pack_checkout_sends_the_catalog_price_and_metadata_under_its_key(provider,
                                                                            stripe_api):
    created = provider.create_checkout(pack_request())
    [request] = stripe_api.requests_to(CHECKOUT_SESSIONS)
    params = request["params"]
    metadata = {"account": "acct_pub_1", "item": "starter", "mode": "payment",
                "tokens": "100", "bonus_tokens": "20"}
    assert params["mode"] == "payment" and params["client_reference_id"] == "acct_pub_1"
    assert params["line_items"] == [{"quantity": "1", "price_data": {
        "currency": "usd", "unit_amount": "500", "product_data": {"name": "Starter: 120 tokens"}}}]
    assert params["metadata"] == metadata
    assert params["payment_intent_data"] == {"metadata": metadata}  # no card saved
    assert "customer_creation" not in params and "subscription_data" not in params
    assert request["idempotency_key"] == "paylink-abc-1"
    # What came back is the stand-in's session.
    stored = stripe_api.sessions[created.external_id]
    assert created.url == stored["url"]
    assert created.expires_at == datetime.fromtimestamp(stored["expires_at"], UTC)
    assert stored["amount_total"] == 500


def test_a_checkout_with_consent_saves_the_card_for_off_session_payments(provider, stripe_api):
    provider.create_checkout(pack_request(save_card=True, idempotency_key="k-save"))
    [request] = stripe_api.requests_to(CHECKOUT_SESSIONS)
    params = request["params"]
    assert params["payment_intent_data"]["setup_future_usage"] == OFF_SESSION
    assert params["customer_creation"] == "always"
    assert params["metadata"]["save_card"] == OFF_SESSION


def test_a_subscription_checkout_is_monthly_and_never_saves_a_card_itself(provider, stripe_api):
    request = pack_request(mode="subscription", item_code="premium", name="Premium",
                           amount_cents=900, tokens=0, bonus_tokens=0, save_card=True,
                           idempotency_key="k-sub")
    assert not request.saves_card and "save_card" not in request.metadata
    provider.create_checkout(request)
    [sent] = stripe_api.requests_to(CHECKOUT_SESSIONS)
    params = sent["params"]
    assert params["mode"] == "subscription"
    assert params["line_items"][0]["price_data"]["recurring"] == {"interval": "month"}
    assert params["subscription_data"] == {"metadata": request.metadata}
    assert "payment_intent_data" not in params and "customer_creation" not in params


def test_the_same_idempotency_key_opens_one_session(provider, stripe_api):
    first = provider.create_checkout(pack_request())
    again = provider.create_checkout(pack_request())
    assert again.external_id == first.external_id
    assert len(stripe_api.sessions) == 1
    assert [r["replayed"] for r in stripe_api.requests_to(CHECKOUT_SESSIONS)] == [False, True]


@pytest.mark.parametrize(("status", "error_type", "permanent"), [
    (400, "invalid_request_error", True),
    (402, "card_error", True),
    (403, "invalid_request_error", True),
    (429, "invalid_request_error", False),
    (500, "api_error", False),
])
def test_a_refused_checkout_says_whether_a_retry_can_help(provider, stripe_api, status,
                                                         error_type, permanent):
    stripe_api.fail_next(status, error_type, should_retry=False)
    with pytest.raises(PaymentError) as raised:
        provider.create_checkout(pack_request())
    assert raised.value.permanent is permanent
    assert str(raised.value).startswith("Stripe refused the checkout")
    assert stripe_api.sessions == {}


# --- Stripe: fetching objects ---------------------------------------------------------------


def test_fetches_return_plain_dicts_and_a_missing_object_is_permanent(provider, stripe_api):
    stripe_api.charges["ch_1"] = {"id": "ch_1", "object": "charge", "payment_intent": "pi_1"}
    charge = provider.fetch_charge("ch_1")
    assert type(charge) is dict and charge["payment_intent"] == "pi_1"
    with pytest.raises(PaymentError) as raised:
        provider.fetch_subscription("sub_missing")
    assert raised.value.permanent and "sub_missing" in str(raised.value)


def test_an_invoice_is_fetched_with_its_payments_expanded(provider, stripe_api):
    stripe_api.invoices["in_1"] = {"id": "in_1", "object": "invoice", "payments": {
        "object": "list", "data": [{"id": "inpay_1", "payment": {
            "type": "payment_intent", "payment_intent": "pi_9"}}]}}
    invoice = provider.fetch_invoice("in_1")
    [request] = stripe_api.requests_to(f"{INVOICES}/in_1", method="GET")
    assert request["params"] == {"expand": ["payments"]}  # left out of invoices otherwise
    assert invoice["payments"]["data"][0]["payment"]["payment_intent"] == "pi_9"


# --- Stripe: webhooks ------------------------------------------------------------------------


def test_a_signed_webhook_parses_into_the_events_dict(provider):
    event = provider.parse_webhook(EVENT_BODY, sign_event(EVENT_BODY, SECRET))
    assert event == json.loads(EVENT_BODY)
    assert event["type"] == "checkout.session.completed"


@pytest.mark.parametrize("case", ["missing", "wrong secret", "stale", "future", "tampered"])
def test_a_webhook_that_does_not_verify_is_refused(provider, case):
    now = int(time.time())
    body = EVENT_BODY
    signature = {
        "missing": None,
        "wrong secret": sign_event(body, "whsec_other"),
        "stale": sign_event(body, SECRET, now - 301),
        "future": sign_event(body, SECRET, now + 600),
        "tampered": sign_event(body, SECRET),
    }[case]
    if case == "tampered":
        body = body.replace(b"checkout.session.completed", b"checkout.session.expired")
    with pytest.raises(InvalidWebhook):
        provider.parse_webhook(body, signature)


def test_without_a_webhook_secret_nothing_verifies(stripe_api):
    provider = StripeProvider(STRIPE_API_KEY, None, api_base=stripe_api.base_url)
    with pytest.raises(InvalidWebhook, match="STRIPE_WEBHOOK_SECRET"):
        provider.parse_webhook(EVENT_BODY, sign_event(EVENT_BODY, SECRET))


@pytest.mark.parametrize(("body", "why"), [
    (b"not json", "not a Stripe event"),  # stripe-python parses it first
    (b'{"object": "list", "id": "evt_1", "data": {}}', "not a Stripe event"),
    (b'{"object": "event", "id": 12, "type": "x", "data": {}}', "must be strings"),
    (b'{"object": "event", "id": "evt_\\u0000", "type": "x", "data": {}}', "NUL"),
    (b'{"object": "event", "id": "evt_1", "type": "\\ud800", "data": {}}', "surrogate"),
    (b'{"object": "event", "id": "evt_1", "type": "x", "data": {"a": ' + b"[" * 70
     + b"]" * 70 + b"}}", "64 levels"),
])
def test_a_signed_body_that_is_not_a_storable_event_is_refused(provider, body, why):
    with pytest.raises(InvalidWebhook, match=why):
        provider.parse_webhook(body, sign_event(body, SECRET))


def test_unstorable_text_outside_the_id_and_type_is_left_for_the_inbox_to_clean(provider):
    body = b'{"object": "event", "id": "evt_1", "type": "x", "data": {"name": "A\\u0000B"}}'
    assert provider.parse_webhook(body, sign_event(body, SECRET))["data"]["name"] == "A\x00B"


# --- Stripe: off-session payments ------------------------------------------------------------


@pytest.mark.parametrize(("card", "status", "code"), [
    ("pm_card_visa", "succeeded", None),
    ("pm_card_chargeDeclinedInsufficientFunds", "declined", "insufficient_funds"),
    ("pm_card_chargeDeclined", "declined", "generic_decline"),
    ("pm_card_authenticationRequired", "authentication_required", "authentication_required"),
])
def test_an_off_session_payment_comes_back_as_its_outcome(provider, stripe_api, card, status,
                                                         code):
    method = stripe_api.saved_card(card=card)
    customer = stripe_api.payment_methods[method]["customer"]
    charge = OffSessionCharge(customer_id=customer, payment_method_id=method, amount_cents=500,
                              currency="usd", description="NutriBot Starter",
                              metadata={"auto_topup": "k1"}, idempotency_key="auto_topup:1:1")
    result = provider.charge_off_session(charge)
    assert (result.status, result.code) == (status, code)
    assert result.payment_intent in stripe_api.payment_intents  # named even when declined
    if status == "succeeded":
        assert (result.amount_cents, result.currency) == (500, "usd")
    # A retry under the same key charges nothing more and answers the same.
    assert provider.charge_off_session(charge) == result
    assert len(stripe_api.payment_intents) == 1
    assert len(stripe_api.requests_to(PAYMENT_INTENTS)) == 2


def test_an_off_session_payment_with_no_answer_is_worth_a_retry(provider, stripe_api):
    stripe_api.fail_next(503, should_retry=False)
    with pytest.raises(PaymentError) as raised:
        provider.charge_off_session(off_session(stripe_api.saved_card()))
    assert not raised.value.permanent
    assert stripe_api.payment_intents == {}


# --- the sandbox -----------------------------------------------------------------------------


def test_the_sandbox_opens_its_own_checkout_page_and_takes_no_webhooks():
    sandbox = SandboxProvider("https://bot.example.com/")
    before = datetime.now(UTC)
    created = sandbox.create_checkout(pack_request())
    assert created.external_id.startswith("cs_sandbox_")
    assert created.url == f"https://bot.example.com/sandbox/checkout/{created.external_id}"
    assert before + timedelta(hours=23) < created.expires_at <= datetime.now(UTC) + timedelta(
        hours=24)
    assert sandbox.create_checkout(pack_request()).external_id != created.external_id
    assert sandbox.create_portal("cus_1", "https://x") == "https://bot.example.com/sandbox/portal"
    with pytest.raises(InvalidWebhook):
        sandbox.parse_webhook(EVENT_BODY, "t=1,v1=x")


def test_the_sandbox_knows_only_its_own_objects():
    sandbox = SandboxProvider("https://bot.example.com")
    sub = sandbox.fetch_subscription("sub_sandbox_cs_sandbox_abc")
    assert sub["status"] == "active"
    assert sub["metadata"] == {"sandbox_checkout": "cs_sandbox_abc"}
    assert sub["current_period_end"] > time.time() + 29 * 86400
    sandbox.subscriptions["sub_given"] = {"id": "sub_given", "status": "canceled"}
    assert sandbox.fetch_subscription("sub_given")["status"] == "canceled"
    for fetch, object_id in ((sandbox.fetch_subscription, "sub_stripe"),
                             (sandbox.fetch_charge, "ch_1"), (sandbox.fetch_invoice, "in_1"),
                             (sandbox.fetch_payment_intent, "pi_stripe")):
        with pytest.raises(PaymentError) as raised:
            fetch(object_id)
        assert raised.value.permanent  # a definite "no such object": prefetch records None


def test_a_sandbox_checkout_that_saved_the_card_shows_it_on_its_payment_intent():
    sandbox = SandboxProvider("https://bot.example.com")
    card = sandbox.save_card("cs_sandbox_abc")
    assert card == sandbox_card_for("cs_sandbox_abc") == "pm_sandbox_abc"
    saved = sandbox.fetch_payment_intent("pi_sandbox_cs_sandbox_abc")
    assert (saved["payment_method"], saved["setup_future_usage"]) == (card, OFF_SESSION)
    plain = sandbox.fetch_payment_intent("pi_sandbox_cs_sandbox_def")
    assert plain["setup_future_usage"] is None and plain["payment_method"] == "pm_sandbox_def"


@pytest.mark.parametrize(("card", "status", "code"), [
    ("pm_sandbox_abc", "succeeded", None),
    (SANDBOX_DECLINED_CARD, "declined", "card_declined"),
    (SANDBOX_AUTHENTICATION_CARD, "authentication_required", "authentication_required"),
])
def test_sandbox_off_session_payments_answer_once_per_key(card, status, code):
    sandbox = SandboxProvider("https://bot.example.com")
    result = sandbox.charge_off_session(off_session(card, key="auto_topup:7:1"))
    assert (result.status, result.code) == (status, code)
    assert result.payment_intent.startswith("pi_sandbox_")
    assert sandbox.charge_off_session(off_session(card, key="auto_topup:7:1")) is result
    other = sandbox.charge_off_session(off_session(card, key="auto_topup:7:2"))
    assert other.payment_intent != result.payment_intent
    assert len(sandbox.charges_made) == 2
