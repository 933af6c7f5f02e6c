"""Payment events: the inbox and the dispatch table of shared/design/payments.md ("Webhook").

`receive_event` stores an event once (`UNIQUE(event id)`; a repeat returns None and changes
nothing) and runs its handler in the same transaction. Every effect has its own key as well,
because one effect can arrive in two events (`checkout.session.completed` and
`checkout.session.async_payment_succeeded`; `invoice.paid` and `invoice.payment_succeeded`):

| effect | key |
|---|---|
| a pack credited (+ its bonus) | `checkout:<session id>` (`:bonus`) |
| a refund's clawback (cumulative) | `clawback:<charge id>:<amount refunded>` (`:bonus`) |
| a dispute's freeze (a hold) | `dispute:<dispute id>` |
| a lost dispute's clawback | `dispute:<dispute id>:lost` (`:bonus`) |
| a paid invoice's allowance | `invoice:<invoice id>` |
| revenue and its reversals | `revenue:...` (see `tokens.costs.RevenueEntry`) |

Amounts and tokens come only from our catalog and our stored checkout, never from the event: a
session whose amount or currency differs from the stored one credits nothing and is flagged.
Handlers lock the person's account row before writing anything, as every path does.

Handlers return `Notice`s: what to tell the person (the web layer words and sends them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tokens import costs, ledger
from tokens.catalog import Catalog
from tokens.ledger import Account
from tokens.payments import Checkout, FailedEvent, PaymentEvent, Subscription
from tokens.providers import PaymentError, PaymentProvider

log = logging.getLogger(__name__)
# A dispute's freeze lasts at most this long (Stripe decides disputes within ~75 days).
DISPUTE_HOLD_DAYS = 120
# Invoices that pay for a month of the plan; prorations and manual invoices grant nothing.
GRANTING_REASONS = frozenset({"subscription_create", "subscription_cycle"})


@dataclass(frozen=True)
class Notice:
    """Something to tell a person after an event.

    Attributes:
        account_id: whose.
        kind: "pack_credited", "payment_failed", "premium_started", "premium_ended",
            "past_due" or "invoice_failed".
        params: what the wording needs (tokens, available balance, customer id, ...).
    """

    account_id: int
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EventResult:
    """What an event did: a short outcome (kept on the inbox row) and the notices."""

    outcome: str
    notices: tuple[Notice, ...] = ()


@dataclass(frozen=True)
class EventContext:
    """What handlers need: the catalog, the provider's name, the time, and the objects the
    event names as the provider has them now (`prefetch`, done before the transaction so that
    no lock is held while the provider answers): id -> object, or None when the provider
    said it has no such object."""

    catalog: Catalog
    provider: str
    now: datetime
    fetched: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)


def prefetch(event: dict[str, Any], provider: PaymentProvider) -> dict[str, dict[str, Any] | None]:
    """Fetch what `event`'s handler will need from the provider, before any transaction.

    Subscription events, subscription checkouts and invoices: the subscription (its present
    state, and the account in its metadata). Disputes in older API shapes: the charge (for its
    payment intent).

    Raises:
        PaymentError: the provider could not answer (not a definite "no such object"): the
            webhook answers 500 and the provider delivers the event again later.
    """
    obj = _object(event)
    kind = str(event.get("type") or "")
    wanted: list[tuple[str, str]] = []
    if kind.startswith("customer.subscription."):
        wanted.append(("subscription", _id(obj.get("id")) or ""))
    elif kind.startswith("checkout.session.") and obj.get("mode") == "subscription":
        wanted.append(("subscription", _id(obj.get("subscription")) or ""))
    elif kind.startswith("invoice."):
        wanted.append(("subscription", _invoice_subscription_id(obj) or ""))
    elif kind.startswith("charge.dispute.") and not _id(obj.get("payment_intent")):
        wanted.append(("charge", _id(obj.get("charge")) or ""))
    fetched: dict[str, dict[str, Any] | None] = {}
    for what, object_id in wanted:
        if not object_id:
            continue
        fetch = provider.fetch_subscription if what == "subscription" else provider.fetch_charge
        try:
            fetched[object_id] = fetch(object_id)
        except PaymentError as exc:
            if not exc.permanent:
                raise
            fetched[object_id] = None
    return fetched


Handler = Callable[[Session, dict[str, Any], EventContext], EventResult]
HANDLERS: dict[str, Handler] = {}


def handles(*types: str) -> Callable[[Handler], Handler]:
    """Register a handler for event `types` in the dispatch table."""

    def register(handler: Handler) -> Handler:
        for name in types:
            HANDLERS[name] = handler
        return handler

    return register


def receive_event(
    session: Session, provider: str, event: dict[str, Any], ctx: EventContext
) -> EventResult | None:
    """Keep `event` in the inbox and apply it; None when it was received before.

    An unknown type is kept and ignored. A handler's exception propagates (the caller rolls
    back and answers 500, so the provider retries later).
    """
    row = PaymentEvent(provider=provider, event_id=str(event["id"])[:255],
                       type=str(event.get("type", ""))[:100],
                       object_id=(_id(_object(event).get("id")) or "")[:255] or None,
                       payload=json.dumps(event, separators=(",", ":")), received_at=ctx.now)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return None
    handler = HANDLERS.get(row.type)
    result = handler(session, event, ctx) if handler else EventResult("ignored: no handler")
    row.outcome = result.outcome[:200]
    session.flush()
    log.info("payment event", extra={"type": row.type, "outcome": result.outcome})
    return result


def record_failure(session: Session, provider: str, event: dict[str, Any], error: BaseException,
                   now: datetime) -> None:
    """Keep (or count again) an event whose handling failed, with the error's type and message
    (at most 500 characters), for the admin inbox. The caller commits; it runs in a fresh
    transaction after the failed one was rolled back."""
    event_id = str(event.get("id", ""))[:255]
    if session.scalar(select(PaymentEvent.id).where(PaymentEvent.event_id == event_id)):
        return  # applied since (a reprocess or an earlier retry): a late failure changes nothing
    text = f"{type(error).__name__}: {error}"[:500]
    row = session.scalars(select(FailedEvent).where(FailedEvent.event_id == event_id)).first()
    if row is None:
        try:
            with session.begin_nested():
                session.add(FailedEvent(
                    provider=provider, event_id=event_id, type=str(event.get("type", ""))[:100],
                    payload=json.dumps(event, separators=(",", ":")), error=text, attempts=1,
                    first_failed_at=now, last_failed_at=now))
                session.flush()
            return
        except IntegrityError:
            row = session.scalars(
                select(FailedEvent).where(FailedEvent.event_id == event_id)).one()
    row.error, row.last_failed_at, row.resolved_at = text, now, None
    row.attempts += 1
    session.flush()


def resolve_failure(session: Session, event_id: str, now: datetime) -> None:
    """Mark a failed event handled (by the provider's retry or an operator's reprocess)."""
    row = session.scalars(select(FailedEvent).where(FailedEvent.event_id == event_id)).first()
    if row is not None and row.resolved_at is None:
        row.resolved_at = now
        session.flush()


# --- checkouts -----------------------------------------------------------------------------


@handles("checkout.session.completed", "checkout.session.async_payment_succeeded")
def checkout_completed(session: Session, event: dict[str, Any], ctx: EventContext
                       ) -> EventResult:
    """A paid pack is credited once per session, with its bonus, and its revenue recorded; a
    subscription checkout links the subscription to the person. Unpaid: nothing yet."""
    obj = _object(event)
    checkout = _checkout(session, obj.get("id"))
    if checkout is None:
        return EventResult("ignored: not a checkout of ours")
    if obj.get("payment_status") not in ("paid", "no_payment_required"):
        return EventResult("waiting: not paid yet")
    ledger.lock_account(session, checkout.account_id)
    session.refresh(checkout)
    checkout.customer_id = checkout.customer_id or _id(obj.get("customer"))
    if checkout.mode == "subscription":
        return _subscription_checkout(session, obj, checkout, ctx)
    if checkout.status == "completed":
        return EventResult("already credited")
    amount, currency = obj.get("amount_total"), str(obj.get("currency") or "").lower()
    if amount != checkout.amount_cents or currency != checkout.currency:
        checkout.status = "flagged"
        log.error("checkout amount differs from the stored one: nothing credited",
                  extra={"checkout": checkout.external_id, "amount": amount,
                         "currency": currency})
        return EventResult(f"flagged: paid {amount} {currency}, expected "
                           f"{checkout.amount_cents} {checkout.currency}")
    bought = ledger.purchase(session, checkout.account_id, checkout.tokens,
                             checkout.bonus_tokens, key=checkout.purchase_key,
                             memo=f"pack {checkout.item_code}", now=ctx.now)
    checkout.status = "completed"
    checkout.completed_at = ctx.now
    checkout.payment_intent = checkout.payment_intent or _id(obj.get("payment_intent"))
    costs.record_revenue(session, checkout.account_id, "pack",
                         checkout.amount_cents * costs.MUSD_PER_CENT,
                         key=f"revenue:{checkout.purchase_key}", memo=checkout.item_code,
                         now=ctx.now)
    if bought.purchase.replayed:
        return EventResult("already credited")
    available = ledger.balance(session, checkout.account_id, ctx.now).available
    total = checkout.tokens + checkout.bonus_tokens
    return EventResult(f"credited {total} tokens", (
        Notice(checkout.account_id, "pack_credited", {"tokens": total, "available": available}),
    ))


@handles("checkout.session.async_payment_failed")
def checkout_payment_failed(session: Session, event: dict[str, Any], ctx: EventContext
                            ) -> EventResult:
    """A delayed payment (e.g. a bank debit) failed: tell the person; nothing credited."""
    checkout = _close_open_checkout(session, event, "failed")
    if checkout is None:
        return EventResult("ignored: not a checkout of ours")
    return EventResult("payment failed", (Notice(checkout.account_id, "payment_failed"),))


@handles("checkout.session.expired")
def checkout_expired(session: Session, event: dict[str, Any], ctx: EventContext
                     ) -> EventResult:
    """Forget the pending checkout: the pay link opens a new one."""
    checkout = _close_open_checkout(session, event, "expired")
    if checkout is None:
        return EventResult("ignored: not a checkout of ours")
    return EventResult(f"checkout {checkout.status}")


def _close_open_checkout(session: Session, event: dict[str, Any], status: str
                         ) -> Checkout | None:
    """Our checkout of the event, moved from open to `status` (the account locked first);
    None when it is not ours."""
    checkout = _checkout(session, _object(event).get("id"))
    if checkout is None:
        return None
    ledger.lock_account(session, checkout.account_id)
    session.refresh(checkout)
    if checkout.status == "open":
        checkout.status = status
    return checkout


# --- refunds and disputes ------------------------------------------------------------------


@handles("charge.refunded")
def charge_refunded(session: Session, event: dict[str, Any], ctx: EventContext
                    ) -> EventResult:
    """Claw back `tokens x amount_refunded / amount` of the pack (paid and bonus together),
    less what earlier refunds clawed back, at most its unspent tokens, the bonus first; reverse
    the refunded money in full. `amount_refunded` is cumulative, so a repeat or an older event
    does nothing."""
    obj = _object(event)
    charge_id = _id(obj.get("id"))
    if charge_id is None:
        return EventResult("ignored: a charge without a usable id")
    checkout = _checkout_of_charge(session, obj, ctx)
    if checkout is None:
        return EventResult("ignored: no checkout of ours for this charge")
    ledger.lock_account(session, checkout.account_id)
    session.refresh(checkout)
    checkout.charge_id = checkout.charge_id or charge_id
    refunded = min(_cents(obj.get("amount_refunded")) or 0, checkout.amount_cents)
    if refunded <= checkout.refunded_cents:
        return EventResult("already processed")
    taken = 0
    if checkout.status == "completed":
        total = checkout.tokens + checkout.bonus_tokens
        taken = _claw_pack(session, checkout, total * refunded // checkout.amount_cents,
                           f"clawback:{charge_id}:{refunded}", "refund", ctx)
    reversed_cents = refunded - checkout.refunded_cents
    checkout.refunded_cents = refunded
    if checkout.status == "completed":
        costs.record_revenue(session, checkout.account_id, "pack",
                             -reversed_cents * costs.MUSD_PER_CENT,
                             key=f"revenue:refund:{charge_id}:{refunded}", memo="refund",
                             now=ctx.now)
    return EventResult(f"refund of {refunded} cents: {taken} tokens clawed back")


@handles("charge.dispute.created")
def dispute_created(session: Session, event: dict[str, Any], ctx: EventContext
                    ) -> EventResult:
    """Freeze the pack's unspent tokens with a hold until the dispute closes. An inquiry
    (`warning_needs_response`) moves no money and freezes nothing."""
    obj = _object(event)
    dispute_id = _id(obj.get("id"))
    if dispute_id is None:
        return EventResult("ignored: a dispute without a usable id")
    if str(obj.get("status") or "").startswith("warning_"):
        return EventResult("inquiry: nothing frozen")
    checkout = _checkout_of_dispute(session, obj, ctx)
    if checkout is None or checkout.status != "completed":
        return EventResult("ignored: no credited checkout of ours for this dispute")
    ledger.lock_account(session, checkout.account_id)
    _note_charge(checkout, obj)
    closed = session.scalar(select(PaymentEvent.id).where(
        PaymentEvent.type == "charge.dispute.closed", PaymentEvent.object_id == dispute_id))
    if closed is not None:
        return EventResult("dispute closed already: nothing frozen")  # arrived out of order
    unspent = sum(ledger.credit_status(session, checkout.purchase_key + suffix)[1]
                  for suffix in ("", ":bonus"))
    available = ledger.balance(session, checkout.account_id, ctx.now).available
    freeze = min(unspent, available)
    if freeze <= 0:
        return EventResult("dispute: nothing left to freeze")
    ledger.hold(session, checkout.account_id, freeze, key=f"dispute:{dispute_id}",
                ttl_seconds=DISPUTE_HOLD_DAYS * 86400, memo="frozen: payment disputed",
                now=ctx.now)
    return EventResult(f"dispute: {freeze} tokens frozen")


@handles("charge.dispute.closed")
def dispute_closed(session: Session, event: dict[str, Any], ctx: EventContext) -> EventResult:
    """Won (or an inquiry closed): release the freeze. Lost: release it, claw back what is
    left of the pack, and reverse the disputed money."""
    obj = _object(event)
    dispute_id = _id(obj.get("id"))
    if dispute_id is None:
        return EventResult("ignored: a dispute without a usable id")
    checkout = _checkout_of_dispute(session, obj, ctx)
    if checkout is None:
        return EventResult("ignored: no checkout of ours for this dispute")
    ledger.lock_account(session, checkout.account_id)
    _note_charge(checkout, obj)
    hold = session.scalar(select(ledger.Hold).where(
        ledger.Hold.idempotency_key == f"dispute:{dispute_id}"))
    if hold is not None and hold.status == "pending":
        ledger.void(session, hold.id, now=ctx.now)
    status = str(obj.get("status") or "")
    if status != "lost":
        return EventResult(f"dispute {status or 'closed'}: released")
    taken = 0
    if checkout.status == "completed":
        taken = _claw_pack(session, checkout, checkout.tokens + checkout.bonus_tokens,
                           f"dispute:{dispute_id}:lost", "dispute lost", ctx)
    disputed = min(_cents(obj.get("amount")) or checkout.amount_cents,
                   checkout.amount_cents - checkout.refunded_cents)
    if disputed > 0 and checkout.status == "completed":
        costs.record_revenue(session, checkout.account_id, "pack",
                             -disputed * costs.MUSD_PER_CENT,
                             key=f"revenue:dispute:{dispute_id}", memo="dispute lost",
                             now=ctx.now)
    return EventResult(f"dispute lost: {taken} tokens clawed back")


# --- subscriptions -------------------------------------------------------------------------


@handles("customer.subscription.created", "customer.subscription.updated",
         "customer.subscription.deleted")
def subscription_changed(session: Session, event: dict[str, Any], ctx: EventContext
                         ) -> EventResult:
    """Store the subscription as the provider has it now (fetched before the transaction):
    events arrive out of order, the present state does not."""
    obj = _object(event)
    external_id = _id(obj.get("id"))
    if external_id is None:  # nothing to look up at the provider: the body is not trusted
        return EventResult("ignored: a subscription without an id")
    fresh = ctx.fetched.get(external_id) if external_id in ctx.fetched else obj
    if fresh is None:
        return EventResult("ignored: the provider has no such subscription")
    return _store_subscription(session, fresh, ctx, account_id=None)


@handles("invoice.paid", "invoice.payment_succeeded")
def invoice_paid(session: Session, event: dict[str, Any], ctx: EventContext) -> EventResult:
    """Each paid invoice of the premium plan (its first month or a renewal) grants the monthly
    tokens once (bucket "subscription", until the period it pays for ends) and counts as
    revenue. An invoice for nothing (a trial), a proration or a manual invoice grants nothing.
    It may arrive before the checkout or the subscription events: the subscription's metadata
    names the account."""
    obj = _object(event)
    account_id = _invoice_account(session, obj, ctx)
    if account_id is None:
        return EventResult("ignored: not a subscription of ours")
    ledger.lock_account(session, account_id)
    invoice_id = _id(obj.get("id"))
    if invoice_id is None:
        return EventResult("ignored: a invoice without a usable id")
    paid = _cents(obj.get("amount_paid")) or 0
    if paid <= 0 or obj.get("billing_reason") not in GRANTING_REASONS:
        return EventResult("no tokens: not a paid subscription month")
    plan = ctx.catalog.premium
    expires_at = max(_period_end(obj) or ctx.now + timedelta(days=31),
                     ctx.now + timedelta(days=1))
    posted = ledger.grant(session, account_id, plan.monthly_tokens, key=f"invoice:{invoice_id}",
                          bucket="subscription", expires_at=expires_at,
                          memo=f"{plan.name} month", now=ctx.now)
    costs.record_revenue(session, account_id, "subscription", paid * costs.MUSD_PER_CENT,
                         key=f"revenue:invoice:{invoice_id}", memo=plan.code, now=ctx.now)
    if posted.replayed:
        return EventResult("already granted")
    return EventResult(f"granted {plan.monthly_tokens} subscription tokens")


@handles("invoice.payment_failed")
def invoice_payment_failed(session: Session, event: dict[str, Any], ctx: EventContext
                           ) -> EventResult:
    """Tell the person, with a billing-portal link to fix their card (once per failed
    attempt: each is its own event)."""
    obj = _object(event)
    account_id = _invoice_account(session, obj, ctx)
    if account_id is None:
        return EventResult("ignored: not a subscription of ours")
    ledger.lock_account(session, account_id)
    return EventResult("told the person", (
        Notice(account_id, "invoice_failed", {"customer": _id(obj.get("customer"))}),
    ))


def _subscription_checkout(session: Session, obj: dict[str, Any], checkout: Checkout,
                           ctx: EventContext) -> EventResult:
    """The caller holds the account's lock."""
    checkout.status = "completed"
    checkout.completed_at = checkout.completed_at or ctx.now
    external_id = _id(obj.get("subscription"))
    if external_id is None:
        return EventResult("subscription checkout without a subscription")
    fresh = ctx.fetched.get(external_id) or {"id": external_id, "status": "incomplete"}
    fresh = {**fresh, "customer": _id(fresh.get("customer")) or checkout.customer_id}
    return _store_subscription(session, fresh, ctx, account_id=checkout.account_id)


