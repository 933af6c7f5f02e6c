"""Payment providers: the `PaymentProvider` interface, Stripe, and the local sandbox.

Registry by name (docs/architecture.md, "Registries"): "stripe" is the default when
`STRIPE_SECRET_KEY` is set; "sandbox" is for development only, a local checkout page that says
plainly no money moves, and is refused when `APP_ENV=production` (docs/payments.md).

A provider creates checkouts and billing-portal sessions, verifies and parses webhooks, and
fetches objects an event names (a subscription, a charge, an invoice). Events come out as
plain dicts in Stripe's shape, read defensively: the sandbox builds the same shape, so both
run through the same fulfilment (`tokens.payment_events`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import stripe

from tokens.errors import TokensError


class PaymentError(TokensError):
    """The provider refused or could not be reached; nothing was bought.

    Attributes:
        permanent: the provider answered a definite no (a 4xx other than 429: no such object,
            no permission), which trying again will not change.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _failure(what: str, exc: stripe.StripeError) -> PaymentError:
    status = exc.http_status or 0
    return PaymentError(f"{what}: {exc.user_message or exc}",
                        permanent=400 <= status < 500 and status != 429)


class InvalidWebhook(TokensError):
    """A webhook whose signature is missing, wrong or stale, or whose body is not an event.

    The web layer answers 400 with this message and stores nothing."""


@dataclass(frozen=True)
class CheckoutRequest:
    """A checkout to open.

    Attributes:
        mode: "payment" (a pack) or "subscription" (the premium plan).
        account_public_id: the account's opaque id (`client_reference_id`).
        item_code: the pack's or plan's catalog code.
        name: what the person sees, e.g. "Starter: 120 tokens".
        amount_cents, currency: the price from our catalog (minor unit, lower-case ISO code).
        tokens, bonus_tokens: what a pack credits (metadata only: fulfilment reads our store).
        success_url, cancel_url: where the provider sends the person back.
        idempotency_key: derived from the pay link's token and the attempt.
        save_card: the person consented to auto top-up (AUTO ON, or the checkout's box): a
            pack checkout then saves the card for off-session payments
            (`payment_intent_data.setup_future_usage = "off_session"`, and a customer is
            always created so the card is attached to it). Ignored for subscriptions.
    """

    mode: str
    account_public_id: str
    item_code: str
    name: str
    amount_cents: int
    currency: str
    tokens: int
    bonus_tokens: int
    success_url: str
    cancel_url: str
    idempotency_key: str
    save_card: bool = False

    @property
    def metadata(self) -> dict[str, str]:
        """What the session and its payment carry back in events (strings, as Stripe keeps);
        `save_card: "off_session"` when the card is saved for auto top-up."""
        metadata = {"account": self.account_public_id, "item": self.item_code,
                    "mode": self.mode, "tokens": str(self.tokens),
                    "bonus_tokens": str(self.bonus_tokens)}
        if self.saves_card:
            metadata["save_card"] = OFF_SESSION
        return metadata

    @property
    def saves_card(self) -> bool:
        """Whether this checkout saves the card (a pack checkout with the person's consent)."""
        return self.save_card and self.mode == "payment"


@dataclass(frozen=True)
class CreatedCheckout:
    """A checkout the provider opened: its session id, the URL to send the person to, and when
    it lapses."""

    external_id: str
    url: str
    expires_at: datetime | None = None


# `setup_future_usage` of a payment whose card is saved for payments without the person.
OFF_SESSION = "off_session"
# What an off-session payment came to (`OffSessionResult.status`).
OFF_SESSION_STATUSES = ("succeeded", "declined", "authentication_required", "processing")


@dataclass(frozen=True)
class OffSessionCharge:
    """A payment with a saved card, the person not present (an auto top-up).

    Attributes:
        customer_id: the provider's customer the card is attached to (`cus_...`).
        payment_method_id: the saved card (`pm_...`).
        amount_cents, currency: the pack's price from our catalog (minor unit, lower case).
        description: what the statement and the dashboard show, e.g. "NutriBot Starter".
        metadata: carried back on the payment intent's events (strings); an auto top-up puts
            its key in `auto_topup`.
        idempotency_key: the same for every try of one payment (`auto_topup:<account>:<n>`):
            the provider charges it once.
    """

    customer_id: str
    payment_method_id: str
    amount_cents: int
    currency: str
    description: str
    metadata: dict[str, str]
    idempotency_key: str


