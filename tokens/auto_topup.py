"""Auto top-up (issue #16): with the person's consent, a saved card buys a pack when the
balance runs low.

The life of it, for one account (`AutoTopup`, table `auto_topups`):

1. AUTO ON (`request_on`): enabled at once when a card is saved already; otherwise it waits
   for a card (`awaiting_card`) and the caller sends a pay link whose checkout saves the card
   (`CheckoutRequest.save_card`: `setup_future_usage = "off_session"`). The checkout's
   `payment_intent.succeeded` event (or the caller, `card_saved`) stores the provider's
   customer and card and enables it. A pack checkout whose "save my card" box was ticked does
   the same.
2. After each change of balance the caller asks `due(...)`. When the available balance is
   under the threshold, the crossing is armed, the card is saved and this month's cap is not
   reached, it disarms the crossing, counts it (`crossings` = n) and stores an open
   `Checkout` of ours with `external_id` = the idempotency key `auto_topup:<account id>:<n>`,
   priced from the catalog. The caller commits, then `charge(provider, due)` (network, no
   transaction open), then `settle(...)` and commits again.
3. `settle`: success credits the pack once (ledger key `checkout:auto_topup:<id>:<n>`, as a
   pack checkout's `checkout:<session>`), records the revenue and links the payment intent,
   so its refunds and disputes claw back like a pack's (`tokens.payment_events`). The
   `payment_intent.succeeded` webhook of the same payment does the same through
   `payment_succeeded`, before or after: whichever comes second credits nothing. A decline
   or `authentication_required` turns auto top-up off with the reason and asks the caller
   to send a pay link. A transient error leaves the attempt open: the next `due` returns the
   same key (for up to `RETRY_WINDOW`), so a retry never charges twice.
4. The crossing re-arms once the available balance is at or above the threshold again
   (`rearm`, also done by `due`). AUTO OFF (`turn_off`) stops it; the saved card is kept for
   a later AUTO ON.

Domain functions take the `Session` and flush; the caller commits. Tokens are integers,
money integer cents. Nothing here logs a phone number or card data (ids only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tokens import costs, ledger, money
from tokens.base import Base, UTCDateTime, utcnow
from tokens.catalog import Catalog
from tokens.ledger import Account
from tokens.payment_events import (
    EventContext,
    EventResult,
    Notice,
    _id,
    _link,
    _lock_payment,
    _settle,
)
from tokens.payments import Checkout
from tokens.periods import Month
from tokens.providers import (
    OFF_SESSION,
    OffSessionCharge,
    PaymentError,
    PaymentProvider,
)

log = logging.getLogger(__name__)

KEY_PREFIX = "auto_topup:"
# Stripe keeps an idempotency key's answer for 24 hours: an attempt is retried with its key
# only within this window; after it, it is given up (its webhook may still credit it).
RETRY_WINDOW = timedelta(hours=23)
# Why auto top-up went off, besides the person's AUTO OFF ("requested").
FAILURE_REASONS = ("declined", "authentication_required", "flagged")
CHARGE_KINDS = ("succeeded", "declined", "authentication_required", "error")


class AutoTopup(Base):
    """One account's auto top-up.

    Attributes:
        account_id: whose (one row per account).
        enabled: auto top-up is on (a card is saved and the person consented).
        awaiting_card: the person asked AUTO ON and no card is saved yet: the next pack
            checkout saves one (`wants_card`).
        customer_id, payment_method_id: the provider's customer and saved card (`cus_...`,
            `pm_...`); None until a card is saved. No card data is kept.
        pack_code: the catalog pack each top-up buys.
        armed: the current crossing may still start a top-up; cleared when one starts, set
            again when the balance is back at or above the threshold.
        crossings: how many top-ups were started in all (n of the key `auto_topup:<id>:<n>`).
        month, month_count: the calendar month (UTC, "YYYY-MM") and how many top-ups started
            in it (the monthly cap).
        last_failure: why the last attempt failed ("declined", "authentication_required",
            "flagged", "error", "no_answer"), None after a success.
    """

    __tablename__ = "auto_topups"
    __table_args__ = (
        CheckConstraint("crossings >= 0 AND month_count >= 0", name="counts_in_range"),
    )

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    awaiting_card: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    customer_id: Mapped[str | None] = mapped_column(String(255))
    payment_method_id: Mapped[str | None] = mapped_column(String(255))
    pack_code: Mapped[str] = mapped_column(String(32))
    armed: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    crossings: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    month: Mapped[str | None] = mapped_column(String(7))
    month_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_failure: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def has_card(self) -> bool:
        """Whether a card is saved (customer and payment method known)."""
        return bool(self.customer_id and self.payment_method_id)

    @property
    def current_key(self) -> str:
        """The idempotency key of the latest crossing: `auto_topup:<account id>:<n>`."""
        return topup_key(self.account_id, self.crossings)


def topup_key(account_id: int, crossing: int) -> str:
    """The idempotency key (and our checkout's `external_id`) of crossing `crossing`:
    `auto_topup:<account id>:<crossing>`."""
    return f"{KEY_PREFIX}{account_id}:{crossing}"


@dataclass(frozen=True)
class OnResult:
    """What AUTO ON did.

    Attributes:
        kind: "enabled" (a card was saved: on now) or "card_needed" (the caller sends a pay
            link for `pack_code` whose checkout saves the card, `CheckoutRequest.save_card`).
        pack_code: the pack each top-up buys.
    """

    kind: str
    pack_code: str


@dataclass(frozen=True)
class TopUpDue:
    """A top-up to charge now: everything `charge` needs, from our store and catalog.

    Attributes:
        account_id: whose.
        key: the idempotency key `auto_topup:<account id>:<n>` (also our checkout's
            `external_id`); the same on every retry of this crossing.
        crossing: n.
        pack_code, amount_cents, currency, tokens, bonus_tokens: the pack, from the catalog
            (cents; tokens credited on success).
        customer_id, payment_method_id: the saved card at the provider.
        description: what the payment says, e.g. "NutriBot auto top-up: 120 tokens".
        metadata: carried on the payment intent (`account` public id, `item`, `mode`,
            `auto_topup` = key), strings.
        retry: True when this is an earlier attempt given again (same key).
    """

    account_id: int
    key: str
    crossing: int
    pack_code: str
    amount_cents: int
    currency: str
    tokens: int
    bonus_tokens: int
    customer_id: str
    payment_method_id: str
    description: str
    metadata: dict[str, str]
    retry: bool = False


@dataclass(frozen=True)
class ChargeResult:
    """What the provider said to an auto top-up's payment.

    Attributes:
        kind: "succeeded", "declined", "authentication_required", or "error" (no outcome
            known: a timeout, a 5xx, or a payment still processing; retry with the same key).
        payment_intent: the provider's payment intent id, when known.
        code: the provider's decline or error code (e.g. "insufficient_funds"), else None.
        amount_cents, currency: what the provider says it charged, when it said.
    """

    kind: str
    payment_intent: str | None = None
    code: str | None = None
    amount_cents: int | None = None
    currency: str | None = None


@dataclass(frozen=True)
class Settled:
    """What `settle` did.

    Attributes:
        kind: "credited" (the pack credited now), "already_credited" (by the webhook or an
            earlier settle: nothing more), "flagged" (the provider charged another amount than
            stored: nothing credited, auto top-up off, no pay link: the money was taken and
            an operator looks), "turned_off" (declined or
            authentication required), "retry" (no outcome: the attempt stays open).
        notices: what to tell the person (`tokens.payment_events.Notice`; kinds
            "auto_topup_credited" (tokens, available, pack) and "auto_topup_failed" (reason:
            "declined" / "authentication_required" / "flagged", pack)).
        send_pay_link: the caller sends a pay link for `pack_code` (auto top-up is off; a
            checkout with `save_card` can save a working card again).
        pack_code: the pack of this top-up.
    """

    kind: str
    notices: tuple[Notice, ...] = ()
    send_pay_link: bool = False
    pack_code: str = ""


@dataclass(frozen=True)
class Status:
    """An account's auto top-up as the person may be told it (for a STATUS-like reply).

    Attributes:
        state: "off", "awaiting_card" or "on".
        pack_code: the pack bought (None when never asked).
        month_count: top-ups started this calendar month (UTC).
        last_failure: why the last attempt failed, if it did.
    """

    state: str
    pack_code: str | None = None
    month_count: int = 0
    last_failure: str | None = None


# --- state ---------------------------------------------------------------------------------


def _row(session: Session, account_id: int) -> AutoTopup | None:
    """The account's row, read afresh and locked (FOR UPDATE on PostgreSQL). The caller locks
    the account first (`ledger.lock_account`), as everywhere."""
    return session.scalar(select(AutoTopup).where(AutoTopup.account_id == account_id)
                          .with_for_update().execution_options(populate_existing=True))


def _row_or_new(session: Session, account_id: int, pack_code: str, now: datetime) -> AutoTopup:
    row = _row(session, account_id)
    if row is None:
        row = AutoTopup(account_id=account_id, pack_code=pack_code, enabled=False,
                        awaiting_card=False, armed=True, crossings=0, month_count=0,
                        created_at=now, updated_at=now)
        session.add(row)
        session.flush()
    return row


def status(session: Session, account_id: int, now: datetime) -> Status:
    """The account's auto top-up: off, awaiting a card, or on (no lock, reads only)."""
    row = session.scalar(select(AutoTopup).where(AutoTopup.account_id == account_id))
    if row is None:
        return Status("off")
    state = "on" if row.enabled else "awaiting_card" if row.awaiting_card else "off"
    count = row.month_count if row.month == str(Month.of(now)) else 0
    return Status(state, row.pack_code, count, row.last_failure)


def wants_card(session: Session, account_id: int) -> bool:
    """Whether the account's next pack checkout should save the card: the person asked
    AUTO ON and no card is saved yet (for `CheckoutRequest.save_card`)."""
    return bool(session.scalar(select(AutoTopup.awaiting_card).where(
        AutoTopup.account_id == account_id)))


def request_on(session: Session, account_id: int, pack_code: str, now: datetime) -> OnResult:
    """The person asked AUTO ON for `pack_code` (a catalog pack code; the caller chooses it,
    default `Catalog.auto_topup_pack()`).

    With a saved card it is enabled at once and the crossing armed (a balance already under
    the threshold starts a top-up at the next `due`). Without one it waits for a card: the
    caller sends a pay link whose checkout saves it (`wants_card` is True until then).

    Raises:
        UnknownAccount: no account has this id.
    """
    ledger.lock_account(session, account_id)
    row = _row_or_new(session, account_id, pack_code, now)
    row.pack_code = pack_code
    row.updated_at = now
    if row.has_card:
        row.enabled, row.awaiting_card, row.armed = True, False, True
        session.flush()
        return OnResult("enabled", pack_code)
    row.enabled, row.awaiting_card = False, True
    session.flush()
    return OnResult("card_needed", pack_code)


def turn_off(session: Session, account_id: int, now: datetime, reason: str = "requested"
             ) -> bool:
    """Turn auto top-up off (AUTO OFF: reason "requested"; or a failure: "declined",
    "authentication_required", "flagged"). The saved card is kept (a later AUTO ON enables at
    once); a failure reason is kept in `last_failure`.

    Returns:
        Whether it was on or awaiting a card before.

    Raises:
        UnknownAccount: no account has this id.
    """
    ledger.lock_account(session, account_id)
    row = _row(session, account_id)
    if row is None:
        return False
    was = row.enabled or row.awaiting_card
    row.enabled = row.awaiting_card = False
    if reason != "requested":
        row.last_failure = reason[:64]
    row.updated_at = now
    session.flush()
    return was


def card_saved(session: Session, account_id: int, customer_id: str, payment_method_id: str,
               now: datetime, *, pack_code: str) -> Notice | None:
    """A checkout the person consented on (`setup_future_usage = "off_session"`) saved their
    card: keep the provider's customer and payment method, and turn auto top-up on, armed.

    Args:
        customer_id, payment_method_id: the provider's ids (`cus_...`, `pm_...`).
        pack_code: the pack to buy when the person had not chosen one (AUTO ON's is kept).

    Returns:
        Notice "auto_topup_on" (pack) when this turned it on, None when it was on already
        with this card (a repeated event).

    Raises:
        UnknownAccount: no account has this id.
    """
    ledger.lock_account(session, account_id)
    row = _row_or_new(session, account_id, pack_code, now)
    same = (row.enabled and row.customer_id == customer_id
            and row.payment_method_id == payment_method_id)
    row.customer_id, row.payment_method_id = customer_id[:255], payment_method_id[:255]
    row.enabled, row.awaiting_card, row.armed = True, False, True
    row.last_failure = None
    row.updated_at = now
    session.flush()
    return None if same else Notice(account_id, "auto_topup_on", {"pack": row.pack_code})


# --- the trigger ---------------------------------------------------------------------------


def rearm(session: Session, account_id: int, available_tokens: int, threshold_tokens: int,
          now: datetime) -> bool:
    """Arm the crossing again when the available balance is at or above the threshold and no
    attempt is open. Returns whether it re-armed now. `due` does this too."""
    ledger.lock_account(session, account_id)
    row = _row(session, account_id)
    if row is None:
        return False
    return _rearm(session, row, available_tokens, threshold_tokens, now)


def _rearm(session: Session, row: AutoTopup, available: int, threshold: int,
           now: datetime) -> bool:
    if row.armed or available < threshold or _open_attempt(session, row) is not None:
        return False
    row.armed = True
    row.updated_at = now
    session.flush()
    return True


def _open_attempt(session: Session, row: AutoTopup) -> Checkout | None:
    """The latest crossing's checkout while it waits for an outcome (status "open")."""
    if row.crossings == 0:
        return None
    return session.scalar(select(Checkout).where(Checkout.external_id == row.current_key,
                                                 Checkout.status == "open"))


def due(session: Session, account_id: int, available_tokens: int, threshold_tokens: int,
        now: datetime, max_per_month: int, *, catalog: Catalog, provider_name: str,
        before_tokens: int | None = None) -> TopUpDue | None:
    """Whether a top-up must be charged now; when so, it is recorded (flushed: the caller
    commits before `charge`).

    Due when auto top-up is on with a saved card, the crossing is armed, `available_tokens`
    < `threshold_tokens` and fewer than `max_per_month` top-ups started this calendar month
    (UTC). Then the crossing is disarmed and counted (n + 1), and an open `Checkout` of ours
    (no pay link, `external_id` = the key, amount and tokens of the pack from `catalog`) is
    stored. An attempt still open (a transient error before) is returned again, same key and
    `retry=True`, whatever the balance, within `RETRY_WINDOW`; after it, it is given up
    (checkout "expired", `last_failure` "no_answer") and the crossing stays disarmed until the
    balance is back above the threshold. A balance at or above the threshold re-arms.

    Args:
        available_tokens: the available balance now (`ledger.balance(...).available`).
        threshold_tokens: `Catalog.auto_topup_threshold()`.
        max_per_month: `catalog.auto_topup.max_per_month`.
        provider_name: the payment provider's name ("stripe", "sandbox"), kept on the
            checkout.
        before_tokens: the available balance before the debit that led here, when the
            caller knows it: at or above the threshold, this debit is a new crossing, which
            re-arms (as `rearm` with that balance would) before the check.

    Raises:
        UnknownAccount: no account has this id.
        CatalogError: the row's pack is no longer in the catalog.
    """
    ledger.lock_account(session, account_id)
    row = _row(session, account_id)
    if row is None:
        return None
    attempt = _open_attempt(session, row)
    if attempt is not None:
        if now - attempt.created_at < RETRY_WINDOW and row.has_card:
            return _due_of(session, row, attempt, catalog, retry=True)
        attempt.status = "expired"
        row.last_failure = "no_answer"
        row.updated_at = now
        session.flush()
        return None
    if before_tokens is not None and before_tokens >= threshold_tokens:
        row.armed = True  # a new crossing (no attempt is open: checked above)
    elif _rearm(session, row, available_tokens, threshold_tokens, now):
        return None
    if not (row.enabled and row.has_card and row.armed) or available_tokens >= threshold_tokens:
        return None
    month = str(Month.of(now))
    if row.month != month:
        row.month, row.month_count = month, 0
    if row.month_count >= max_per_month:
        session.flush()
        return None
    pack = catalog.pack(row.pack_code)
    row.crossings += 1
    row.month_count += 1
    row.armed = False
    row.updated_at = now
    checkout = Checkout(
        pay_link_id=None, account_id=account_id, provider=provider_name, mode="payment",
        item_code=pack.code, amount_cents=pack.price_cents, currency=pack.currency,
        tokens=pack.tokens, bonus_tokens=pack.bonus_tokens, external_id=row.current_key,
        url="", customer_id=row.customer_id, status="open", created_at=now, expires_at=None)
    session.add(checkout)
    session.flush()
    return _due_of(session, row, checkout, catalog, retry=False)


def _due_of(session: Session, row: AutoTopup, checkout: Checkout, catalog: Catalog, *,
            retry: bool) -> TopUpDue:
    """The charge of `checkout`, built from our stored checkout only, so that every try of
    one key sends the same parameters (Stripe refuses a key reused with others)."""
    assert row.customer_id is not None and row.payment_method_id is not None
    public_id = session.scalar(select(Account.public_id).where(Account.id == row.account_id))
    key = checkout.external_id
    return TopUpDue(
        account_id=row.account_id, key=key, crossing=int(key.rsplit(":", 1)[1]),
        pack_code=checkout.item_code, amount_cents=checkout.amount_cents,
        currency=checkout.currency, tokens=checkout.tokens, bonus_tokens=checkout.bonus_tokens,
        customer_id=row.customer_id, payment_method_id=row.payment_method_id,
        description=(f"{catalog.bot_name} auto top-up: "
                     f"{checkout.tokens + checkout.bonus_tokens} tokens"),
        metadata={"account": str(public_id), "item": checkout.item_code, "mode": "payment",
                  "auto_topup": key},
        retry=retry)


def charge(provider: PaymentProvider, due: TopUpDue) -> ChargeResult:
    """Charge the saved card for `due` (`provider.charge_off_session`, idempotency key
    `due.key`). Network: call it with no database transaction open.

    Returns:
        A `ChargeResult`: "succeeded", "declined" (also a definite refusal of the request,
        code "refused"), "authentication_required", or "error" (no outcome: retry later with
        the same `due`, which `due(...)` gives again). Never raises `PaymentError`.
    """
    request = OffSessionCharge(
        customer_id=due.customer_id, payment_method_id=due.payment_method_id,
        amount_cents=due.amount_cents, currency=due.currency, description=due.description,
        metadata=dict(due.metadata), idempotency_key=due.key)
    try:
        result = provider.charge_off_session(request)
    except PaymentError as exc:
        log.warning("auto top-up not charged", extra={"key": due.key,
                                                      "permanent": exc.permanent})
        if exc.permanent:
            return ChargeResult("declined", code="refused")
        return ChargeResult("error", code="unavailable")
    kind = {"succeeded": "succeeded", "declined": "declined",
            "authentication_required": "authentication_required"}.get(result.status, "error")
    return ChargeResult(kind, result.payment_intent, result.code if kind != "succeeded"
                        else None, result.amount_cents, result.currency)


def settle(session: Session, due: TopUpDue, result: ChargeResult, catalog: Catalog,
           now: datetime) -> Settled:
    """Apply what the provider said to `due` (flushes; the caller commits, then sends the
    notices and, when `send_pay_link`, a pay link for `pack_code`).

    Success: the pack is credited once (ledger key `checkout:<due.key>`), revenue recorded,
    the payment intent linked so that its refunds and disputes claw back like a pack's; a
    `payment_intent.succeeded` event of it credits nothing more, before or after. Decline or
    authentication required: the attempt fails, auto top-up turns off with the reason, and the
    caller sends a pay link. Error: nothing changes (the attempt stays open for a retry with
    the same key).

    Raises:
        UnknownAccount: no account has this id.
    """
    if result.kind == "succeeded":
        ctx = EventContext(catalog=catalog, provider=_provider_of(session, due.key), now=now)
        credited = credit(session, due.key, result.payment_intent, result.amount_cents,
                          result.currency, ctx)
        kind = ("credited" if credited.outcome.startswith("credited")
                else "flagged" if credited.outcome.startswith("flagged") else "already_credited")
        return Settled(kind, credited.notices, pack_code=due.pack_code)
    if result.kind in ("declined", "authentication_required"):
        ledger.lock_account(session, due.account_id)
        checkout = _attempt(session, due.key)
        if checkout is not None and checkout.status == "completed":
            return Settled("already_credited", pack_code=due.pack_code)
        if checkout is not None:
            checkout.status = "failed"
            checkout.payment_intent = checkout.payment_intent or result.payment_intent
        turn_off(session, due.account_id, now, result.kind)
        log.info("auto top-up failed: turned off", extra={"key": due.key,
                                                           "reason": result.kind})
        return Settled("turned_off", (Notice(due.account_id, "auto_topup_failed", {
            "reason": result.kind, "pack": due.pack_code}),), send_pay_link=True,
            pack_code=due.pack_code)
    ledger.lock_account(session, due.account_id)
    row = _row(session, due.account_id)
    if row is not None:
        row.last_failure, row.updated_at = "error", now
        session.flush()
    return Settled("retry", pack_code=due.pack_code)


def _attempt(session: Session, key: str) -> Checkout | None:
    """Our checkout of an auto top-up (no pay link), read afresh."""
    return session.scalar(select(Checkout).where(Checkout.external_id == key,
                                                 Checkout.pay_link_id.is_(None))
                          .execution_options(populate_existing=True))


def _provider_of(session: Session, key: str) -> str:
    return session.scalar(select(Checkout.provider).where(Checkout.external_id == key)) or ""


# --- crediting (settle and the webhook) ----------------------------------------------------


def credit(session: Session, key: str, intent: str | None, amount_cents: int | None,
           currency: str | None, ctx: EventContext) -> EventResult:
    """Credit the auto top-up `key` once: its pack (ledger key `checkout:<key>`, with its
    bonus), its revenue (`revenue:checkout:<key>`), and its payment intent linked, so refunds
    and disputes (before or after) settle like a pack's. Shared by `settle` and the
    `payment_intent.succeeded` webhook. Locks: the payment's row, then the account, as in
    `tokens.payment_events`.

    Args:
        key: `auto_topup:<account id>:<n>` (our checkout's `external_id`).
        intent: the provider's payment intent id (None: nothing to link refunds to yet).
        amount_cents, currency: what the provider says it charged (None: not told); another
            amount or currency than stored flags the checkout, credits nothing and turns auto
            top-up off.

    Returns:
        The outcome ("credited ...", "already credited", "flagged ...", "ignored ...") and the
        notice "auto_topup_credited" (tokens net of refunds or lost disputes that came first,
        available after, pack), or "auto_topup_failed" (reason "flagged").
    """
    checkout = _attempt(session, key)
    if checkout is None or not key.startswith(KEY_PREFIX):
        return EventResult("ignored: not an auto top-up of ours")
    payment = _lock_payment(session, ctx, intent, None) if intent else None
    ledger.lock_account(session, checkout.account_id)
    session.refresh(checkout)
    if checkout.status == "completed":
        return EventResult("already credited")
    if checkout.status == "flagged":
        return EventResult("already flagged")
    account_id = checkout.account_id
    if (amount_cents is not None and amount_cents != checkout.amount_cents) or (
            currency is not None and currency.lower() != checkout.currency):
        checkout.status = "flagged"
        checkout.payment_intent = checkout.payment_intent or intent
        turn_off(session, account_id, ctx.now, "flagged")
        log.error("auto top-up amount differs from the stored one: nothing credited",
                  extra={"key": key, "amount": amount_cents, "currency": currency})
        return EventResult(
            f"flagged: paid {amount_cents} {currency}, expected {checkout.amount_cents} "
            f"{checkout.currency}",
            (Notice(account_id, "auto_topup_failed",
                    {"reason": "flagged", "pack": checkout.item_code}),))
    bought = ledger.purchase(session, account_id, checkout.tokens, checkout.bonus_tokens,
                             key=checkout.purchase_key,
                             memo=f"auto top-up {checkout.item_code}", now=ctx.now)
    checkout.status = "completed"
    checkout.completed_at = ctx.now
    checkout.payment_intent = checkout.payment_intent or intent
    costs.record_revenue(session, account_id, "pack",
                         money.cents_to_musd(checkout.amount_cents),
                         key=f"revenue:{checkout.purchase_key}", memo=checkout.item_code,
                         now=ctx.now)
    row = _row(session, account_id)
    if row is not None:
        row.last_failure, row.updated_at = None, ctx.now
    if bought.purchase.replayed:
        session.flush()
        return EventResult("already credited")
    total = checkout.tokens + checkout.bonus_tokens
    outcome = f"credited {total} tokens (auto top-up)"
    taken = 0
    if payment is not None:
        _link(payment, checkout=checkout)
        settled = _settle(session, payment, ctx)
        taken = settled.taken
        outcome += settled.described(" at once (refunded or disputed before)")
    session.flush()
    available = ledger.balance(session, account_id, ctx.now).available
    net = total - taken
    if net <= 0:
        return EventResult(outcome)
    return EventResult(outcome, (Notice(account_id, "auto_topup_credited", {
        "tokens": net, "available": available, "pack": checkout.item_code}),))


def payment_succeeded(session: Session, intent: dict[str, Any], ctx: EventContext
                      ) -> EventResult:
    """A `payment_intent.succeeded` event's object (`intent`), for
    `tokens.payment_events`: an auto top-up's payment (metadata `auto_topup` = its key) is
    credited once (`credit`); a checkout's payment that saved the card with the person's
    consent (metadata `save_card` and `setup_future_usage` "off_session", with a customer
    and a payment method) turns auto top-up on (`card_saved`). Anything else: nothing (a
    pack's checkout events credit it)."""
    metadata = intent.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    intent_id = _id(intent.get("id"))
    key = metadata.get("auto_topup")
    if isinstance(key, str) and key.startswith(KEY_PREFIX):
        amount = intent.get("amount_received", intent.get("amount"))
        currency = intent.get("currency")
        return credit(session, key[:255], intent_id,
                      amount if type(amount) is int else None,
                      currency if isinstance(currency, str) else None, ctx)
    if metadata.get("save_card") != OFF_SESSION \
            or intent.get("setup_future_usage") != OFF_SESSION:
        return EventResult("ignored: no auto top-up and no card saved")
    customer, card = _id(intent.get("customer")), _id(intent.get("payment_method"))
    public_id = metadata.get("account")
    account_id = session.scalar(select(Account.id).where(
        Account.public_id == str(public_id))) if public_id else None
    if account_id is None or customer is None or card is None:
        return EventResult("ignored: a saved card without an account, customer or card")
    notice = card_saved(session, account_id, customer, card, ctx.now,
                        pack_code=ctx.catalog.auto_topup_pack().code)
    return EventResult("card saved: auto top-up on", (notice,) if notice else ())