def _store_subscription(session: Session, fresh: dict[str, Any], ctx: EventContext,
                        *, account_id: int | None) -> EventResult:
    """Select or insert the subscription's row and store its state, the person's account
    locked first (as everywhere) when it is known."""
    external_id = _id(fresh.get("id"))
    if external_id is None:
        return EventResult("ignored: a subscription without a usable id")
    existing = session.scalar(select(Subscription.account_id).where(
        Subscription.external_id == external_id))
    account_id = account_id or existing or _account_of_metadata(session, fresh)
    if account_id is not None:
        ledger.lock_account(session, account_id)
    row = session.scalar(select(Subscription).where(Subscription.external_id == external_id)
                         .execution_options(populate_existing=True))
    if row is None:
        try:
            with session.begin_nested():
                row = Subscription(provider=ctx.provider, external_id=external_id,
                                   status="incomplete", account_id=account_id,
                                   updated_at=ctx.now)
                session.add(row)
                session.flush()
        except IntegrityError:
            row = session.scalar(select(Subscription).where(
                Subscription.external_id == external_id))
            assert row is not None
    row.account_id = row.account_id or account_id
    grace = ctx.catalog.premium.grace_days
    was_premium = row.premium(ctx.now, grace) if row.account_id else False
    status = str(fresh.get("status") or row.status)[:32]
    row.past_due_since = (row.past_due_since or ctx.now) if status == "past_due" else None
    row.status = status
    row.customer_id = _id(fresh.get("customer")) or row.customer_id
    row.cancel_at_period_end = bool(fresh.get("cancel_at_period_end"))
    row.current_period_end = _period_end(fresh) or row.current_period_end
    row.updated_at = ctx.now
    session.flush()
    if row.account_id is None:
        return EventResult(f"subscription {status}: no account of ours")
    now_premium = row.premium(ctx.now, grace)
    notices: list[Notice] = []
    if now_premium and not was_premium:
        notices.append(Notice(row.account_id, "premium_started"))
    elif was_premium and not now_premium:
        notices.append(Notice(row.account_id, "premium_ended"))
    return EventResult(f"subscription {status}", tuple(notices))


