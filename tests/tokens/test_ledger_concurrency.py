"""Concurrency on a real PostgreSQL server: many transactions at once, one truth.

Each worker thread has its own connection and transaction; a barrier releases them together so
that they really contend for the same account row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from tests.tokens.ledger_checks import assert_consistent
from tokens import ledger
from tokens.errors import HoldNotPending, InsufficientTokens
from tokens.ledger import LedgerEntry

pytestmark = pytest.mark.backends("postgresql")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url, pool_size=60, max_overflow=0)
    yield engine
    engine.dispose()


def all_at_once(engine: Engine, count: int, work: Callable[[Session, int], Any]) -> list[Any]:
    """Run `work(session, i)` in `count` threads released together; each commits its own
    transaction. Returns each call's result or the exception it raised."""
    barrier = threading.Barrier(count)
    make_session = sessionmaker(engine)

    def one(i: int) -> Any:
        with make_session() as session:
            barrier.wait()
            try:
                result = work(session, i)
                session.commit()
                return result
            except Exception as exc:  # collected and asserted on by the caller
                session.rollback()
                return exc

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


@pytest.fixture
def account(engine: Engine) -> int:
    with Session(engine) as session:
        account_id = ledger.open_account(session).id
        session.commit()
    return account_id


def test_50_concurrent_holds_of_5_on_120_give_exactly_24(engine, account):
    with Session(engine) as session:
        ledger.grant(session, account, 120, key="grant:120")
        session.commit()

    results = all_at_once(
        engine, 50, lambda s, i: ledger.hold(s, account, 5, key=f"hold:{i}")
    )

    placed = [r for r in results if isinstance(r, ledger.HoldResult)]
    refused = [r for r in results if isinstance(r, InsufficientTokens)]
    assert len(placed) == 24 and len(refused) == 26
    assert len(placed) + len(refused) == 50  # nothing else went wrong
    with Session(engine) as session:
        balance = ledger.balance(session, account)
        assert (balance.posted, balance.held, balance.available) == (120, 120, 0)
        assert_consistent(session, account)


def test_a_purchase_credited_during_20_debits_loses_nothing(engine, account):
    with Session(engine) as session:
        ledger.grant(session, account, 100, key="grant:100")
        session.commit()

    def work(session: Session, i: int) -> Any:
        if i == 20:
            return ledger.purchase(session, account, 100, 20, key="checkout:cs_race")
        placed = ledger.hold(session, account, 5, key=f"hold:{i}")
        return ledger.capture(session, placed.hold_id, key=f"debit:{i}")

    results = all_at_once(engine, 21, work)

    assert not [r for r in results if isinstance(r, Exception)]
    with Session(engine) as session:
        balance = ledger.balance(session, account)
        assert balance.posted == 100 - 20 * 5 + 120
        # The 20 debits took exactly the 100 free tokens, whatever the interleaving.
        assert balance.by_bucket == {"paid": 100, "bonus": 20}
        debits = session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "debit")).all()
        assert sum(d.amount for d in debits) == -100
        assert_consistent(session, account)


def test_the_same_credit_posted_10_times_concurrently_credits_once(engine, account):
    results = all_at_once(
        engine, 10, lambda s, i: ledger.purchase(s, account, 100, 20, key="checkout:cs_once")
    )

    assert not [r for r in results if isinstance(r, Exception)]
    first = [r for r in results if not r.purchase.replayed]
    assert len(first) == 1
    assert {r.purchase.entry_ids for r in results} == {first[0].purchase.entry_ids}
    with Session(engine) as session:
        assert ledger.balance(session, account).posted == 120
        assert_consistent(session, account)


def test_concurrent_captures_and_voids_of_one_hold_settle_it_once(engine, account):
    with Session(engine) as session:
        ledger.grant(session, account, 50, key="grant:50")
        placed = ledger.hold(session, account, 5, key="hold:once")
        session.commit()

    def work(session: Session, i: int) -> Any:
        if i % 2:
            return ledger.void(session, placed.hold_id)
        return ledger.capture(session, placed.hold_id, key=f"debit:once:{i}")

    results = all_at_once(engine, 10, work)

    won = [
        r for r in results
        if not isinstance(r, Exception) and not getattr(r, "replayed", False)
    ]
    assert len(won) == 1
    with Session(engine) as session:
        balance = ledger.balance(session, account)
        assert balance.held == 0
        assert balance.posted in (45, 50)
        assert_consistent(session, account)


def test_concurrent_repeats_of_one_key_all_get_the_first_result(engine, account):
    """Clawback, negative adjustment and capture, each sent 6 times at once with one key:
    one posts, the others return its result; nobody gets an error."""
    with Session(engine) as session:
        ledger.purchase(session, account, 100, 0, key="checkout:cs_keys")
        placed = ledger.hold(session, account, 5, key="hold:keys")
        session.commit()

    for work in (
        lambda s, i: ledger.clawback(s, "checkout:cs_keys", 40, key="refund:keys"),
        lambda s, i: ledger.adjust(s, account, -5, key="adjust:keys", reason="r", actor="t"),
        lambda s, i: ledger.capture(s, placed.hold_id, key="debit:keys"),
    ):
        results = all_at_once(engine, 6, work)
        assert not [r for r in results if isinstance(r, Exception)], results
        posted = [getattr(r, "posted", r) for r in results]
        assert len({p.entry_ids for p in posted}) == 1
        assert sum(not p.replayed for p in posted) == 1

    with Session(engine) as session:
        assert ledger.balance(session, account).posted == 100 - 40 - 5 - 5
        assert_consistent(session, account)


def test_credits_and_holds_race_captures_and_sweeps_without_deadlock(engine, account):
    """Half the workers credit and then hold (taking the account lock before sweeping stale
    holds); the other half capture or void holds of the same account. Every lock is taken
    account first, so PostgreSQL never has to break a deadlock."""
    with Session(engine) as session:
        ledger.grant(session, account, 200, key="grant:200")
        # Holds that are already past their TTL: the racing hold() calls sweep them.
        past = datetime.now(UTC) - timedelta(hours=1)
        holds = [ledger.hold(session, account, 5, key=f"hold:pre:{i}", ttl_seconds=60,
                             now=past).hold_id
                 for i in range(10)]
        session.commit()

    def work(session: Session, i: int) -> Any:
        if i % 2:
            ledger.grant(session, account, 1, key=f"grant:race:{i}")
            return ledger.hold(session, account, 5, key=f"hold:race:{i}")
        hold_id = holds[i // 2]
        if i % 4:
            return ledger.void(session, hold_id)
        return ledger.capture(session, hold_id, key=f"debit:race:{i}")

    results = all_at_once(engine, 20, work)
    # A capture of an expired hold is refused; nothing else may fail (no DeadlockDetected).
    errors = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(e, HoldNotPending) for e in errors), errors
    with Session(engine) as session:
        assert ledger.balance(session, account).held == 10 * 5  # the 10 new holds
        assert_consistent(session, account)
