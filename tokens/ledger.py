"""The token ledger: accounts, append-only entries, and the verb functions that post them.

Design (shared/design/economy.md, "Ledger"):

- An `Account` is one person's wallet, shared by that person's SMS and WhatsApp identities.
- Every change of a balance is a `LedgerEntry`: a kind (`grant`, `purchase`, `bonus`, `debit`,
  `refund`, `clawback`, `expiry`, `adjustment`), a signed integer amount of tokens, a bucket
  (`free`, `subscription`, `bonus`, `paid`) and a unique idempotency key such as
  `grant:free:<account>:2026-11` or `debit:<MessageSid>`. Entries are never updated or deleted;
  a correction is a new entry whose `corrects_id` points at the entry it corrects.
- `Account.balance` caches the posted balance (the sum of the account's entries). It changes only
  together with the entries, in the same transaction, through one conditional UPDATE
  (`... SET balance = balance - n WHERE balance >= n`), so the check and the debit are a single
  atomic statement, never read-then-write. The database refuses a negative cache
  (`CHECK balance >= 0`) and zero-amount entries (`CHECK amount <> 0`).
- Idempotency: every operation is keyed. Posting with a key that exists returns the first result
  and changes nothing. Two concurrent posts of one key: the later INSERT hits
  `UNIQUE(idempotency_key)` inside a SAVEPOINT, which is rolled back, and the first result is
  returned.
- Debits consume buckets in the order free -> subscription -> bonus -> paid; a debit that spans
  buckets is one entry per bucket (the first keeps the operation's key, the others add
  `:<bucket>`).
- The free monthly allowance is granted lazily, on a person's first message of each calendar
  month (UTC), and expires at the month's end: the grant of a new month first posts an `expiry`
  entry for whatever free tokens are left from earlier months.

Domain functions take the SQLAlchemy `Session` explicitly and flush; the caller (a route, job or
CLI command) owns the transaction and commits.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from tokens.base import Base, UTCDateTime, utcnow
from tokens.errors import (
    InsufficientTokens,
    InvalidAmount,
    LedgerInvariantBroken,
    UnknownAccount,
)

ENTRY_KINDS = ("grant", "purchase", "bonus", "debit", "refund", "clawback", "expiry", "adjustment")
BUCKETS = ("free", "subscription", "bonus", "paid")
# economy.md: free allowance first, then subscription, bonus, then paid.
CONSUMPTION_ORDER = ("free", "subscription", "bonus", "paid")
CREDIT_KINDS = ("grant", "purchase", "bonus", "refund", "adjustment")


def _sql_in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Account(Base):
    """A person's token wallet.

    `public_id` is the opaque id shown to payment providers (`client_reference_id`); the numeric
    `id` never leaves the database. `balance` is the cached posted balance in tokens.
    """

    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance_not_negative"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LedgerEntry(Base):
    """One append-only ledger entry. See the module docstring for the rules it follows."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_not_zero"),
        CheckConstraint(_sql_in("kind", ENTRY_KINDS), name="kind_known"),
        CheckConstraint(_sql_in("bucket", BUCKETS), name="bucket_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    bucket: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    corrects_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_entries.id"))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    memo: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


@dataclass(frozen=True)
class Balance:
    """An account's balance, in tokens.

    Attributes:
        posted: the sum of all entries.
        available: what can be spent now (posted minus pending holds; holds arrive with the
            hold/capture ledger, so today it equals `posted`).
        by_bucket: bucket -> tokens, only buckets with a non-zero balance.
    """

    posted: int
    available: int
    by_bucket: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Posted:
    """The result of a keyed ledger operation.

    Attributes:
        key: the operation's idempotency key.
        entry_ids: ids of the entries the operation posted (several for a debit across buckets).
        amount: tokens moved, positive for credits and debits alike.
        by_bucket: (bucket, signed tokens) per entry, in posting order.
        replayed: True when the key had been posted before and nothing changed this time.
    """

    key: str
    entry_ids: tuple[int, ...]
    amount: int
    by_bucket: tuple[tuple[str, int], ...]
    replayed: bool


def month_of(moment: datetime) -> str:
    """The calendar month (UTC) of `moment` as "YYYY-MM" (economy.md, Units)."""
    return f"{moment.year:04d}-{moment.month:02d}"


def next_month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of the month after `moment`'s; when monthly grants expire."""
    if moment.month == 12:
        return moment.replace(year=moment.year + 1, month=1, day=1, hour=0, minute=0,
                              second=0, microsecond=0)
    return moment.replace(month=moment.month + 1, day=1, hour=0, minute=0, second=0,
                          microsecond=0)


def open_account(session: Session, now: datetime | None = None) -> Account:
    """Create an empty account with a fresh opaque `public_id` (128 random bits) and flush it."""
    account = Account(public_id=secrets.token_hex(16), balance=0, created_at=now or utcnow())
    session.add(account)
    session.flush()
    return account