# --- reading events defensively ------------------------------------------------------------


def _object(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}


MAX_ID_CHARS = 150  # Stripe ids are far shorter; keys built on them must fit 200 characters


def _id(value: Any) -> str | None:
    """An id that may be a string or an expanded object; None when absent or not a plausible
    id (not a string, or longer than `MAX_ID_CHARS`)."""
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        return None
    return value


def _checkout(session: Session, external_id: Any) -> Checkout | None:
    if not external_id:
        return None
    return session.scalar(select(Checkout).where(Checkout.external_id == str(external_id)))


def _checkout_of_charge(session: Session, charge: dict[str, Any], ctx: EventContext
                        ) -> Checkout | None:
    """Our checkout of a charge: by its payment intent, or a charge id seen before."""
    intent, charge_id = _id(charge.get("payment_intent")), _id(charge.get("id"))
    if intent:
        found = session.scalar(select(Checkout).where(Checkout.payment_intent == intent))
        if found is not None:
            return found
    if charge_id:
        return session.scalar(select(Checkout).where(Checkout.charge_id == charge_id))
    return None


def _checkout_of_dispute(session: Session, dispute: dict[str, Any], ctx: EventContext
                         ) -> Checkout | None:
    """Our checkout of a dispute's charge; older API shapes name only the charge, which is
    fetched for its payment intent."""
    charge_id = _id(dispute.get("charge"))
    found = _checkout_of_charge(session, {"id": charge_id,
                                          "payment_intent": dispute.get("payment_intent")}, ctx)
    if found is not None or charge_id is None:
        return found
    charge = ctx.fetched.get(charge_id)  # fetched before the transaction (older API shapes)
    return _checkout_of_charge(session, charge, ctx) if charge else None


