"""How many SQL statements the ledger's hot path sends (issue "the message pipeline at the
limit"), on SQLite and PostgreSQL, and that the shortcuts it takes keep every rule.

Per priced message the router calls `grant_monthly_allowance` (a returning person: granted
already), `balance`, `hold` and then `capture` or `void`. None of them sends a SAVEPOINT or
reads an ORM object; the bounds below are what they send now, so that a regression fails."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.support.statements import counted
from tests.tokens.ledger_checks import assert_consistent
from tokens import ledger
from tokens.errors import HoldNotPending, InsufficientTokens, KeyReused, UnknownAccount
from tokens.ledger import Account, Hold, LedgerEntry, Lot

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
# Statements per call, BEGIN (which SQLite sends itself) not counted; the same on both
# backends.
BOUNDS = {
    "grant_monthly_allowance": 1,  # granted already this month: one indexed SELECT
    "balance": 1,
    "hold": 2,  # the reservation (lock, check, key and expiry checks) + INSERT ... RETURNING
    "capture": 6,  # lock+read hold, lots, hold, account, entries, lots
    "capture_placed": 5,  # the hold placed in this transaction is not read again
    "void": 3,  # lock+read hold, hold, account
    "debit": 4,  # the balance (lock, check, key and expiry checks), lots, entries, lots
}


@pytest.fixture
def account(session) -> int:
    """A returning person: this month's allowance granted, a pack bought, one answer given."""
    account_id = ledger.open_account(session, NOV).id
    ledger.grant_monthly_allowance(session, account_id, 100, NOV)
    ledger.purchase(session, account_id, 100, 20, key="checkout:cs_1", now=NOV)
    placed = ledger.hold(session, account_id, 5, key="hold:SM0", now=NOV)
    ledger.capture(session, placed.hold_id, key="debit:SM0", now=NOV)
    session.commit()
    return account_id


def no_savepoints(statements: list[str]) -> bool:
    return not [s for s in statements if "SAVEPOINT" in s.upper()]


def test_a_returning_persons_allowance_is_one_select(session, account):
    with counted() as statements:
        granted = ledger.grant_monthly_allowance(session, account, 100, NOV)
    assert granted.replayed and granted.amount == 100
    assert len(statements) <= BOUNDS["grant_monthly_allowance"], statements
    assert statements[0].lstrip().upper().startswith("SELECT")


def test_the_caller_can_read_whether_the_allowance_was_granted(session, account):
    december = NOV + timedelta(days=10)
    assert session.scalar(select(ledger.monthly_allowance_granted(
        ledger.monthly_allowance_key(account, NOV)))) is True
    assert session.scalar(select(ledger.monthly_allowance_granted(
        ledger.monthly_allowance_key(account, december)))) is False
    assert ledger.monthly_allowance_key(account, december) == f"grant:free:{account}:2026-12"


def test_balance_is_one_statement(session, account):
    with counted() as statements:
        balance = ledger.balance(session, account, NOV)
    assert len(statements) <= BOUNDS["balance"], statements
    assert balance == ledger.Balance(posted=215, held=0, available=215,
                                     by_bucket={"free": 95, "bonus": 20, "paid": 100})


def test_hold_then_capture(session, account):
    ledger.lock_account(session, account)  # as the router does first
    with counted() as held:
        placed = ledger.hold(session, account, 5, key="hold:SM1", memo="meal_plan", now=NOV)
    with counted() as captured:
        result = ledger.capture(session, placed.hold_id, key="debit:SM1", now=NOV)
    session.commit()
    assert len(held) <= BOUNDS["hold"], held
    assert len(captured) <= BOUNDS["capture"], captured
    assert no_savepoints(held + captured)
    assert (placed.status, placed.replayed, placed.amount) == ("pending", False, 5)
    assert placed.expires_at == NOV + timedelta(seconds=ledger.DEFAULT_HOLD_TTL_SECONDS)
    assert result.posted.by_bucket == (("free", -5),) and result.released == 0
    assert not result.posted.replayed
    entry = session.get(LedgerEntry, result.posted.entry_ids[0])
    assert (entry.kind, entry.hold_id, entry.memo, entry.operation_key) == (
        "debit", placed.hold_id, "meal_plan", "debit:SM1")
    assert session.get(Hold, placed.hold_id).status == "captured"
    assert_consistent(session, account, NOV)


