"""The ledger, as worked examples in plain words, plus the database's own guarantees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from tests.tokens.ledger_checks import assert_consistent
from tokens import ledger
from tokens.errors import (
    HoldNotPending,
    InsufficientTokens,
    InvalidAmount,
    KeyReused,
    TokensHeld,
    UnknownAccount,
    UnknownEntry,
)
from tokens.ledger import Account, Hold, LedgerEntry, Lot

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DEC = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)


@pytest.fixture
def account(session) -> int:
    account_id = ledger.open_account(session, NOV).id
    session.commit()
    return account_id


def spend(session, account_id: int, tokens: int, ref: str, now: datetime = NOV):
    """Hold and capture, as the router does for one answered request."""
    placed = ledger.hold(session, account_id, tokens, key=f"hold:{ref}", now=now)
    return ledger.capture(session, placed.hold_id, key=f"debit:{ref}", now=now)


def available(session, account_id: int, now: datetime = NOV) -> int:
    return ledger.balance(session, account_id, now).available


def entries(session, account_id: int) -> list[tuple[str, str, int]]:
    rows = session.scalars(
        select(LedgerEntry).where(LedgerEntry.account_id == account_id).order_by(LedgerEntry.id)
    ).all()
    return [(e.kind, e.bucket, e.amount) for e in rows]


def test_ana_gets_her_free_tokens_and_pays_5_for_a_meal_plan(session, account):
    """Ana texts for the first time in November: 100 free tokens, expiring at the month's end.
    She asks for a meal plan: 5 tokens are held, the plan is sent, the hold is captured."""
    ledger.grant_monthly_allowance(session, account, 100, NOV)
    placed = ledger.hold(session, account, 5, key="hold:SM1", now=NOV)
    assert (placed.status, available(session, account)) == ("pending", 95)
    assert ledger.balance(session, account, NOV).posted == 100  # held, not yet spent
    captured = ledger.capture(session, placed.hold_id, key="debit:SM1", now=NOV)
    session.commit()
    assert captured.posted.by_bucket == (("free", -5),) and captured.released == 0
    assert entries(session, account) == [("grant", "free", 100), ("debit", "free", -5)]
    debit = session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "debit")).one()
    grant = session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "grant")).one()
    lot = session.get(Lot, debit.lot_id)
    assert lot.credit_entry_id == grant.id  # the 5 tokens came from November's allowance
    assert grant.expires_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert available(session, account) == 95
    assert_consistent(session, account, NOV)


def test_ben_buys_a_pack_and_spends_free_then_bonus_then_paid(session, account):
    """Ben has 10 free tokens left and buys the Starter pack (100 + 20 bonus). Spending 40
    takes the 10 free, then the 20 bonus, then 10 of the 100 paid."""
    ledger.grant(session, account, 10, key="grant:free", expires_at=DEC)
    bought = ledger.purchase(session, account, 100, 20, key="checkout:cs_1", memo="Starter")
    spent = spend(session, account, 40, "SM2")
    session.commit()
    bonus = session.get(LedgerEntry, bought.bonus.entry_ids[0])
    assert bonus.parent_id == bought.purchase.entry_ids[0]
    assert bonus.idempotency_key == "checkout:cs_1:bonus"
    assert spent.posted.by_bucket == (("free", -10), ("bonus", -20), ("paid", -10))
    keys = session.scalars(
        select(LedgerEntry.idempotency_key)
        .where(LedgerEntry.kind == "debit")
        .order_by(LedgerEntry.id)
    ).all()
    assert keys == ["debit:SM2", "debit:SM2#2", "debit:SM2#3"]
    assert ledger.balance(session, account, NOV).by_bucket == {"paid": 90}
    assert_consistent(session, account, NOV)


def test_within_a_bucket_the_earliest_expiry_goes_first(session, account):
    ledger.grant(session, account, 5, key="sub:late", bucket="subscription",
                 expires_at=NOV + timedelta(days=20))
    ledger.grant(session, account, 5, key="sub:never", bucket="subscription")
    ledger.grant(session, account, 5, key="sub:soon", bucket="subscription",
                 expires_at=NOV + timedelta(days=2))
    spend(session, account, 8, "SM3")
    session.commit()
    left = {
        session.get(LedgerEntry, lot.credit_entry_id).idempotency_key: lot.remaining
        for lot in session.scalars(select(Lot))
    }
    assert left == {"sub:soon": 0, "sub:late": 2, "sub:never": 5}


def test_a_partial_capture_releases_the_rest(session, account):
    ledger.grant(session, account, 20, key="g")
    placed = ledger.hold(session, account, 5, key="hold:SM4", now=NOV)
    captured = ledger.capture(session, placed.hold_id, key="debit:SM4", amount=3, now=NOV)
    session.commit()
    assert (captured.posted.amount, captured.released) == (3, 2)
    assert available(session, account) == 17
    assert session.get(Hold, placed.hold_id).status == "captured"
    assert_consistent(session, account, NOV)


def test_a_failed_request_voids_its_hold_and_posts_nothing(session, account):
    ledger.grant(session, account, 20, key="g")
    placed = ledger.hold(session, account, 5, key="hold:SM5", now=NOV)
    voided = ledger.void(session, placed.hold_id, now=NOV)
    again = ledger.void(session, placed.hold_id, now=NOV)
    session.commit()
    assert (voided.status, voided.replayed, again.replayed) == ("voided", False, True)
    assert entries(session, account) == [("grant", "free", 20)]
    assert available(session, account) == 20
    with pytest.raises(HoldNotPending):
        ledger.capture(session, placed.hold_id, key="debit:SM5", now=NOV)


def test_a_crash_between_hold_and_capture_releases_after_the_ttl(session, account):
    """The worker died after the hold: nobody captures or voids. After the TTL the hold
    expires; a late capture is refused, so the person pays nothing."""
    ledger.grant(session, account, 20, key="g")
    placed = ledger.hold(session, account, 5, key="hold:SM6", ttl_seconds=600, now=NOV)
    assert ledger.expire_holds(session, NOV + timedelta(seconds=599)) == 0
    assert ledger.expire_holds(session, NOV + timedelta(seconds=600)) == 1
    session.commit()
    assert session.get(Hold, placed.hold_id).status == "expired"
    assert available(session, account) == 20
    with pytest.raises(HoldNotPending):
        ledger.capture(session, placed.hold_id, key="debit:SM6", now=NOV)
    captured = ledger.hold(session, account, 5, key="hold:SM6", now=NOV)
    assert captured.replayed and captured.status == "expired"  # the key stays spent
    assert_consistent(session, account, NOV)


def test_a_new_hold_expires_stale_holds_of_the_account_first(session, account):
    ledger.grant(session, account, 5, key="g")
    ledger.hold(session, account, 5, key="hold:old", ttl_seconds=60, now=NOV)
    later = NOV + timedelta(minutes=2)
    placed = ledger.hold(session, account, 5, key="hold:new", now=later)
    session.commit()
    assert placed.status == "pending"
    assert_consistent(session, account, later)


def test_holds_never_overdraw(session, account):
    ledger.grant(session, account, 12, key="g")
    ledger.hold(session, account, 5, key="hold:a", now=NOV)
    ledger.hold(session, account, 5, key="hold:b", now=NOV)
    with pytest.raises(InsufficientTokens) as refused:
        ledger.hold(session, account, 5, key="hold:c", now=NOV)
    session.commit()
    assert (refused.value.requested, refused.value.available) == (5, 2)
    assert session.scalars(select(Hold).where(Hold.idempotency_key == "hold:c")).all() == []
    assert_consistent(session, account, NOV)


def test_every_operation_is_a_no_op_when_replayed(session, account):
    first = [
        ledger.grant(session, account, 50, key="g1"),
        ledger.purchase(session, account, 100, 20, key="p1").purchase,
    ]
    placed = ledger.hold(session, account, 5, key="h1", now=NOV)
    captured = ledger.capture(session, placed.hold_id, key="d1", now=NOV)
    clawed = ledger.clawback(session, "p1", 10, key="c1")
    adjusted = ledger.adjust(session, account, -3, key="a1", reason="typo", actor="cli:ops")
    session.commit()
    before = entries(session, account), available(session, account)

    assert ledger.grant(session, account, 50, key="g1").replayed
    again = ledger.purchase(session, account, 100, 20, key="p1")
    assert again.purchase.replayed and again.bonus.replayed
    assert again.purchase.entry_ids == first[1].entry_ids
    assert ledger.hold(session, account, 5, key="h1", now=NOV).replayed
    replayed_capture = ledger.capture(session, placed.hold_id, key="d1", now=NOV)
    assert replayed_capture.posted.replayed
    assert replayed_capture.posted.entry_ids == captured.posted.entry_ids
    assert ledger.clawback(session, "p1", 10, key="c1") == clawed.__class__(
        **{**clawed.__dict__, "replayed": True}
    )
    assert ledger.adjust(session, account, -3, key="a1", reason="typo",
                         actor="cli:ops").entry_ids == adjusted.entry_ids
    session.commit()
    assert (entries(session, account), available(session, account)) == before
    assert_consistent(session, account, NOV)


def test_a_clawback_takes_at_most_the_unspent_tokens_of_that_purchase(session, account):
    """Cleo buys 100 tokens and spends 70 of them; the charge is refunded. Only the 30 she
    has not spent can come back, and a second refund of the same charge takes nothing more."""
    ledger.purchase(session, account, 100, 0, key="checkout:cs_2")
    spend(session, account, 70, "SM7")
    clawed = ledger.clawback(session, "checkout:cs_2", 100, key="refund:ch_1:1", memo="refund")
    more = ledger.clawback(session, "checkout:cs_2", 100, key="refund:ch_1:2")
    session.commit()
    assert (clawed.amount, more.amount, more.entry_ids) == (30, 0, ())
    entry = session.get(LedgerEntry, clawed.entry_ids[0])
    purchase = session.scalars(
        select(LedgerEntry).where(LedgerEntry.idempotency_key == "checkout:cs_2")
    ).one()
    assert (entry.kind, entry.amount, entry.corrects_id) == ("clawback", -30, purchase.id)
    assert available(session, account) == 0
    assert_consistent(session, account, NOV)
    with pytest.raises(UnknownEntry):
        ledger.clawback(session, "checkout:nope", 5, key="refund:x")


def test_a_clawback_waits_for_tokens_reserved_by_a_pending_hold(session, account):
    ledger.purchase(session, account, 10, 0, key="checkout:cs_3")
    placed = ledger.hold(session, account, 4, key="hold:SM8", now=NOV)
    with pytest.raises(TokensHeld):
        ledger.clawback(session, "checkout:cs_3", 10, key="refund:ch_3:1")
    assert_consistent(session, account, NOV)
    ledger.void(session, placed.hold_id, now=NOV)
    clawed = ledger.clawback(session, "checkout:cs_3", 10, key="refund:ch_3:1")
    session.commit()
    assert clawed.amount == 10
    assert available(session, account) == 0
    assert_consistent(session, account, NOV)


def test_adjustments_need_a_reason_and_an_actor(session, account):
    credit = ledger.adjust(session, account, 10, key="adj:1", reason="goodwill", actor="cli:ops")
    debit = ledger.adjust(session, account, -4, key="adj:2", reason="duplicate grant",
                          actor="cli:ops")
    session.commit()
    assert (credit.by_bucket, debit.by_bucket) == ((("bonus", 10),), (("bonus", -4),))
    row = session.get(LedgerEntry, debit.entry_ids[0])
    assert (row.kind, row.memo, row.actor) == ("adjustment", "duplicate grant", "cli:ops")
    with pytest.raises(InvalidAmount):
        ledger.adjust(session, account, 5, key="adj:3", reason=" ", actor="cli:ops")
    with pytest.raises(InvalidAmount):
        ledger.adjust(session, account, 0, key="adj:4", reason="x", actor="cli:ops")
    with pytest.raises(InsufficientTokens):
        ledger.adjust(session, account, -7, key="adj:5", reason="x", actor="cli:ops")
    session.rollback()
    assert_consistent(session, account, NOV)


def test_november_free_tokens_expire_when_december_starts(session, account):
    """Dora keeps 60 of November's free tokens and 5 paid ones. Her first message in December
    expires the 60 and grants December's 100; the paid 5 stay."""
    ledger.grant_monthly_allowance(session, account, 100, NOV)
    spend(session, account, 40, "SM9")
    ledger.purchase(session, account, 5, 0, key="checkout:cs_4")
    session.commit()
    assert available(session, account, DEC) == 5  # a pure read already leaves them out
    december = ledger.grant_monthly_allowance(session, account, 100, DEC)
    session.commit()
    assert not december.replayed
    assert entries(session, account)[-2:] == [("expiry", "free", -60), ("grant", "free", 100)]
    assert ledger.balance(session, account, DEC).by_bucket == {"free": 100, "paid": 5}
    assert ledger.grant_monthly_allowance(session, account, 100, DEC).replayed
    assert_consistent(session, account, DEC)