def _invoice_subscription_id(invoice: dict[str, Any]) -> str | None:
    """The invoice's subscription: `parent.subscription_details.subscription` in the current
    API shape, `subscription` in older ones (payments.md)."""
    parent = invoice.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, dict) else None
    external_id = _id(details.get("subscription")) if isinstance(details, dict) else None
    return external_id or _id(invoice.get("subscription"))


def _invoice_account(session: Session, invoice: dict[str, Any], ctx: EventContext
                     ) -> int | None:
    """The account an invoice's subscription belongs to: our row for it, else the account in
    the subscription's metadata (set at checkout, so an invoice that comes first finds it)."""
    external_id = _invoice_subscription_id(invoice)
    if external_id is None:
        return None
    known = session.scalar(select(Subscription.account_id).where(
        Subscription.external_id == external_id))
    if known is not None:
        return known
    fetched = ctx.fetched.get(external_id)
    return _account_of_metadata(session, fetched) if fetched else None


def _note_charge(checkout: Checkout, dispute: dict[str, Any]) -> None:
    """Remember the charge of a dispute (the account is locked)."""
    checkout.charge_id = checkout.charge_id or _id(dispute.get("charge"))


def _account_of_metadata(session: Session, obj: dict[str, Any]) -> int | None:
    metadata = obj.get("metadata")
    public_id = metadata.get("account") if isinstance(metadata, dict) else None
    if not public_id:
        return None
    return session.scalar(select(Account.id).where(Account.public_id == str(public_id)))