def test_a_capture_of_a_hold_placed_in_the_same_transaction_reads_it_no_more(session, account):
    """An inline answer: `capture(placed=...)` skips reading the hold, with the same entries,
    and a repeat, another hold's result or a lapsed hold still get the usual answers."""
    ledger.lock_account(session, account)
    placed = ledger.hold(session, account, 5, key="hold:SM9", memo="recipe_search", now=NOV)
    assert (placed.account_id, placed.created_at, placed.memo) == (account, NOV, "recipe_search")
    with counted() as captured:
        result = ledger.capture(session, placed.hold_id, key="debit:SM9", now=NOV,
                                placed=placed)
    assert len(captured) <= BOUNDS["capture_placed"], captured
    entry = session.get(LedgerEntry, result.posted.entry_ids[0])
    assert (entry.kind, entry.hold_id, entry.memo, entry.amount) == (
        "debit", placed.hold_id, "recipe_search", -5)
    again = ledger.capture(session, placed.hold_id, key="debit:SM9", now=NOV, placed=placed)
    assert again.posted.replayed and again.posted.entry_ids == result.posted.entry_ids
    # Another hold's result is ignored: the hold is read as usual.
    other = ledger.hold(session, account, 3, key="hold:SM10", now=NOV)
    moved = ledger.capture(session, other.hold_id, key="debit:SM10", now=NOV, placed=placed)
    assert moved.posted.amount == 3
    # Past its expiry the conditional UPDATE still refuses, whatever the caller passed.
    late = ledger.hold(session, account, 2, key="hold:SM11", ttl_seconds=60, now=NOV)
    with pytest.raises(HoldNotPending):
        ledger.capture(session, late.hold_id, key="debit:SM11", now=NOV + timedelta(minutes=2),
                       placed=late)
    session.commit()
    assert_consistent(session, account, NOV)


def test_a_capture_drawing_on_three_lots_sends_no_more(session, account):
    ledger.lock_account(session, account)
    placed = ledger.hold(session, account, 150, key="hold:SM2", now=NOV)
    with counted() as captured:
        result = ledger.capture(session, placed.hold_id, key="debit:SM2", amount=140, now=NOV)
    session.commit()
    assert len(captured) <= BOUNDS["capture"], captured
    assert result.posted.by_bucket == (("free", -95), ("bonus", -20), ("paid", -25))
    assert (result.posted.amount, result.released) == (140, 10)
    keys = [session.get(LedgerEntry, i).idempotency_key for i in result.posted.entry_ids]
    assert keys == ["debit:SM2", "debit:SM2#2", "debit:SM2#3"]
    assert ledger.balance(session, account, NOV).by_bucket == {"paid": 75}
    assert_consistent(session, account, NOV)


def test_a_capture_drawing_on_more_lots_than_its_compiled_shapes(session, account):
    """Seven lots: beyond the one-statement-per-count shapes (`_SETTLE_CAPTURE_SHAPES`), the
    capture's UPDATE takes its keys as an expanding IN; the rules are the same."""
    assert ledger._SETTLE_CAPTURE_SHAPES < 7
    ledger.lock_account(session, account)
    for n in range(4):
        ledger.grant(session, account, 1, key=f"grant:test:{n}", bucket="bonus",
                     expires_at=NOV + timedelta(days=n + 1), now=NOV)
    placed = ledger.hold(session, account, 200, key="hold:SM3", now=NOV)
    result = ledger.capture(session, placed.hold_id, key="debit:SM3", amount=200, now=NOV)
    assert len(result.posted.entry_ids) == 7 and result.posted.amount == 200
    again = ledger.capture(session, placed.hold_id, key="debit:SM3", amount=200, now=NOV)
    assert again.posted.replayed and again.posted.entry_ids == result.posted.entry_ids
    session.commit()
    assert_consistent(session, account, NOV)


def test_a_direct_debit_is_four_statements_and_once_per_key(session, account):
    """`debit`: an answer charged under the account's row lock, with no hold."""
    ledger.lock_account(session, account)
    with counted() as statements:
        posted = ledger.debit(session, account, 100, key="debit:SM20", memo="meal_plan",
                              now=NOV)
    assert len(statements) <= BOUNDS["debit"], statements
    assert no_savepoints(statements)
    assert posted.by_bucket == (("free", -95), ("bonus", -5)) and not posted.replayed
    entries = [session.get(LedgerEntry, i) for i in posted.entry_ids]
    assert [(e.kind, e.hold_id, e.memo, e.idempotency_key, e.operation_key) for e in entries] == [
        ("debit", None, "meal_plan", "debit:SM20", "debit:SM20"),
        ("debit", None, "meal_plan", "debit:SM20#2", "debit:SM20"),
    ]
    again = ledger.debit(session, account, 100, key="debit:SM20", now=NOV)
    assert again.replayed and again.entry_ids == posted.entry_ids and again.amount == 100
    session.commit()
    assert ledger.balance(session, account, NOV).by_bucket == {"bonus": 15, "paid": 100}
    assert_consistent(session, account, NOV)