def test_a_hold_across_the_month_boundary_keeps_its_tokens(session, account):
    """A hold placed at 23:59 on Nov 30 is captured at 00:00:30 on Dec 1: the sweep in
    between leaves the reserved November tokens, and the capture spends them."""
    ledger.grant_monthly_allowance(session, account, 100, NOV)
    late = datetime(2026, 11, 30, 23, 59, 50, tzinfo=UTC)
    placed = ledger.hold(session, account, 5, key="hold:SM10", now=late)
    ledger.grant_monthly_allowance(session, account, 100, DEC)
    assert available(session, account, DEC) == 100
    captured = ledger.capture(session, placed.hold_id, key="debit:SM10", now=DEC)
    ledger.expire_lots(session, account, DEC)
    session.commit()
    november = session.scalars(select(Lot).order_by(Lot.id)).first()
    assert captured.posted.by_bucket == (("free", -5),)
    assert session.get(LedgerEntry, captured.posted.entry_ids[0]).lot_id == november.id
    assert november.remaining == 0
    assert ledger.balance(session, account, DEC).by_bucket == {"free": 100}
    assert_consistent(session, account, DEC)


def test_expired_tokens_kept_for_an_old_hold_never_back_a_new_one(session, account):
    """Eve's hold h1 from Nov 30 protects 5 November tokens past the expiry. A hold h2 placed
    in December is backed by December tokens only: when h1 is voided, those 5 expire, and
    h2's capture never spends them."""
    ledger.grant_monthly_allowance(session, account, 100, NOV)
    late = datetime(2026, 11, 30, 23, 59, 50, tzinfo=UTC)
    h1 = ledger.hold(session, account, 5, key="hold:h1", now=late)
    ledger.grant_monthly_allowance(session, account, 100, DEC)
    h2 = ledger.hold(session, account, 5, key="hold:h2", now=DEC)
    ledger.void(session, h1.hold_id, now=DEC)
    assert available(session, account, DEC) == 95
    with pytest.raises(InsufficientTokens):
        ledger.hold(session, account, 96, key="hold:too-much", now=DEC)
    captured = ledger.capture(session, h2.hold_id, key="debit:h2", now=DEC)
    session.commit()
    december = session.scalars(
        select(Lot).join(LedgerEntry, Lot.credit_entry_id == LedgerEntry.id)
        .where(LedgerEntry.idempotency_key.like("%2026-12"))
    ).one()
    assert [session.get(LedgerEntry, i).lot_id for i in captured.posted.entry_ids] == [
        december.id
    ]
    assert ledger.balance(session, account, DEC) == ledger.Balance(
        posted=95, held=0, available=95, by_bucket={"free": 95}
    )
    assert_consistent(session, account, DEC)