def _period_end(obj: dict[str, Any]) -> datetime | None:
    """When the period an invoice or a subscription covers ends: `current_period_end`
    (older shapes), the first item's (current shape), or an invoice line's period."""
    stamp = obj.get("current_period_end")
    if not stamp:
        stamp = _first(obj.get("items")).get("current_period_end")
    if not stamp:
        period = _first(obj.get("lines")).get("period")
        stamp = period.get("end") if isinstance(period, dict) else None
    # Unix seconds within years 1970-9999; anything else is not a date.
    if type(stamp) is not int or not 0 < stamp < 253_402_300_800:
        return None
    return datetime.fromtimestamp(stamp, UTC)


def _first(listing: Any) -> dict[str, Any]:
    """The first object of a Stripe list (`{"data": [...]}`), or {} for any other shape."""
    data = listing.get("data") if isinstance(listing, dict) else None
    first = data[0] if isinstance(data, list) and data else None
    return first if isinstance(first, dict) else {}


def _cents(value: Any) -> int | None:
    """A Stripe amount in cents: a whole number from 0 to 10^9; None for anything else
    (a malformed event must not reach the ledger or the revenue rollups)."""
    if type(value) is not int or not 0 <= value <= 1_000_000_000:
        return None
    return value


def _claw_pack(session: Session, checkout: Checkout, target: int, key: str, memo: str,
               ctx: EventContext) -> int:
    """Claw back up to `target` tokens of the pack in all (cumulative over every clawback of
    it), from its bonus first, then its paid tokens, never more than is unspent there or free
    of pending holds; returns the tokens taken now."""
    parts = [(checkout.purchase_key + ":bonus", ":bonus"), (checkout.purchase_key, "")]
    status = {credit: ledger.credit_status(session, credit) for credit, _ in parts}
    want = target - sum(clawed for clawed, _ in status.values())
    free = ledger.balance(session, checkout.account_id, ctx.now).available
    taken = 0
    for credit, suffix in parts:
        take = min(want - taken, status[credit][1], free - taken)
        if take > 0:
            taken += ledger.clawback(session, credit, take, key=key + suffix, memo=memo,
                                     now=ctx.now).amount
    return taken
