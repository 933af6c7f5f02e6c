"""The token ledger: accounts, append-only entries, lots, holds, and the verbs that move tokens.

Design (docs/economy.md, "Ledger"):

- An `Account` is one person's wallet, shared by that person's SMS and WhatsApp identities.
- Every change of a balance is a `LedgerEntry`: a kind (`grant`, `purchase`, `bonus`, `debit`,
  `reversal`, `clawback`, `expiry`, `adjustment`), a signed integer amount of tokens, a bucket
  (`free`, `subscription`, `bonus`, `paid`) and a unique idempotency key such as
  `grant:free:<account>:2026-11` or `debit:<MessageSid>`. Entries are never updated or deleted.
  A correction is a new entry whose `corrects_id` points at the entry it corrects (a clawback
  points at its purchase); a bonus points at its purchase through `parent_id`.
- Every credit opens a `Lot`: the tokens of that one entry, with its bucket and expiry, and how
  many are left. Spending consumes lots in the order free -> subscription -> bonus -> paid, the
  earliest expiry first within a bucket (no expiry last), and posts one entry per lot it draws
  from, pointing at the lot (`lot_id`). So a person's history explains every token: which grant
  or purchase each spent token came from.
- Holds reserve tokens before a priced skill runs: `hold` (pending) -> `capture` (debit entries;
  a partial capture releases the rest) | `void` (no entry) | `expire_holds` (after the TTL, like
  a void). The available balance is posted balance minus pending holds and never goes below 0.
  An answer given while the account's row stays locked (the router's offline skills) needs
  no reservation: `debit` draws the price directly, once per key, in four statements.
- `Account.balance` (posted) and `Account.held` (pending holds) are caches of the entries and the
  holds. They change only in the same transaction as what they cache, through conditional
  UPDATEs, so each check-and-change is one atomic statement: `hold` is
  `... SET held = held + n WHERE balance - held >= n`, never read-then-write. The database
  refuses what must never be (`CHECK held >= 0 AND held <= balance`, `CHECK amount <> 0`,
  `CHECK remaining >= 0`, `UNIQUE(idempotency_key)`), and a test recomputes every cache.
- Idempotency: every operation has a key. Repeating a key returns the first result and changes
  nothing. Two concurrent posts of one key: a credit's later INSERT hits
  `UNIQUE(idempotency_key)` inside a SAVEPOINT, which is rolled back; a hold's later
  `INSERT ... ON CONFLICT DO NOTHING` inserts nothing, and its reservation is given back; a
  capture's conditional UPDATE of its hold checks, under the account's lock, that no key of its
  entries was posted. Either way the first result is returned. An operation that posts several
  entries keys them `key`, `key#2`, ... and records `key` as their `operation_key`.
- The hot path (`hold`, `capture`, `void`, `debit`, `balance`, a granted
  `grant_monthly_allowance`)
  sends Core statements only: no ORM objects, no flush, no SAVEPOINT (see "the hot path's
  statements" below).
- Expiry: lots past their `expires_at` are expired lazily (an `expiry` entry per lot) before
  anything that spends or reserves, and a month's free grant expires at the start of the next
  month. Tokens reserved by a pending hold are not expired from under it: the sweep leaves
  `held` tokens in place, and the capture spends them first (their lot expires earliest).

Domain functions take the SQLAlchemy `Session` explicitly and flush; the caller (a route, job or
CLI command) owns the transaction and commits.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ColumnElement,
    CursorResult,
    ForeignKey,
    Index,
    Integer,
    Result,
    Row,
    String,
    Table,
    and_,
    bindparam,
    case,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, QueryableAttribute, Session, mapped_column
from sqlalchemy.types import TypeEngine

from tokens import signals
from tokens.base import Base, UTCDateTime, execute_core, insert_values, on_postgresql, utcnow
from tokens.errors import (
    HoldNotPending,
    InsufficientTokens,
    InvalidAmount,
    KeyReused,
    LedgerInvariantBroken,
    TokensHeld,
    UnknownAccount,
    UnknownEntry,
)
from tokens.periods import Month, next_month_start

ENTRY_KINDS = ("grant", "purchase", "bonus", "debit", "reversal", "clawback", "expiry",
               "adjustment")
# A `reversal` gives back a debit whose reply was not delivered; money back from the payment
# provider (a refund) is a `clawback` of the tokens it bought.
CREDIT_KINDS = ("grant", "purchase", "bonus", "reversal")  # always positive
SPEND_KINDS = ("debit", "clawback", "expiry")  # always negative; adjustments go either way
BUCKETS = ("free", "subscription", "bonus", "paid")
# docs/economy.md: free allowance first, then subscription, bonus, then paid.
CONSUMPTION_ORDER = ("free", "subscription", "bonus", "paid")
HOLD_STATES = ("pending", "captured", "voided", "expired")
DEFAULT_HOLD_TTL_SECONDS = 600


def _sql_in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Account(Base):
    """A person's token wallet.

    `public_id` is the opaque id shown to payment providers (`client_reference_id`); the numeric
    `id` never leaves the database. `balance` caches the posted balance and `held` the pending
    holds, both in tokens; available = balance - held. `suspended_at` (with its reason) is set
    by an operator: a suspended person gets no answers and pays nothing (bot.router); STOP and
    HELP still work.
    """

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_not_negative"),
        CheckConstraint("held >= 0 AND held <= balance", name="held_within_balance"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    held: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    suspension_reason: Mapped[str | None] = mapped_column(String(200))


class LedgerEntry(Base):
    """One append-only ledger entry. See the module docstring for the rules it follows.

    The database refuses UPDATE and DELETE on this table (triggers in the migration).
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_not_zero"),
        CheckConstraint(_sql_in("kind", ENTRY_KINDS), name="kind_known"),
        CheckConstraint(_sql_in("bucket", BUCKETS), name="bucket_known"),
        CheckConstraint(
            f"({_sql_in('kind', CREDIT_KINDS)} AND amount > 0)"
            f" OR ({_sql_in('kind', SPEND_KINDS)} AND amount < 0)"
            " OR kind = 'adjustment'",
            name="sign_matches_kind",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    bucket: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    operation_key: Mapped[str] = mapped_column(String(200), index=True)
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_lots.id"))
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_holds.id"))
    corrects_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_entries.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_entries.id"))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    memo: Mapped[str | None] = mapped_column(String(200))
    actor: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)



@event.listens_for(LedgerEntry, "after_insert")
def _entry_flushed(_mapper: Any, _connection: Any, target: LedgerEntry) -> None:
    """Entries written through the ORM (credits, corrections) are told like the Core ones."""
    signals.entries_posted.send(None, kinds=[target.kind])


