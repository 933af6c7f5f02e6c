"""`POST /webhooks/stripe`: Stripe's events, verified on the raw body and applied once.

`Stripe-Signature` is checked with `stripe.Webhook.construct_event` on the exact bytes
received (never re-serialised JSON); a bad, stale or missing signature is a 400 that stores
nothing. The event is kept with `UNIQUE(event id)`, so a repeat is a 200 no-op; its effect is
applied in the same transaction (`tokens.payment_events`). An error while applying it rolls
everything back and answers 500, so Stripe delivers it again later.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from app.billing import apply_event, payment_provider
from tokens.providers import InvalidWebhook, StripeProvider

bp = Blueprint("stripe", __name__)
log = logging.getLogger(__name__)


@bp.post("/webhooks/stripe")
def stripe_webhook() -> ResponseReturnValue:
    """Receive one Stripe event.

    Returns:
        200 `{"received": true}` (with `"duplicate": true` for a repeat); 400 with the reason
        when the signature or the body is bad (nothing stored); 404 when Stripe is not the
        configured provider.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    provider = payment_provider(app)
    if not isinstance(provider, StripeProvider):
        return Response("Stripe is not configured on this server\n", status=404,
                        content_type="text/plain; charset=utf-8")
    try:
        event = provider.parse_webhook(request.get_data(), request.headers.get("Stripe-Signature"))
    except InvalidWebhook as exc:
        log.warning("stripe webhook rejected: %s", exc)
        return Response(f"{exc}\n", status=400, content_type="text/plain; charset=utf-8")
    result = apply_event(app, provider, event)
    if result is None:
        return jsonify(received=True, duplicate=True)
    return jsonify(received=True, outcome=result.outcome)