@dataclass(frozen=True)
class OffSessionResult:
    """What an off-session payment came to at the provider.

    Attributes:
        status: "succeeded" (paid), "declined" (the card or the provider said no: a decline,
            an expired or detached card), "authentication_required" (the bank wants the person
            to authenticate: 3-D Secure), or "processing" (not final yet: its
            `payment_intent.succeeded` event will tell).
        payment_intent: the provider's payment intent (`pi_...`), when one was created.
        amount_cents, currency: what the provider says it charged (None when not told).
        code: the provider's error or decline code of a failure (e.g. "card_declined",
            "insufficient_funds"), else None. Never card data.
    """

    status: str
    payment_intent: str | None = None
    amount_cents: int | None = None
    currency: str | None = None
    code: str | None = None


class PaymentProvider(Protocol):
    """What the app needs from a payment provider."""

    name: str

    def create_checkout(self, request: CheckoutRequest) -> CreatedCheckout:
        """Open a checkout. Raises `PaymentError`."""
        ...

    def create_portal(self, customer_id: str, return_url: str) -> str:
        """A billing-portal URL for the customer. Raises `PaymentError`."""
        ...

    def parse_webhook(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """Verify and parse a webhook body into an event dict. Raises `InvalidWebhook`."""
        ...

    def fetch_subscription(self, external_id: str) -> dict[str, Any]:
        """The subscription as the provider has it now. Raises `PaymentError`."""
        ...

    def fetch_charge(self, charge_id: str) -> dict[str, Any]:
        """A charge (for its payment intent). Raises `PaymentError`."""
        ...

    def fetch_invoice(self, invoice_id: str) -> dict[str, Any]:
        """An invoice with its `payments` (which payment intent or charge paid it).
        Raises `PaymentError`."""
        ...

    def fetch_payment_intent(self, intent_id: str) -> dict[str, Any]:
        """A payment intent: its `customer`, `payment_method` (the card a checkout saved),
        `setup_future_usage`, `status`, `amount`, `metadata`. Raises `PaymentError`."""
        ...

    def charge_off_session(self, charge: OffSessionCharge) -> OffSessionResult:
        """Create and confirm a payment intent for a saved card, the person not present,
        under `charge.idempotency_key` (a retry charges nothing more and answers the same).

        Returns the outcome, declines and authentication included. Raises `PaymentError`
        when no outcome is known: `permanent=False` (timeout, 5xx, 429: retry with the same
        key) or `permanent=True` (the request itself was refused, e.g. an idempotency key
        reused with other parameters)."""
        ...


def _signature_timestamp(header: str) -> int | None:
    """The `t=` of a Stripe-Signature header (Unix seconds), or None when absent or not a
    number (construct_event has refused such a header already)."""
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            return int(value)
    return None


class StripeProvider:
    """Stripe through the official `stripe` library (`StripeClient`).

    Args:
        secret_key: `STRIPE_SECRET_KEY`.
        webhook_secret: `STRIPE_WEBHOOK_SECRET` (`whsec_...`).
        api_base: `STRIPE_API_BASE` (a local stand-in in tests), or None for Stripe's.
        tolerance_seconds: how old a signed webhook may be (Stripe's default, 300 s).
        timeout_seconds: the HTTP timeout of each call (the library's default is 80 s; a
            person waits on the pay link's redirect).
    """

    name = "stripe"

    def __init__(self, secret_key: str, webhook_secret: str | None, *,
                 api_base: str | None = None, tolerance_seconds: int = 300,
                 timeout_seconds: float = 10.0) -> None:
        base = {"api": api_base} if api_base else None
        self.client = stripe.StripeClient(
            secret_key, base_addresses=base,  # type: ignore[arg-type]
            max_network_retries=2, http_client=stripe.RequestsClient(timeout=timeout_seconds))
        self.webhook_secret = webhook_secret
        self.tolerance_seconds = tolerance_seconds

    def create_checkout(self, request: CheckoutRequest) -> CreatedCheckout:
        price: dict[str, Any] = {
            "currency": request.currency,
            "unit_amount": request.amount_cents,
            "product_data": {"name": request.name},
        }
        params: dict[str, Any] = {
            "mode": request.mode,
            "line_items": [{"price_data": price, "quantity": 1}],
            "client_reference_id": request.account_public_id,
            "metadata": request.metadata,
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
        }
        if request.mode == "subscription":
            price["recurring"] = {"interval": "month"}
            params["subscription_data"] = {"metadata": request.metadata}
        else:
            params["payment_intent_data"] = {"metadata": request.metadata}
            if request.saves_card:
                # Checkout tells the person the card is saved for future payments, and
                # attaches it to the customer it creates (Stripe API reference,
                # `payment_intent_data.setup_future_usage`).
                params["payment_intent_data"]["setup_future_usage"] = OFF_SESSION
                params["customer_creation"] = "always"
        try:
            created = self.client.v1.checkout.sessions.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": request.idempotency_key},
            )
        except stripe.StripeError as exc:
            raise _failure("Stripe refused the checkout", exc) from exc
        expires = getattr(created, "expires_at", None)
        return CreatedCheckout(
            external_id=str(created.id), url=str(created.url),
            expires_at=datetime.fromtimestamp(int(expires), UTC) if expires else None,
        )

    def create_portal(self, customer_id: str, return_url: str) -> str:
        try:
            portal = self.client.v1.billing_portal.sessions.create(
                params={"customer": customer_id, "return_url": return_url})
        except stripe.StripeError as exc:
            raise _failure("Stripe refused the billing portal", exc) from exc
        return str(portal.url)

    def parse_webhook(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        if not self.webhook_secret:
            raise InvalidWebhook("STRIPE_WEBHOOK_SECRET is not set: webhooks cannot be verified")
        if not signature:
            raise InvalidWebhook("Stripe-Signature header is missing")
        try:
            stripe.Webhook.construct_event(payload, signature, self.webhook_secret,
                                           tolerance=self.tolerance_seconds)
        except stripe.SignatureVerificationError as exc:
            raise InvalidWebhook(f"Stripe-Signature does not verify: {exc.user_message or exc}"
                                 ) from None
        except ValueError as exc:
            raise InvalidWebhook(f"not a Stripe event: {exc}") from None
        # stripe-python refuses a timestamp older than the tolerance but not one in the future;
        # a signature dated ahead would stay replayable for as long, so refuse that side too.
        stamp = _signature_timestamp(signature)
        if stamp is not None and stamp > time.time() + self.tolerance_seconds:
            raise InvalidWebhook("Stripe-Signature timestamp is in the future beyond the "
                                 f"{self.tolerance_seconds} s tolerance")
        # The verified bytes, as plain dicts (the library's objects are not dicts).
        return _event_dict(payload)

    def fetch_subscription(self, external_id: str) -> dict[str, Any]:
        return _retrieved("subscription", external_id, self.client.v1.subscriptions.retrieve)

    def fetch_charge(self, charge_id: str) -> dict[str, Any]:
        return _retrieved("charge", charge_id, self.client.v1.charges.retrieve)

    def fetch_invoice(self, invoice_id: str) -> dict[str, Any]:
        # `payments` is left out of invoices unless expanded (Stripe API reference, "The
        # Invoice object": includable); it replaced `charge` / `payment_intent` in 2025.
        return _retrieved("invoice", invoice_id, self.client.v1.invoices.retrieve,
                          params={"expand": ["payments"]})

    def fetch_payment_intent(self, intent_id: str) -> dict[str, Any]:
        return _retrieved("payment intent", intent_id, self.client.v1.payment_intents.retrieve)

    def charge_off_session(self, charge: OffSessionCharge) -> OffSessionResult:
        params: dict[str, Any] = {
            "amount": charge.amount_cents,
            "currency": charge.currency,
            "customer": charge.customer_id,
            "payment_method": charge.payment_method_id,
            "off_session": True,
            "confirm": True,
            "description": charge.description,
            "metadata": charge.metadata,
        }
        try:
            intent = self.client.v1.payment_intents.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": charge.idempotency_key},
            )
        except stripe.CardError as exc:
            # A decline, or the bank asks for 3-D Secure (`authentication_required`); the
            # error names the payment intent Stripe created (status requires_payment_method).
            return _card_failure(exc)
        except stripe.StripeError as exc:
            raise _failure("Stripe refused the off-session payment", exc) from exc
        found = dict(intent.to_dict())
        status = str(found.get("status") or "")
        result = OffSessionResult(
            status="succeeded" if status == "succeeded" else "processing",
            payment_intent=_text(found.get("id")), amount_cents=_amount(found.get("amount")),
            currency=_text(found.get("currency")))
        if status in ("requires_action", "requires_payment_method"):
            # Not expected with off_session=True (Stripe answers a 402 then), but never wait
            # for a person who is not there.
            return OffSessionResult("authentication_required" if status == "requires_action"
                                    else "declined", result.payment_intent,
                                    result.amount_cents, result.currency, status)
        return result