class Lot(Base):
    """The tokens of one credit entry and how many of them are left (`remaining`, tokens).

    A cache of the entries (remaining = credit + the entries that drew on the lot), kept in the
    same transaction; `credit_entry_id` is the grant, purchase, bonus or adjustment it came from.
    """

    __tablename__ = "ledger_lots"
    __table_args__ = (
        CheckConstraint("remaining >= 0", name="remaining_not_negative"),
        CheckConstraint(_sql_in("bucket", BUCKETS), name="bucket_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    credit_entry_id: Mapped[int] = mapped_column(
        ForeignKey("ledger_entries.id", use_alter=True), unique=True
    )
    bucket: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    remaining: Mapped[int] = mapped_column(BigInteger)


class Hold(Base):
    """Tokens reserved for one priced request: pending -> captured | voided | expired."""

    __tablename__ = "ledger_holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("captured >= 0 AND captured <= amount", name="captured_within_amount"),
        CheckConstraint(_sql_in("status", HOLD_STATES), name="status_known"),
        CheckConstraint("(status = 'captured') = (captured > 0)", name="captured_iff_status"),
        # The account's pending holds by expiry: `hold`'s due check (`_HOLDS_DUE`) and the
        # pending holds' reads seek straight to them, however many holds the person had
        # before. An index on `account_id` alone made each hold read all of them
        # (migration 0021); this one still serves every look-up by account.
        Index("ix_ledger_holds_account_status_expiry", "account_id", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    captured: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    memo: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


@dataclass(frozen=True)
class Balance:
    """An account's balance, in tokens.

    Attributes:
        posted: the sum of all entries.
        held: tokens reserved by pending holds.
        available: what can be reserved or spent now: posted - held - tokens of lots past their
            expiry that no sweep has expired yet. Never negative.
        by_bucket: bucket -> unexpired tokens left, only buckets with some.
    """

    posted: int
    held: int
    available: int
    by_bucket: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Posted:
    """The result of a keyed operation that posts entries.

    Attributes:
        key: the operation's idempotency key.
        entry_ids: ids of the entries posted (several when a spend draws on several lots; none
            for a clawback that found nothing left to take).
        amount: tokens moved, positive for credits and spends alike.
        by_bucket: (bucket, signed tokens) per entry, in posting order.
        replayed: True when the key had been used before and nothing changed this time.
    """

    key: str
    entry_ids: tuple[int, ...]
    amount: int
    by_bucket: tuple[tuple[str, int], ...]
    replayed: bool


@dataclass(frozen=True)
class Purchased:
    """The result of `purchase`: the paid entry and its linked bonus entry (if any)."""

    purchase: Posted
    bonus: Posted | None


@dataclass(frozen=True)
class HoldResult:
    """The result of `hold`, `void` and `expire` transitions.

    Attributes:
        hold_id: the hold's id (pass it to `capture` or `void`).
        key: the hold's idempotency key.
        amount: tokens reserved.
        status: "pending", "captured", "voided" or "expired".
        expires_at: when a pending hold lapses.
        replayed: True when the key had been used before and nothing changed this time.
        account_id, created_at, memo: set on a hold `hold` placed now (`replayed` False), so
            that `capture(placed=...)` in the same transaction need not read the hold again.
    """

    hold_id: int
    key: str
    amount: int
    status: str
    expires_at: datetime
    replayed: bool
    account_id: int | None = None
    created_at: datetime | None = None
    memo: str | None = None


@dataclass(frozen=True)
class Captured:
    """The result of `capture`: the debit entries and the tokens released back."""

    hold_id: int
    posted: Posted
    released: int


@dataclass(frozen=True)
class HistoryLine:
    """One entry of a person's history, with the posted balance after it (tokens)."""

    entry: LedgerEntry
    running_balance: int


# --- the hot path's statements -------------------------------------------------------------
#
# One priced message is `hold` then `capture` (or `void`), and `balance` is read around them.
# Their statements are Core statements on the tables, built once here with bind parameters:
# no ORM objects, no flushes and no SAVEPOINTs on that path. Every check-and-change is still
# one conditional statement; what the SAVEPOINTs did is done by the conditions themselves
# (`INSERT ... ON CONFLICT DO NOTHING`, `UPDATE ... WHERE status = 'pending'`), and each
# documented refusal is raised before anything is written, or after what was written is
# given back, so the caller's transaction stays as it was.

_ACCOUNTS = cast(Table, Account.__table__)
_ENTRIES = cast(Table, LedgerEntry.__table__)
_LOTS = cast(Table, Lot.__table__)
_HOLDS = cast(Table, Hold.__table__)

_P_ACCOUNT = bindparam("account_id", type_=Integer())
_P_HOLD = bindparam("hold_id", type_=Integer())
_P_TOKENS = bindparam("tokens", type_=BigInteger())
_P_TAKE = bindparam("take", type_=BigInteger())
_P_KEY = bindparam("key", type_=String())
_P_NOW = bindparam("now", type_=UTCDateTime())

# A pending hold of the account past its TTL, or a lot of it past its expiry with tokens left:
# `hold` settles them first (`expire_holds`, `expire_lots`).
_HOLDS_DUE = (
    select(_HOLDS.c.id)
    .where(_HOLDS.c.account_id == _P_ACCOUNT, _HOLDS.c.status == "pending",
           _HOLDS.c.expires_at <= _P_NOW)
    .exists()
)
_LOTS_DUE = (
    select(_LOTS.c.id)
    .where(_LOTS.c.account_id == _P_ACCOUNT, _LOTS.c.remaining > 0,
           _LOTS.c.expires_at <= _P_NOW)
    .exists()
)
_HOLD_KEY_USED = select(_HOLDS.c.id).where(_HOLDS.c.idempotency_key == _P_KEY).exists()

# `hold`, the common case in one statement: the account's row lock, the check and the
# reservation, when the key is new and nothing of the account is due to expire.
_RESERVE_IF_SETTLED = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == _P_ACCOUNT, _ACCOUNTS.c.balance - _ACCOUNTS.c.held >= _P_TOKENS,
           ~_HOLD_KEY_USED, ~_HOLDS_DUE, ~_LOTS_DUE)
    .values(held=_ACCOUNTS.c.held + _P_TOKENS)
)
# `debit`, the common case in one statement: the row lock, the check and the spend, when the
# key is new and no lot is due to expire (due holds only understate what is available).
_DEBIT_IF_SETTLED = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == _P_ACCOUNT, _ACCOUNTS.c.balance - _ACCOUNTS.c.held >= _P_TOKENS,
           ~select(_ENTRIES.c.id).where(_ENTRIES.c.idempotency_key == _P_KEY).exists(),
           ~_LOTS_DUE)
    .values(balance=_ACCOUNTS.c.balance - _P_TOKENS)
)
_RESERVE = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == _P_ACCOUNT, _ACCOUNTS.c.balance - _ACCOUNTS.c.held >= _P_TOKENS)
    .values(held=_ACCOUNTS.c.held + _P_TOKENS)
)
_UNRESERVE = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == _P_ACCOUNT)
    .values(held=_ACCOUNTS.c.held - _P_TOKENS)
)
# `hold` when the one statement above changed nothing: lock the row, then see why.
_LOCK_FOR_HOLD = (
    select(_ACCOUNTS.c.balance, _ACCOUNTS.c.held, _HOLD_KEY_USED.label("replay"),
           _HOLDS_DUE.label("holds_due"), _LOTS_DUE.label("lots_due"))
    .where(_ACCOUNTS.c.id == _P_ACCOUNT)
    .with_for_update(key_share=True, of=_ACCOUNTS)
)
_LOCK = (
    select(_ACCOUNTS.c.balance, _ACCOUNTS.c.held)
    .where(_ACCOUNTS.c.id == _P_ACCOUNT)
    .with_for_update(key_share=True)
)
_HOLD_BY_KEY = select(
    _HOLDS.c.id, _HOLDS.c.idempotency_key, _HOLDS.c.amount, _HOLDS.c.status,
    _HOLDS.c.expires_at,
).where(_HOLDS.c.idempotency_key == _P_KEY)
# `capture` and `void`: the hold with its account's row locked (the account first, as
# everywhere; the hold row itself is changed only by the conditional UPDATEs below).
_LOCK_HOLD = (
    select(_HOLDS.c.account_id, _HOLDS.c.idempotency_key, _HOLDS.c.amount, _HOLDS.c.status,
           _HOLDS.c.created_at, _HOLDS.c.expires_at, _HOLDS.c.memo)
    .join(_ACCOUNTS, _ACCOUNTS.c.id == _HOLDS.c.account_id)
    .where(_HOLDS.c.id == _P_HOLD)
    .with_for_update(key_share=True, of=_ACCOUNTS)
)
_HOLD_STATE = select(_HOLDS.c.status, _HOLDS.c.expires_at).where(_HOLDS.c.id == _P_HOLD)
# "Still pending" in an UPDATE of one hold by id, written `(status = 'pending') IS TRUE` (the
# same, status being NOT NULL) so that no index can serve it. As a plain `status = 'pending'`,
# PostgreSQL's planner, estimating one row either way, can take `ix_ledger_holds_status` and
# walk every entry of holds pending since the last vacuum (each settled hold leaves a dead
# one) instead of the primary key: 0.5 ms in place of 0.04 (EXPLAIN ANALYZE, 3,000 holds).
_STILL_PENDING = (_HOLDS.c.status == "pending").is_(true())
_SETTLE = (
    update(_HOLDS)
    .where(_HOLDS.c.id == _P_HOLD, _STILL_PENDING)
    .values(status=bindparam("status", type_=String()), settled_at=_P_NOW)
)
# A capture settles the hold only while it is pending and unexpired and none of the keys of its
# debit entries was posted by any operation: a repeat of the key, or a key of another
# operation, finds the hold unchanged and is answered from what the first call posted.
def _settle_capture(keys: Any) -> Any:
    """The capture's conditional UPDATE of its hold: still pending, not expired, and none of
    the draw's entry keys (`keys`: an expanding parameter or a list of bound ones) posted."""
    return (
        update(_HOLDS)
        .where(
            _HOLDS.c.id == _P_HOLD, _STILL_PENDING, _HOLDS.c.expires_at > _P_NOW,
            ~select(_ENTRIES.c.id).where(_ENTRIES.c.idempotency_key.in_(keys)).exists(),
        )
        .values(status="captured", captured=_P_TAKE, settled_at=_P_NOW)
    )


# Any number of entry keys, as `IN` of an expanding parameter (`session.execute`); and for a
# draw of up to `_SETTLE_CAPTURE_SHAPES` lots (nearly every capture draws one), one statement
# per count with the keys bound one by one (`key_0`, ...), which `execute_core` keeps compiled.
_SETTLE_CAPTURE = _settle_capture(bindparam("keys", expanding=True))
_SETTLE_CAPTURE_SHAPES = 4
_SETTLE_CAPTURE_BY_COUNT = {
    count: _settle_capture([bindparam(f"key_{i}", type_=String()) for i in range(count)])
    for count in range(1, _SETTLE_CAPTURE_SHAPES + 1)}
_CHARGE = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == _P_ACCOUNT)
    .values(held=_ACCOUNTS.c.held - _P_TOKENS, balance=_ACCOUNTS.c.balance - _P_TAKE)
)
_RELEASE = _UNRESERVE
_DEBIT_BALANCE = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == _P_ACCOUNT, _ACCOUNTS.c.balance - _ACCOUNTS.c.held >= _P_TOKENS)
    .values(balance=_ACCOUNTS.c.balance - _P_TOKENS)
)
_LOT_RANK = case(
    {bucket: rank for rank, bucket in enumerate(CONSUMPTION_ORDER)}, value=_LOTS.c.bucket
)
# Lots a spend may draw on, in consumption order: valid at `valid_at` (see `_consume`).
_DRAWABLE = (
    select(_LOTS.c.id, _LOTS.c.bucket, _LOTS.c.remaining)
    .where(_LOTS.c.account_id == _P_ACCOUNT, _LOTS.c.remaining > 0,
           or_(_LOTS.c.expires_at.is_(None),
               _LOTS.c.expires_at > bindparam("valid_at", type_=UTCDateTime())))
    .order_by(_LOT_RANK, _LOTS.c.expires_at.asc().nulls_last(), _LOTS.c.id)
)
_DRAW_LOT = (
    update(_LOTS)
    .where(_LOTS.c.id == bindparam("lot_id", type_=Integer()))
    .values(remaining=_LOTS.c.remaining - _P_TAKE)
)
_DRAW_ENTRY_COLUMNS = ("account_id", "kind", "bucket", "amount", "idempotency_key",
                       "operation_key", "lot_id", "hold_id", "memo", "actor", "created_at")
