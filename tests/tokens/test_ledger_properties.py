"""Property tests: random histories of ledger operations across month boundaries, frozen time.

After every step: the posted balance is the sum of the entries, held is the sum of pending
holds, every lot agrees with its entries, the available balance is never negative, and no
expired token survives a sweep unless a pending hold reserves it. Replaying any earlier
operation's key changes nothing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Integer, bindparam, func, select

from tests.tokens.ledger_checks import assert_consistent, assert_expiry_honoured
from tokens import ledger
from tokens.base import UTCDateTime
from tokens.errors import HoldNotPending, InsufficientTokens, TokensHeld
from tokens.ledger import LedgerEntry, Lot

START = datetime(2026, 10, 28, 9, 0, tzinfo=UTC)
tokens_st = st.integers(min_value=1, max_value=60)
index_st = st.integers(min_value=0, max_value=50)

operations = st.lists(
    st.one_of(
        st.tuples(st.just("monthly")),
        st.tuples(st.just("grant"), tokens_st, st.sampled_from(ledger.BUCKETS),
                  st.sampled_from([None, 90, 600, 3600, 86400, 20 * 86400])),
        st.tuples(st.just("purchase"), tokens_st, st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("hold"), st.integers(min_value=1, max_value=10),
                  st.integers(min_value=30, max_value=900)),
        st.tuples(st.just("capture"), index_st, st.integers(min_value=0, max_value=100)),
        st.tuples(st.just("void"), index_st),
        st.tuples(st.just("debit"), st.integers(min_value=1, max_value=10)),
        st.tuples(st.just("expire_holds")),
        st.tuples(st.just("clawback"), index_st, tokens_st),
        st.tuples(st.just("adjust"), st.integers(min_value=-30, max_value=30).filter(bool)),
        st.tuples(st.just("advance"),
                  st.sampled_from([60, 120, 3600, 86400, 9 * 86400, 31 * 86400])),
        st.tuples(st.just("replay"), index_st),
    ),
    min_size=1,
    max_size=40,
)


def snapshot(session, account_id: int, now: datetime) -> tuple:
    total = session.scalar(select(func.count()).select_from(LedgerEntry))
    balance = ledger.balance(session, account_id, now)
    return total, balance.posted, balance.held, balance.available


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=operations)
def test_random_histories_keep_every_invariant(session, history):
    account = ledger.open_account(session, START).id
    session.commit()
    now = START
    holds: list[int] = []
    purchases: list[str] = []
    done: list[tuple] = []  # (callable, expected replay check) of keyed operations

    def run(op: tuple) -> None:
        nonlocal now
        name = op[0]
        key = f"{name}:{uuid.uuid4().hex}"
        if name == "monthly":
            ledger.grant_monthly_allowance(session, account, 100, now)
            done.append(("monthly", now))
        elif name == "grant":
            _, tokens, bucket, seconds = op
            expires = None if seconds is None else now + timedelta(seconds=seconds)
            ledger.grant(session, account, tokens, key=key, bucket=bucket, expires_at=expires,
                         now=now)
            done.append(("grant", key, tokens, bucket, expires))
        elif name == "purchase":
            _, tokens, bonus = op
            ledger.purchase(session, account, tokens, bonus, key=key, now=now)
            purchases.append(key)
            done.append(("purchase", key, tokens, bonus))
        elif name == "hold":
            _, tokens, ttl = op
            try:
                placed = ledger.hold(session, account, tokens, key=key, ttl_seconds=ttl, now=now)
            except InsufficientTokens as refused:
                assert refused.available < tokens
                assert refused.available == ledger.balance(session, account, now).available
                return
            holds.append(placed.hold_id)
            done.append(("hold", key, tokens))
        elif name == "capture" and holds:
            _, index, percent = op
            hold_id = holds[index % len(holds)]
            amount = session.get(ledger.Hold, hold_id).amount
            take = max(1, amount * percent // 100)
            try:
                ledger.capture(session, hold_id, key=key, amount=take, now=now)
            except HoldNotPending:
                return
            done.append(("capture", key, hold_id, take))
        elif name == "debit":
            try:
                posted = ledger.debit(session, account, op[1], key=key, now=now)
            except InsufficientTokens as refused:
                assert refused.available < op[1]
                assert refused.available == ledger.balance(session, account, now).available
                return
            assert posted.amount == op[1]
            done.append(("debit", key, op[1]))
        elif name == "void" and holds:
            try:
                ledger.void(session, holds[op[1] % len(holds)], now=now)
            except HoldNotPending:
                return
        elif name == "expire_holds":
            ledger.expire_holds(session, now)
        elif name == "clawback" and purchases:
            _, index, tokens = op
            credit_key = purchases[index % len(purchases)]
            lot = session.scalars(
                select(Lot).join(LedgerEntry, Lot.credit_entry_id == LedgerEntry.id)
                .where(LedgerEntry.idempotency_key == credit_key)
            ).one()
            before = lot.remaining
            try:
                clawed = ledger.clawback(session, credit_key, tokens, key=key, now=now)
            except TokensHeld:
                current = ledger.balance(session, account, now)
                assert min(tokens, before) > current.posted - current.held
                return
            assert clawed.amount == min(tokens, before)
            done.append(("clawback", key, credit_key, tokens))
        elif name == "adjust":
            try:
                ledger.adjust(session, account, op[1], key=key, reason="property test",
                              actor="test", now=now)
            except InsufficientTokens:
                assert op[1] < 0
                return
            done.append(("adjust", key, op[1]))
        elif name == "advance":
            now += timedelta(seconds=op[1])
        elif name == "replay" and done:
            replay(done[op[1] % len(done)])

    def replay(record: tuple) -> None:
        before = snapshot(session, account, now)
        name = record[0]
        if name == "monthly":
            result = ledger.grant_monthly_allowance(session, account, 100, record[1])
            assert result.replayed
        elif name == "grant":
            _, key, tokens, bucket, expires = record
            assert ledger.grant(session, account, tokens, key=key, bucket=bucket,
                                expires_at=expires, now=now).replayed
        elif name == "purchase":
            _, key, tokens, bonus = record
            again = ledger.purchase(session, account, tokens, bonus, key=key, now=now)
            assert again.purchase.replayed
        elif name == "hold":
            _, key, tokens = record
            assert ledger.hold(session, account, tokens, key=key, now=now).replayed
        elif name == "capture":
            _, key, hold_id, take = record
            assert ledger.capture(session, hold_id, key=key, amount=take, now=now).posted.replayed
        elif name == "debit":
            _, key, tokens = record
            assert ledger.debit(session, account, tokens, key=key, now=now).replayed
        elif name == "clawback":
            _, key, credit_key, tokens = record
            result = ledger.clawback(session, credit_key, tokens, key=key, now=now)
            assert result.replayed or result.amount == 0
        elif name == "adjust":
            _, key, tokens = record
            assert ledger.adjust(session, account, tokens, key=key, reason="property test",
                                 actor="test", now=now).replayed
        assert snapshot(session, account, now) == before

    def assert_purchased_matches_balance() -> None:
        """`ledger.purchased_available`, the SQL the router reads with its lock, agrees with
        `balance`: the unexpired tokens of every bucket but "free"."""
        in_sql = session.scalar(select(ledger.purchased_available(
            bindparam("account_id", account, type_=Integer()),
            bindparam("now", now, type_=UTCDateTime()))))
        by_bucket = ledger.balance(session, account, now).by_bucket
        assert in_sql == sum(n for bucket, n in by_bucket.items() if bucket != "free")

    for op in history:
        run(op)
        session.commit()
        assert_consistent(session, account, now)
        assert_purchased_matches_balance()
        # Expiry is honoured: a sweep leaves only what older pending holds may capture.
        assert_expiry_honoured(session, account, now)
        session.commit()
        assert_consistent(session, account, now)
