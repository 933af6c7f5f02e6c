"""What a person's own account page shows, read from the ledger and the payment tables.

`statement(session, account_id, catalog, now)` gathers it in one place (docs/account.md,
"What the page shows"): the balance by bucket with when each bucket's tokens renew or expire,
this month's usage by intent, the recent charges and the reversals of those whose replies
were not delivered, the purchases with their receipts, premium, auto top-up and the service level.

Everything here is about one account and holds no phone number and no message text: usage
and charges come from ledger entries (an answer's debit carries its intent in `memo`),
purchases from our own `Checkout` and `Invoice` rows. A pure read: nothing is written.
Tokens are integers; money integer cents as the provider reported it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from tokens import costs, ledger, levels, payments
from tokens.auto_topup import AutoTopup
from tokens.catalog import Catalog
from tokens.ledger import LedgerEntry, Lot
from tokens.periods import Month, next_month_start

# How many recent charges and purchases the page lists.
RECENT_CHARGES = 20
RECENT_PURCHASES = 20


@dataclass(frozen=True)
class BucketLine:
    """Tokens left in one bucket (`ledger.BUCKETS`) and when the first of them expire (None:
    they never do; free tokens renew on the first of the next month, UTC)."""

    bucket: str
    tokens: int
    expires_at: datetime | None


@dataclass(frozen=True)
class UsageLine:
    """This month's answers of one intent: how many, and the tokens they cost net of reversals."""

    intent: str
    answers: int
    tokens: int


@dataclass(frozen=True)
class ChargeLine:
    """One charge of tokens, or its reversal.

    Attributes:
        kind: "debit" (an answer was charged) or "reversal" (its reply was not delivered, so
            its tokens came back).
        intent: what the answer was (the catalog's intent name), None when not known.
        tokens: how many tokens, positive for both kinds.
        at: when (UTC).
    """

    kind: str
    intent: str | None
    tokens: int
    at: datetime


@dataclass(frozen=True)
class PurchaseLine:
    """One payment: a pack, an auto top-up, or a paid month of premium.

    Attributes:
        kind: "pack", "auto_topup" or "premium".
        item_code: the pack's or the plan's code.
        amount_cents, currency: what was paid.
        tokens: the tokens it credited (bonus included).
        refunded_cents: how much of it was refunded.
        at: when it was paid (UTC).
        receipt_url: the provider's receipt or invoice page, when it gave one.
    """

    kind: str
    item_code: str
    amount_cents: int
    currency: str
    tokens: int
    refunded_cents: int
    at: datetime
    receipt_url: str | None


@dataclass(frozen=True)
class Premium:
    """The person's premium subscription, if any.

    Attributes:
        status: the provider's status ("active", "past_due", "canceled", ...), None: never had.
        active: it gives premium now (`Subscription.premium`).
        renews_at: the next renewal, when it renews.
        ends_at: when it ends (cancelled at the period's end, `cancel_at`, or the end of a
            past-due grace period), when it ends.
        can_manage: a billing-portal customer is known (the portal can open).
    """

    status: str | None
    active: bool
    renews_at: datetime | None
    ends_at: datetime | None
    can_manage: bool


@dataclass(frozen=True)
class AutoTopupState:
    """Auto top-up as the page shows it: on, waiting for a card, or off; and the card."""

    enabled: bool
    awaiting_card: bool
    has_card: bool
    pack_code: str


@dataclass(frozen=True)
class Statement:
    """Everything the account page shows about one account (see the module docstring).

    Attributes:
        available: tokens that can be spent now (`ledger.Balance.available`).
        held: tokens reserved by answers still being given.
        buckets: tokens left by bucket, in spending order.
        free_renews_at: when the next free allowance is granted (first of next month, UTC).
        usage: this month's answers by intent, most tokens first.
        charges: recent charges and reversals, newest first.
        purchases: payments, newest first.
        premium: the subscription.
        auto_topup: auto top-up.
        level: the level of the next answer (`tokens.levels.LEVELS`).
        month: "YYYY-MM" of `usage`.
    """

    available: int
    held: int
    buckets: tuple[BucketLine, ...]
    free_renews_at: datetime
    usage: tuple[UsageLine, ...]
    charges: tuple[ChargeLine, ...]
    purchases: tuple[PurchaseLine, ...]
    premium: Premium
    auto_topup: AutoTopupState
    level: str
    month: str


