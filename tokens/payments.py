"""Payments: pay links, checkouts, the payment-event inbox, subscriptions.

Design (docs/payments.md):

- A pay link (`PUBLIC_BASE_URL/pay/<token>`) is random (256 bits), stored with the account,
  what it buys (a pack, the premium plan, or the billing portal) and an expiry; the URL carries
  no phone number or amount.
- Opening it creates a `Checkout` with the provider (Stripe, or the local sandbox) at click
  time. The stored checkout holds what was sold, from our catalog: the amount, the currency,
  the tokens. Fulfilment reads amounts from it, never from the provider's event.
- Provider events are kept in `PaymentEvent` with `UNIQUE(event id)`: a repeat delivery is a
  no-op. Each effect has its own key as well (`checkout:<session>`, `invoice:<id>`,
  `clawback:<charge>:<amount refunded>`, ...), because one effect can arrive in two events.
- A `Subscription` mirrors the provider's subscription, re-fetched on every event, so events
  arriving out of order do not matter. Its status maps to premium (`Subscription.premium`);
  `notified` keeps the state the person was last told of, so each change is told once.
- A `ProviderPayment` is one payment at the provider (a payment intent, or a bare charge) and
  what its refunds and disputes (`PaymentDispute`) did to the money. It is "pending" until the
  checkout or the premium `Invoice` it paid is known, and "applied" from then on; the
  settlement in `tokens.payment_events` brings tokens and revenue to what the money did,
  whatever order the events came in (docs/payments.md).

Domain functions take the `Session` and flush; the caller (route, job, CLI) commits.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ColumnElement,
    Exists,
    ForeignKey,
    Integer,
    String,
    Text,
    and_,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from tokens.base import Base, UTCDateTime, literal_words, utcnow
from tokens.errors import PayLinkExpired, PayLinkNotFound

# What a pay link opens: a token pack's checkout, the premium subscription's, or the billing
# portal (sent when a subscription payment fails).
PURPOSES = ("pack", "premium", "portal", "auto_topup")
CHECKOUT_STATES = ("open", "completed", "expired", "failed", "flagged")
# A provider payment: its checkout or invoice not known yet (pending), or known (applied).
PAYMENT_STATES = ("pending", "applied")
# A dispute as we classify the provider's status: an inquiry (`warning_*`: no money moved),
# open (the money is withdrawn until it closes), won, lost, or closed otherwise (an inquiry
# closed, a dispute prevented): only "lost" keeps the money away.
DISPUTE_STATES = ("inquiry", "open", "won", "lost", "closed")
# Subscription statuses that give premium (docs/payments.md, "Subscription status"); past_due gives
# it during the grace period; every other status gives none (purchased tokens stay usable).
PREMIUM_STATUSES = frozenset({"trialing", "active"})


class PayLink(Base):
    """A stored pay link: opaque `token` -> (account, purpose, pack or plan code, expiry)."""

    __tablename__ = "pay_links"
    __table_args__ = (
        CheckConstraint(f"purpose IN ({', '.join(repr(v) for v in PURPOSES)})",
                        name="purpose_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    pack_code: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(16), default="pack", server_default="pack")
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Checkout(Base):
    """One checkout opened from a pay link: what was sold, for how much, and what came of it.

    Attributes:
        provider: "stripe" or "sandbox".
        mode: "payment" (a pack) or "subscription" (premium).
        item_code: the pack's or the plan's code in the catalog.
        amount_cents, currency: the price charged, from the catalog (minor unit).
        tokens, bonus_tokens: what a paid pack credits (0 for a subscription).
        external_id: the provider's session id (`cs_...`).
        payment_intent, charge_id: the provider's payment ids, learned from events.
        status: "open", "completed", "expired", "failed" or "flagged" (the provider reported
            another amount or currency than the one stored: nothing credited).
        refunded_cents: the cumulative refund already processed (Stripe's `amount_refunded`).
    """

    __tablename__ = "checkouts"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(v) for v in CHECKOUT_STATES)})",
                        name="status_known"),
        CheckConstraint("mode IN ('payment', 'subscription')", name="mode_known"),
        CheckConstraint("amount_cents > 0 AND refunded_cents >= 0"
                        " AND refunded_cents <= amount_cents", name="amounts_in_range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pay_link_id: Mapped[int | None] = mapped_column(ForeignKey("pay_links.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(16))
    item_code: Mapped[str] = mapped_column(String(32))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    bonus_tokens: Mapped[int] = mapped_column(Integer, default=0)
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    url: Mapped[str] = mapped_column(Text)
    payment_intent: Mapped[str | None] = mapped_column(String(255), index=True)
    charge_id: Mapped[str | None] = mapped_column(String(255), index=True)
    customer_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="open")
    refunded_cents: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def purchase_key(self) -> str:
        """The ledger key of the pack this checkout credits: `checkout:<session id>`."""
        return f"checkout:{self.external_id}"


class PaymentEvent(Base):
    """The inbox of provider events: each event id once (`UNIQUE`), with what came of it."""

    __tablename__ = "payment_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    object_id: Mapped[str | None] = mapped_column(String(255), index=True)
    payload: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FailedEvent(Base):
    """A provider event whose handling failed (the webhook answered 500), with the error.

    The event itself is not in `PaymentEvent` (its transaction rolled back), so the provider's
    retry, or an operator's reprocess from the admin inbox, applies it normally; then
    `resolved_at` is set. `payload` is the verified event as received.
    """

    __tablename__ = "failed_payment_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(String(500))
    attempts: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    first_failed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_failed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class Subscription(Base):
    """A person's premium subscription as the provider last reported it.

    `premium(now, grace_days)` is the entitlement: trialing or active; past_due within the
    grace period after it went past due; and a subscription set to cancel at the period's end
    stays premium until then (its status is still active).

    Attributes:
        past_due_since: when we first saw it past due (the grace period starts then).
        cancel_at: when the provider will cancel it (`cancel_at`), if set.
        notified: the key of the state the person was last told of (`past_due:<since>`,
            `ending:<end>`, ...; see `tokens.payment_events.notice_state`), None before any.
    """

    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    customer_id: Mapped[str | None] = mapped_column(String(255), index=True)
    status: Mapped[str] = mapped_column(String(32))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    current_period_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    past_due_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    notified: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def premium(self, now: datetime, grace_days: int) -> bool:
        """Whether this subscription gives premium at `now`."""
        if self.status in PREMIUM_STATUSES:
            return True
        if self.status == "past_due" and self.past_due_since is not None:
            return now < self.past_due_since + timedelta(days=grace_days)
        return False


class Invoice(Base):
    """A paid premium invoice that granted a month of the plan: what it was paid and granted.

    Rows exist only for granting invoices (a month of the plan, paid): those are the ones whose
    refunds and disputes claw back tokens and reverse revenue.

    Attributes:
        external_id: the provider's invoice id (`in_...`).
        subscription_id: the provider's subscription id it belongs to.
        amount_cents, currency: `amount_paid` as the provider reported it (minor unit).
        tokens: the grant it gave (ledger key `invoice:<external id>`), from the catalog.
        grant_key: that ledger key.
        receipt_url: the provider's page of the paid invoice (Stripe's `hosted_invoice_url`),
            shown on the person's account page; None when the event carried none.
    """

    __tablename__ = "invoices"
    __table_args__ = (
        CheckConstraint("amount_cents > 0 AND tokens >= 0", name="amounts_in_range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    subscription_id: Mapped[str | None] = mapped_column(String(255))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    tokens: Mapped[int] = mapped_column(Integer)
    paid_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    receipt_url: Mapped[str | None] = mapped_column(Text)

    @property
    def grant_key(self) -> str:
        """The ledger key of the grant this invoice gave: `invoice:<invoice id>`."""
        return f"invoice:{self.external_id}"


class ProviderPayment(Base):
    """One payment at the provider and what became of its money: refunds and disputes.

    Keyed by the payment intent (`pi_...`), or by the charge (`ch_...`) for a payment without
    one; the first event about it creates the row. A refund or a dispute that arrives before
    the payment's checkout or invoice is known keeps the row "pending" (no checkout, no
    invoice); the completion or the paid invoice makes it "applied" and settles it.

    Attributes:
        status: "pending" or "applied" (applied: exactly one of checkout_id, invoice_id).
        refunded_cents: the highest cumulative refund the provider reported
            (`amount_refunded`), cents.
        settled_cents: the money gone that tokens and revenue already reflect, cents:
            min(amount paid, refunded + lost disputes), once the payment is applied.
        receipt_url: the charge's receipt page at the provider (Stripe's `receipt_url`, from
            `charge.succeeded` or `charge.refunded`), shown on the person's account page;
            None until an event carried one.
    """

    __tablename__ = "provider_payments"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(v) for v in PAYMENT_STATES)})",
                        name="status_known"),
        CheckConstraint("(status = 'pending' AND checkout_id IS NULL AND invoice_id IS NULL)"
                        " OR (status = 'applied' AND (checkout_id IS NULL)"
                        " <> (invoice_id IS NULL))", name="owner_matches_status"),
        CheckConstraint("refunded_cents >= 0 AND settled_cents >= 0", name="amounts_in_range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    charge_id: Mapped[str | None] = mapped_column(String(255), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    checkout_id: Mapped[int | None] = mapped_column(ForeignKey("checkouts.id"), index=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"), index=True)
    refunded_cents: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    settled_cents: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    receipt_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PaymentDispute(Base):
    """A dispute of a provider payment, as the provider last reported it.

    Attributes:
        state: our reading of `status` (`DISPUTE_STATES`); a closed dispute stays closed, and
            an inquiry that became a dispute stays one, whatever order the events came in.
        amount_cents: the disputed amount (`amount`), cents.
        hold_key: the ledger key of the hold that freezes the payment's unspent tokens while
            the dispute is open, None when nothing is frozen.
    """

    __tablename__ = "payment_disputes"
    __table_args__ = (
        CheckConstraint(f"state IN ({', '.join(repr(v) for v in DISPUTE_STATES)})",
                        name="state_known"),
        CheckConstraint("amount_cents >= 0", name="amount_in_range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("provider_payments.id"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    hold_key: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def issue_pay_link(
    session: Session,
    account_id: int,
    pack_code: str,
    *,
    ttl_seconds: int,
    purpose: str = "pack",
    now: datetime | None = None,
) -> PayLink:
    """A pay link for this account and what it buys: the newest one still valid for more
    than half its lifetime, or a new one.

    Re-using a fresh link keeps one link per person in their recent messages instead of a new
    URL for each refusal; a link close to expiry is replaced so that a person never receives a
    link that dies minutes later.

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: the paying account.
        pack_code: a pack code of the catalog, the plan's code, or "" for the portal.
        ttl_seconds: lifetime of a new link (catalog `pay_link_ttl_hours`, default 72 h).
        purpose: "pack", "premium", "portal" or "auto_topup" (a pack whose checkout saves
            the card for auto top-up, `tokens.auto_topup`).
        now: the current time (UTC).

    Returns:
        The `PayLink`; its `token` goes into the URL.
    """
    now = now or utcnow()
    fresh_after = now + timedelta(seconds=ttl_seconds // 2)
    link = session.scalars(
        select(PayLink)
        .where(
            PayLink.account_id == account_id,
            PayLink.pack_code == pack_code,
            PayLink.purpose == purpose,
            PayLink.expires_at > fresh_after,
        )
        .order_by(PayLink.expires_at.desc())
        .limit(1)
    ).first()
    if link is not None:
        return link
    link = PayLink(
        token=secrets.token_urlsafe(32),
        account_id=account_id,
        pack_code=pack_code,
        purpose=purpose,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    session.add(link)
    session.flush()
    return link


def find_pay_link(session: Session, token: str, now: datetime | None = None) -> PayLink:
    """The valid pay link with this token.

    Raises:
        PayLinkNotFound: no link has this token.
        PayLinkExpired: the link's expiry has passed.
    """
    link = session.scalars(select(PayLink).where(PayLink.token == token)).first()
    if link is None:
        raise PayLinkNotFound("no pay link has this token")
    if link.expires_at <= (now or utcnow()):
        raise PayLinkExpired("this pay link has expired")
    return link


def open_checkout_for(session: Session, link: PayLink, now: datetime | None = None
                      ) -> Checkout | None:
    """The checkout already opened from `link` that a person can still pay, or None."""
    now = now or utcnow()
    return session.scalars(
        select(Checkout)
        .where(Checkout.pay_link_id == link.id, Checkout.status == "open",
               or_(Checkout.expires_at.is_(None), Checkout.expires_at > now))
        .order_by(Checkout.id.desc())
        .limit(1)
    ).first() if link.id is not None else None


def has_premium(session: Session, account_id: int, now: datetime, grace_days: int) -> bool:
    """Whether any of the account's subscriptions gives premium at `now` (one EXISTS)."""
    return bool(session.scalar(select(premium_exists(
        Subscription.account_id == account_id, grace_start(now, grace_days)))))


