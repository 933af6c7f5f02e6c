"""The sandbox checkout: a local page that stands in for Stripe Checkout in development.

It says plainly that no money moves. Its Pay button builds the events Stripe would send
(`checkout.session.completed`, and `invoice.paid` for the premium plan's first month) and runs
them through `app.billing.apply_event`, the same fulfilment as the Stripe webhook. Every route
answers 404 unless the sandbox is the configured provider, which it never is in production.
"""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from app.billing import apply_event, payment_provider
from app.extensions import bot_settings, db
from tokens.ledger import Account
from tokens.payments import Checkout, PayLink
from tokens.providers import PaymentProvider, SandboxProvider

bp = Blueprint("sandbox", __name__)


def _sandbox() -> tuple[Flask, PaymentProvider]:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    provider = payment_provider(app)
    if not isinstance(provider, SandboxProvider) or app.config["APP_ENV"] == "production":
        abort(404)
    return app, provider


def _checkout(session_id: str) -> Checkout:
    checkout = db.session.scalar(select(Checkout).where(
        Checkout.external_id == session_id, Checkout.provider == "sandbox"))
    if checkout is None:
        abort(404)
    return checkout


@bp.get("/sandbox/checkout/<session_id>")
def checkout_page(session_id: str) -> ResponseReturnValue:
    """The sandbox's checkout page: what is bought, for how much, and a Pay button."""
    app, _ = _sandbox()
    settings = bot_settings(app)
    checkout = _checkout(session_id)
    catalog = settings.catalog
    if checkout.mode == "subscription":
        name, price = catalog.premium.name, catalog.premium.price_display
    else:
        pack = catalog.pack(checkout.item_code)
        name, price = f"{pack.name}: {pack.total_tokens} tokens", pack.price_display
    purpose = db.session.scalar(select(PayLink.purpose).where(
        PayLink.id == checkout.pay_link_id))
    return render_template("sandbox_checkout.html", checkout=checkout, name=name, price=price,
                           bot_name=catalog.bot_name, auto_topup=purpose == "auto_topup")


@bp.post("/sandbox/checkout/<session_id>/pay")
def pay(session_id: str) -> ResponseReturnValue:
    """Pay (no money moves): the events Stripe would send, through the webhook's fulfilment.
    With the "save my card" box ticked (a pack), the fake card is saved for auto top-up, as
    Stripe's `payment_intent.succeeded` of a checkout with `setup_future_usage` would."""
    app, provider = _sandbox()
    save_card = request.form.get("save_card") == "1"
    checkout = _checkout(session_id)
    if checkout.status != "open":
        return redirect(url_for("sandbox.checkout_page", session_id=session_id), code=303)
    # Plain values: applying an event sends notices, which ends this session's objects.
    mode, amount, currency = checkout.mode, checkout.amount_cents, checkout.currency
    public_id = db.session.scalar(select(Account.public_id).where(
        Account.id == checkout.account_id))
    token = db.session.scalar(select(PayLink.token).where(PayLink.id == checkout.pay_link_id))
    card = None
    if save_card and mode == "payment" and isinstance(provider, SandboxProvider):
        card = provider.save_card(session_id)
    events = payment_events(session_id, mode, amount, currency, str(public_id),
                            checkout.item_code, saved_card=card)
    db.session.commit()
    for event in events:
        apply_event(app, provider, event)
    if token is None:
        return redirect(url_for("sandbox.checkout_page", session_id=session_id), code=303)
    return redirect(url_for("pay.pay_done", token=token), code=303)


def payment_events(session_id: str, mode: str, amount_cents: int, currency: str,
                   public_id: str, item_code: str, *, saved_card: str | None = None
                   ) -> list[dict[str, Any]]:
    """The events Stripe sends when the checkout `session_id` is paid, shaped as Stripe's:
    `checkout.session.completed`, and for a subscription also `invoice.paid` (first invoice,
    `subscription_create`); with `saved_card` (a pack whose buyer saved the card for auto
    top-up) also the `payment_intent.succeeded` that carries the card. Ids are derived from
    `session_id`, so paying twice gives the same event ids (a repeat delivery). Used by the
    Pay button and by `flask simulate`."""
    customer = f"cus_sandbox_{public_id}"
    subscription = f"sub_sandbox_{session_id}" if mode == "subscription" else None
    completed = {
        "id": session_id, "object": "checkout.session", "mode": mode,
        "payment_status": "paid", "status": "complete", "amount_total": amount_cents,
        "currency": currency, "client_reference_id": public_id, "customer": customer,
        "payment_intent": None if subscription else f"pi_sandbox_{session_id}",
        "subscription": subscription,
        "metadata": {"account": public_id, "item": item_code},
    }
    events = [_event(f"evt_sandbox_{session_id}", "checkout.session.completed", completed)]
    if subscription is not None:
        invoice = {
            "id": f"in_sandbox_{session_id}", "object": "invoice", "status": "paid",
            "amount_paid": amount_cents, "currency": currency,
            "customer": customer, "billing_reason": "subscription_create",
            "parent": {"type": "subscription_details",
                       "subscription_details": {"subscription": subscription}},
        }
        events.append(_event(f"evt_sandbox_in_{session_id}", "invoice.paid", invoice))
    if saved_card is not None and subscription is None:
        intent = {
            "id": f"pi_sandbox_{session_id}", "object": "payment_intent", "status": "succeeded",
            "amount": amount_cents, "amount_received": amount_cents, "currency": currency,
            "customer": customer, "payment_method": saved_card,
            "setup_future_usage": "off_session",
            "metadata": {"account": public_id, "item": item_code, "mode": mode,
                         "save_card": "off_session"},
        }
        events.append(_event(f"evt_sandbox_pi_{session_id}", "payment_intent.succeeded",
                             intent))
    return events


def _event(event_id: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"id": event_id, "object": "event", "type": kind, "livemode": False,
            "data": {"object": obj}}