_INSERT_ENTRY = insert_values(_ENTRIES, _DRAW_ENTRY_COLUMNS, returning=("id",))
_INSERT_ENTRIES = insert(_ENTRIES)
_REPLAY = (
    select(_ENTRIES.c.id, _ENTRIES.c.bucket, _ENTRIES.c.amount, _ENTRIES.c.hold_id)
    .where(_ENTRIES.c.operation_key == _P_KEY)
    .order_by(_ENTRIES.c.id)
)
# `balance`: the account row and its lots with tokens left, in one statement.
_BALANCE = (
    select(_ACCOUNTS.c.balance, _ACCOUNTS.c.held, _LOTS.c.id, _LOTS.c.bucket,
           _LOTS.c.expires_at, _LOTS.c.remaining)
    .select_from(_ACCOUNTS.outerjoin(
        _LOTS, and_(_LOTS.c.account_id == _ACCOUNTS.c.id, _LOTS.c.remaining > 0)))
    .where(_ACCOUNTS.c.id == _P_ACCOUNT)
)
_PENDING_HOLD_TIMES = select(_HOLDS.c.created_at, _HOLDS.c.amount).where(
    _HOLDS.c.account_id == _P_ACCOUNT, _HOLDS.c.status == "pending"
)
# `INSERT ... ON CONFLICT (idempotency_key) DO NOTHING RETURNING id`, which PostgreSQL and
# SQLite (3.35 and later) both read. Written as text because the dialects' own `insert()`
# constructs are never cached by SQLAlchemy (`inherit_cache = False`): they would be compiled
# again on every call, which costs more CPU than the rest of `hold`.
_INSERT_HOLD = text(
    "INSERT INTO ledger_holds (account_id, amount, captured, status, idempotency_key, memo,"
    " created_at, expires_at)"
    " VALUES (:account_id, :tokens, 0, 'pending', :key, :memo, :now, :expires_at)"
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
).bindparams(
    bindparam("account_id", type_=Integer()), bindparam("tokens", type_=BigInteger()),
    bindparam("key", type_=String()), bindparam("memo", type_=String()),
    bindparam("now", type_=UTCDateTime()), bindparam("expires_at", type_=UTCDateTime()),
).columns(id=Integer())


# `hold`'s common case on PostgreSQL in one statement: the reservation (`_RESERVE_IF_SETTLED`)
# and, from the row it changed, the hold's INSERT, as data-modifying CTEs; it says whether the
# reservation was made and the new hold's id (None when the key was taken meanwhile).
_RESERVED = _RESERVE_IF_SETTLED.returning(_ACCOUNTS.c.id).cte("reserved")
_PLACED = (
    pg_insert(_HOLDS)
    .from_select(
        ["account_id", "amount", "captured", "status", "idempotency_key", "memo",
         "created_at", "expires_at"],
        select(_RESERVED.c.id, _P_TOKENS, literal(0, BigInteger()), literal("pending"),
               _P_KEY, bindparam("memo", type_=String()), _P_NOW,
               bindparam("expires_at", type_=UTCDateTime())))
    .on_conflict_do_nothing(index_elements=["idempotency_key"])
    .returning(_HOLDS.c.id)
    .cte("placed")
)
_RESERVE_AND_PLACE = select(
    select(func.count()).select_from(_RESERVED).scalar_subquery().label("reserved"),
    select(_PLACED.c.id).scalar_subquery().label("hold_id"),
)


def _rowcount(result: Result[Any]) -> int:
    return cast(CursorResult[Any], result).rowcount


def _autoflush(session: Session) -> None:
    """Flush pending ORM changes first, as an ORM query would (the hot path sends Core
    statements, which do not autoflush); a no-op when nothing is pending."""
    if session.autoflush:
        session.flush()


def _forget(session: Session, model: type[Base], ids: Sequence[int]) -> None:
    """Expire the loaded objects of `model` with these ids, if any: their rows were just
    changed by a Core statement, so the next access reads them again."""
    identity_map = session.identity_map
    for ident in ids:
        loaded = identity_map.get(Session.identity_key(model, ident))
        if loaded is not None:
            session.expire(loaded)


# --- reads --------------------------------------------------------------------------------


def open_account(session: Session, now: datetime | None = None) -> Account:
    """Create an empty account with a fresh opaque `public_id` (128 random bits) and flush it."""
    account = Account(public_id=secrets.token_hex(16), balance=0, held=0,
                      created_at=now or utcnow())
    session.add(account)
    session.flush()
    return account


def balance(session: Session, account_id: int, now: datetime | None = None) -> Balance:
    """The account's balance: posted, held, available and unexpired tokens by bucket.

    A pure read: tokens of lots past their expiry are left out of `available` and
    `by_bucket` even before a sweep has posted their `expiry` entries (except what a sweep
    would keep for holds placed before the expiry, which `held` already counts).

    Raises:
        UnknownAccount: no account has this id.
    """
    now = now or utcnow()
    rows = execute_core(session, _BALANCE, {"account_id": account_id}).all()
    if not rows:
        raise UnknownAccount(f"account {account_id} does not exist")
    posted, held = int(rows[0].balance), int(rows[0].held)
    by_bucket: dict[str, int] = {}
    due = []
    for lot in rows:
        if lot.id is None:  # no lot with tokens left (the outer join's empty side)
            continue
        if lot.expires_at is not None and lot.expires_at <= now:
            due.append(lot)
        else:
            by_bucket[lot.bucket] = by_bucket.get(lot.bucket, 0) + int(lot.remaining)
    expiring = 0
    if due:
        plan = _expiry_plan(due, _pending_hold_times(session, account_id))
        expiring = sum(take for _, take in plan)
    available = max(posted - held - expiring, 0)
    return Balance(posted=posted, held=held, available=available, by_bucket=by_bucket)


def purchased_available(account_id: ColumnElement[int] | QueryableAttribute[int],
                        now: ColumnElement[datetime]) -> ColumnElement[int]:
    """A SQL scalar: the tokens left in the account's unexpired lots of every bucket but
    "free" (purchased and premium), so a caller can read them in a statement it sends anyway
    (the router's lock of the account row). Equal to the sum of `balance(...).by_bucket` over
    the buckets other than "free" (checked after every step of
    `tests/tokens/test_ledger_properties.py`).

    Args:
        account_id: the account's id column or a bound parameter.
        now: the moment lots expire against, a bound parameter (UTC).
    """
    return (
        select(func.coalesce(func.sum(_LOTS.c.remaining), 0))
        .where(_LOTS.c.account_id == account_id, _LOTS.c.remaining > 0,
               _LOTS.c.bucket != "free",
               or_(_LOTS.c.expires_at.is_(None), _LOTS.c.expires_at > now))
        .scalar_subquery()
    )


def lots_due(account_id: ColumnElement[int] | QueryableAttribute[int],
             now: ColumnElement[datetime]) -> ColumnElement[bool]:
    """A SQL boolean: the account has a lot with tokens left past its expiry, not yet expired
    (its tokens still count in `Account.balance`), for a caller to read in a statement it
    sends anyway (the router's lock of the account row). While it is true the balance as
    posted overstates what can be spent, and `hold` expires the lots first.

    Args:
        account_id: the account's id column or a bound parameter.
        now: the moment lots expire against, a bound parameter (UTC).
    """
    return (
        select(_LOTS.c.id)
        .where(_LOTS.c.account_id == account_id, _LOTS.c.remaining > 0,
               _LOTS.c.expires_at <= now)
        .exists()
    )


def pending_holds(session: Session, account_id: int) -> list[Hold]:
    """The account's pending holds, oldest first."""
    return list(
        session.scalars(
            select(Hold)
            .where(Hold.account_id == account_id, Hold.status == "pending")
            .order_by(Hold.id)
        )
    )


def open_lots(session: Session, account_id: int) -> list[tuple[Lot, LedgerEntry]]:
    """The account's lots with tokens left, in consumption order, each with its credit entry.

    Their `remaining` add up to the posted balance: this is where every token came from.
    """
    rows = session.execute(
        select(Lot, LedgerEntry)
        .join(LedgerEntry, LedgerEntry.id == Lot.credit_entry_id)
        .where(Lot.account_id == account_id, Lot.remaining > 0)
        .order_by(_BUCKET_RANK, Lot.expires_at.asc().nulls_last(), Lot.id)
    ).all()
    return [(lot, entry) for lot, entry in rows]


def history(session: Session, account_id: int, limit: int = 20) -> list[HistoryLine]:
    """The account's latest `limit` entries, oldest first, each with the balance after it."""
    running = func.sum(LedgerEntry.amount).over(order_by=LedgerEntry.id).label("running")
    inner = (
        select(LedgerEntry.id, running)
        .where(LedgerEntry.account_id == account_id)
        .subquery()
    )
    rows = session.execute(
        select(LedgerEntry, inner.c.running)
        .join(inner, inner.c.id == LedgerEntry.id)
        .order_by(LedgerEntry.id.desc())
        .limit(limit)
    ).all()
    return [HistoryLine(entry, int(total)) for entry, total in reversed(rows)]