def statement(session: Session, account_id: int, catalog: Catalog, now: datetime
              ) -> Statement:
    """The account page's figures for `account_id` at `now` (UTC).

    Raises:
        UnknownAccount: no account has this id.
    """
    balance = ledger.balance(session, account_id, now)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    premium = premium_of(session, account_id, catalog, now)
    return Statement(
        available=balance.available, held=balance.held,
        buckets=buckets_of(session, account_id, balance.by_bucket, now),
        free_renews_at=next_month_start(now),
        usage=usage_since(session, account_id, month_start),
        charges=recent_charges(session, account_id),
        purchases=purchases_of(session, account_id),
        premium=premium,
        auto_topup=auto_topup_of(session, account_id, catalog),
        level=level_of(session, account_id, catalog, balance.by_bucket, premium.active, now),
        month=str(Month.of(now)),
    )


def buckets_of(session: Session, account_id: int, by_bucket: Mapping[str, int], now: datetime
               ) -> tuple[BucketLine, ...]:
    """Tokens left by bucket (`by_bucket`, from `ledger.balance`) in spending order, each
    with the earliest expiry of its unexpired lots."""
    expiries = dict(session.execute(
        select(Lot.bucket, func.min(Lot.expires_at))
        .where(Lot.account_id == account_id, Lot.remaining > 0, Lot.expires_at > now)
        .group_by(Lot.bucket)).tuples().all())
    return tuple(BucketLine(bucket, by_bucket[bucket], expiries.get(bucket))
                 for bucket in ledger.CONSUMPTION_ORDER if by_bucket.get(bucket))


def usage_since(session: Session, account_id: int, since: datetime) -> tuple[UsageLine, ...]:
    """Answers by intent since `since`: answers charged (distinct debit operations), and their
    tokens less those reversed because the reply was not delivered; most tokens first."""
    debits = session.execute(
        select(LedgerEntry.memo, func.count(func.distinct(LedgerEntry.operation_key)),
               -func.sum(LedgerEntry.amount))
        .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "debit",
               LedgerEntry.created_at >= since)
        .group_by(LedgerEntry.memo)).tuples().all()
    debit = aliased(LedgerEntry)
    reversed_ = dict(session.execute(
        select(debit.memo, func.sum(LedgerEntry.amount))
        .join(debit, debit.id == LedgerEntry.corrects_id)
        .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "reversal",
               debit.created_at >= since)
        .group_by(debit.memo)).tuples().all())
    lines = [UsageLine(memo or "", int(answers), int(tokens) - int(reversed_.get(memo) or 0))
             for memo, answers, tokens in debits]
    return tuple(sorted(lines, key=lambda line: (-line.tokens, line.intent)))


def recent_charges(session: Session, account_id: int, limit: int = RECENT_CHARGES
                   ) -> tuple[ChargeLine, ...]:
    """The latest `limit` charges (debits) and reversals of tokens, newest first, one line per
    operation (an answer drawn from two lots is one charge)."""
    debit = aliased(LedgerEntry)
    rows = session.execute(
        select(LedgerEntry.kind, func.coalesce(debit.memo, LedgerEntry.memo),
               func.sum(LedgerEntry.amount), func.min(LedgerEntry.created_at),
               func.max(LedgerEntry.id).label("last"))
        .outerjoin(debit, debit.id == LedgerEntry.corrects_id)
        .where(LedgerEntry.account_id == account_id,
               LedgerEntry.kind.in_(("debit", "reversal")))
        .group_by(LedgerEntry.operation_key, LedgerEntry.kind,
                  func.coalesce(debit.memo, LedgerEntry.memo))
        .order_by(func.max(LedgerEntry.id).desc())
        .limit(limit)).tuples().all()
    return tuple(ChargeLine(kind, memo, abs(int(amount)), at)
                 for kind, memo, amount, at, _ in rows)


