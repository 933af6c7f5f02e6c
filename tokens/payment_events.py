"""Payment events: the inbox and the dispatch table (docs/payments.md).

`receive_event` stores an event once (`UNIQUE(event id)`; a repeat returns None and changes
nothing) and runs its handler in the same transaction. Text no database can store (a NUL, an
unpaired surrogate) is replaced by U+FFFD first, and the stored outcome says so. Every effect
has its own key as well, because one effect can arrive in two events
(`checkout.session.completed` and `checkout.session.async_payment_succeeded`; `invoice.paid`
and `invoice.payment_succeeded`):

| effect | key |
|---|---|
| a pack credited (+ its bonus) | `checkout:<session id>` (`:bonus`) |
| a paid invoice's grant | `invoice:<invoice id>` |
| tokens clawed back for the money gone (cumulative) | `clawback:<charge>:<cents gone>` (`:bonus`) |
| a dispute's freeze (a hold) | `dispute:<dispute id>` (`:<cents gone>` after a clawback) |
| revenue | `revenue:checkout:<session id>`, `revenue:invoice:<invoice id>` |
| revenue reversed (cumulative) | `revenue:reversal:<charge id>:<cents gone>` |

Refunds and disputes settle in any order. Each is a fact about one `ProviderPayment` (its
payment intent): the highest `amount_refunded` seen, and each dispute's state, where a closed
dispute stays closed. From the facts, `_settle` computes the money gone, min(amount paid,
refunded + lost disputes), and brings the tokens (clawed back in proportion, bonus first, at
most what is unspent) and the revenue (reversed once in all) to it; an open dispute freezes
what is left. A fact about a payment whose checkout or invoice is not known yet keeps the
payment "pending"; the completion or the paid invoice settles it, so it credits net of it.

Amounts and tokens come only from our catalog and our stored checkout, never from the event: a
session whose amount or currency differs from the stored one credits nothing and is flagged.
Locks, always in this order: the payment's row, then the person's account, then the
subscription's row.

Handlers return `Notice`s: what to tell the person (the web layer words and sends them).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tokens import costs, ledger, money
from tokens.base import insert_once
from tokens.catalog import Catalog
from tokens.ledger import Account
from tokens.payments import (
    PREMIUM_STATUSES,
    Checkout,
    FailedEvent,
    Invoice,
    PaymentDispute,
    PaymentEvent,
    ProviderPayment,
    Subscription,
)
from tokens.providers import PaymentError, PaymentProvider

log = logging.getLogger(__name__)
# A dispute's freeze lasts at most this long (Stripe decides disputes within ~75 days).
DISPUTE_HOLD_DAYS = 120
# Invoices that pay for a month of the plan; prorations and manual invoices grant nothing.
GRANTING_REASONS = frozenset({"subscription_create", "subscription_cycle"})
# Invoice events whose handler needs the invoice's payment (for its later refunds).
PAID_INVOICE_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded"})
# What replaces text no database can store: PostgreSQL refuses NUL in text, and an unpaired
# surrogate is not UTF-8 (Unicode's own replacement character, U+FFFD).
REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
MAX_DEPTH = 64  # deeper JSON is refused by the provider's parser before it gets here


@dataclass(frozen=True)
class Notice:
    """Something to tell a person after an event (the web layer words it; no wording here).

    Attributes:
        account_id: whose.
        kind: one of (params in brackets; times are aware UTC datetimes):
            "pack_credited" (tokens: credited net of refunds and lost disputes that came
            first, available: the available balance after), "payment_failed" (),
            "premium_started" (), "premium_ending" (ends_at: when premium ends, a
            cancellation at the period's end), "premium_ended" (ended_at), "past_due"
            (grace_ends_at: when premium stops unless the card is fixed, customer),
            "grace_ended" (grace_ended_at), "invoice_failed" (customer: the provider's
            customer id, for the billing portal).
        params: what the wording needs, as above.
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


def clean_text(value: Any, depth: int = 0) -> tuple[Any, int]:
    """`value` (a parsed JSON value) with every NUL and unpaired surrogate in its strings, keys
    included, replaced by U+FFFD, and how many strings changed.

    Returns:
        (the cleaned value, the number of strings changed); `value` itself when nothing
        changed. Two keys of one object that clean to the same text keep the later value.
    """
    if isinstance(value, str):
        fixed = _UNSTORABLE.sub(REPLACEMENT, value)
        return (fixed, 1) if fixed != value else (value, 0)
    if depth >= MAX_DEPTH or not isinstance(value, dict | list):
        return value, 0
    changed = 0
    if isinstance(value, list):
        items: list[Any] = []
        for item in value:
            fixed_item, count = clean_text(item, depth + 1)
            items.append(fixed_item)
            changed += count
        return (items, changed) if changed else (value, 0)
    pairs: dict[Any, Any] = {}
    for key, item in value.items():
        fixed_key, key_count = clean_text(key, depth + 1)
        fixed_item, count = clean_text(item, depth + 1)
        pairs[fixed_key] = fixed_item
        changed += key_count + count
    return (pairs, changed) if changed else (value, 0)


def prefetch(event: dict[str, Any], provider: PaymentProvider) -> dict[str, dict[str, Any] | None]:
    """Fetch what `event`'s handler will need from the provider, before any transaction.

    Subscription events, subscription checkouts and invoices: the subscription (its present
    state, and the account in its metadata). A paid invoice that names no payment (current API
    shapes carry it only in `payments`, which events leave out): the invoice with its
    payments. Disputes in older API shapes: the charge (for its payment intent).

    Raises:
        PaymentError: the provider could not answer (not a definite "no such object"): the
            webhook answers 500 and the provider delivers the event again later.
    """
    event = clean_text(event)[0]
    obj = _object(event)
    kind = str(event.get("type") or "")
    wanted: list[tuple[str, str]] = []
    if kind.startswith("customer.subscription."):
        wanted.append(("subscription", _id(obj.get("id")) or ""))
    elif kind.startswith("checkout.session.") and obj.get("mode") == "subscription":
        wanted.append(("subscription", _id(obj.get("subscription")) or ""))
    elif kind.startswith("invoice."):
        wanted.append(("subscription", _invoice_subscription_id(obj) or ""))
        if kind in PAID_INVOICE_EVENTS and _invoice_payment(obj) == (None, None):
            wanted.append(("invoice", _id(obj.get("id")) or ""))
    elif kind.startswith("charge.dispute.") and not _id(obj.get("payment_intent")):
        wanted.append(("charge", _id(obj.get("charge")) or ""))
    fetches = {"subscription": provider.fetch_subscription, "charge": provider.fetch_charge,
               "invoice": provider.fetch_invoice}
    fetched: dict[str, dict[str, Any] | None] = {}
    for what, object_id in wanted:
        if not object_id:
            continue
        try:
            fetched[object_id] = fetches[what](object_id)
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

    Strings holding a NUL or an unpaired surrogate are stored and handled with those
    characters replaced by U+FFFD (`clean_text`), and the outcome says how many. An unknown
    type is kept and ignored. A handler's exception propagates (the caller rolls back and
    answers 500, so the provider retries later).
    """
    event, cleaned = clean_text(event)
    row = PaymentEvent(provider=provider, event_id=str(event["id"])[:255],
                       type=str(event.get("type", ""))[:100],
                       object_id=(_id(_object(event).get("id")) or "")[:255] or None,
                       payload=json.dumps(event, separators=(",", ":")), received_at=ctx.now)
    if not insert_once(session, row):
        return None
    handler = HANDLERS.get(row.type)
    result = handler(session, event, ctx) if handler else EventResult("ignored: no handler")
    if cleaned:
        note = f" [text cleaned: {cleaned} strings had a NUL or an unpaired surrogate, now U+FFFD]"
        result = EventResult(result.outcome[:200 - len(note)] + note, result.notices)
    row.outcome = result.outcome[:200]
    session.flush()
    log.info("payment event", extra={"type": row.type, "outcome": result.outcome})
    return result


def record_failure(session: Session, provider: str, event: dict[str, Any], error: BaseException,
                   now: datetime) -> None:
    """Keep (or count again) an event whose handling failed, with the error's type and message
    (at most 500 characters), for the admin inbox. The caller commits; it runs in a fresh
    transaction after the failed one was rolled back."""
    event = clean_text(event)[0]
    event_id = str(event.get("id", ""))[:255]
    if session.scalar(select(PaymentEvent.id).where(PaymentEvent.event_id == event_id)):
        return  # applied since (a reprocess or an earlier retry): a late failure changes nothing
    text = _UNSTORABLE.sub(REPLACEMENT, f"{type(error).__name__}: {error}")[:500]
    row = session.scalars(select(FailedEvent).where(FailedEvent.event_id == event_id)).first()
    if row is None:
        if insert_once(session, FailedEvent(
                provider=provider, event_id=event_id, type=str(event.get("type", ""))[:100],
                payload=json.dumps(event, separators=(",", ":")), error=text, attempts=1,
                first_failed_at=now, last_failed_at=now)):
            return
        row = session.scalars(select(FailedEvent).where(FailedEvent.event_id == event_id)).one()
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
    """A paid pack is credited once per session, with its bonus, and its revenue recorded;
    refunds and disputes of its payment that came first are settled at once, so it credits
    net of them. A session paid at another amount or currency than stored is flagged and
    credits nothing, then or on any later event for it. A subscription checkout links the
    subscription to the person. Unpaid: nothing yet."""
    obj = _object(event)
    checkout = _checkout(session, obj.get("id"))
    if checkout is None:
        return EventResult("ignored: not a checkout of ours")
    if obj.get("payment_status") not in ("paid", "no_payment_required"):
        return EventResult("waiting: not paid yet")
    intent = _id(obj.get("payment_intent"))
    payment = None
    if checkout.mode == "payment" and intent is not None:
        payment = _lock_payment(session, ctx, intent, None)
    ledger.lock_account(session, checkout.account_id)
    session.refresh(checkout)
    checkout.customer_id = checkout.customer_id or _id(obj.get("customer"))
    if checkout.mode == "subscription":
        return _subscription_checkout(session, obj, checkout, ctx)
    if checkout.status == "completed":
        return EventResult("already credited")
    if checkout.status == "flagged":
        # Paid at another price once: it stays for an operator to review, whatever the next
        # event for the same session says (as an auto top-up's flagged charge does).
        return EventResult("already flagged")
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
    checkout.payment_intent = checkout.payment_intent or intent
    costs.record_revenue(session, checkout.account_id, "pack",
                         money.cents_to_musd(checkout.amount_cents),
                         key=f"revenue:{checkout.purchase_key}", memo=checkout.item_code,
                         now=ctx.now)
    if bought.purchase.replayed:
        return EventResult("already credited")
    total = checkout.tokens + checkout.bonus_tokens
    outcome = f"credited {total} tokens"
    settled = _Settled()
    if payment is not None:
        _link(payment, checkout=checkout)
        settled = _settle(session, payment, ctx)
        outcome += settled.described(" at once (refunded or disputed before)")
    available = ledger.balance(session, checkout.account_id, ctx.now).available
    net = total - settled.taken
    if net <= 0:
        return EventResult(outcome)
    return EventResult(outcome, (
        Notice(checkout.account_id, "pack_credited", {"tokens": net, "available": available}),
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


@handles("payment_intent.succeeded")
def payment_intent_succeeded(session: Session, event: dict[str, Any], ctx: EventContext
                             ) -> EventResult:
    """An auto top-up's off-session payment credits its pack once (the same ledger key as
    `tokens.auto_topup.settle`, whichever comes first); a checkout's payment that saved the
    card with the person's consent turns auto top-up on. Any other payment intent: nothing
    (its checkout's events credit it). See `tokens.auto_topup.payment_succeeded`."""
    return auto_topup.payment_succeeded(session, _object(event), ctx)


# --- refunds and disputes ------------------------------------------------------------------


@handles("charge.succeeded")
def charge_succeeded(session: Session, event: dict[str, Any], ctx: EventContext
                     ) -> EventResult:
    """Keep the charge's receipt page (`receipt_url`, https only) on its payment, for the
    person's account page. The payment row is found or made by its payment intent, like a
    refund's, so the receipt is kept whichever of this and the checkout's completion comes
    first; nothing else changes (the checkout's events credit the pack)."""
    obj = _object(event)
    charge_id = _id(obj.get("id"))
    if charge_id is None:
        return EventResult("ignored: a charge without a usable id")
    url = receipt_url(obj.get("receipt_url"))
    if url is None:
        return EventResult("ignored: no receipt")
    payment = _lock_payment(session, ctx, _id(obj.get("payment_intent")), charge_id)
    payment.receipt_url = url
    payment.updated_at = ctx.now
    return EventResult("receipt kept")


@handles("charge.refunded")
def charge_refunded(session: Session, event: dict[str, Any], ctx: EventContext
                    ) -> EventResult:
    """Note the charge's cumulative refund (`amount_refunded`; a repeat or an older event
    changes nothing) and settle its payment: `tokens x gone / amount` of the pack or the
    invoice's grant clawed back in all, bonus first, at most what is unspent; the money
    reversed once. A charge whose checkout or invoice is not known yet is kept pending."""
    obj = _object(event)
    charge_id = _id(obj.get("id"))
    if charge_id is None:
        return EventResult("ignored: a charge without a usable id")
    payment = _payment_of(session, ctx, _id(obj.get("payment_intent")), charge_id,
                          invoice_id=_id(obj.get("invoice")))
    payment.receipt_url = receipt_url(obj.get("receipt_url")) or payment.receipt_url
    refunded = _cents(obj.get("amount_refunded")) or 0
    if refunded <= payment.refunded_cents:
        return EventResult("already processed")
    payment.refunded_cents = refunded
    payment.updated_at = ctx.now
    settled = _settle(session, payment, ctx)
    if settled.pending:
        return EventResult(f"pending: refund of {refunded} cents kept until its checkout or "
                           "invoice is known")
    return EventResult(f"refund of {refunded} cents" + settled.described())


@handles("charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed",
         "charge.dispute.funds_withdrawn", "charge.dispute.funds_reinstated")
def dispute_changed(session: Session, event: dict[str, Any], ctx: EventContext
                    ) -> EventResult:
    """Note the dispute's state and settle its payment. Open: the payment's unspent tokens are
    frozen with a hold until it closes. Won or closed: the freeze is released (a refund stands:
    winning a dispute does not undo it). Lost: released, and the disputed money counts as gone
    (clawback and revenue as for a refund, the money reversed once with any refund). An
    inquiry (`warning_*`) moves no money and freezes nothing. A closed dispute stays closed,
    so its older events change nothing."""
    obj = _object(event)
    dispute_id = _id(obj.get("id"))
    if dispute_id is None:
        return EventResult("ignored: a dispute without a usable id")
    charge_id = _id(obj.get("charge"))
    charge = ctx.fetched.get(charge_id) if charge_id else None  # older shapes: fetched
    intent = _id(obj.get("payment_intent")) or (_id(charge.get("payment_intent"))
                                                if charge else None)
    if intent is None and charge_id is None:
        return EventResult("ignored: a dispute without a charge")
    payment = _payment_of(session, ctx, intent, charge_id,
                          invoice_id=_id(charge.get("invoice")) if charge else None)
    status = str(obj.get("status") or "")[:32]
    state = _dispute_state(status, closed=event.get("type") == "charge.dispute.closed")
    dispute = _note_dispute(session, payment, dispute_id, status, state,
                            _cents(obj.get("amount")), ctx)
    settled = _settle(session, payment, ctx)
    if settled.pending:
        return EventResult(f"pending: dispute {dispute.state} kept until its checkout or "
                           "invoice is known")
    return EventResult(f"dispute {dispute.state}" + settled.described())


_DISPUTE_RANK = {"inquiry": 0, "open": 1, "won": 2, "lost": 2, "closed": 2}


def _dispute_state(status: str, *, closed: bool) -> str:
    """Our state for a provider dispute status (Stripe's `dispute.status`)."""
    if status in ("won", "lost"):
        return status
    if closed or status in ("warning_closed", "prevented"):
        return "closed"
    return "inquiry" if status.startswith("warning_") else "open"


def _note_dispute(session: Session, payment: ProviderPayment, dispute_id: str, status: str,
                  state: str, amount: int | None, ctx: EventContext) -> PaymentDispute:
    """Insert or update the dispute's row (the payment's row is locked): its state moves only
    forward (inquiry -> open -> closed), so an older event cannot reopen it."""
    row = session.scalar(select(PaymentDispute).where(PaymentDispute.external_id == dispute_id)
                         .execution_options(populate_existing=True))
    if row is None:
        # A freeze placed before disputes had rows (the same key) is this dispute's.
        earlier = session.scalar(select(ledger.Hold.idempotency_key).where(
            ledger.Hold.idempotency_key == f"dispute:{dispute_id}",
            ledger.Hold.status == "pending"))
        row = PaymentDispute(provider=ctx.provider, external_id=dispute_id,
                             payment_id=payment.id, status=status, state=state,
                             amount_cents=amount or 0, hold_key=earlier, updated_at=ctx.now)
        session.add(row)
        session.flush()
        return row
    if _DISPUTE_RANK[state] > _DISPUTE_RANK[row.state]:
        row.state, row.status = state, status
    if amount and row.state not in ("won", "lost", "closed"):
        row.amount_cents = amount
    row.updated_at = ctx.now
    session.flush()
    return row


# --- settling a payment --------------------------------------------------------------------


@dataclass(frozen=True)
class _Paid:
    """What a payment bought, from our store: whose, for how much, and which credits (the
    ledger keys, in the order clawbacks take from them, with the suffix of the clawback's
    key and the credit's tokens)."""

    account_id: int
    amount_cents: int
    credits: tuple[tuple[str, str, int], ...]
    revenue_kind: str

    @property
    def tokens(self) -> int:
        return sum(tokens for _, _, tokens in self.credits)


@dataclass(frozen=True)
class _Settled:
    """What settling a payment did now: tokens clawed back, cents reversed, tokens frozen;
    `pending` when its checkout or invoice is not known (or not credited) yet."""

    taken: int = 0
    reversed_cents: int = 0
    frozen: int = 0
    pending: bool = False

    def described(self, suffix: str = "") -> str:
        parts = []
        if self.taken or self.reversed_cents:
            parts.append(f"{self.taken} tokens clawed back, {self.reversed_cents} cents "
                         f"reversed{suffix}")
        if self.frozen:
            parts.append(f"{self.frozen} tokens frozen")
        return "".join(f": {part}" if i == 0 else f", {part}" for i, part in enumerate(parts))


def _settle(session: Session, payment: ProviderPayment, ctx: EventContext) -> _Settled:
    """Bring the tokens and revenue of `payment` to what its money did, whatever the order of
    its events. The payment's row is locked; so is its owner's account (`_payment_of`).

    The money gone is min(amount paid, refunded + lost disputes): a refund and a lost dispute
    of the same money count once. Tokens: `tokens x gone / amount` clawed back in all
    (cumulative, bonus first, at most what is unspent), revenue reversed by the cents gone not
    reversed yet. Closed disputes release their freeze; an open one freezes the unspent tokens
    (released first and placed again after a clawback, so the clawback never finds its own
    tokens frozen).
    """
    paid = _paid(session, payment)
    if paid is None:
        return _Settled(pending=True)
    disputes = list(session.scalars(select(PaymentDispute).where(
        PaymentDispute.payment_id == payment.id).order_by(PaymentDispute.id)
        .execution_options(populate_existing=True)))
    for dispute in disputes:
        if dispute.state != "open":
            _release(session, dispute, ctx)
    lost = sum(d.amount_cents or paid.amount_cents for d in disputes if d.state == "lost")
    gone = min(paid.amount_cents, payment.refunded_cents + lost)
    taken = reversed_cents = 0
    if gone > payment.settled_cents:
        for dispute in disputes:
            _release(session, dispute, ctx)
        charge = payment.charge_id or payment.external_id
        memo = ("refund" if payment.refunded_cents >= gone
                else "dispute lost" if payment.refunded_cents == 0 else "refund, dispute lost")
        taken = _claw(session, paid, paid.tokens * gone // paid.amount_cents,
                      f"clawback:{charge}:{gone}", memo, ctx)
        reversed_cents = gone - payment.settled_cents
        costs.record_revenue(session, paid.account_id, paid.revenue_kind,
                             money.cents_to_musd(-reversed_cents),
                             key=f"revenue:reversal:{charge}:{gone}", memo=memo, now=ctx.now)
        payment.settled_cents = gone
    frozen = 0
    open_disputes = [d for d in disputes if d.state == "open"]
    if open_disputes and not any(d.hold_key for d in open_disputes):
        frozen = _freeze(session, payment, paid, open_disputes[0], ctx)
    if payment.checkout_id is not None:
        checkout = session.get(Checkout, payment.checkout_id)
        if checkout is not None:
            checkout.refunded_cents = min(payment.refunded_cents, checkout.amount_cents)
            checkout.charge_id = checkout.charge_id or payment.charge_id
    session.flush()
    return _Settled(taken, reversed_cents, frozen)


def _paid(session: Session, payment: ProviderPayment) -> _Paid | None:
    """What the payment bought, or None while it is pending or its checkout credited
    nothing (flagged)."""
    if payment.checkout_id is not None:
        checkout = session.get(Checkout, payment.checkout_id)
        if checkout is None or checkout.status != "completed":
            return None
        key = checkout.purchase_key
        return _Paid(checkout.account_id, checkout.amount_cents,
                     ((f"{key}:bonus", ":bonus", checkout.bonus_tokens),
                      (key, "", checkout.tokens)), "pack")
    if payment.invoice_id is not None:
        invoice = session.get(Invoice, payment.invoice_id)
        if invoice is None:
            return None
        return _Paid(invoice.account_id, invoice.amount_cents,
                     ((invoice.grant_key, "", invoice.tokens),), "subscription")
    return None


def _claw(session: Session, paid: _Paid, target: int, key: str, memo: str,
          ctx: EventContext) -> int:
    """Claw back up to `target` tokens of what the payment bought in all (cumulative over
    every clawback of it), in the order of its credits (a pack's bonus first), never more
    than is unspent there or free of pending holds; returns the tokens taken now."""
    status = {credit: ledger.credit_status(session, credit) for credit, _, _ in paid.credits}
    want = target - sum(clawed for clawed, _ in status.values())
    free = ledger.balance(session, paid.account_id, ctx.now).available
    taken = 0
    for credit, suffix, _ in paid.credits:
        take = min(want - taken, status[credit][1], free - taken)
        if take > 0:
            taken += ledger.clawback(session, credit, take, key=key + suffix, memo=memo,
                                     now=ctx.now).amount
    return taken


def _freeze(session: Session, payment: ProviderPayment, paid: _Paid, dispute: PaymentDispute,
            ctx: EventContext) -> int:
    """Freeze the payment's unspent tokens (at most the available balance) with a hold for
    `dispute`; returns the tokens frozen."""
    unspent = sum(ledger.credit_status(session, credit)[1] for credit, _, _ in paid.credits)
    freeze = min(unspent, ledger.balance(session, paid.account_id, ctx.now).available)
    if freeze <= 0:
        return 0
    key = f"dispute:{dispute.external_id}"
    if payment.settled_cents:
        key += f":{payment.settled_cents}"
    held = ledger.hold(session, paid.account_id, freeze, key=key,
                       ttl_seconds=DISPUTE_HOLD_DAYS * 86400, memo="frozen: payment disputed",
                       now=ctx.now)
    dispute.hold_key = key
    return 0 if held.replayed else freeze


def _release(session: Session, dispute: PaymentDispute, ctx: EventContext) -> None:
    """Release the dispute's freeze, if one is pending."""
    if dispute.hold_key is None:
        return
    hold = session.scalar(select(ledger.Hold).where(
        ledger.Hold.idempotency_key == dispute.hold_key))
    if hold is not None and hold.status == "pending":
        ledger.void(session, hold.id, now=ctx.now)
    dispute.hold_key = None


def _lock_payment(session: Session, ctx: EventContext, intent: str | None,
                  charge_id: str | None) -> ProviderPayment:
    """The payment of `intent` (or of the charge, when there is no intent), its row locked;
    inserted when new. Every handler locks it before the person's account."""
    external_id = intent or charge_id
    assert external_id is not None
    match = ProviderPayment.external_id == external_id
    if charge_id is not None:
        match = or_(match, ProviderPayment.charge_id == charge_id)
    query = (select(ProviderPayment).where(match).order_by(ProviderPayment.id).limit(1)
             .with_for_update().execution_options(populate_existing=True))
    row = session.scalar(query)
    if row is None:
        row = ProviderPayment(provider=ctx.provider, external_id=external_id,
                              charge_id=charge_id, status="pending", refunded_cents=0,
                              settled_cents=0, created_at=ctx.now, updated_at=ctx.now)
        if not insert_once(session, row):  # a concurrent event inserted it first
            row = session.scalar(query)
            assert row is not None
    row.charge_id = row.charge_id or charge_id
    return row


def _payment_of(session: Session, ctx: EventContext, intent: str | None, charge_id: str | None,
                *, invoice_id: str | None = None) -> ProviderPayment:
    """The payment of a refunded or disputed charge, its row locked, linked to our checkout
    or invoice when one is known now, and then its account locked too."""
    payment = _lock_payment(session, ctx, intent, charge_id)
    if payment.status == "pending":
        known = [Checkout.payment_intent == (intent or payment.external_id)]
        if charge_id or payment.charge_id:
            known.append(Checkout.charge_id == (charge_id or payment.charge_id))
        checkout = session.scalar(select(Checkout).where(Checkout.status == "completed",
                                                         or_(*known)).limit(1))
        if checkout is not None:
            _link(payment, checkout=checkout)
        elif invoice_id is not None:
            invoice = session.scalar(select(Invoice).where(Invoice.external_id == invoice_id))
            if invoice is not None:
                _link(payment, invoice=invoice)
    account_id = _account_of(session, payment)
    if account_id is not None:
        ledger.lock_account(session, account_id)
    return payment


def _link(payment: ProviderPayment, *, checkout: Checkout | None = None,
          invoice: Invoice | None = None) -> None:
    """Make a pending payment applied: it paid `checkout` or `invoice`."""
    if payment.status != "pending":
        return
    payment.checkout_id = checkout.id if checkout is not None else None
    payment.invoice_id = invoice.id if invoice is not None else None
    payment.status = "applied"


def _account_of(session: Session, payment: ProviderPayment) -> int | None:
    if payment.checkout_id is not None:
        return session.scalar(select(Checkout.account_id).where(
            Checkout.id == payment.checkout_id))
    if payment.invoice_id is not None:
        return session.scalar(select(Invoice.account_id).where(
            Invoice.id == payment.invoice_id))
    return None


# --- subscriptions -------------------------------------------------------------------------


@handles("customer.subscription.created", "customer.subscription.updated",
         "customer.subscription.deleted")
def subscription_changed(session: Session, event: dict[str, Any], ctx: EventContext
                         ) -> EventResult:
    """Store the subscription as the provider has it now (fetched before the transaction):
    events arrive out of order, the present state does not. Tells the person of each change
    of state once (`notice_state`)."""
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
    tokens once (bucket "subscription", until the period it pays for ends), counts as revenue,
    and is kept (`Invoice`) with its payment, so that a refund or dispute of that payment
    claws back the grant in proportion and reverses the revenue; one that came first is
    settled now. An invoice for nothing (a trial), a proration or a manual invoice grants
    nothing. It may arrive before the checkout or the subscription events: the
    subscription's metadata names the account."""
    obj = _object(event)
    account_id = _invoice_account(session, obj, ctx)
    if account_id is None:
        return EventResult("ignored: not a subscription of ours")
    invoice_id = _id(obj.get("id"))
    if invoice_id is None:
        return EventResult("ignored: a invoice without a usable id")
    paid = _cents(obj.get("amount_paid")) or 0
    granting = paid > 0 and obj.get("billing_reason") in GRANTING_REASONS
    intent, charge_id = _invoice_payment(obj)
    if intent is None and charge_id is None:
        intent, charge_id = _invoice_payment(ctx.fetched.get(invoice_id) or {})
    payment = None
    if granting and (intent or charge_id):
        payment = _lock_payment(session, ctx, intent, charge_id)
    ledger.lock_account(session, account_id)
    notices = _refresh_subscription(session, obj, ctx, account_id)
    if not granting:
        return EventResult("no tokens: not a paid subscription month", notices)
    plan = ctx.catalog.premium
    expires_at = max(_period_end(obj) or ctx.now + timedelta(days=31),
                     ctx.now + timedelta(days=1))
    posted = ledger.grant(session, account_id, plan.monthly_tokens, key=f"invoice:{invoice_id}",
                          bucket="subscription", expires_at=expires_at,
                          memo=f"{plan.name} month", now=ctx.now)
    costs.record_revenue(session, account_id, "subscription", money.cents_to_musd(paid),
                         key=f"revenue:invoice:{invoice_id}", memo=plan.code, now=ctx.now)
    invoice = _keep_invoice(session, obj, invoice_id, account_id, paid,
                            plan.monthly_tokens, ctx)
    settled = _Settled()
    if payment is not None:
        _link(payment, invoice=invoice)
        settled = _settle(session, payment, ctx)
    if posted.replayed:
        return EventResult("already granted" + settled.described(), notices)
    return EventResult(f"granted {plan.monthly_tokens} subscription tokens"
                       + settled.described(" at once (refunded or disputed before)"), notices)


@handles("invoice.payment_failed")
def invoice_payment_failed(session: Session, event: dict[str, Any], ctx: EventContext
                           ) -> EventResult:
    """Tell the person, with a billing-portal link to fix their card (once per failed
    attempt: each is its own event), unless the same event tells them the subscription went
    past due (that notice asks the same, with the grace period's end)."""
    obj = _object(event)
    account_id = _invoice_account(session, obj, ctx)
    if account_id is None:
        return EventResult("ignored: not a subscription of ours")
    ledger.lock_account(session, account_id)
    notices = _refresh_subscription(session, obj, ctx, account_id)
    if any(notice.kind in ("past_due", "grace_ended") for notice in notices):
        return EventResult("told the person", notices)
    return EventResult("told the person", (
        *notices, Notice(account_id, "invoice_failed", {"customer": _id(obj.get("customer"))}),
    ))


def _refresh_subscription(session: Session, invoice: dict[str, Any], ctx: EventContext,
                          account_id: int) -> tuple[Notice, ...]:
    """Store the invoice's subscription as fetched for this event (its state may have changed
    with the invoice), for its notices; nothing when it was not fetched."""
    external_id = _invoice_subscription_id(invoice)
    fresh = ctx.fetched.get(external_id) if external_id else None
    if fresh is None or _id(fresh.get("id")) != external_id:
        return ()
    return _store_subscription(session, fresh, ctx, account_id=account_id).notices


def _keep_invoice(session: Session, obj: dict[str, Any], invoice_id: str, account_id: int,
                  paid: int, tokens: int, ctx: EventContext) -> Invoice:
    """The invoice's row, inserted once (the account is locked)."""
    row = session.scalar(select(Invoice).where(Invoice.external_id == invoice_id))
    if row is not None:
        return row
    currency = str(obj.get("currency") or "usd").lower()[:3]
    row = Invoice(provider=ctx.provider, external_id=invoice_id, account_id=account_id,
                  subscription_id=_invoice_subscription_id(obj), amount_cents=paid,
                  currency=currency, tokens=tokens, paid_at=ctx.now,
                  receipt_url=receipt_url(obj.get("hosted_invoice_url")))
    session.add(row)
    session.flush()
    return row


def receipt_url(value: Any) -> str | None:
    """A receipt or invoice page the provider gave (`hosted_invoice_url`), kept only when it
    is an https URL of reasonable length: the account page links it, so nothing else may
    pass (no `javascript:`, no plain http)."""
    if isinstance(value, str) and value.startswith("https://") and len(value) <= 2000 \
            and not any(c.isspace() for c in value):
        return value
    return None


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
    locked first (as everywhere) when it is known; the notices of its change of state."""
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
        row = Subscription(provider=ctx.provider, external_id=external_id,
                           status="incomplete", account_id=account_id, updated_at=ctx.now)
        if not insert_once(session, row):
            row = session.scalar(select(Subscription).where(
                Subscription.external_id == external_id))
            assert row is not None
    row.account_id = row.account_id or account_id
    status = str(fresh.get("status") or row.status)[:32]
    row.past_due_since = (row.past_due_since or ctx.now) if status == "past_due" else None
    row.status = status
    row.customer_id = _id(fresh.get("customer")) or row.customer_id
    row.cancel_at_period_end = bool(fresh.get("cancel_at_period_end"))
    row.cancel_at = _stamp(fresh.get("cancel_at"))
    row.current_period_end = _period_end(fresh) or row.current_period_end
    row.updated_at = ctx.now
    session.flush()
    if row.account_id is None:
        return EventResult(f"subscription {status}: no account of ours")
    notices = _tell(row, ctx.now, ctx.catalog.premium.grace_days,
                    ended_at=_stamp(fresh.get("ended_at")))
    session.flush()
    return EventResult(f"subscription {status}", notices)


def notice_state(row: Subscription, now: datetime, grace_days: int) -> tuple[str, str]:
    """What a subscription's state is, as the person is told of it: (state, key).

    States: "active" (trialing or active), "ending" (active, cancelled at the period's end
    or at `cancel_at`), "past_due" (within the grace period), "grace_ended" (past due beyond
    it), "ended" (canceled, unpaid, paused, incomplete_expired), "none" (incomplete: never
    started). The key names the state and what anchors it (`past_due:<since>`,
    `ending:<end>`, as Unix seconds), so a repeat event gives the same key and a new episode
    (past due again later, cancelled for another date) a new one.
    """
    if row.status in PREMIUM_STATUSES:
        ends = row.cancel_at or (row.current_period_end if row.cancel_at_period_end else None)
        return ("ending", f"ending:{int(ends.timestamp())}") if ends else ("active", "active")
    if row.status == "past_due" and row.past_due_since is not None:
        since = int(row.past_due_since.timestamp())
        if now < row.past_due_since + timedelta(days=grace_days):
            return "past_due", f"past_due:{since}"
        return "grace_ended", f"grace_ended:{since}"
    if row.status in ("incomplete", "past_due"):
        return "none", "none"
    return "ended", "ended"


_TOLD_PREMIUM = ("active", "ending", "past_due")


def _tell(row: Subscription, now: datetime, grace_days: int, *,
          ended_at: datetime | None = None) -> tuple[Notice, ...]:
    """The notices of the subscription's change of state since the person was last told
    (`row.notified`), once per change: the new key is stored, so a repeat tells nothing."""
    assert row.account_id is not None
    state, key = notice_state(row, now, grace_days)
    if key == row.notified:
        return ()
    told = (row.notified or "none").split(":", 1)[0]
    row.notified = key
    account = row.account_id
    notices: list[Notice] = []
    if state in ("active", "ending") and told not in _TOLD_PREMIUM:
        notices.append(Notice(account, "premium_started"))
    if state == "ending":
        ends = row.cancel_at or row.current_period_end
        notices.append(Notice(account, "premium_ending", {"ends_at": ends}))
    elif state == "past_due":
        assert row.past_due_since is not None
        notices.append(Notice(account, "past_due", {
            "grace_ends_at": row.past_due_since + timedelta(days=grace_days),
            "customer": row.customer_id}))
    elif state == "grace_ended" or (state == "ended" and told == "past_due"):
        since = row.past_due_since
        grace_end = since + timedelta(days=grace_days) if since is not None else now
        notices.append(Notice(account, "grace_ended", {"grace_ended_at": min(grace_end, now)}))
    elif state == "ended" and told in ("active", "ending"):
        notices.append(Notice(account, "premium_ended", {"ended_at": ended_at or now}))
    return tuple(notices)


def grace_notices(session: Session, now: datetime, grace_days: int) -> list[Notice]:
    """Tell, once, everyone whose subscription is still past due after the grace period
    (`grace_ended`): for a periodic job, so that the person learns premium stopped without
    waiting for the provider's next event. Flushes; the caller commits and sends.

    Args:
        grace_days: the premium plan's `grace_days` (tokens/economy.yaml).
    """
    rows = session.scalars(select(Subscription.id).where(
        Subscription.status == "past_due", Subscription.account_id.is_not(None),
        Subscription.past_due_since <= now - timedelta(days=grace_days),
        or_(Subscription.notified.is_(None),
            Subscription.notified.not_like("grace_ended:%")))).all()
    notices: list[Notice] = []
    for subscription_id in rows:
        account_id = session.scalar(select(Subscription.account_id).where(
            Subscription.id == subscription_id))
        assert account_id is not None
        ledger.lock_account(session, account_id)
        row = session.get(Subscription, subscription_id, populate_existing=True)
        if row is not None and row.account_id is not None:
            notices.extend(_tell(row, now, grace_days))
    session.flush()
    return notices


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


def _invoice_payment(invoice: dict[str, Any]) -> tuple[str | None, str | None]:
    """(payment intent, charge) that paid an invoice: `payment_intent` and `charge` in older
    API shapes, the paid entry of `payments` (an `invoice_payment` list, present when
    expanded) in the current one; (None, None) when it names none."""
    intent, charge = _id(invoice.get("payment_intent")), _id(invoice.get("charge"))
    if intent or charge:
        return intent, charge
    listing = invoice.get("payments")
    entries = listing.get("data") if isinstance(listing, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("status") not in ("paid", None):
            continue
        payment = entry.get("payment")
        if isinstance(payment, dict):
            intent, charge = _id(payment.get("payment_intent")), _id(payment.get("charge"))
            if intent or charge:
                return intent, charge
    return None, None


def _invoice_subscription_id(invoice: dict[str, Any]) -> str | None:
    """The invoice's subscription: `parent.subscription_details.subscription` in the current
    API shape, `subscription` in older ones (docs/payments.md)."""
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
    return _stamp(stamp)


def _stamp(stamp: Any) -> datetime | None:
    """A Unix time in seconds as an aware UTC datetime; None for anything else."""
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


# Last: tokens.auto_topup builds on the helpers above (its handler is registered above, and
# importing it here registers its table wherever payment events are handled).
from tokens import auto_topup  # noqa: E402