# --- credits ------------------------------------------------------------------------------


def grant(
    session: Session,
    account_id: int,
    tokens: int,
    *,
    key: str,
    bucket: str = "free",
    expires_at: datetime | None = None,
    memo: str | None = None,
    actor: str | None = None,
    now: datetime | None = None,
) -> Posted:
    """Credit `tokens` to the account as a grant, once per `key`.

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: the account to credit.
        tokens: a positive number of tokens.
        key: idempotency key, e.g. "grant:free:42:2026-11".
        bucket: one of `BUCKETS`.
        expires_at: when the granted tokens lapse (None: never).
        memo: a short reason shown in the person's history.
        actor: who granted them, for grants made by an operator.
        now: the posting time (UTC); defaults to the clock.

    Returns:
        `Posted`; `replayed=True` when `key` was posted before (nothing changes).

    Raises:
        InvalidAmount: `tokens` is not a positive integer or `bucket` is unknown.
        UnknownAccount: no account has this id.
    """
    return _credit(session, account_id, "grant", bucket, tokens, key,
                   expires_at=expires_at, memo=memo, actor=actor, now=now)


def purchase(
    session: Session,
    account_id: int,
    tokens: int,
    bonus_tokens: int = 0,
    *,
    key: str,
    memo: str | None = None,
    now: datetime | None = None,
) -> Purchased:
    """Credit a bought pack: `tokens` to the paid bucket, and a linked bonus entry.

    Purchased and bonus tokens never expire (docs/economy.md). The bonus entry is keyed
    `<key>:bonus` and points at the purchase through `parent_id`; both are posted in one
    SAVEPOINT, so a pack is credited whole or not at all.

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: the buying account.
        tokens: paid tokens of the pack (positive).
        bonus_tokens: bonus tokens (0 for none).
        key: idempotency key, e.g. "checkout:<session id>".
        memo: e.g. the pack's name.
        now: the posting time (UTC).

    Returns:
        `Purchased`; both parts `replayed=True` when `key` was posted before.

    Raises:
        InvalidAmount: `tokens` is not positive or `bonus_tokens` is negative.
        UnknownAccount: no account has this id.
    """
    if type(bonus_tokens) is not int or bonus_tokens < 0:
        raise InvalidAmount(f"bonus tokens must be a non-negative integer, got {bonus_tokens!r}")
    _check_amount(tokens)
    replay = _replay(session, key)
    if replay is not None:
        return Purchased(replay, _replay(session, f"{key}:bonus"))
    try:
        with session.begin_nested():
            paid = _credit(session, account_id, "purchase", "paid", tokens, key,
                           memo=memo, now=now, savepoint=False)
            bonus = None
            if bonus_tokens:
                bonus = _credit(session, account_id, "bonus", "bonus", bonus_tokens,
                                f"{key}:bonus", memo=memo, now=now, savepoint=False,
                                parent_id=paid.entry_ids[0])
    except IntegrityError:
        replay = _replay(session, key)
        if replay is None:
            raise UnknownAccount(f"account {account_id} does not exist") from None
        return Purchased(replay, _replay(session, f"{key}:bonus"))
    return Purchased(paid, bonus)


def grant_monthly_allowance(
    session: Session, account_id: int, tokens: int, now: datetime | None = None
) -> Posted:
    """Grant this month's free allowance once; earlier months' free tokens expire first.

    Called on every inbound message; after the first message of a month it is one indexed
    SELECT (of the grant's entry, no ORM object), and a caller that already read
    `monthly_allowance_granted` in a statement of its own need not call it at all. The key is
    `monthly_allowance_key`, `grant:free:<account>:<YYYY-MM>`, and the grant expires at the
    start of the next month: granted on the first message of each month, expiring at the
    month's end (`free_monthly_allowance` in tokens/economy.yaml).

    Returns:
        `Posted`; `replayed=True` when this month's allowance was granted before.

    Raises:
        InvalidAmount: `tokens` is not a positive integer.
        UnknownAccount: no account has this id.
    """
    now = now or utcnow()
    key = monthly_allowance_key(account_id, now)
    replay = _replay(session, key)
    if replay is not None:
        return replay
    expire_lots(session, account_id, now)
    return _credit(session, account_id, "grant", "free", tokens, key,
                   expires_at=next_month_start(now),
                   memo=f"free monthly allowance {Month.of(now)}", now=now, replay_checked=True)


def monthly_allowance_key(account_id: int, now: datetime) -> str:
    """The idempotency key of the account's free allowance for the month of `now`."""
    return f"grant:free:{account_id}:{Month.of(now)}"


def monthly_allowance_granted(key: str | ColumnElement[str]) -> ColumnElement[bool]:
    """A SQL `EXISTS` that is true once the allowance of `key` was granted: a caller can read
    it in a statement it sends anyway (e.g. with its lock of the account row) and call
    `grant_monthly_allowance` only when it is false. An indexed lookup of one entry
    (`UNIQUE(idempotency_key)`).

    Args:
        key: `monthly_allowance_key(account_id, now)`, or a bound parameter that will hold it
            (so that the caller's statement can be built once).
    """
    return select(_ENTRIES.c.id).where(_ENTRIES.c.idempotency_key == key).exists()


# --- holds --------------------------------------------------------------------------------


def hold(
    session: Session,
    account_id: int,
    tokens: int,
    *,
    key: str,
    ttl_seconds: int = DEFAULT_HOLD_TTL_SECONDS,
    memo: str | None = None,
    now: datetime | None = None,
) -> HoldResult:
    """Reserve `tokens` for a priced request, once per `key`.

    The check and the reservation are one conditional UPDATE
    (`held = held + n WHERE balance - held >= n`): 50 concurrent holds of 5 tokens on a balance
    of 120 give exactly 24 holds. The account's expired lots and stale holds are settled first.

    Statements: in the common case two, the reservation (which also locks the account row and
    checks, in the same statement, that the key is new and that nothing of the account is due
    to expire) and `INSERT ... ON CONFLICT (idempotency_key) DO NOTHING RETURNING id`. Only
    when the reservation changed nothing is the row locked and read to see why (a repeated
    key, holds or lots to expire first, too few tokens, no such account). A key that a
    concurrent hold posted meanwhile makes the INSERT do nothing; the reservation is then
    given back and the first hold returned. On PostgreSQL the two are one statement
    (`_RESERVE_AND_PLACE`: the reservation and the INSERT as data-modifying CTEs, the INSERT
    reading the row the reservation changed), which says whether the reservation was made
    and gives the new hold's id.

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: the account to reserve from.
        tokens: the price, a positive number of tokens.
        key: idempotency key, e.g. "hold:<MessageSid>".
        ttl_seconds: after this long a pending hold expires and releases its tokens.
        memo: e.g. the intent.
        now: the current time (UTC).

    Returns:
        `HoldResult` with status "pending" (or the first result, `replayed=True`).

    Raises:
        InvalidAmount: `tokens` is not a positive integer.
        InsufficientTokens: the available balance is below `tokens`; nothing is reserved (holds
            and lots that were due are expired all the same).
        UnknownAccount: no account has this id.
    """
    _check_amount(tokens)
    now = now or utcnow()
    expires_at = now + timedelta(seconds=ttl_seconds)
    _autoflush(session)
    params = {"account_id": account_id, "tokens": tokens, "key": key, "now": now}
    hold_id: int | None
    in_server = on_postgresql(session)
    if in_server:  # the reservation and, when it is made, the INSERT
        reserved, hold_id = execute_core(session, _RESERVE_AND_PLACE, {
            **params, "memo": memo, "expires_at": expires_at}).one()
    else:
        reserved = _rowcount(execute_core(session, _RESERVE_IF_SETTLED, params))
    if reserved != 1:
        replay = _reserve_the_long_way(session, account_id, tokens, key, now)
        if replay is not None:
            return replay
    if reserved != 1 or not in_server:
        hold_id = execute_core(session, _INSERT_HOLD, {**params, "memo": memo,
                                                       "expires_at": expires_at}).scalar()
    if hold_id is None:
        # A concurrent hold with this key committed after the check: give the tokens back.
        execute_core(session, _UNRESERVE, {"account_id": account_id, "tokens": tokens})
        replay = _hold_by_key(session, key)
        if replay is None:
            raise LedgerInvariantBroken(f"hold key {key!r} conflicts but no hold has it")
        return replay
    signals.hold_placed.send(None, tokens=tokens)
    return HoldResult(int(hold_id), key, tokens, "pending", expires_at, replayed=False,
                      account_id=account_id, created_at=now, memo=memo)