def balance(session: Session, account_id: int) -> Balance:
    """The account's balance by bucket, read from the entries.

    Raises:
        UnknownAccount: no account has this id.
    """
    cached = session.scalar(select(Account.balance).where(Account.id == account_id))
    if cached is None:
        raise UnknownAccount(f"account {account_id} does not exist")
    by_bucket = _bucket_sums(session, account_id)
    return Balance(posted=cached, available=cached, by_bucket=by_bucket)


def grant(
    session: Session,
    account_id: int,
    tokens: int,
    *,
    key: str,
    bucket: str = "free",
    kind: str = "grant",
    expires_at: datetime | None = None,
    memo: str | None = None,
    now: datetime | None = None,
) -> Posted:
    """Credit `tokens` to the account, once per `key`.

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: the account to credit.
        tokens: a positive number of tokens.
        key: idempotency key, e.g. "grant:free:42:2026-11".
        bucket: one of `BUCKETS`.
        kind: a crediting kind of `ENTRY_KINDS` ("grant", "purchase", "bonus", "refund",
            "adjustment").
        expires_at: when the granted tokens lapse (None: never; purchased tokens never expire).
        memo: a short reason shown in the person's history.
        now: the posting time (UTC); defaults to the clock.

    Returns:
        `Posted`; `replayed=True` when `key` was posted before (nothing changes).

    Raises:
        InvalidAmount: `tokens` is not a positive integer, or `bucket` or `kind` is unknown.
        UnknownAccount: no account has this id.
    """
    _check_amount(tokens)
    _check_bucket(bucket)
    if kind not in CREDIT_KINDS:
        raise InvalidAmount(f"{kind!r} is not a crediting kind; expected one of {CREDIT_KINDS}")
    replay = _replay(session, key)
    if replay is not None:
        return replay
    try:
        with session.begin_nested():
            entry = _post(session, account_id, kind, bucket, tokens, key,
                          expires_at=expires_at, memo=memo, now=now)
    except IntegrityError:
        # A concurrent transaction posted the same key first (or the account is missing).
        replay = _replay(session, key)
        if replay is None:
            raise UnknownAccount(f"account {account_id} does not exist") from None
        return replay
    return Posted(key, (entry.id,), tokens, ((bucket, tokens),), replayed=False)


def debit(
    session: Session,
    account_id: int,
    tokens: int,
    *,
    key: str,
    memo: str | None = None,
    now: datetime | None = None,
) -> Posted:
    """Take `tokens` from the account in one atomic step, once per `key`.

    The balance check and the decrement are one conditional UPDATE, so two concurrent debits
    can never both pass a check that only one of them should. Buckets are consumed in
    `CONSUMPTION_ORDER`.

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: the account to debit.
        tokens: a positive number of tokens.
        key: idempotency key, e.g. "debit:<MessageSid>".
        memo: a short reason shown in the person's history, e.g. the intent.
        now: the posting time (UTC); defaults to the clock.

    Returns:
        `Posted` with one (bucket, -tokens) pair per bucket drawn from.

    Raises:
        InvalidAmount: `tokens` is not a positive integer.
        InsufficientTokens: the available balance is below `tokens`; nothing is posted.
        UnknownAccount: no account has this id.
        LedgerInvariantBroken: the cached balance and the entries disagree.
    """
    _check_amount(tokens)
    replay = _replay(session, key)
    if replay is not None:
        return replay
    try:
        with session.begin_nested():
            _decrement(session, account_id, tokens)
            # The UPDATE above holds the account's row lock until commit, so the bucket sums
            # read now cannot change under us.
            sums = _bucket_sums(session, account_id)
            plan = _allocate(tokens, sums)
            entries = []
            for i, (bucket, amount) in enumerate(plan):
                entry_key = key if i == 0 else f"{key}:{bucket}"
                entries.append(_new_entry(session, account_id, "debit", bucket, -amount,
                                          entry_key, memo=memo, now=now))
            session.flush()
    except IntegrityError:
        replay = _replay(session, key)
        if replay is None:
            raise
        return replay
    return Posted(
        key,
        tuple(e.id for e in entries),
        tokens,
        tuple((e.bucket, e.amount) for e in entries),
        replayed=False,
    )


