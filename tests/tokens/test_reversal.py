"""Reversing a debit whose reply never reached the person (`ledger.reverse_debit`), as worked
examples in plain words, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.tokens.ledger_checks import assert_consistent
from tokens import ledger
from tokens.errors import UnknownAccount, UnknownEntry
from tokens.ledger import LedgerEntry, Lot

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LATER = NOV + timedelta(minutes=5)
DEC = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)  # November's free tokens expire at this instant


@pytest.fixture
def account(session) -> int:
    account_id = ledger.open_account(session, NOV).id
    session.commit()
    return account_id


def spend(session, account_id: int, tokens: int, sid: str, now: datetime = NOV):
    """Hold and capture, as the router does for one answered request (key "debit:<sid>")."""
    placed = ledger.hold(session, account_id, tokens, key=f"hold:{sid}", ttl_seconds=600,
                         now=now)
    return ledger.capture(session, placed.hold_id, key=f"debit:{sid}", now=now)


def lot_of(session, credit_key: str) -> Lot:
    credit = session.scalars(
        select(LedgerEntry).where(LedgerEntry.idempotency_key == credit_key)
    ).one()
    return session.scalars(select(Lot).where(Lot.credit_entry_id == credit.id)).one()


def reversals(session, account_id: int) -> list[LedgerEntry]:
    return list(session.scalars(
        select(LedgerEntry)
        .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "reversal")
        .order_by(LedgerEntry.id)
    ))


def wallet(session, account_id: int) -> dict[str, object]:
    session.expire_all()
    return {
        "balance": ledger.balance(session, account_id, NOV),
        "lots": sorted((lot.id, lot.remaining) for lot in session.scalars(
            select(Lot).where(Lot.account_id == account_id))),
        "entries": session.scalar(
            select(LedgerEntry.id).order_by(LedgerEntry.id.desc()).limit(1)),
    }


@pytest.fixture
def ana(session, account) -> int:
    """Ana has November's 100 free tokens (expiring when December starts) and bought the
    Starter pack (100 paid + 20 bonus)."""
    ledger.grant(session, account, 100, key="grant:free:nov", expires_at=DEC, now=NOV)
    ledger.purchase(session, account, 100, 20, key="checkout:cs_1", memo="Starter", now=NOV)
    session.commit()
    return account


def test_a_reversal_gives_the_tokens_back_to_the_lot_they_came_from(session, ana):
    """Ana pays 5 for a meal plan that is never delivered: the 5 go back to her free lot."""
    captured = spend(session, ana, 5, "SM1")
    session.commit()
    assert captured.posted.by_bucket == (("free", -5),)
    assert ledger.balance(session, ana, NOV).by_bucket["free"] == 95
    assert_consistent(session, ana, NOV)

    reversal = ledger.reverse_debit(session, "debit:SM1", key="reversal:SM1",
                                   memo="reply not delivered", now=LATER)
    session.commit()
    assert (reversal.key, reversal.amount, reversal.replayed) == ("reversal:SM1", 5, False)
    assert reversal.by_bucket == (("free", 5),)
    (entry,) = reversals(session, ana)
    debit = session.scalars(
        select(LedgerEntry).where(LedgerEntry.idempotency_key == "debit:SM1")
    ).one()
    assert reversal.entry_ids == (entry.id,)
    assert (entry.kind, entry.bucket, entry.amount) == ("reversal", "free", 5)
    assert entry.lot_id == debit.lot_id == lot_of(session, "grant:free:nov").id
    assert entry.corrects_id == debit.id
    assert (entry.idempotency_key, entry.operation_key) == ("reversal:SM1", "reversal:SM1")
    assert (entry.memo, entry.created_at) == ("reply not delivered", LATER)
    assert lot_of(session, "grant:free:nov").remaining == 100
    balance = ledger.balance(session, ana, LATER)
    assert (balance.posted, balance.held, balance.available) == (220, 0, 220)
    assert balance.by_bucket == {"free": 100, "bonus": 20, "paid": 100}
    assert_consistent(session, ana, LATER)


def test_a_capture_spanning_two_lots_gets_two_reversal_entries(session, account):
    """Ben has 3 free tokens left and the pack; a 10-token answer takes 3 free + 7 bonus. The
    reversal gives 3 back to the free lot and 7 to the bonus lot, each pointing at its debit."""
    ledger.grant(session, account, 3, key="grant:free:nov", expires_at=DEC, now=NOV)
    ledger.purchase(session, account, 100, 20, key="checkout:cs_2", now=NOV)
    captured = spend(session, account, 10, "SM2")
    session.commit()
    assert captured.posted.by_bucket == (("free", -3), ("bonus", -7))

    reversal = ledger.reverse_debit(session, "debit:SM2", key="reversal:SM2", now=LATER)
    session.commit()
    assert (reversal.amount, reversal.by_bucket) == (10, (("free", 3), ("bonus", 7)))
    entries = reversals(session, account)
    debits = {e.idempotency_key: e for e in session.scalars(
        select(LedgerEntry).where(LedgerEntry.kind == "debit"))}
    assert [(e.idempotency_key, e.operation_key, e.bucket, e.amount) for e in entries] == [
        ("reversal:SM2", "reversal:SM2", "free", 3),
        ("reversal:SM2#2", "reversal:SM2", "bonus", 7),
    ]
    assert [e.corrects_id for e in entries] == [debits["debit:SM2"].id, debits["debit:SM2#2"].id]
    assert [e.lot_id for e in entries] == [
        lot_of(session, "grant:free:nov").id, lot_of(session, "checkout:cs_2:bonus").id,
    ]
    assert ledger.balance(session, account, LATER).by_bucket == {
        "free": 3, "bonus": 20, "paid": 100,
    }
    assert_consistent(session, account, LATER)


def test_after_the_free_lot_expired_only_the_unexpired_part_comes_back(session, account):
    """Ben's 10-token answer took 3 free (November) + 7 bonus; the reversal comes in December:
    November's free tokens would expire at once, so only the 7 bonus tokens come back."""
    ledger.grant(session, account, 3, key="grant:free:nov", expires_at=DEC, now=NOV)
    ledger.purchase(session, account, 100, 20, key="checkout:cs_3", now=NOV)
    spend(session, account, 10, "SM3")
    session.commit()

    reversal = ledger.reverse_debit(session, "debit:SM3", key="reversal:SM3",
                                   now=DEC + timedelta(hours=1))
    session.commit()
    assert (reversal.amount, reversal.by_bucket) == (7, (("bonus", 7),))
    assert [(e.idempotency_key, e.bucket, e.amount) for e in reversals(session, account)] == [
        ("reversal:SM3", "bonus", 7),
    ]
    assert lot_of(session, "grant:free:nov").remaining == 0
    balance = ledger.balance(session, account, DEC + timedelta(hours=1))
    assert (balance.posted, balance.available) == (120, 120)
    assert balance.by_bucket == {"bonus": 20, "paid": 100}
    assert_consistent(session, account, DEC + timedelta(hours=1))