# Statuses of a subscription that still exists at the provider but is not paid: the person
# fixes it in the billing portal (a new checkout would start a second subscription).
UNPAID_STATUSES = ("past_due", "unpaid")


def has_unpaid_subscription(session: Session, account_id: int) -> bool:
    """Whether one of the account's subscriptions is `past_due` or `unpaid` (one EXISTS):
    BUY PREMIUM then gives the billing portal to fix the card, not a second checkout."""
    return bool(session.scalar(select(select(Subscription.id).where(
        Subscription.account_id == account_id,
        Subscription.status.in_(UNPAID_STATUSES)).exists())))


def grace_start(now: datetime, grace_days: int) -> datetime:
    """The earliest `past_due_since` that still gives premium at `now` (UTC)."""
    return now - timedelta(days=grace_days)


def premium_exists(match: ColumnElement[bool], since: datetime | ColumnElement[datetime]
                   ) -> Exists:
    """SQL `EXISTS`: a subscription matching `match` (e.g. `Subscription.account_id ==
    Account.id`) gives premium; the rule of `Subscription.premium` (trialing or active, or
    past due since after `since` = `grace_start(now, grace_days)`), for use inside another
    query. `since` may be a bound parameter, so that the query is built once; the statuses
    are literals (`tokens.base.literal_words`), so that it can be compiled once."""
    return (select(Subscription.id)
            .where(match, or_(Subscription.status.in_(literal_words(*PREMIUM_STATUSES)),
                              and_(Subscription.status == literal_words("past_due")[0],
                                   Subscription.past_due_since > since)))
            .exists())


def checkouts_of(session: Session, account_id: int) -> list[Checkout]:
    """Every checkout of an account, newest first (for `tokens purchases`)."""
    return list(session.scalars(
        select(Checkout).where(Checkout.account_id == account_id).order_by(Checkout.id.desc())
    ))