def test_a_capture_past_the_hold_expiry_is_refused_even_before_a_sweep(session, account):
    ledger.grant(session, account, 20, key="g")
    placed = ledger.hold(session, account, 5, key="hold:late", ttl_seconds=60, now=NOV)
    session.commit()
    with pytest.raises(HoldNotPending, match="past its expiry"):
        ledger.capture(session, placed.hold_id, key="debit:late",
                       now=NOV + timedelta(seconds=61))
    session.rollback()
    assert session.get(Hold, placed.hold_id).status == "pending"
    assert ledger.expire_holds(session, NOV + timedelta(seconds=61)) == 1


def test_a_capture_key_cannot_replay_another_operation(session, account):
    ledger.grant(session, account, 50, key="grant:g")
    first = ledger.hold(session, account, 5, key="hold:1", now=NOV)
    second = ledger.hold(session, account, 5, key="hold:2", now=NOV)
    ledger.capture(session, first.hold_id, key="debit:1", now=NOV)
    with pytest.raises(KeyReused):
        ledger.capture(session, second.hold_id, key="debit:1", now=NOV)
    with pytest.raises(KeyReused):
        ledger.capture(session, second.hold_id, key="grant:g", now=NOV)
    assert session.get(Hold, second.hold_id).status == "pending"