def purchases_of(session: Session, account_id: int, limit: int = RECENT_PURCHASES
                 ) -> tuple[PurchaseLine, ...]:
    """Paid packs and auto top-ups (completed `Checkout`s of mode "payment") and paid months
    of premium (`Invoice`s), newest first, with what was refunded (the larger of the
    checkout's and its provider payment's figure) and the receipt link: an invoice's page, or
    the charge's receipt kept on its `ProviderPayment`."""
    checkouts = session.execute(
        select(payments.Checkout, payments.ProviderPayment.refunded_cents,
               payments.ProviderPayment.receipt_url)
        .outerjoin(payments.ProviderPayment,
                   payments.ProviderPayment.checkout_id == payments.Checkout.id)
        .where(payments.Checkout.account_id == account_id,
               payments.Checkout.status == "completed", payments.Checkout.mode == "payment")
        .order_by(payments.Checkout.id.desc()).limit(limit)).tuples().all()
    lines = [PurchaseLine(
        kind="auto_topup" if checkout.pay_link_id is None else "pack",
        item_code=checkout.item_code, amount_cents=checkout.amount_cents,
        currency=checkout.currency, tokens=checkout.tokens + checkout.bonus_tokens,
        refunded_cents=min(max(checkout.refunded_cents, int(refunded or 0)),
                           checkout.amount_cents),
        at=checkout.completed_at or checkout.created_at, receipt_url=receipt)
        for checkout, refunded, receipt in checkouts]
    invoices = session.execute(
        select(payments.Invoice, payments.ProviderPayment.refunded_cents,
               payments.ProviderPayment.receipt_url)
        .outerjoin(payments.ProviderPayment,
                   payments.ProviderPayment.invoice_id == payments.Invoice.id)
        .where(payments.Invoice.account_id == account_id)
        .order_by(payments.Invoice.id.desc()).limit(limit)).tuples().all()
    lines += [PurchaseLine(
        kind="premium", item_code=invoice.subscription_id or "", amount_cents=invoice.amount_cents,
        currency=invoice.currency, tokens=invoice.tokens,
        refunded_cents=min(int(refunded or 0), invoice.amount_cents), at=invoice.paid_at,
        receipt_url=invoice.receipt_url or receipt)
        for invoice, refunded, receipt in invoices]
    lines.sort(key=lambda line: line.at, reverse=True)
    return tuple(lines[:limit])


def premium_of(session: Session, account_id: int, catalog: Catalog, now: datetime) -> Premium:
    """The account's most recently updated subscription as `Premium` (status None when it
    never had one)."""
    row = session.scalar(
        select(payments.Subscription).where(payments.Subscription.account_id == account_id)
        .order_by(payments.Subscription.updated_at.desc(), payments.Subscription.id.desc())
        .limit(1))
    if row is None:
        return Premium(None, False, None, None, False)
    grace = catalog.premium.grace_days
    active = row.premium(now, grace)
    ends_at: datetime | None = None
    renews_at: datetime | None = None
    if row.status == "past_due" and row.past_due_since is not None:
        ends_at = row.past_due_since + timedelta(days=grace)
    elif row.cancel_at is not None:
        ends_at = row.cancel_at
    elif row.cancel_at_period_end:
        ends_at = row.current_period_end
    elif active:
        renews_at = row.current_period_end
    return Premium(row.status, active, renews_at, ends_at if active else None,
                   row.customer_id is not None)


def auto_topup_of(session: Session, account_id: int, catalog: Catalog) -> AutoTopupState:
    """The account's auto top-up (off, with the catalog's pack, when it never asked)."""
    row = session.get(AutoTopup, account_id)
    if row is None:
        return AutoTopupState(False, False, False, catalog.auto_topup_pack().code)
    return AutoTopupState(row.enabled, row.awaiting_card, row.has_card, row.pack_code)


def level_of(session: Session, account_id: int, catalog: Catalog, by_bucket: Mapping[str, int],
             premium: bool, now: datetime) -> str:
    """The level of the person's next answer, as the admin pages read it: an operator's
    override in force; NORMAL for premium or with purchased tokens left (paid service is never
    degraded, docs/economy.md); else `levels.decide` on this month's exposure."""
    override = levels.override_of(session, account_id, now)
    if override is not None:
        return override
    paying = premium or any(tokens for bucket, tokens in by_bucket.items() if bucket != "free")
    zero = dict.fromkeys(levels.LEVELS, 0)
    exposure = costs.month(session, account_id, now).exposure_musd
    return levels.decide(exposure, zero, catalog, paying=paying)