def _reserve_the_long_way(
    session: Session, account_id: int, tokens: int, key: str, now: datetime
) -> HoldResult | None:
    """`hold` when its one-statement reservation changed nothing: lock the account row and
    see why. Returns the first hold of a repeated key, or None once the tokens are reserved.

    Raises:
        InsufficientTokens: too few tokens, after expiring what was due.
        UnknownAccount: no account has this id.
    """
    params = {"account_id": account_id, "key": key, "now": now}
    row = execute_core(session, _LOCK_FOR_HOLD, params).first()
    if row is None:
        replay = _hold_by_key(session, key)  # a key is answered even for a lost account
        if replay is not None:
            return replay
        raise UnknownAccount(f"account {account_id} does not exist")
    if row.replay:
        replay = _hold_by_key(session, key)
        if replay is not None:
            return replay
    posted, held = int(row.balance), int(row.held)
    if row.holds_due or row.lots_due:
        if row.holds_due:
            expire_holds(session, now, account_id=account_id)
        if row.lots_due:
            expire_lots(session, account_id, now)
        posted, held = _lock_account(session, account_id)
    # Under the row lock nothing else changes `balance` or `held`; the conditional UPDATE
    # below stays the reservation all the same.
    if posted - held < tokens:
        raise InsufficientTokens(tokens, balance(session, account_id, now).available)
    reserved = execute_core(session, _RESERVE, {"account_id": account_id, "tokens": tokens})
    if _rowcount(reserved) != 1:
        raise _refusal(session, account_id, tokens, now)
    return None


def _hold_by_key(session: Session, key: str) -> HoldResult | None:
    """The hold posted under `key` as a replayed `HoldResult`, or None."""
    row = execute_core(session, _HOLD_BY_KEY, {"key": key}).first()
    if row is None:
        return None
    return HoldResult(int(row.id), row.idempotency_key, int(row.amount), row.status,
                      row.expires_at, replayed=True)



def _captured(session: Session, hold_id: int, now: datetime, take: int,
              keys: list[str]) -> bool:
    """Whether the capture's conditional UPDATE took the hold (`_settle_capture`)."""
    params: dict[str, Any] = {"hold_id": hold_id, "now": now, "take": take}
    by_count = _SETTLE_CAPTURE_BY_COUNT.get(len(keys))
    if by_count is None:
        return _rowcount(session.execute(_SETTLE_CAPTURE, {**params, "keys": keys})) == 1
    params.update((f"key_{i}", key) for i, key in enumerate(keys))
    return _rowcount(execute_core(session, by_count, params)) == 1

def capture(
    session: Session,
    hold_id: int,
    *,
    key: str,
    amount: int | None = None,
    now: datetime | None = None,
    placed: HoldResult | None = None,
) -> Captured:
    """Turn a pending hold into debit entries; a partial capture releases the rest.

    Statements: the hold with its account's row locked (the account first, as everywhere),
    the lots it may draw on, the hold's conditional UPDATE (still pending, unexpired, and no
    key of its entries posted before), the account's balance and held, the entries
    (`INSERT ... RETURNING id`, one statement for all of them) and the lots. When the hold's
    UPDATE changes nothing, nothing has been written, and the key's first result, the hold's
    state or the key's other use says why. On PostgreSQL the same steps run first in one
    statement, migration 0022's PL/pgSQL function `ledger_capture` (one round trip in place
    of six; the client's share of a statement costs more CPU than the server's); when it
    writes nothing (a replay, a refusal) the statements above follow and say why, so a
    replay costs one statement more there.

    Args:
        session: the caller's session; this function flushes, never commits.
        hold_id: the pending hold.
        key: idempotency key of the debit, e.g. "debit:<MessageSid>".
        amount: tokens to capture, 1..hold amount; None captures the whole hold.
        now: the current time (UTC).
        placed: what `hold` returned for this hold when it placed it, earlier in the same
            transaction (an inline answer: the hold's reservation locked the account's row)
            or in an earlier one when the caller has locked the account's row in this one
            (`lock_account`; a deferred answer's settlement): the hold is not read again (its
            amount, times and memo never change; its status is re-checked by the
            conditional UPDATE). One statement fewer. Ignored when it is for another hold or
            is a replay.

    Returns:
        `Captured` with the debit entries (one per lot drawn on, in consumption order) and the
        tokens released. A repeat with the same key returns the first result, `replayed=True`.

    Raises:
        HoldNotPending: the hold was voided, expired (or is past its expiry time, even if no
            sweep has marked it yet), or captured under another key.
        InvalidAmount: `amount` is not within 1..the hold's amount.
        KeyReused: `key` (or a key of the entries it would post, `key#2` ...) belongs to
            another operation.
        UnknownEntry: no hold has this id.
    """
    now = now or utcnow()
    if now.tzinfo is None:
        raise ValueError("naive datetime given where a timezone-aware UTC time is required")
    _autoflush(session)
    # Only an amount the function can take (None or an int; it refuses one out of range).
    if (amount is None or type(amount) is int) and on_postgresql(session):
        done = _capture_in_server(session, hold_id, key, amount, now)
        if done is not None:
            return done
        # It wrote nothing: the statements below find why (or, in a race, capture after all).
    record: Row[Any] | _PlacedHold
    if (placed is not None and placed.hold_id == hold_id and not placed.replayed
            and placed.account_id is not None and placed.created_at is not None):
        record = _PlacedHold(placed.account_id, placed.amount, "pending", placed.created_at,
                             placed.expires_at, placed.memo)
    else:
        record = _lock_hold(session, hold_id)
    take = record.amount if amount is None else amount
    if type(take) is not int or not 0 < take <= record.amount:
        raise InvalidAmount(f"capture must be 1..{record.amount} tokens, got {amount!r}")
    account_id = int(record.account_id)
    covered = True
    # The hold's status as read with the lock is a hint (a terminal state never changes, a
    # pending one may have been settled meanwhile); the conditional UPDATE decides.
    if record.status == "pending" and record.expires_at > now:
        plan = _draw_plan(session, account_id, take, record.created_at)
        covered = sum(n for _, _, n in plan) == take
        keys = _entry_keys(key, len(plan))
        if covered and _captured(session, hold_id, now, take, keys):
            execute_core(session, _CHARGE, {"account_id": account_id,
                                            "tokens": record.amount, "take": take})
            posted = _post_draw(session, account_id, plan, keys, "debit", key,
                                memo=record.memo, now=now, hold_id=hold_id)
            _forget(session, Hold, (hold_id,))  # its status changed in the database
            return Captured(hold_id, posted, record.amount - take)
    return _capture_refused(session, hold_id, record.amount, key, now, covered=covered)


# `capture`'s and `debit`'s common case on PostgreSQL: migration 0022's PL/pgSQL functions,
# one round trip each. The consumption order is passed from `CONSUMPTION_ORDER`.
_ORDER_SQL = "ARRAY[" + ", ".join(f"'{bucket}'" for bucket in CONSUMPTION_ORDER) + "]::text[]"
_DRAWN_COLUMNS: dict[str, TypeEngine[Any]] = {
    "o_entry_id": Integer(), "o_key": String(), "o_lot_id": Integer(), "o_bucket": String(),
    "o_taken": BigInteger()}
_CAPTURE_IN_SERVER = text(
    "SELECT o_entry_id, o_key, o_lot_id, o_bucket, o_taken, o_hold_amount"
    f" FROM ledger_capture(:hold_id, :take, :key, :now, {_ORDER_SQL})"
).bindparams(bindparam("hold_id", type_=Integer()), bindparam("take", type_=BigInteger()),
             bindparam("key", type_=String()), bindparam("now", type_=UTCDateTime())
             ).columns(**_DRAWN_COLUMNS, o_hold_amount=BigInteger())
_DEBIT_IN_SERVER = text(
    "SELECT o_entry_id, o_key, o_lot_id, o_bucket, o_taken"
    f" FROM ledger_debit(:account_id, :tokens, :key, :memo, :now, {_ORDER_SQL})"
).bindparams(bindparam("account_id", type_=Integer()), bindparam("tokens", type_=BigInteger()),
             bindparam("key", type_=String()), bindparam("memo", type_=String()),
             bindparam("now", type_=UTCDateTime())).columns(**_DRAWN_COLUMNS)


def _capture_in_server(session: Session, hold_id: int, key: str, amount: int | None,
                       now: datetime) -> Captured | None:
    """`capture` in one statement on PostgreSQL (`ledger_capture`, migration 0022): the
    same lock, checks and writes as the statements of `capture`, done by the server. None
    when it wrote nothing (any refusal, or a replay); the caller then finds out why."""
    rows = execute_core(session, _CAPTURE_IN_SERVER, {"hold_id": hold_id, "take": amount,
                                                      "key": key, "now": now}).all()
    if not rows:
        return None
    _forget(session, Hold, (hold_id,))
    posted = _posted_in_server(session, key, rows)
    return Captured(hold_id, posted, int(rows[0].o_hold_amount) - posted.amount)


def _posted_in_server(session: Session, key: str, rows: Sequence[Row[Any]]) -> Posted:
    """The `Posted` of the debit entries a 0022 function returned (`o_*` columns, one row
    per lot drawn on, in any order), in the draw's order (their keys: `key`, `key#2`, ...);
    the lots' loaded objects are expired, and `entries_posted` is sent."""
    by_key = {row.o_key: row for row in rows}
    ordered = [by_key[entry_key] for entry_key in _entry_keys(key, len(rows))]
    signals.entries_posted.send(None, kinds=["debit"] * len(ordered))
    _forget(session, Lot, [int(row.o_lot_id) for row in ordered])
    return Posted(key, tuple(int(row.o_entry_id) for row in ordered),
                  sum(int(row.o_taken) for row in ordered),
                  tuple((row.o_bucket, -int(row.o_taken)) for row in ordered), replayed=False)


class _PlacedHold(NamedTuple):
    """The columns of `_LOCK_HOLD` that `capture` reads, from a hold placed in the same
    transaction."""

    account_id: int
    amount: int
    status: str
    created_at: datetime
    expires_at: datetime
    memo: str | None