def grant_monthly_allowance(
    session: Session, account_id: int, tokens: int, now: datetime | None = None
) -> Posted:
    """Grant this month's free allowance once, expiring earlier months' unspent free tokens.

    Called on every inbound message; after the first message of a month it is one indexed
    SELECT. The key is `grant:free:<account>:<YYYY-MM>` and the grant expires at the start of
    the next month (economy.md: "granted on the first message of each month, expiring at the
    month's end").

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: the account to credit.
        tokens: the catalog's `free_monthly_allowance`.
        now: the current time (UTC); decides the month.

    Returns:
        `Posted` of the grant; `replayed=True` when this month's grant already exists.

    Raises:
        InvalidAmount: `tokens` is not a positive integer.
        UnknownAccount: no account has this id.
    """
    now = now or utcnow()
    month = month_of(now)
    key = f"grant:free:{account_id}:{month}"
    replay = _replay(session, key)
    if replay is not None:
        return replay
    _check_amount(tokens)
    # Serialise with concurrent messages of the same person; SQLite serialises writers anyway.
    locked = session.scalar(
        select(Account.id).where(Account.id == account_id).with_for_update()
    )
    if locked is None:
        raise UnknownAccount(f"account {account_id} does not exist")
    try:
        with session.begin_nested():
            leftover = _bucket_sums(session, account_id).get("free", 0)
            if leftover > 0:
                _post(session, account_id, "expiry", "free", -leftover,
                      f"expiry:free:{account_id}:{month}",
                      memo=f"free tokens from before {month} expired", now=now)
            entry = _post(session, account_id, "grant", "free", tokens, key,
                          expires_at=next_month_start(now),
                          memo=f"free monthly allowance {month}", now=now)
    except IntegrityError:
        replay = _replay(session, key)
        if replay is None:
            raise
        return replay
    return Posted(key, (entry.id,), tokens, (("free", tokens),), replayed=False)


def _check_amount(tokens: int) -> None:
    if type(tokens) is not int or tokens <= 0:
        raise InvalidAmount(f"token amounts must be positive integers, got {tokens!r}")


def _check_bucket(bucket: str) -> None:
    if bucket not in BUCKETS:
        raise InvalidAmount(f"unknown bucket {bucket!r}; expected one of {', '.join(BUCKETS)}")


def _replay(session: Session, key: str) -> Posted | None:
    """The first result of `key`, or None when it was never posted."""
    keys = [key, *(f"{key}:{bucket}" for bucket in BUCKETS)]
    entries = session.scalars(
        select(LedgerEntry).where(LedgerEntry.idempotency_key.in_(keys)).order_by(LedgerEntry.id)
    ).all()
    if not entries or entries[0].idempotency_key != key:
        return None
    return Posted(
        key,
        tuple(e.id for e in entries),
        abs(sum(e.amount for e in entries)),
        tuple((e.bucket, e.amount) for e in entries),
        replayed=True,
    )


def _bucket_sums(session: Session, account_id: int) -> dict[str, int]:
    rows = session.execute(
        select(LedgerEntry.bucket, func.sum(LedgerEntry.amount))
        .where(LedgerEntry.account_id == account_id)
        .group_by(LedgerEntry.bucket)
    ).all()
    return {bucket: int(total) for bucket, total in rows if total}


def _allocate(tokens: int, sums: Mapping[str, int]) -> list[tuple[str, int]]:
    plan = []
    remaining = tokens
    for bucket in CONSUMPTION_ORDER:
        take = min(remaining, max(sums.get(bucket, 0), 0))
        if take:
            plan.append((bucket, take))
            remaining -= take
        if not remaining:
            return plan
    raise LedgerInvariantBroken(
        f"cached balance covered {tokens} tokens but the buckets hold only {tokens - remaining}"
    )


def _decrement(session: Session, account_id: int, tokens: int) -> None:
    result = session.execute(
        update(Account)
        .where(Account.id == account_id, Account.balance >= tokens)
        .values(balance=Account.balance - tokens)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        available = session.scalar(select(Account.balance).where(Account.id == account_id))
        if available is None:
            raise UnknownAccount(f"account {account_id} does not exist")
        raise InsufficientTokens(tokens, available)


def _post(
    session: Session,
    account_id: int,
    kind: str,
    bucket: str,
    amount: int,
    key: str,
    *,
    expires_at: datetime | None = None,
    memo: str | None = None,
    now: datetime | None = None,
) -> LedgerEntry:
    """Post one entry and move the cached balance with it."""
    if amount < 0:
        _decrement(session, account_id, -amount)
    else:
        result = session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(balance=Account.balance + amount)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise UnknownAccount(f"account {account_id} does not exist")
    entry = _new_entry(session, account_id, kind, bucket, amount, key,
                       expires_at=expires_at, memo=memo, now=now)
    session.flush()
    return entry


def _new_entry(
    session: Session,
    account_id: int,
    kind: str,
    bucket: str,
    amount: int,
    key: str,
    *,
    expires_at: datetime | None = None,
    memo: str | None = None,
    now: datetime | None = None,
) -> LedgerEntry:
    entry = LedgerEntry(
        account_id=account_id,
        kind=kind,
        bucket=bucket,
        amount=amount,
        idempotency_key=key,
        expires_at=expires_at,
        memo=memo,
        created_at=now or utcnow(),
    )
    session.add(entry)
    return entry