def test_a_purchase_and_its_bonus_are_clawed_back_as_two_credits(session, account):
    ledger.purchase(session, account, 100, 20, key="checkout:cs_6")
    paid = ledger.clawback(session, "checkout:cs_6", 100, key="refund:ch_6:paid")
    bonus = ledger.clawback(session, "checkout:cs_6:bonus", 20, key="refund:ch_6:bonus")
    session.commit()
    assert (paid.by_bucket, bonus.by_bucket) == ((("paid", -100),), (("bonus", -20),))
    assert available(session, account) == 0
    assert_consistent(session, account, NOV)


def test_history_explains_every_token_with_a_running_balance(session, account):
    ledger.grant_monthly_allowance(session, account, 100, NOV)
    spend(session, account, 5, "SM11")
    ledger.purchase(session, account, 100, 20, key="checkout:cs_5")
    session.commit()
    lines = ledger.history(session, account, limit=10)
    assert [(line.entry.kind, line.running_balance) for line in lines] == [
        ("grant", 100), ("debit", 95), ("purchase", 195), ("bonus", 215),
    ]
    assert [line.running_balance for line in ledger.history(session, account, limit=2)] == [
        195, 215,
    ]


@pytest.mark.parametrize("amount", [0, -3, 2.5, True])
def test_amounts_must_be_positive_integers(session, account, amount):
    with pytest.raises(InvalidAmount):
        ledger.grant(session, account, amount, key="bad")
    with pytest.raises(InvalidAmount):
        ledger.hold(session, account, amount, key="bad")


