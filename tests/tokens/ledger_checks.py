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
    balance = ledger.balance(session, account_id, now)
    assert balance.available >= 0
    assert balance.posted == account.balance and balance.held == account.held