def test_a_lot_expiring_at_the_reversal_instant_counts_as_expired(session, ana):
    spend(session, ana, 5, "SM4")
    session.commit()
    just_before = ledger.reverse_debit(session, "debit:SM4", key="reversal:SM4:a",
                                      now=DEC - timedelta(microseconds=1))
    session.rollback()
    at_expiry = ledger.reverse_debit(session, "debit:SM4", key="reversal:SM4:b", now=DEC)
    session.rollback()
    assert just_before.amount == 5
    assert (at_expiry.amount, at_expiry.entry_ids, at_expiry.by_bucket) == (0, (), ())


def test_when_every_lot_expired_nothing_is_given_back(session, ana):
    """Ana's 5 free November tokens are reversed in December: nothing comes back, and the
    free lot's remaining 95 still expire (before or after a sweep)."""
    spend(session, ana, 5, "SM5")
    session.commit()
    reversal = ledger.reverse_debit(session, "debit:SM5", key="reversal:SM5", now=DEC)
    session.commit()
    assert (reversal.amount, reversal.entry_ids, reversal.replayed) == (0, (), False)
    assert reversals(session, ana) == []
    assert ledger.balance(session, ana, DEC).available == 120
    assert_consistent(session, ana, DEC)
    assert ledger.expire_lots(session, ana, DEC) == 95
    session.commit()
    again = ledger.reverse_debit(session, "debit:SM5", key="reversal:SM5", now=DEC)
    session.commit()
    assert (again.amount, again.entry_ids) == (0, ())
    assert reversals(session, ana) == []
    assert ledger.balance(session, ana, DEC).posted == 120
    assert_consistent(session, ana, DEC)


def test_a_repeat_of_a_reversal_that_gave_nothing_back_gives_nothing_again(session, ana):
    """Such a reversal leaves no entry, so its repeat cannot be told apart; it gives 0 again."""
    spend(session, ana, 5, "SM6")
    session.commit()
    first = ledger.reverse_debit(session, "debit:SM6", key="reversal:SM6", now=DEC)
    session.commit()
    again = ledger.reverse_debit(session, "debit:SM6", key="reversal:SM6", now=DEC)
    assert first.amount == again.amount == 0 and again.entry_ids == ()