def _lock_hold(session: Session, hold_id: int) -> Row[Any]:
    """The hold's row, with its account's row locked.

    Raises:
        UnknownEntry: no hold has this id.
    """
    record = execute_core(session, _LOCK_HOLD, {"hold_id": hold_id}).first()
    if record is None:
        raise UnknownEntry(f"hold {hold_id} does not exist")
    return record


def _capture_refused(
    session: Session, hold_id: int, amount: int, key: str, now: datetime, *, covered: bool
) -> Captured:
    """Why a capture changed nothing (under the account's lock, read afresh): the first result
    of `key`, or the error. `covered`: the lots covered the capture."""
    rows = execute_core(session, _REPLAY, {"key": key}).all()
    if rows:
        if {row.hold_id for row in rows} != {hold_id}:
            raise KeyReused(f"{key!r} was used by another operation than the capture of hold "
                            f"{hold_id}")
        replay = _posted_from(key, rows)
        return Captured(hold_id, replay, amount - replay.amount)
    status, expires_at = execute_core(session, _HOLD_STATE, {"hold_id": hold_id}).one()
    if status == "pending" and expires_at > now:
        if not covered:
            raise LedgerInvariantBroken(
                f"hold {hold_id}: the balance covered the capture but the lots do not")
        raise KeyReused(f"a key of the entries of {key!r} ({key!r}#2 ...) was used by "
                        f"another operation")
    raise HoldNotPending(f"hold {hold_id} is {status}"
                         + (", past its expiry" if status == "pending" else ""))


def void(session: Session, hold_id: int, now: datetime | None = None) -> HoldResult:
    """Release a pending hold without posting anything (the request failed or was refused).

    Voiding a voided or expired hold is a no-op that returns it (`replayed=True`).

    Raises:
        HoldNotPending: the hold was captured.
        UnknownEntry: no hold has this id.
    """
    return _release(session, hold_id, "voided", now or utcnow())


def debit(
    session: Session,
    account_id: int,
    tokens: int,
    *,
    key: str,
    memo: str | None = None,
    now: datetime | None = None,
) -> Posted:
    """Spend `tokens` at once, without a hold, once per `key`: for an answer given while the
    caller holds the account's row lock from the check to the charge (the router's offline
    skills: nothing else can spend meanwhile, so there is nothing to reserve).

    Statements: in the common case four: the balance's conditional UPDATE (which also locks
    the account row and checks, in the same statement, that the key is new and that no lot
    is due to expire), the lots to draw on, the entries (`INSERT ... RETURNING id`, one
    statement for all of them) and the lots. Only when the UPDATE changed nothing is the key
    looked up and the account's due holds and lots expired first (`hold` does the same). On
    PostgreSQL the four run first as one statement, migration 0022's `ledger_debit`; when it
    writes nothing (a replay, a refusal, something due) the statements above follow.

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: the account to spend from.
        tokens: the price, a positive number of tokens.
        key: idempotency key of the debit, e.g. "debit:<MessageSid>".
        memo: e.g. the intent.
        now: the current time (UTC).

    Returns:
        `Posted` with the debit entries (one per lot drawn on, in consumption order); a repeat
        of `key` returns the first result, `replayed=True`.

    Raises:
        InvalidAmount: `tokens` is not a positive integer.
        InsufficientTokens: the available balance is below `tokens`, after expiring what was
            due; nothing is spent.
        KeyReused: `key` belongs to another operation (a capture, a credit). A key of a later
            entry (`key#2` ...) taken by another operation fails the entries' INSERT
            (`IntegrityError`; the caller rolls back, nothing is kept).
        UnknownAccount: no account has this id.
        LedgerInvariantBroken: the lots hold fewer tokens than the balance said.
    """
    _check_amount(tokens)
    now = now or utcnow()
    if now.tzinfo is None:
        raise ValueError("naive datetime given where a timezone-aware UTC time is required")
    _autoflush(session)
    params = {"account_id": account_id, "tokens": tokens, "key": key, "now": now}
    if on_postgresql(session):
        rows = execute_core(session, _DEBIT_IN_SERVER, {**params, "memo": memo}).all()
        if rows:
            return _posted_in_server(session, key, rows)
        # It wrote nothing: the statements below find why.
    if _rowcount(execute_core(session, _DEBIT_IF_SETTLED, params)) != 1:
        rows = execute_core(session, _REPLAY, {"key": key}).all()
        if rows:
            if any(row.hold_id is not None or int(row.amount) >= 0 for row in rows):
                raise KeyReused(f"{key!r} was used by another operation than a debit")
            return _posted_from(key, rows)
        _lock_account(session, account_id)  # raises UnknownAccount
        expire_holds(session, now, account_id=account_id)
        expire_lots(session, account_id, now)
        _debit_balance(session, account_id, tokens, now)
    return _consume(session, account_id, tokens, "debit", key, memo=memo, now=now,
                    valid_at=now)


def expire_holds(
    session: Session, now: datetime | None = None, *, account_id: int | None = None
) -> int:
    """Expire pending holds past their TTL, releasing their tokens; returns how many.

    Args:
        session: the caller's session; this function flushes, never commits.
        now: the current time (UTC).
        account_id: only this account's holds (None: every account's, for a sweeper job).
    """
    now = now or utcnow()
    query = select(Hold.id).where(Hold.status == "pending", Hold.expires_at <= now)
    if account_id is not None:
        query = query.where(Hold.account_id == account_id)
    expired = 0
    for hold_id in session.scalars(query).all():
        if not _release(session, hold_id, "expired", now).replayed:
            expired += 1
    return expired


# --- corrections --------------------------------------------------------------------------


def clawback(
    session: Session,
    credit_key: str,
    tokens: int,
    *,
    key: str,
    memo: str | None = None,
    now: datetime | None = None,
) -> Posted:
    """Take back up to `tokens` of one credit (a purchase or its bonus), never more than its
    unspent tokens.

    Args:
        session: the caller's session; this function flushes, never commits.
        credit_key: the idempotency key of the credit entry, e.g. "checkout:<session id>".
        tokens: the most to take back (positive).
        key: idempotency key of the clawback, e.g. "refund:<charge id>:1".
        memo: the reason.
        now: the posting time (UTC).

    Returns:
        `Posted` with the tokens actually taken, min(`tokens`, unspent). When nothing of the
        credit is left the result is 0 tokens and no entry, which stays true (a lot never
        grows), so a repeat is still a no-op. The entry's `corrects_id` points at the credit.

    Raises:
        InvalidAmount: `tokens` is not a positive integer.
        UnknownEntry: no credit entry has `credit_key`.
        TokensHeld: pending holds reserve some of those tokens; nothing is taken, and the
            same call succeeds once the holds are captured, voided or expired.
    """
    _check_amount(tokens)
    replay = _replay(session, key)
    if replay is not None:
        return replay
    credit = session.scalars(
        select(LedgerEntry).where(LedgerEntry.idempotency_key == credit_key)
    ).first()
    if credit is None or credit.amount <= 0:
        raise UnknownEntry(f"no credit entry has the key {credit_key!r}")
    now = now or utcnow()
    with session.begin_nested():
        posted, held = _lock_account(session, credit.account_id)
        replay = _replay(session, key)  # a concurrent clawback with this key just committed
        if replay is not None:
            return replay
        lot = session.scalars(
            select(Lot)
            .where(Lot.credit_entry_id == credit.id)
            .execution_options(populate_existing=True)
        ).one()
        take = min(tokens, lot.remaining)
        if take == 0:
            return Posted(key, (), 0, (), replayed=False)
        if take > posted - held:
            raise TokensHeld(
                f"{take} tokens to claw back but pending holds leave only {posted - held}"
            )
        _debit_balance(session, credit.account_id, take, now)
        entry = _new_entry(session, credit.account_id, "clawback", lot.bucket, -take, key,
                           operation_key=key, lot_id=lot.id, corrects_id=credit.id,
                           memo=memo, now=now)
        lot.remaining -= take
        session.flush()
    return Posted(key, (entry.id,), take, ((lot.bucket, -take),), replayed=False)


def reverse_debit(
    session: Session,
    debit_key: str,
    *,
    key: str,
    memo: str | None = None,
    now: datetime | None = None,
) -> Posted:
    """Give back the tokens of a debit whose reply never reached the person.

    Each debit entry of the operation `debit_key` gets a `reversal` entry of the same size, into
    the lot it drew on (same bucket, `corrects_id` -> the debit entry), so the tokens come back
    as what they were. Tokens whose lot has expired by `now` are not given back: they would
    expire at once (a free allowance of a past month stays expired).

    Args:
        session: the caller's session; this function flushes, never commits.
        debit_key: the debit's operation key, e.g. "debit:<MessageSid>".
        key: idempotency key of the reversal, e.g. "reversal:<MessageSid>".
        memo: why, shown in the person's history.
        now: the posting time (UTC).

    Returns:
        `Posted` with the reversal entries (none, `amount` 0, when every lot had expired). A
        debit is reversed once: a repeat, with this key or another, returns the first reversal
        with `replayed=True`. (A reversal that gave nothing back leaves no entry, so its repeat
        finds nothing to give either and returns `amount` 0 again.)

    Raises:
        UnknownEntry: no debit was posted under `debit_key`.
    """
    replay = _replay(session, key)
    if replay is not None:
        return replay
    debits = session.scalars(
        select(LedgerEntry)
        .where(LedgerEntry.operation_key == debit_key, LedgerEntry.kind == "debit")
        .order_by(LedgerEntry.id)
    ).all()
    if not debits:
        raise UnknownEntry(f"no debit was posted under {debit_key!r}")
    account_id = debits[0].account_id
    now = now or utcnow()
    with session.begin_nested():
        _lock_account(session, account_id)
        # Checked under the lock: a concurrent reversal of this debit, under any key, is done.
        replay = _replay(session, key) or _earlier_reversal(session, debits)
        if replay is not None:
            return replay
        entries: list[LedgerEntry] = []
        for debit in debits:
            assert debit.lot_id is not None, "every debit entry draws on a lot"
            lot = session.get(Lot, debit.lot_id, populate_existing=True)
            assert lot is not None
            if lot.expires_at is not None and lot.expires_at <= now:
                continue
            entry_key = key if not entries else f"{key}#{len(entries) + 1}"
            entries.append(_new_entry(session, account_id, "reversal", lot.bucket, -debit.amount,
                                      entry_key, operation_key=key, lot_id=lot.id,
                                      corrects_id=debit.id, memo=memo, now=now))
            lot.remaining -= debit.amount
        total = sum(e.amount for e in entries)
        if total:
            session.execute(
                update(Account)
                .where(Account.id == account_id)
                .values(balance=Account.balance + total)
                .execution_options(synchronize_session=False)
            )
        session.flush()
    return Posted(key, tuple(e.id for e in entries), total,
                  tuple((e.bucket, e.amount) for e in entries), replayed=False)