def _retrieved(what: str, object_id: str, retrieve: Callable[..., Any],
               **options: Any) -> dict[str, Any]:
    """`retrieve(object_id, **options)` (a stripe-python `retrieve`) as a plain dict.

    Raises:
        PaymentError: Stripe could not answer (`_failure`: permanent for a definite "no such
            object", else worth a retry).
    """
    try:
        found = retrieve(object_id, **options)
    except stripe.StripeError as exc:
        raise _failure(f"cannot fetch {what} {object_id}", exc) from exc
    return dict(found.to_dict())


@dataclass
class SandboxProvider:
    """A local stand-in for Stripe Checkout, for development: no money moves.

    Its checkout page (`/sandbox/checkout/<session id>`) has a Pay button that builds the
    `checkout.session.completed` event Stripe would send (and, for the premium plan, the
    `invoice.paid` of the first month) and runs it through the same fulfilment as the Stripe
    webhook. Subscriptions it "created" are active for a month.

    Saved cards (auto top-up): a checkout paid with the "save my card" box ticked saves the
    fake card `sandbox_card_for(session id)` (`save_card`), attached to the customer
    `cus_sandbox_<account public id>`. Its off-session payments succeed, except for the
    cards in `declining_cards` (answer "declined", code "card_declined") and
    `authenticating_cards` ("authentication_required"): by default the fake cards
    `SANDBOX_DECLINED_CARD` and `SANDBOX_AUTHENTICATION_CARD`, and tests may add any. A
    payment's id derives from its idempotency key, so a retry answers the same payment and
    charges nothing more (`charges_made`: key -> result).
    """

    base_url: str
    name: str = "sandbox"
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    declining_cards: set[str] = field(default_factory=lambda: {SANDBOX_DECLINED_CARD})
    authenticating_cards: set[str] = field(
        default_factory=lambda: {SANDBOX_AUTHENTICATION_CARD})
    saved_cards: dict[str, str] = field(default_factory=dict)
    charges_made: dict[str, OffSessionResult] = field(default_factory=dict)

    def create_checkout(self, request: CheckoutRequest) -> CreatedCheckout:
        session_id = "cs_sandbox_" + secrets.token_hex(12)
        return CreatedCheckout(
            external_id=session_id,
            url=f"{self.base_url.rstrip('/')}/sandbox/checkout/{session_id}",
            expires_at=datetime.now(UTC) + timedelta(hours=24),
        )

    def create_portal(self, customer_id: str, return_url: str) -> str:
        return f"{self.base_url.rstrip('/')}/sandbox/portal"

    def parse_webhook(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        raise InvalidWebhook("the sandbox provider takes no webhooks")

    def fetch_subscription(self, external_id: str) -> dict[str, Any]:
        if external_id in self.subscriptions:
            return self.subscriptions[external_id]
        if not external_id.startswith("sub_sandbox_"):
            raise PaymentError(f"the sandbox has no subscription {external_id}", permanent=True)
        period_end = datetime.now(UTC) + timedelta(days=30)
        session_id = external_id.removeprefix("sub_sandbox_")
        return {"id": external_id, "object": "subscription", "status": "active",
                "cancel_at_period_end": False, "current_period_end": int(period_end.timestamp()),
                "metadata": {"sandbox_checkout": session_id}}

    def fetch_charge(self, charge_id: str) -> dict[str, Any]:
        raise PaymentError("the sandbox has no charges", permanent=True)

    def fetch_invoice(self, invoice_id: str) -> dict[str, Any]:
        raise PaymentError("the sandbox keeps no invoices", permanent=True)

    def save_card(self, session_id: str) -> str:
        """The fake card a sandbox checkout saves when its box is ticked (`pm_sandbox_...`);
        remembered for `fetch_payment_intent`."""
        card = sandbox_card_for(session_id)
        self.saved_cards[f"pi_sandbox_{session_id}"] = card
        return card

    def fetch_payment_intent(self, intent_id: str) -> dict[str, Any]:
        if not intent_id.startswith("pi_sandbox_"):
            raise PaymentError(f"the sandbox has no payment intent {intent_id}", permanent=True)
        card = self.saved_cards.get(intent_id)
        return {"id": intent_id, "object": "payment_intent", "status": "succeeded",
                "payment_method": card or sandbox_card_for(intent_id.removeprefix(
                    "pi_sandbox_")),
                "setup_future_usage": OFF_SESSION if card else None}

    def charge_off_session(self, charge: OffSessionCharge) -> OffSessionResult:
        done = self.charges_made.get(charge.idempotency_key)
        if done is not None:
            return done
        intent = "pi_sandbox_" + hashlib.sha256(
            charge.idempotency_key.encode()).hexdigest()[:24]
        if charge.payment_method_id in self.declining_cards:
            result = OffSessionResult("declined", intent, code="card_declined")
        elif charge.payment_method_id in self.authenticating_cards:
            result = OffSessionResult("authentication_required", intent,
                                      code="authentication_required")
        else:
            result = OffSessionResult("succeeded", intent, charge.amount_cents, charge.currency)
        self.charges_made[charge.idempotency_key] = result
        return result


# Fake saved cards of the sandbox whose off-session payments fail (`SandboxProvider`).
SANDBOX_DECLINED_CARD = "pm_sandbox_declined"
SANDBOX_AUTHENTICATION_CARD = "pm_sandbox_authentication_required"


def sandbox_card_for(session_id: str) -> str:
    """The fake card a sandbox checkout saves: `pm_sandbox_<session id without its prefix>`."""
    return "pm_sandbox_" + session_id.removeprefix("cs_sandbox_")


def _card_failure(exc: stripe.CardError) -> OffSessionResult:
    """What a Stripe card error (402) of an off-session payment came to: 3-D Secure asked
    (`authentication_required`) or a decline (any other code)."""
    error = exc.error
    code = _text(exc.code) or "card_declined"
    decline = _text(getattr(error, "decline_code", None)) if error is not None else None
    intent = getattr(error, "payment_intent", None) if error is not None else None
    # An expanded object (a `PaymentIntent`, not a dict, in stripe-python), or its id.
    intent_id = _text(intent if isinstance(intent, str) else getattr(intent, "id", None))
    if code == "authentication_required" or decline == "authentication_required":
        return OffSessionResult("authentication_required", intent_id,
                                code="authentication_required")
    return OffSessionResult("declined", intent_id, code=decline or code)


def _text(value: Any) -> str | None:
    """A short id or code from the provider's answer; None for anything else."""
    return value[:150] if isinstance(value, str) and value else None


def _amount(value: Any) -> int | None:
    """A provider amount in cents (a whole number), else None."""
    return value if type(value) is int and value >= 0 else None


def _event_dict(payload: bytes) -> dict[str, Any]:
    """The verified body as an event dict.

    Only the event's shape, id and type can refuse it: other text that no database can store
    (a NUL, an unpaired surrogate, say in a field the buyer typed) is cleaned when the event
    is stored (`tokens.payment_events.clean_text`), so that a paid checkout is still credited.

    Raises:
        InvalidWebhook: not JSON, not an event (object, id and data), nested deeper than 64
            levels, or an id or type that is not a string of at most 255 / 100 characters
            free of NUL and unpaired surrogates.
    """
    try:
        event = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidWebhook(f"the body is not JSON: {exc}") from None
    if not isinstance(event, dict) or event.get("object") != "event" or not event.get("id") \
            or not isinstance(event.get("data"), dict):
        raise InvalidWebhook("the body is not a Stripe event (object, id and data required)")
    if not isinstance(event["id"], str) or len(event["id"]) > 255 \
            or not isinstance(event.get("type"), str) or len(event["type"]) > 100:
        raise InvalidWebhook("the event's id and type must be strings (at most 255 and 100 "
                             "characters)")
    for name in ("id", "type"):
        bad = _unstorable_text(event[name])
        if bad is not None:
            raise InvalidWebhook(f"the event's {name} holds {bad}, which no database can store")
    if _depth(event) > 64:
        raise InvalidWebhook("the event is nested more than 64 levels deep")
    return event


def _unstorable_text(value: str) -> str | None:
    """Why `value` cannot be stored: a NUL (PostgreSQL text refuses it) or an unpaired
    surrogate (not UTF-8); None when it is fine."""
    if "\x00" in value:
        return "a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "an unpaired surrogate"
    return None


def _depth(value: Any, depth: int = 0) -> int:
    """How deeply `value` nests objects and lists (stops counting past 65)."""
    if depth > 64 or not isinstance(value, dict | list):
        return depth
    items = value.values() if isinstance(value, dict) else value
    return max((_depth(item, depth + 1) for item in items), default=depth + 1)