def test_a_debit_is_reversed_once_whatever_the_key(session, account):
    ledger.purchase(session, account, 100, 0, key="checkout:cs_8", now=NOV)
    spend(session, account, 5, "SM8")
    first = ledger.reverse_debit(session, "debit:SM8", key="reversal:SM8", now=LATER)
    other = ledger.reverse_debit(session, "debit:SM8", key="reversal:SM8:again", now=LATER)
    assert other.replayed and other.key == "reversal:SM8" and other.amount == first.amount == 5
    assert ledger.balance(session, account, LATER).posted == 100
    assert_consistent(session, account, LATER)


def test_a_repeated_reversal_is_a_replay_that_changes_nothing(session, account):
    ledger.grant(session, account, 3, key="grant:free:nov", expires_at=DEC, now=NOV)
    ledger.purchase(session, account, 100, 20, key="checkout:cs_7", now=NOV)
    spend(session, account, 10, "SM7")
    first = ledger.reverse_debit(session, "debit:SM7", key="reversal:SM7", now=LATER)
    session.commit()
    before = wallet(session, account)

    again = ledger.reverse_debit(session, "debit:SM7", key="reversal:SM7", now=LATER)
    later = ledger.reverse_debit(session, "debit:SM7", key="reversal:SM7",
                                now=LATER + timedelta(days=3))
    session.commit()
    for replay in (again, later):
        assert replay.replayed is True
        assert (replay.key, replay.entry_ids, replay.amount, replay.by_bucket) == (
            first.key, first.entry_ids, first.amount, first.by_bucket,
        )
    assert wallet(session, account) == before
    assert len(reversals(session, account)) == 2
    assert_consistent(session, account, LATER)


def test_reversed_tokens_can_be_spent_again(session, ana):
    """The 5 tokens come back as free tokens and are spent first again, from the same lot."""
    spend(session, ana, 5, "SM8")
    ledger.reverse_debit(session, "debit:SM8", key="reversal:SM8", now=LATER)
    session.commit()
    assert_consistent(session, ana, LATER)
    again = spend(session, ana, 100, "SM9", now=LATER)
    session.commit()
    assert again.posted.by_bucket == (("free", -100),)  # all 100 free tokens, reversed 5 included
    assert lot_of(session, "grant:free:nov").remaining == 0
    assert ledger.balance(session, ana, LATER).by_bucket == {"bonus": 20, "paid": 100}
    assert_consistent(session, ana, LATER)
    # and the second debit can be reversed in turn
    assert ledger.reverse_debit(session, "debit:SM9", key="reversal:SM9", now=LATER).amount == 100
    session.commit()
    assert ledger.balance(session, ana, LATER).available == 220
    assert_consistent(session, ana, LATER)


def test_a_partial_capture_reverses_what_was_captured(session, ana):
    placed = ledger.hold(session, ana, 5, key="hold:SM10", now=NOV)
    ledger.capture(session, placed.hold_id, key="debit:SM10", amount=3, now=NOV)
    reversal = ledger.reverse_debit(session, "debit:SM10", key="reversal:SM10", now=LATER)
    session.commit()
    assert (reversal.amount, reversal.by_bucket) == (3, (("free", 3),))
    assert ledger.balance(session, ana, LATER).available == 220
    assert_consistent(session, ana, LATER)


def test_a_reversal_while_a_hold_is_pending_keeps_the_hold(session, ana):
    spend(session, ana, 5, "SM11")
    pending = ledger.hold(session, ana, 50, key="hold:SM12", now=LATER)
    ledger.reverse_debit(session, "debit:SM11", key="reversal:SM11", now=LATER)
    session.commit()
    balance = ledger.balance(session, ana, LATER)
    assert (balance.posted, balance.held, balance.available) == (220, 50, 170)
    assert_consistent(session, ana, LATER)
    captured = ledger.capture(session, pending.hold_id, key="debit:SM12", now=LATER)
    session.commit()
    assert captured.posted.by_bucket == (("free", -50),)
    assert_consistent(session, ana, LATER)


def test_an_unknown_debit_key_is_refused(session, ana):
    with pytest.raises(UnknownEntry):
        ledger.reverse_debit(session, "debit:nope", key="reversal:nope", now=LATER)
    # a credit's key is not a debit
    with pytest.raises(UnknownEntry):
        ledger.reverse_debit(session, "checkout:cs_1", key="reversal:cs_1", now=LATER)
    # nor is an operation that only placed a hold
    ledger.hold(session, ana, 5, key="hold:SM13", now=NOV)
    with pytest.raises(UnknownEntry):
        ledger.reverse_debit(session, "hold:SM13", key="reversal:SM13", now=LATER)
    session.rollback()
    assert reversals(session, ana) == []
    assert_consistent(session, ana, LATER)


def test_lock_account_needs_an_existing_account(session, ana):
    ledger.lock_account(session, ana)  # locks and returns nothing
    session.commit()
    with pytest.raises(UnknownAccount):
        ledger.lock_account(session, 999_999)
    session.rollback()