def credit_status(session: Session, credit_key: str) -> tuple[int, int]:
    """(tokens clawed back so far, tokens still unspent) of the credit posted under
    `credit_key` (a purchase or its bonus); (0, 0) when no such credit exists."""
    credit = session.scalar(select(LedgerEntry).where(LedgerEntry.idempotency_key == credit_key))
    if credit is None:
        return 0, 0
    clawed = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0))
        .where(LedgerEntry.corrects_id == credit.id, LedgerEntry.kind == "clawback")
    )
    remaining = session.scalar(select(Lot.remaining).where(Lot.credit_entry_id == credit.id))
    return -int(clawed or 0), int(remaining or 0)


def adjust(
    session: Session,
    account_id: int,
    tokens: int,
    *,
    key: str,
    reason: str,
    actor: str,
    bucket: str = "bonus",
    now: datetime | None = None,
) -> Posted:
    """An operator's correction: credit (`tokens` > 0, into `bucket`) or take (`tokens` < 0,
    in consumption order, at most the available balance).

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: the account to correct.
        tokens: signed, non-zero.
        key: idempotency key, e.g. "adjust:<uuid>".
        reason: why, shown in the person's history (required).
        actor: who did it, e.g. "cli:alice" (required).
        bucket: bucket of a credit (goodwill tokens go to "bonus" by default).
        now: the posting time (UTC).

    Returns:
        `Posted` with `amount` = abs(tokens).

    Raises:
        InvalidAmount: `tokens` is zero or not an integer, `reason` or `actor` is blank, or
            `bucket` is unknown.
        InsufficientTokens: a negative adjustment beyond the available balance.
        UnknownAccount: no account has this id.
    """
    if type(tokens) is not int or tokens == 0:
        raise InvalidAmount(f"an adjustment must be a non-zero integer, got {tokens!r}")
    if not reason.strip() or not actor.strip():
        raise InvalidAmount("an adjustment needs a reason and an actor")
    if tokens > 0:
        return _credit(session, account_id, "adjustment", bucket, tokens, key,
                       memo=reason.strip()[:200], actor=actor.strip()[:100], now=now)
    replay = _replay(session, key)
    if replay is not None:
        return replay
    now = now or utcnow()
    expire_lots(session, account_id, now)
    with session.begin_nested():
        posted, held = _lock_account(session, account_id)
        replay = _replay(session, key)  # a concurrent adjustment with this key just committed
        if replay is not None:
            return replay
        if posted - held < -tokens:
            raise InsufficientTokens(-tokens, posted - held)
        _debit_balance(session, account_id, -tokens, now)
        return _consume(session, account_id, -tokens, "adjustment", key,
                        memo=reason.strip()[:200], actor=actor.strip()[:100], now=now,
                        valid_at=now)


def expire_lots(session: Session, account_id: int, now: datetime | None = None) -> int:
    """Post `expiry` entries for the account's lots past their expiry; returns tokens expired.

    Tokens that a pending hold placed before a lot's expiry may still capture stay in that lot
    (see `_expiry_plan`); the capture of such a hold may spend them, and the next sweep takes
    what is left. Holds placed after the expiry never protect or spend expired tokens.
    """
    now = now or utcnow()
    _autoflush(session)
    params = {"account_id": account_id, "now": now}
    if not session.execute(select(_LOTS_DUE), params).scalar():
        return 0  # the common case: one indexed read, no lock
    due = (
        select(_LOTS.c.id, _LOTS.c.bucket, _LOTS.c.expires_at, _LOTS.c.remaining)
        .where(_LOTS.c.account_id == _P_ACCOUNT, _LOTS.c.remaining > 0,
               _LOTS.c.expires_at <= _P_NOW)
        .order_by(_LOTS.c.expires_at, _LOTS.c.id)
    )
    with session.begin_nested():
        _lock_account(session, account_id)
        # Re-read under the account's lock: every change to a lot happens under it.
        lots = session.execute(due, params).all()
        expired = 0
        rows = []
        for lot, take in _expiry_plan(lots, _pending_hold_times(session, account_id)):
            if take <= 0:
                continue
            key = f"expiry:{lot.id}:{lot.remaining}"
            rows.append({
                "account_id": account_id, "kind": "expiry", "bucket": lot.bucket,
                "amount": -take, "idempotency_key": key, "operation_key": key,
                "lot_id": lot.id, "hold_id": None, "memo":
                f"expired {lot.expires_at:%Y-%m-%d %H:%M} UTC", "actor": None,
                "created_at": now,
            })
            execute_core(session, _DRAW_LOT, {"lot_id": lot.id, "take": take})
            expired += take
        if rows:
            session.execute(_INSERT_ENTRIES, rows)
            signals.entries_posted.send(None, kinds=[row["kind"] for row in rows])
            _forget(session, Lot, [row["lot_id"] for row in rows])
        if expired:
            _debit_balance(session, account_id, expired, now)
    return expired


# --- internals ----------------------------------------------------------------------------


def _check_amount(tokens: int) -> None:
    if type(tokens) is not int or tokens <= 0:
        raise InvalidAmount(f"token amounts must be positive integers, got {tokens!r}")


def _replay(session: Session, key: str) -> Posted | None:
    """The first result of the operation `key`, or None when it was never posted."""
    rows = execute_core(session, _REPLAY, {"key": key}).all()
    return _posted_from(key, rows) if rows else None


def _posted_from(key: str, rows: Sequence[Row[Any]]) -> Posted:
    """The replayed `Posted` of the operation `key` from its entries' (id, bucket, amount)."""
    return Posted(
        key,
        tuple(int(row.id) for row in rows),
        abs(sum(int(row.amount) for row in rows)),
        tuple((row.bucket, int(row.amount)) for row in rows),
        replayed=True,
    )


def _credit(
    session: Session,
    account_id: int,
    kind: str,
    bucket: str,
    tokens: int,
    key: str,
    *,
    expires_at: datetime | None = None,
    memo: str | None = None,
    actor: str | None = None,
    now: datetime | None = None,
    parent_id: int | None = None,
    savepoint: bool = True,
    replay_checked: bool = False,
) -> Posted:
    """Post one credit entry with its lot; idempotent by `key` (`replay_checked`: the caller
    has just looked the key up and found nothing)."""
    _check_amount(tokens)
    if bucket not in BUCKETS:
        raise InvalidAmount(f"unknown bucket {bucket!r}; expected one of {', '.join(BUCKETS)}")
    if savepoint and not replay_checked:
        replay = _replay(session, key)
        if replay is not None:
            return replay
    now = now or utcnow()

    def post() -> LedgerEntry:
        # The INSERT comes first: a concurrent repeat of the key fails on UNIQUE before it
        # waits on the account's row lock.
        entry = _new_entry(session, account_id, kind, bucket, tokens, key, operation_key=key,
                           expires_at=expires_at, memo=memo, actor=actor, now=now,
                           parent_id=parent_id)
        session.flush()
        credited = session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(balance=Account.balance + tokens)
            .execution_options(synchronize_session=False)
        )
        if credited.rowcount != 1:  # type: ignore[attr-defined]
            raise UnknownAccount(f"account {account_id} does not exist")
        session.add(Lot(account_id=account_id, credit_entry_id=entry.id, bucket=bucket,
                        expires_at=expires_at, remaining=tokens))
        session.flush()
        return entry

    if not savepoint:
        entry = post()
    else:
        try:
            with session.begin_nested():
                entry = post()
        except IntegrityError:
            replay = _replay(session, key)
            if replay is None:
                raise UnknownAccount(f"account {account_id} does not exist") from None
            return replay
    return Posted(key, (entry.id,), tokens, ((bucket, tokens),), replayed=False)


def _pending_hold_times(session: Session, account_id: int) -> list[tuple[datetime, int]]:
    """(created_at, amount) of the account's pending holds."""
    rows = execute_core(session, _PENDING_HOLD_TIMES, {"account_id": account_id}).all()
    return [(created, int(amount)) for created, amount in rows]


