"""Auto top-up (`tokens.auto_topup`), on SQLite and PostgreSQL, against the Stripe stand-in
(the real `stripe` client through `StripeProvider`) and the sandbox provider.

Ana has a saved card; her balance falls under the threshold (5 tokens: the dearest intent)
and the Starter pack (500 cents, 100 + 20 tokens) is bought off-session, once per crossing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from testing.deployment import STRIPE_API_KEY
from testing.stripe_standin import PAYMENT_INTENTS, StripeStandIn, event_for
from tokens import auto_topup, costs, ledger, money
from tokens.auto_topup import AutoTopup
from tokens.catalog import load_catalog
from tokens.payment_events import EventContext, receive_event
from tokens.payments import Checkout, ProviderPayment
from tokens.providers import (
    SANDBOX_AUTHENTICATION_CARD,
    SANDBOX_DECLINED_CARD,
    CheckoutRequest,
    SandboxProvider,
    StripeProvider,
)

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DEC = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()
THRESHOLD = CATALOG.auto_topup_threshold()
CAP = CATALOG.auto_topup.max_per_month


@pytest.fixture
def stripe(stripe_api: StripeStandIn) -> StripeProvider:
    return StripeProvider(STRIPE_API_KEY, "whsec_x", api_base=stripe_api.base_url,
                          timeout_seconds=5)


@pytest.fixture
def sandbox() -> SandboxProvider:
    return SandboxProvider("https://bot.example.com")


def account(session) -> int:
    account_id = ledger.open_account(session, NOV).id
    session.commit()
    return account_id


def with_card(session, customer: str, card: str) -> int:
    """A fresh account with auto top-up on for the Starter pack and `card` saved."""
    account_id = account(session)
    auto_topup.card_saved(session, account_id, customer, card, NOV, pack_code="starter")
    session.commit()
    return account_id


def stripe_card(session, stripe_api: StripeStandIn, card: str = "pm_card_visa") -> int:
    customer = stripe_api._new_customer({})["id"]
    return with_card(session, customer, stripe_api.saved_card(customer, card))


def due(session, account_id: int, available: int = 3, now: datetime = NOV,
        provider: str = "stripe", cap: int = CAP) -> auto_topup.TopUpDue | None:
    found = auto_topup.due(session, account_id, available, THRESHOLD, now, cap,
                           catalog=CATALOG, provider_name=provider)
    session.commit()
    return found


def run(session, provider, found: auto_topup.TopUpDue, now: datetime = NOV
        ) -> tuple[auto_topup.ChargeResult, auto_topup.Settled]:
    result = auto_topup.charge(provider, found)
    settled = auto_topup.settle(session, found, result, CATALOG, now)
    session.commit()
    return result, settled


def webhook(session, obj: dict[str, Any], kind: str = "payment_intent.succeeded",
            provider: str = "stripe", now: datetime = NOV):
    result = receive_event(session, provider, event_for(obj, kind),
                           EventContext(catalog=CATALOG, provider=provider, now=now))
    session.commit()
    return result


def available(session, account_id: int) -> int:
    session.expire_all()
    return ledger.balance(session, account_id, NOV).available


def row(session, account_id: int) -> AutoTopup:
    session.expire_all()
    found = session.get(AutoTopup, account_id)
    assert found is not None
    return found


def revenue_musd(session, account_id: int) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(costs.RevenueEntry.amount_musd), 0))
                              .where(costs.RevenueEntry.account_id == account_id)))


# --- turning it on and off -----------------------------------------------------------------


def test_auto_on_without_a_card_asks_for_one_then_the_saved_card_turns_it_on(session):
    ana = account(session)
    assert auto_topup.status(session, ana, NOV).state == "off"
    assert auto_topup.request_on(session, ana, "starter", NOV) == \
        auto_topup.OnResult("card_needed", "starter")
    session.commit()
    assert auto_topup.wants_card(session, ana)
    assert auto_topup.status(session, ana, NOV).state == "awaiting_card"
    assert due(session, ana) is None  # no card: nothing to charge

    notice = auto_topup.card_saved(session, ana, "cus_1", "pm_1", NOV, pack_code="starter")
    session.commit()
    assert notice is not None and (notice.kind, dict(notice.params)) == (
        "auto_topup_on", {"pack": "starter"})
    assert not auto_topup.wants_card(session, ana)
    assert auto_topup.card_saved(session, ana, "cus_1", "pm_1", NOV,
                                 pack_code="starter") is None  # a repeat tells nothing
    assert auto_topup.status(session, ana, NOV).state == "on"

    assert auto_topup.turn_off(session, ana, NOV) is True
    session.commit()
    assert auto_topup.status(session, ana, NOV).state == "off"
    assert due(session, ana) is None  # AUTO OFF stops it
    assert auto_topup.request_on(session, ana, "starter", NOV).kind == "enabled"  # card kept
    session.commit()
    assert due(session, ana) is not None


# --- a top-up with Stripe ------------------------------------------------------------------


def test_a_crossing_charges_the_saved_card_and_credits_the_pack_once(session, stripe_api,
                                                                    stripe):
    ana = stripe_card(session, stripe_api)
    assert due(session, ana, available=THRESHOLD) is None  # not under the threshold
    found = due(session, ana, available=THRESHOLD - 1)
    assert found is not None
    assert (found.key, found.pack_code, found.amount_cents, found.tokens, found.bonus_tokens) \
        == (f"auto_topup:{ana}:1", "starter", 500, 100, 20)

    result, settled = run(session, stripe, found)
    assert result.kind == "succeeded" and result.payment_intent in stripe_api.payment_intents
    assert settled.kind == "credited" and not settled.send_pay_link
    [notice] = settled.notices
    assert (notice.kind, notice.params["tokens"], notice.params["available"]) == (
        "auto_topup_credited", 120, 120)
    assert available(session, ana) == 120
    assert revenue_musd(session, ana) == 500 * money.MUSD_PER_CENT

    [request] = stripe_api.requests_to(PAYMENT_INTENTS)
    assert request["idempotency_key"] == found.key
    params = request["params"]
    assert (params["off_session"], params["confirm"], params["amount"], params["currency"]) \
        == ("true", "true", "500", "usd")
    assert params["payment_method"] == row(session, ana).payment_method_id
    assert params["metadata"]["auto_topup"] == found.key

    # The webhook of the same payment intent, after: nothing more.
    intent = stripe_api.payment_intents[str(result.payment_intent)]
    again = webhook(session, intent)
    assert again is not None and again.outcome == "already credited" and not again.notices
    assert available(session, ana) == 120
    assert revenue_musd(session, ana) == 500 * money.MUSD_PER_CENT
    # Settling the same result again (a retried job): nothing more either.
    assert auto_topup.settle(session, found, result, CATALOG, NOV).kind == "already_credited"
    session.commit()
    assert available(session, ana) == 120
    checkout = session.scalar(select(Checkout).where(Checkout.external_id == found.key))
    assert (checkout.status, checkout.payment_intent, checkout.pay_link_id) == (
        "completed", result.payment_intent, None)


def test_the_webhook_first_credits_and_settle_then_credits_nothing(session, stripe_api,
                                                                  stripe):
    ana = stripe_card(session, stripe_api)
    found = due(session, ana)
    assert found is not None
    result = auto_topup.charge(stripe, found)
    first = webhook(session, stripe_api.payment_intents[str(result.payment_intent)])
    assert first is not None and first.outcome.startswith("credited 120 tokens")
    assert [n.kind for n in first.notices] == ["auto_topup_credited"]
    settled = auto_topup.settle(session, found, result, CATALOG, NOV)
    session.commit()
    assert (settled.kind, settled.notices) == ("already_credited", ())
    assert available(session, ana) == 120
    assert revenue_musd(session, ana) == 500 * money.MUSD_PER_CENT


def test_the_same_crossing_retried_never_charges_twice(session, stripe_api, stripe):
    ana = stripe_card(session, stripe_api)
    found = due(session, ana)
    assert found is not None
    stripe_api.fail_next(503, should_retry=False)  # no answer: the client does not retry
    result, settled = run(session, stripe, found)
    assert (result.kind, settled.kind) == ("error", "retry")
    assert available(session, ana) == 0
    assert row(session, ana).last_failure == "error"

    again = due(session, ana, available=50)  # an open attempt is retried, whatever the balance
    assert again is not None and again.retry and again.key == found.key
    assert again.metadata == found.metadata and again.description == found.description
    result, settled = run(session, stripe, again)
    assert (result.kind, settled.kind) == ("succeeded", "credited")
    # A third try of the same key (the job ran twice): Stripe replays, nothing is charged.
    replay = auto_topup.charge(stripe, again)
    assert replay.payment_intent == result.payment_intent
    assert auto_topup.settle(session, again, replay, CATALOG, NOV).kind == "already_credited"
    session.commit()

    keys = [r["idempotency_key"] for r in stripe_api.requests_to(PAYMENT_INTENTS)]
    assert keys == [found.key] * 3
    assert [r["replayed"] for r in stripe_api.requests_to(PAYMENT_INTENTS)] == [
        False, False, True]
    assert len(stripe_api.payment_intents) == 1
    assert available(session, ana) == 120
    assert due(session, ana) is None  # this crossing is spent


def test_an_attempt_without_answer_is_given_up_after_the_retry_window(session, stripe_api,
                                                                     stripe):
    ana = stripe_card(session, stripe_api)
    found = due(session, ana)
    assert found is not None
    stripe_api.fail_next(503, should_retry=False)
    run(session, stripe, found)
    late = NOV + auto_topup.RETRY_WINDOW + timedelta(minutes=1)
    assert due(session, ana, now=late) is None
    assert row(session, ana).last_failure == "no_answer"
    assert due(session, ana, now=late) is None  # disarmed until the balance is back up
    assert stripe_api.requests_to(PAYMENT_INTENTS)[-1]["idempotency_key"] == found.key


@pytest.mark.parametrize(("card", "reason", "code"), [
    ("pm_card_chargeDeclined", "declined", "generic_decline"),
    ("pm_card_chargeDeclinedInsufficientFunds", "declined", "insufficient_funds"),
    ("pm_card_authenticationRequired", "authentication_required", "authentication_required"),
])
def test_a_decline_or_3ds_turns_it_off_and_asks_for_a_pay_link(session, stripe_api, stripe,
                                                               card, reason, code):
    ana = stripe_card(session, stripe_api, card)
    found = due(session, ana)
    assert found is not None
    result, settled = run(session, stripe, found)
    assert (result.kind, result.code) == (reason, code)
    assert result.payment_intent in stripe_api.payment_intents
    assert stripe_api.payment_intents[str(result.payment_intent)]["status"] == \
        "requires_payment_method"
    assert (settled.kind, settled.send_pay_link, settled.pack_code) == (
        "turned_off", True, "starter")
    [notice] = settled.notices
    assert (notice.kind, dict(notice.params)) == (
        "auto_topup_failed", {"reason": reason, "pack": "starter"})
    state = row(session, ana)
    assert (state.enabled, state.last_failure) == (False, reason)
    assert available(session, ana) == 0
    checkout = session.scalar(select(Checkout).where(Checkout.external_id == found.key))
    assert checkout.status == "failed"
    # The same key again answers the same decline: no second payment intent.
    assert auto_topup.charge(stripe, found).kind == reason
    assert len(stripe_api.payment_intents) == 1
    assert stripe_api.requests_to(PAYMENT_INTENTS)[-1]["replayed"] is True
    assert due(session, ana) is None


def test_a_refund_of_an_auto_top_up_claws_back_like_a_pack(session, stripe_api, stripe):
    ana = stripe_card(session, stripe_api)
    found = due(session, ana)
    assert found is not None
    result, _ = run(session, stripe, found)
    intent = stripe_api.payment_intents[str(result.payment_intent)]
    charge_id = intent["latest_charge"]
    charge = {"id": charge_id, "object": "charge", "amount": 500, "amount_refunded": 500,
              "currency": "usd", "payment_intent": intent["id"], "refunded": True}
    refunded = webhook(session, charge, "charge.refunded")
    assert refunded is not None
    assert refunded.outcome == "refund of 500 cents: 120 tokens clawed back, 500 cents reversed"
    assert available(session, ana) == 0
    assert revenue_musd(session, ana) == 0
    payment = session.scalar(select(ProviderPayment).where(
        ProviderPayment.external_id == intent["id"]))
    assert (payment.status, payment.settled_cents) == ("applied", 500)


def test_a_refund_that_comes_first_is_settled_when_the_top_up_is_credited(session, stripe_api,
                                                                         stripe):
    ana = stripe_card(session, stripe_api)
    found = due(session, ana)
    assert found is not None
    result = auto_topup.charge(stripe, found)
    intent = stripe_api.payment_intents[str(result.payment_intent)]
    charge = {"id": intent["latest_charge"], "object": "charge", "amount": 500,
              "amount_refunded": 250, "currency": "usd", "payment_intent": intent["id"]}
    pending = webhook(session, charge, "charge.refunded")
    assert pending is not None and pending.outcome.startswith("pending")
    settled = auto_topup.settle(session, found, result, CATALOG, NOV)
    session.commit()
    assert settled.kind == "credited"
    assert settled.notices[0].params["tokens"] == 60  # half refunded before: half credited
    assert available(session, ana) == 60


# --- the trigger: crossings, re-arming, the monthly cap ------------------------------------


def test_one_top_up_per_crossing_and_rearming_above_the_threshold(session, sandbox):
    ana = with_card(session, "cus_sandbox_x", "pm_sandbox_visa")
    first = due(session, ana, available=4, provider="sandbox")
    assert first is not None and first.key == f"auto_topup:{ana}:1"
    assert run(session, sandbox, first)[1].kind == "credited"
    # Still under the threshold after it (a big spend): the same crossing buys nothing more.
    assert due(session, ana, available=2, provider="sandbox") is None
    assert not row(session, ana).armed
    assert auto_topup.rearm(session, ana, THRESHOLD - 1, THRESHOLD, NOV) is False
    assert auto_topup.rearm(session, ana, THRESHOLD, THRESHOLD, NOV) is True
    session.commit()
    assert row(session, ana).armed
    second = due(session, ana, available=1, provider="sandbox")
    assert second is not None and second.key == f"auto_topup:{ana}:2"
    assert run(session, sandbox, second)[1].kind == "credited"
    # `due` re-arms by itself when told the balance is back up.
    assert due(session, ana, available=100, provider="sandbox") is None
    assert row(session, ana).armed
    assert available(session, ana) == 240


def test_at_most_the_monthly_cap_of_top_ups(session, sandbox):
    ana = with_card(session, "cus_sandbox_x", "pm_sandbox_visa")
    keys = []
    for _ in range(3):
        found = due(session, ana, provider="sandbox", cap=2)
        if found is None:
            break
        keys.append(found.key)
        run(session, sandbox, found)
        due(session, ana, available=500, provider="sandbox", cap=2)  # back up: re-armed
    assert keys == [f"auto_topup:{ana}:1", f"auto_topup:{ana}:2"]
    assert auto_topup.status(session, ana, NOV).month_count == 2
    assert available(session, ana) == 240
    december = due(session, ana, provider="sandbox", cap=2, now=DEC)  # a new month
    assert december is not None and december.key == f"auto_topup:{ana}:3"
    assert auto_topup.status(session, ana, DEC).month_count == 1


# --- the sandbox ---------------------------------------------------------------------------


@pytest.mark.parametrize(("card", "kind"), [
    ("pm_sandbox_visa", "succeeded"), (SANDBOX_DECLINED_CARD, "declined"),
    (SANDBOX_AUTHENTICATION_CARD, "authentication_required")])
def test_the_sandbox_covers_success_decline_and_3ds(session, sandbox, card, kind):
    ana = with_card(session, "cus_sandbox_x", card)
    found = due(session, ana, provider="sandbox")
    assert found is not None
    result, settled = run(session, sandbox, found)
    assert result.kind == kind
    assert auto_topup.charge(sandbox, found) == result  # a retry answers the same
    assert settled.kind == ("credited" if kind == "succeeded" else "turned_off")
    assert available(session, ana) == (120 if kind == "succeeded" else 0)


def test_a_sandbox_checkout_with_the_box_ticked_saves_a_card(session, sandbox):
    ana = account(session)
    public_id = session.get(ledger.Account, ana).public_id
    request = CheckoutRequest(
        mode="payment", account_public_id=public_id, item_code="starter", name="Starter",
        amount_cents=500, currency="usd", tokens=100, bonus_tokens=20,
        success_url="https://x/done", cancel_url="https://x", idempotency_key="k",
        save_card=True)
    assert request.metadata["save_card"] == "off_session"
    created = sandbox.create_checkout(request)
    card = sandbox.save_card(created.external_id)
    intent = sandbox.fetch_payment_intent(f"pi_sandbox_{created.external_id}")
    assert (intent["payment_method"], intent["setup_future_usage"]) == (card, "off_session")
    event_obj = {**intent, "customer": f"cus_sandbox_{public_id}", "metadata": request.metadata}
    saved = webhook(session, event_obj, provider="sandbox")
    assert saved is not None and saved.outcome == "card saved: auto top-up on"
    assert auto_topup.status(session, ana, NOV).state == "on"
    assert row(session, ana).payment_method_id == card


# --- saving the card through a Stripe checkout ---------------------------------------------


def test_a_stripe_checkout_with_consent_saves_the_card_for_off_session_payments(
        session, stripe_api, stripe):
    ana = account(session)
    assert auto_topup.request_on(session, ana, "starter", NOV).kind == "card_needed"
    session.commit()
    public_id = session.get(ledger.Account, ana).public_id
    request = CheckoutRequest(
        mode="payment", account_public_id=public_id, item_code="starter", name="Starter",
        amount_cents=500, currency="usd", tokens=100, bonus_tokens=20,
        success_url="https://x/done", cancel_url="https://x", idempotency_key=uuid.uuid4().hex,
        save_card=auto_topup.wants_card(session, ana))
    created = stripe.create_checkout(request)
    [sent] = stripe_api.requests
    assert sent["form"]["payment_intent_data[setup_future_usage]"] == "off_session"
    assert sent["form"]["customer_creation"] == "always"
    assert sent["form"]["payment_intent_data[metadata][save_card]"] == "off_session"

    intent = stripe_api.complete_session(created.external_id)
    card = stripe_api.payment_methods[intent["payment_method"]]
    assert card["customer"] == intent["customer"]  # attached: usable off-session
    assert stripe.fetch_payment_intent(intent["id"])["payment_method"] == card["id"]
    saved = webhook(session, stripe_api.payment_intents[intent["id"]])
    assert saved is not None and [n.kind for n in saved.notices] == ["auto_topup_on"]
    state = row(session, ana)
    assert (state.enabled, state.customer_id, state.payment_method_id) == (
        True, intent["customer"], card["id"])
    found = due(session, ana)
    assert found is not None
    assert run(session, stripe, found)[1].kind == "credited"


def test_a_payment_intent_of_a_plain_checkout_changes_nothing(session, stripe_api, stripe):
    ana = account(session)
    created = stripe.create_checkout(CheckoutRequest(
        mode="payment", account_public_id=session.get(ledger.Account, ana).public_id,
        item_code="starter", name="Starter", amount_cents=500, currency="usd", tokens=100,
        bonus_tokens=20, success_url="https://x/done", cancel_url="https://x",
        idempotency_key=uuid.uuid4().hex))
    assert "payment_intent_data[setup_future_usage]" not in stripe_api.requests[0]["form"]
    intent = stripe_api.complete_session(created.external_id)
    assert stripe_api.payment_methods[intent["payment_method"]]["customer"] is None
    result = webhook(session, stripe_api.payment_intents[intent["id"]])
    assert result is not None and result.outcome.startswith("ignored")
    assert auto_topup.status(session, ana, NOV).state == "off"
