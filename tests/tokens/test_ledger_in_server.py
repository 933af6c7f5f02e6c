"""On PostgreSQL, `hold`, `capture` and `debit` do their common case in one statement each:
the hold's reservation and INSERT as data-modifying CTEs (`tokens.ledger._RESERVE_AND_PLACE`),
the capture and the debit in migration 0022's PL/pgSQL functions `ledger_capture` and
`ledger_debit`. These tests check that they are one statement, and that the functions post
exactly what the Python statements post (on SQLite, and on PostgreSQL whenever a function
refuses), lot by lot."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tests.support.statements import counted
from tests.tokens.ledger_checks import assert_consistent
from tokens import ledger
from tokens.errors import HoldNotPending, InsufficientTokens, InvalidAmount, KeyReused
from tokens.ledger import Account, Hold, LedgerEntry, Lot

pytestmark = pytest.mark.backends("postgresql")

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
_serial = itertools.count()

# A lot: its bucket, its tokens and when it expires (hours after NOV; None: never; negative:
# already expired when the hold is placed, so no capture may draw on it).
lots_st = st.lists(
    st.tuples(st.sampled_from(ledger.BUCKETS), st.integers(min_value=1, max_value=40),
              st.sampled_from([None, -1, 1, 2, 48, 24 * 40])),
    min_size=1, max_size=6)


def _account_with(session, lots) -> int:
    account_id = ledger.open_account(session, NOV - timedelta(hours=2)).id
    for bucket, tokens, hours in lots:
        expires = None if hours is None else NOV + timedelta(hours=hours)
        ledger.grant(session, account_id, tokens, key=f"grant:t:{next(_serial)}",
                     bucket=bucket, expires_at=expires, now=NOV - timedelta(hours=2))
    return account_id


def _state(session, account_id: int, hold_id: int | None, key: str):
    """What a capture or a debit (`hold_id` None) changed, without the ids that differ
    between two accounts."""
    session.expire_all()
    account = session.get(Account, account_id)
    hold = session.get(Hold, hold_id) if hold_id is not None else None
    lots = session.scalars(select(Lot).where(Lot.account_id == account_id)
                           .order_by(Lot.id)).all()
    lot_rank = {lot.id: n for n, lot in enumerate(lots)}
    entries = session.scalars(select(LedgerEntry).where(LedgerEntry.operation_key == key)
                              .order_by(LedgerEntry.id)).all()
    return {
        "account": (account.balance, account.held),
        "hold": (hold.status, hold.captured, hold.settled_at) if hold else None,
        "lots": [(lot.bucket, lot.remaining) for lot in lots],
        "entries": [(e.kind, e.bucket, e.amount, e.idempotency_key.removeprefix(key),
                     lot_rank[e.lot_id],
                     e.hold_id if hold_id is None else e.hold_id == hold_id,
                     e.memo, e.actor, e.created_at)
                    for e in entries],
    }


def _debit(session, account_id: int, tokens: int, tag: str):
    """Debit `tokens` at once; (result or error, state)."""
    key = f"debit:{tag}"
    try:
        posted = ledger.debit(session, account_id, tokens, key=key, memo="meal_plan", now=NOV)
        outcome = ("debited", posted.amount, posted.by_bucket, len(posted.entry_ids))
    except InsufficientTokens as refused:
        outcome = ("refused", refused.requested, refused.available)
    session.commit()
    state = _state(session, account_id, None, key)
    return outcome, state


def _capture(session, account_id: int, hold_tokens: int, take: int | None, tag: str):
    """Hold `hold_tokens` and capture `take` of them (None: all); (result or error, state)."""
    placed = ledger.hold(session, account_id, hold_tokens, key=f"hold:{tag}", memo="recipe",
                         now=NOV)
    key = f"debit:{tag}"
    try:
        result = ledger.capture(session, placed.hold_id, key=key, amount=take,
                                now=NOV + timedelta(seconds=5))
        outcome = ("captured", result.posted.amount, result.posted.by_bucket, result.released,
                   len(result.posted.entry_ids))
    except (InvalidAmount, HoldNotPending, KeyReused) as refused:
        outcome = ("refused", type(refused).__name__)
    session.commit()
    return outcome, _state(session, account_id, placed.hold_id, key)


def test_a_hold_and_its_capture_are_one_statement_each(session):
    account_id = _account_with(session, [("free", 10, None), ("paid", 30, None)])
    session.commit()
    with counted() as held:
        placed = ledger.hold(session, account_id, 15, key="hold:one", now=NOV)
    with counted() as captured:
        result = ledger.capture(session, placed.hold_id, key="debit:one", now=NOV)
    session.commit()
    assert len(held) == 1 and held[0].lstrip().upper().startswith("WITH"), held
    assert len(captured) == 1 and "ledger_capture(" in captured[0], captured
    assert result.posted.by_bucket == (("free", -10), ("paid", -5))
    assert result.released == 0
    assert_consistent(session, account_id, NOV)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lots=lots_st, hold_tokens=st.integers(min_value=1, max_value=60),
       take=st.one_of(st.none(), st.integers(min_value=-1, max_value=70)))
def test_the_function_posts_what_the_statements_post(session, monkeypatch, lots, hold_tokens,
                                                     take):
    """The same lots, hold and capture on two accounts: one through `ledger_capture`, one
    through the Python statements; the entries, lots, account and hold end the same."""
    in_server = _account_with(session, lots)
    in_python = _account_with(session, lots)
    session.commit()
    # `hold` refuses before any capture; its tests are elsewhere.
    assume(hold_tokens <= ledger.balance(session, in_server, NOV).available)
    tag = next(_serial)
    by_server = _capture(session, in_server, hold_tokens, take, f"s{tag}")
    with monkeypatch.context() as patched:
        patched.setattr(ledger, "on_postgresql", lambda _session: False)
        by_python = _capture(session, in_python, hold_tokens, take, f"p{tag}")
    assert by_server == by_python
    assert_consistent(session, in_server, NOV)
    assert_consistent(session, in_python, NOV)


def test_a_debit_is_one_statement(session):
    account_id = _account_with(session, [("bonus", 4, 48), ("free", 3, None)])
    session.commit()
    with counted() as sent:
        posted = ledger.debit(session, account_id, 5, key="debit:once", now=NOV)
    session.commit()
    assert len(sent) == 1 and "ledger_debit(" in sent[0], sent
    assert posted.by_bucket == (("free", -3), ("bonus", -2))
    again = ledger.debit(session, account_id, 5, key="debit:once", now=NOV)
    assert again.replayed and again.entry_ids == posted.entry_ids
    assert_consistent(session, account_id, NOV)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lots=lots_st, tokens=st.integers(min_value=1, max_value=80),
       held=st.integers(min_value=0, max_value=20))
def test_the_debit_function_posts_what_the_statements_post(session, monkeypatch, lots, tokens,
                                                           held):
    """The same lots (some due to expire, so that the function leaves them to the
    statements), a pending hold and a debit on two accounts, one through `ledger_debit`."""
    in_server = _account_with(session, lots)
    in_python = _account_with(session, lots)
    for account_id in (in_server, in_python):
        if held and ledger.balance(session, account_id, NOV).available >= held:
            ledger.hold(session, account_id, held, key=f"hold:{account_id}", now=NOV)
    session.commit()
    tag = next(_serial)
    by_server = _debit(session, in_server, tokens, f"s{tag}")
    with monkeypatch.context() as patched:
        patched.setattr(ledger, "on_postgresql", lambda _session: False)
        by_python = _debit(session, in_python, tokens, f"p{tag}")
    assert by_server == by_python
    assert_consistent(session, in_server, NOV)
    assert_consistent(session, in_python, NOV)


def test_a_refused_capture_in_the_function_writes_nothing(session):
    """Its key already posted by another operation: the function returns no row and the
    statements of `capture` raise `KeyReused`, with the hold still pending."""
    account_id = _account_with(session, [("paid", 20, None)])
    ledger.debit(session, account_id, 1, key="debit:taken", now=NOV)
    placed = ledger.hold(session, account_id, 5, key="hold:taken", now=NOV)
    session.commit()
    with pytest.raises(KeyReused):
        ledger.capture(session, placed.hold_id, key="debit:taken", now=NOV)
    session.rollback()
    assert session.get(Hold, placed.hold_id).status == "pending"
    assert ledger.balance(session, account_id, NOV).posted == 19
    assert_consistent(session, account_id, NOV)