def _expiry_plan(
    lots: Sequence[Any], holds: Sequence[tuple[datetime, int]]
) -> list[tuple[Any, int]]:
    """How many tokens each lot past its expiry must expire now.

    A pending hold placed before a lot expired may have been backed by that lot, so up to its
    amount stays for its capture. Each hold protects once: lots are taken in expiry order, and
    a hold placed before an earlier expiry is also before every later one. `lots` are rows or
    `Lot`s: anything with `id`, `expires_at` and `remaining`.
    """
    plan = []
    used = 0
    for lot in sorted(lots, key=lambda item: (item.expires_at, item.id)):
        assert lot.expires_at is not None
        cutoff = lot.expires_at
        protecting = sum(amount for created, amount in holds if created < cutoff) - used
        keep = min(lot.remaining, max(protecting, 0))
        used += keep
        plan.append((lot, lot.remaining - keep))
    return plan


def _earlier_reversal(session: Session, debits: Sequence[LedgerEntry]) -> Posted | None:
    """The reversal already posted for any of `debits`, under whatever key, or None."""
    key = session.scalar(
        select(LedgerEntry.operation_key)
        .where(LedgerEntry.kind == "reversal",
               LedgerEntry.corrects_id.in_([debit.id for debit in debits]))
        .limit(1)
    )
    return None if key is None else _replay(session, key)


def lock_account(session: Session, account_id: int) -> int:
    """Lock the account's row until the transaction ends: one person's messages are handled
    one at a time (docs/messaging.md, "Per-person order"), on PostgreSQL by the row lock, on SQLite
    by `BEGIN IMMEDIATE`.

    Returns:
        The available balance as posted (balance - held, tokens), read by the same statement;
        lots or holds past their expiry are not expired here.

    Raises:
        UnknownAccount: no account has this id.
    """
    posted, held = _lock_account(session, account_id)
    return posted - held


def _lock_account(session: Session, account_id: int) -> tuple[int, int]:
    """Lock the account row and return (posted, held) in tokens.

    Every change to an account's lots happens under this lock (or the row lock of an UPDATE
    of the account), always before any lot is locked, so lot changes never race or deadlock.
    `FOR NO KEY UPDATE` still lets other transactions insert rows that reference the account.
    SQLite ignores it; there `BEGIN IMMEDIATE` serialises writers.
    """
    row = execute_core(session, _LOCK, {"account_id": account_id}).first()
    if row is None:
        raise UnknownAccount(f"account {account_id} does not exist")
    return int(row[0]), int(row[1])


def _debit_balance(session: Session, account_id: int, tokens: int, now: datetime) -> None:
    """Lower the posted balance, never below what pending holds reserve."""
    result = execute_core(session, _DEBIT_BALANCE, {"account_id": account_id, "tokens": tokens})
    if _rowcount(result) != 1:
        raise _refusal(session, account_id, tokens, now)


def _refusal(session: Session, account_id: int, tokens: int, now: datetime) -> Exception:
    exists = session.scalar(select(_ACCOUNTS.c.id).where(_ACCOUNTS.c.id == account_id))
    if exists is None:
        return UnknownAccount(f"account {account_id} does not exist")
    return InsufficientTokens(tokens, balance(session, account_id, now).available)


_BUCKET_RANK = case(
    {bucket: rank for rank, bucket in enumerate(CONSUMPTION_ORDER)}, value=Lot.bucket
)


def _consume(
    session: Session,
    account_id: int,
    tokens: int,
    kind: str,
    key: str,
    *,
    memo: str | None = None,
    actor: str | None = None,
    now: datetime,
    valid_at: datetime,
    hold_id: int | None = None,
) -> Posted:
    """Draw `tokens` from the account's lots in consumption order, one entry per lot.

    Only lots still valid at `valid_at` are drawn on: for a capture, when its hold was placed
    (so a hold placed before an expiry may spend the tokens a sweep kept for it, and a later
    hold never spends expired tokens); for an adjustment, now. The caller has already lowered
    the cached balance (which locked the account row).

    Raises:
        LedgerInvariantBroken: the lots hold fewer tokens than the balance said (nothing of
            the draw is written).
    """
    plan = _draw_plan(session, account_id, tokens, valid_at)
    drawn = sum(n for _, _, n in plan)
    if drawn != tokens:
        raise LedgerInvariantBroken(
            f"account {account_id}: the balance covered {tokens} tokens but its lots only "
            f"{drawn}"
        )
    return _post_draw(session, account_id, plan, _entry_keys(key, len(plan)), kind, key,
                      memo=memo, actor=actor, now=now, hold_id=hold_id)


def _draw_plan(
    session: Session, account_id: int, tokens: int, valid_at: datetime
) -> list[tuple[int, str, int]]:
    """(lot id, bucket, tokens to take) per lot, in consumption order, for a draw of `tokens`
    from the lots valid at `valid_at` (one read, under the account's lock). The takes add up
    to less than `tokens` only when the lots cannot cover them."""
    plan = []
    left = tokens
    for lot in execute_core(session, _DRAWABLE, {"account_id": account_id, "valid_at": valid_at}):
        take = min(left, int(lot.remaining))
        plan.append((int(lot.id), lot.bucket, take))
        left -= take
        if not left:
            break
    return plan


def _entry_keys(key: str, count: int) -> list[str]:
    """The idempotency keys of an operation's `count` entries: `key`, `key#2`, ..."""
    return [key] + [f"{key}#{n}" for n in range(2, count + 1)]


def _post_draw(
    session: Session,
    account_id: int,
    plan: Sequence[tuple[int, str, int]],
    keys: Sequence[str],
    kind: str,
    key: str,
    *,
    memo: str | None = None,
    actor: str | None = None,
    now: datetime,
    hold_id: int | None = None,
) -> Posted:
    """Post the entries of a planned draw (one `INSERT ... RETURNING` for all of them) and
    lower the lots (one UPDATE); `keys` are the entries' idempotency keys."""
    rows = [
        {"account_id": account_id, "kind": kind, "bucket": bucket, "amount": -take,
         "idempotency_key": entry_key, "operation_key": key, "lot_id": lot_id,
         "hold_id": hold_id, "memo": memo, "actor": actor, "created_at": now}
        for (lot_id, bucket, take), entry_key in zip(plan, keys, strict=True)
    ]
    if len(rows) == 1:
        ids: tuple[int, ...] = (int(execute_core(session, _INSERT_ENTRY, rows[0]).scalar_one()),)
    else:
        # One multi-row INSERT (an executemany with RETURNING would be one per row on
        # SQLite); the ids are matched to the rows by their keys.
        by_key = dict(session.execute(
            insert(_ENTRIES).values(rows).returning(_ENTRIES.c.idempotency_key, _ENTRIES.c.id)
        ).tuples().all())
        ids = tuple(int(by_key[entry_key]) for entry_key in keys)
    signals.entries_posted.send(None, kinds=[row["kind"] for row in rows])
    if len(plan) == 1:
        execute_core(session, _DRAW_LOT, {"lot_id": plan[0][0], "take": plan[0][2]})
    else:
        takes = {lot_id: take for lot_id, _, take in plan}
        session.execute(
            update(_LOTS)
            .where(_LOTS.c.id.in_(list(takes)))
            .values(remaining=_LOTS.c.remaining - case(takes, value=_LOTS.c.id))
        )
    _forget(session, Lot, [lot_id for lot_id, _, _ in plan])
    return Posted(key, ids, sum(take for _, _, take in plan),
                  tuple((bucket, -take) for _, bucket, take in plan), replayed=False)


def _release(session: Session, hold_id: int, status: str, now: datetime) -> HoldResult:
    """Void or expire a pending hold: the hold with its account locked, then its conditional
    UPDATE and the account's `held`; a hold no longer pending is returned as it is."""
    _autoflush(session)
    record = _lock_hold(session, hold_id)
    current = record.status  # a terminal state as read is the state now (see `capture`)
    if current == "pending":
        settled = execute_core(session, _SETTLE, {"hold_id": hold_id, "status": status, "now": now})
        if _rowcount(settled) == 1:
            execute_core(session, _RELEASE, {"account_id": record.account_id,
                                             "tokens": record.amount})
            _forget(session, Hold, (hold_id,))
            return HoldResult(hold_id, record.idempotency_key, int(record.amount), status,
                              record.expires_at, replayed=False)
        current = execute_core(session, _HOLD_STATE, {"hold_id": hold_id}).one().status
    if current == "captured":
        raise HoldNotPending(f"hold {hold_id} was captured")
    return HoldResult(hold_id, record.idempotency_key, int(record.amount), current,
                      record.expires_at, replayed=True)


def _new_entry(
    session: Session,
    account_id: int,
    kind: str,
    bucket: str,
    amount: int,
    key: str,
    *,
    operation_key: str,
    lot_id: int | None = None,
    hold_id: int | None = None,
    corrects_id: int | None = None,
    parent_id: int | None = None,
    expires_at: datetime | None = None,
    memo: str | None = None,
    actor: str | None = None,
    now: datetime | None = None,
) -> LedgerEntry:
    entry = LedgerEntry(
        account_id=account_id,
        kind=kind,
        bucket=bucket,
        amount=amount,
        idempotency_key=key,
        operation_key=operation_key,
        lot_id=lot_id,
        hold_id=hold_id,
        corrects_id=corrects_id,
        parent_id=parent_id,
        expires_at=expires_at,
        memo=memo,
        actor=actor,
        created_at=now or utcnow(),
    )
    session.add(entry)
    return entry