def test_a_direct_debit_refuses_what_it_must(session, account):
    with pytest.raises(InsufficientTokens) as refused:
        ledger.debit(session, account, 1_000, key="debit:SM21", now=NOV)
    assert (refused.value.requested, refused.value.available) == (1_000, 215)
    with pytest.raises(KeyReused):  # the key of a capture
        ledger.debit(session, account, 5, key="debit:SM0", now=NOV)
    with pytest.raises(KeyReused):  # the key of a credit
        ledger.debit(session, account, 5, key="checkout:cs_1", now=NOV)
    with pytest.raises(UnknownAccount):
        ledger.debit(session, 999_999, 5, key="debit:SM22", now=NOV)
    # Tokens a pending hold reserves are not spendable.
    ledger.hold(session, account, 214, key="hold:SM23", now=NOV)
    with pytest.raises(InsufficientTokens):
        ledger.debit(session, account, 2, key="debit:SM24", now=NOV)
    session.commit()
    assert ledger.balance(session, account, NOV).posted == 215
    assert_consistent(session, account, NOV)


def test_a_direct_debit_expires_what_is_due_first(session, account):
    """A lot past its expiry counts in the posted balance until expired: the debit expires it
    (and due holds) before it spends, and spends only what was valid."""
    ledger.grant(session, account, 50, key="grant:promo", bucket="bonus",
                 expires_at=NOV + timedelta(hours=1), now=NOV)
    stale = ledger.hold(session, account, 200, key="hold:SM25", ttl_seconds=60, now=NOV)
    session.commit()
    later = NOV + timedelta(hours=2)
    posted = ledger.debit(session, account, 200, key="debit:SM26", now=later)
    session.commit()
    assert posted.by_bucket == (("free", -95), ("bonus", -20), ("paid", -85))
    assert session.get(Hold, stale.hold_id).status == "expired"
    assert ledger.balance(session, account, later).by_bucket == {"paid": 15}
    assert_consistent(session, account, later)


def test_hold_then_void(session, account):
    ledger.lock_account(session, account)
    placed = ledger.hold(session, account, 5, key="hold:SM3", now=NOV)
    with counted() as voided:
        result = ledger.void(session, placed.hold_id, now=NOV)
    session.commit()
    assert len(voided) <= BOUNDS["void"], voided
    assert no_savepoints(voided)
    assert (result.status, result.replayed) == ("voided", False)
    assert ledger.void(session, placed.hold_id, now=NOV).replayed
    with pytest.raises(HoldNotPending):
        ledger.capture(session, placed.hold_id, key="debit:SM3", now=NOV)
    assert_consistent(session, account, NOV)


def test_repeats_send_few_statements_and_change_nothing(session, account):
    placed = ledger.hold(session, account, 5, key="hold:SM4", now=NOV)
    first = ledger.capture(session, placed.hold_id, key="debit:SM4", now=NOV)
    session.commit()
    with counted() as statements:
        again = ledger.hold(session, account, 5, key="hold:SM4", now=NOV)
        repeat = ledger.capture(session, placed.hold_id, key="debit:SM4", now=NOV)
    session.commit()
    # hold: 3; capture: lock, replay; on PostgreSQL first `ledger_capture`, which writes
    # nothing for a captured hold (the common case is one statement there, a replay one more)
    in_server = 1 if session.get_bind().dialect.name == "postgresql" else 0
    assert len(statements) <= 3 + 2 + in_server, statements
    assert again.replayed and again.status == "captured" and again.hold_id == placed.hold_id
    assert repeat.posted.replayed and repeat.posted.entry_ids == first.posted.entry_ids
    assert ledger.balance(session, account, NOV).posted == 210
    assert_consistent(session, account, NOV)


def test_a_refused_hold_writes_nothing_and_leaves_the_transaction_usable(session, account):
    ledger.grant(session, account, 1, key="grant:caller's own work", now=NOV)
    with counted() as statements, pytest.raises(InsufficientTokens) as refused:
        ledger.hold(session, account, 1_000, key="hold:SM5", now=NOV)
    assert all(not s.lstrip().upper().startswith(("INSERT", "DELETE")) for s in statements)
    assert (refused.value.requested, refused.value.available) == (1_000, 216)
    session.commit()  # the caller's grant is kept
    assert ledger.balance(session, account, NOV).posted == 216
    assert session.scalar(select(Hold.id).where(Hold.idempotency_key == "hold:SM5")) is None
    assert_consistent(session, account, NOV)


