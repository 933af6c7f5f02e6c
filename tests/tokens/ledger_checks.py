"""Recompute every ledger cache from first principles and compare (used by the ledger tests)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tokens import ledger
from tokens.ledger import Account, Hold, LedgerEntry, Lot


def assert_consistent(session: Session, account_id: int, now: datetime | None = None) -> None:
    """The caches agree with the records they cache, and nothing is negative.

    - posted balance = sum of the account's entries
    - held = sum of its pending holds
    - sum of lots' remaining = posted balance
    - each lot's remaining = its credit + the entries drawn on it
    - available = posted - held - (expired, unreserved tokens) >= 0
    """
    session.expire_all()
    account = session.get(Account, account_id)
    assert account is not None
    entries_total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.account_id == account_id
        )
    )
    assert account.balance == entries_total
    pending = session.scalar(
        select(func.coalesce(func.sum(Hold.amount), 0)).where(
            Hold.account_id == account_id, Hold.status == "pending"
        )
    )
    assert account.held == pending
    assert 0 <= account.held <= account.balance
    lots = session.scalars(select(Lot).where(Lot.account_id == account_id)).all()
    assert sum(lot.remaining for lot in lots) == account.balance
    for lot in lots:
        credit = session.get(LedgerEntry, lot.credit_entry_id)
        assert credit is not None and credit.amount > 0 and credit.bucket == lot.bucket
        drawn = session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.lot_id == lot.id
            )
        )
        assert lot.remaining == credit.amount + drawn >= 0
    # No spend draws on a lot that had expired when it was decided: a capture on lots valid
    # when its hold was placed, any other spend on lots valid when it was posted.
    spends = session.execute(
        select(LedgerEntry, Lot.expires_at, Hold.created_at)
        .join(Lot, Lot.id == LedgerEntry.lot_id)
        .outerjoin(Hold, Hold.id == LedgerEntry.hold_id)
        .where(LedgerEntry.account_id == account_id, LedgerEntry.kind.in_(["debit", "adjustment"]))
    ).all()
    for entry, expires_at, hold_created in spends:
        decided = hold_created or entry.created_at
        assert expires_at is None or expires_at > decided, (entry.idempotency_key, expires_at)
    balance = ledger.balance(session, account_id, now)
    assert balance.available >= 0
    assert balance.posted == account.balance and balance.held == account.held


def assert_expiry_honoured(session: Session, account_id: int, now: datetime) -> None:
    """After a sweep, an expired lot keeps only what pending holds placed before its expiry
    may still capture."""
    ledger.expire_lots(session, account_id, now)
    session.flush()
    holds = session.execute(
        select(Hold.created_at, Hold.amount).where(
            Hold.account_id == account_id, Hold.status == "pending"
        )
    ).all()
    kept = 0
    for lot in session.scalars(
        select(Lot)
        .where(Lot.account_id == account_id, Lot.expires_at <= now, Lot.remaining > 0)
        .order_by(Lot.expires_at)
    ):
        kept += lot.remaining
        protecting = sum(amount for created, amount in holds if created < lot.expires_at)
        assert kept <= protecting, (lot.id, lot.remaining, protecting)