def test_unknown_accounts_are_refused(session):
    with pytest.raises(UnknownAccount):
        ledger.grant(session, 999_999, 5, key="nobody")
    with pytest.raises(UnknownAccount):
        ledger.hold(session, 999_999, 5, key="nobody")
    with pytest.raises(UnknownAccount):
        ledger.purchase(session, 999_999, 5, key="nobody")
    with pytest.raises(UnknownAccount):
        ledger.balance(session, 999_999)


def test_the_database_refuses_what_must_never_be(session, account):
    ledger.grant(session, account, 5, key="g")
    placed = ledger.hold(session, account, 2, key="h", now=NOV)
    session.commit()

    def entry(**values):
        row = {"account_id": account, "kind": "grant", "bucket": "free", "amount": 5,
               "idempotency_key": f"k{len(values)}{sorted(values)}", "created_at": NOV}
        row.update(values)
        row.setdefault("operation_key", row["idempotency_key"])
        return insert(LedgerEntry).values(**row)

    bad_statements = [
        entry(amount=0),
        entry(kind="gift"),
        entry(idempotency_key="g"),  # a key is posted once
        entry(kind="debit", amount=5),  # a debit is negative
        entry(kind="grant", amount=-5),  # a grant is positive
        entry(kind="expiry", amount=3),
        update(Account).where(Account.id == account).values(balance=-1),
        update(Account).where(Account.id == account).values(held=6),
        update(Lot).where(Lot.account_id == account).values(remaining=-1),
        update(Hold).where(Hold.id == placed.hold_id).values(captured=3),
        update(Hold).where(Hold.id == placed.hold_id).values(status="captured"),
        # append-only: no entry is ever changed or removed
        update(LedgerEntry).where(LedgerEntry.idempotency_key == "g").values(memo="edited"),
        delete(LedgerEntry).where(LedgerEntry.idempotency_key == "g"),
    ]
    for statement in bad_statements:
        with pytest.raises(DBAPIError):
            session.execute(statement)
        session.rollback()
    assert_consistent(session, account, NOV)


def test_naive_datetimes_are_refused(session, account):
    with pytest.raises(Exception, match="naive datetime"):
        ledger.grant(session, account, 5, key="naive", now=datetime(2026, 11, 1))
    session.rollback()


@pytest.mark.backends("sqlite")
def test_sqlite_enforces_foreign_keys(session):
    assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