def test_a_capture_under_another_operations_key_changes_nothing(session, account):
    placed = ledger.hold(session, account, 5, key="hold:SM6", now=NOV)
    with pytest.raises(KeyReused):
        ledger.capture(session, placed.hold_id, key="debit:SM0", now=NOV)
    # A key of one of its entries (`key#2`) used by another operation is refused as well.
    ledger.grant(session, account, 1, key="debit:SM6#2", now=NOV)
    big = ledger.hold(session, account, 150, key="hold:SM7", now=NOV)
    with pytest.raises(KeyReused):
        ledger.capture(session, big.hold_id, key="debit:SM6", now=NOV)
    session.commit()
    assert session.get(Hold, placed.hold_id).status == "pending"
    assert session.get(Hold, big.hold_id).status == "pending"
    assert_consistent(session, account, NOV)


def test_objects_loaded_before_are_read_again_after_the_change(session, account):
    """The hot path changes rows with Core statements; ORM objects of those rows that the
    session already holds are expired, so they show the new values."""
    placed = ledger.hold(session, account, 5, key="hold:SM8", now=NOV)
    hold_row = session.get(Hold, placed.hold_id)
    lots = session.scalars(select(Lot).where(Lot.account_id == account)).all()
    assert hold_row.status == "pending"
    ledger.capture(session, placed.hold_id, key="debit:SM8", now=NOV)
    assert hold_row.status == "captured"
    assert sorted(lot.remaining for lot in lots) == [20, 90, 100]
    other = ledger.hold(session, account, 5, key="hold:SM9", now=NOV)
    other_row = session.get(Hold, other.hold_id)
    ledger.void(session, other.hold_id, now=NOV)
    assert other_row.status == "voided"
    session.commit()


def test_hold_settles_what_is_due_before_reserving(session, account):
    """The one-statement reservation is skipped when a hold or a lot of the account is due;
    then the account is swept first, as before."""
    stale = ledger.hold(session, account, 210, key="hold:stale", ttl_seconds=60, now=NOV)
    later = NOV + timedelta(minutes=5)
    placed = ledger.hold(session, account, 200, key="hold:SM10", now=later)
    session.commit()
    assert session.get(Hold, stale.hold_id).status == "expired"
    assert placed.status == "pending"
    december = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    ledger.void(session, placed.hold_id, now=december)
    ledger.hold(session, account, 120, key="hold:SM11", now=december)  # free 95 expire first
    with pytest.raises(InsufficientTokens) as refused:
        ledger.hold(session, account, 1, key="hold:SM12", now=december)
    session.commit()
    assert refused.value.available == 0
    kinds = session.scalars(select(LedgerEntry.kind).where(LedgerEntry.kind == "expiry")).all()
    assert kinds == ["expiry"]
    assert_consistent(session, account, december)


@pytest.mark.backends("postgresql")
def test_a_key_taken_concurrently_gives_the_reservation_back(app, database_url, account):
    """Two holds of one key on two accounts: the second passes the key check before the first
    commits, then its INSERT finds the key and does nothing; its reservation is undone and the
    first hold is returned."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as setup:
            other = ledger.open_account(setup, NOV).id
            ledger.grant(setup, other, 50, key="grant:other", now=NOV)
            setup.commit()
        first = Session(engine)
        placed = ledger.hold(first, account, 5, key="hold:shared", now=NOV)
        outcome: dict[str, object] = {}

        def second() -> None:
            with Session(engine) as session:
                try:
                    outcome["result"] = ledger.hold(session, other, 7, key="hold:shared",
                                                    now=NOV)
                    session.commit()
                except Exception as exc:  # asserted on below
                    outcome["result"] = exc

        worker = threading.Thread(target=second)
        worker.start()
        worker.join(timeout=1)
        assert worker.is_alive()  # waiting on the key's index entry
        first.commit()
        first.close()
        worker.join(timeout=10)
        result = outcome["result"]
        assert isinstance(result, ledger.HoldResult), result
        assert (result.hold_id, result.replayed, result.amount) == (placed.hold_id, True, 5)
        with Session(engine) as check:
            assert check.get(Account, other).held == 0
            assert_consistent(check, other, NOV)
            assert_consistent(check, account, NOV)
    finally:
        engine.dispose()
