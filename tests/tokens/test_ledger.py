"""The ledger core: keyed grants and debits, buckets, the monthly allowance, DB constraints."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from tokens import ledger
from tokens.errors import InsufficientTokens, InvalidAmount, UnknownAccount
from tokens.ledger import Account, LedgerEntry

NOV = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)


@pytest.fixture
def account(session) -> int:
    account_id = ledger.open_account(session).id
    session.commit()
    return account_id


def entries_sum(session, account_id: int) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.account_id == account_id
        )
    )
    return int(total)


def test_a_grant_is_posted_once_per_key(session, account):
    first = ledger.grant(session, account, 40, key="grant:test:1", bucket="paid")
    again = ledger.grant(session, account, 40, key="grant:test:1", bucket="paid")
    session.commit()
    assert not first.replayed and again.replayed
    assert again.entry_ids == first.entry_ids
    assert ledger.balance(session, account).posted == 40
    assert entries_sum(session, account) == 40


def test_a_debit_is_atomic_and_refuses_to_overdraw(session, account):
    ledger.grant(session, account, 7, key="g1")
    ledger.debit(session, account, 5, key="debit:a")
    with pytest.raises(InsufficientTokens) as refused:
        ledger.debit(session, account, 5, key="debit:b")
    session.commit()
    assert (refused.value.requested, refused.value.available) == (5, 2)
    assert ledger.balance(session, account).available == 2
    refused_entries = select(LedgerEntry).where(LedgerEntry.idempotency_key == "debit:b")
    assert session.scalars(refused_entries).all() == []


def test_a_debit_replay_returns_the_first_result(session, account):
    ledger.grant(session, account, 10, key="g1")
    first = ledger.debit(session, account, 4, key="debit:SM1")
    again = ledger.debit(session, account, 4, key="debit:SM1")
    session.commit()
    assert again.replayed and again.entry_ids == first.entry_ids and again.amount == 4
    assert ledger.balance(session, account).posted == 6


def test_debits_consume_free_then_subscription_then_bonus_then_paid(session, account):
    ledger.grant(session, account, 3, key="g-paid", bucket="paid", kind="purchase")
    ledger.grant(session, account, 2, key="g-bonus", bucket="bonus", kind="bonus")
    ledger.grant(session, account, 2, key="g-free", bucket="free")
    ledger.grant(session, account, 1, key="g-sub", bucket="subscription")
    posted = ledger.debit(session, account, 6, key="debit:big")
    session.commit()
    assert posted.by_bucket == (("free", -2), ("subscription", -1), ("bonus", -2), ("paid", -1))
    debits = select(LedgerEntry.idempotency_key).where(LedgerEntry.kind == "debit")
    keys = session.scalars(debits.order_by(LedgerEntry.id)).all()
    assert keys == ["debit:big", "debit:big:subscription", "debit:big:bonus", "debit:big:paid"]
    assert ledger.balance(session, account).by_bucket == {"paid": 2}
    assert entries_sum(session, account) == ledger.balance(session, account).posted == 2


def test_monthly_allowance_once_per_month_and_leftovers_expire(session, account):
    first = ledger.grant_monthly_allowance(session, account, 100, NOV)
    again = ledger.grant_monthly_allowance(session, account, 100, NOV)
    ledger.debit(session, account, 30, key="debit:x", now=NOV)
    ledger.grant(session, account, 5, key="paid:1", bucket="paid", kind="purchase")
    december = ledger.grant_monthly_allowance(
        session, account, 100, datetime(2026, 12, 1, tzinfo=UTC)
    )
    january = ledger.grant_monthly_allowance(
        session, account, 100, datetime(2027, 1, 15, tzinfo=UTC)
    )
    session.commit()
    assert not first.replayed and again.replayed
    assert not december.replayed and not january.replayed
    expiries = session.scalars(
        select(LedgerEntry).where(LedgerEntry.kind == "expiry").order_by(LedgerEntry.id)
    ).all()
    # 70 free tokens left from November, then December's 100 unused: purchased tokens stay.
    assert [e.amount for e in expiries] == [-70, -100]
    balance = ledger.balance(session, account)
    assert balance.by_bucket == {"free": 100, "paid": 5}
    assert balance.posted == entries_sum(session, account) == 105
    grant = session.get(LedgerEntry, january.entry_ids[0])
    assert grant.expires_at == datetime(2027, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize("amount", [0, -3, 2.5, True])
def test_amounts_must_be_positive_integers(session, account, amount):
    with pytest.raises(InvalidAmount):
        ledger.grant(session, account, amount, key="bad")
    with pytest.raises(InvalidAmount):
        ledger.debit(session, account, amount, key="bad")


def test_unknown_accounts_are_refused(session):
    with pytest.raises(UnknownAccount):
        ledger.grant(session, 999_999, 5, key="nobody")
    with pytest.raises(UnknownAccount):
        ledger.debit(session, 999_999, 5, key="nobody")
    with pytest.raises(UnknownAccount):
        ledger.balance(session, 999_999)


def test_the_database_refuses_zero_entries_and_negative_balances(session, account):
    with pytest.raises(IntegrityError):
        session.execute(
            insert(LedgerEntry).values(
                account_id=account, kind="grant", bucket="free", amount=0,
                idempotency_key="zero", created_at=NOV,
            )
        )
    session.rollback()
    with pytest.raises(IntegrityError):
        session.execute(update(Account).where(Account.id == account).values(balance=-1))
    session.rollback()
    with pytest.raises(IntegrityError):
        session.execute(
            insert(LedgerEntry).values(
                account_id=account, kind="gift", bucket="free", amount=5,
                idempotency_key="unknown-kind", created_at=NOV,
            )
        )
    session.rollback()


def test_naive_datetimes_are_refused(session, account):
    with pytest.raises(Exception, match="naive datetime"):
        ledger.grant(session, account, 5, key="naive", now=datetime(2026, 11, 1))
    session.rollback()


@pytest.mark.backends("sqlite")
def test_sqlite_enforces_foreign_keys(session):
    assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
