"""Cost of goods (COGS) per interaction, and per-account monthly rollups.

Design (docs/economy.md, "Cost and revenue"):

- Every cost is a `CostEntry` in integer µUSD with a kind (`llm`, `messaging`, `platform`) and a
  unique idempotency key (`llm:<MessageSid>`, `msg:in:<MessageSid>`, `msg:out:<message id>`,
  `platform:<MessageSid>`), so a retried job or a repeated delivery records a cost once.
- LLM cost = prompt tokens x input price + completion tokens x output price, from the catalog's
  model price table (`tokens.catalog.ModelPrice.cost_musd`, rounded up to whole µUSD).
  Messaging cost = units (SMS segments, WhatsApp messages) x the channel's rate for the
  direction. Platform cost = a fixed amount per interaction.
- `AccountMonth` is the per-account monthly rollup (cost by kind, messages, LLM usage, tokens
  charged). It is updated in the same transaction as the entry it sums, so reports read one
  row per account and month, not every event.

Functions take the SQLAlchemy `Session` explicitly; the caller owns the transaction.

Statements: the recording functions write with SQLAlchemy Core, not through ORM objects, and do
not flush the session. An entry is `INSERT ... ON CONFLICT (idempotency_key) DO NOTHING`
(a repeated key changes nothing, in any order and under concurrency) and each rollup is one
`INSERT ... ON CONFLICT (primary key) DO UPDATE SET col = col + excluded.col`. On PostgreSQL a
whole recording (its entries and every rollup they change) is one statement, and the month's
row it returns becomes the session's `AccountMonth`, so `month` in the same transaction reads
it without a statement. SQLite has no data-modifying CTEs: there a recording is the entries'
INSERT alone, and each entry inserted adds itself to the day's, the month's and the intent's
rows in an AFTER INSERT trigger of the same statement (migration 0019, which lists what each
kind adds; a repeated key inserts nothing, so its trigger does not fire). `month` then reads
the row with one SELECT and holds it until the next recording.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    Table,
    bindparam,
    case,
    cast,
    func,
    inspect,
    literal_column,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import (
    Mapped,
    Session,
    SessionTransaction,
    mapped_column,
    object_session,
)
from sqlalchemy.orm.attributes import set_committed_value

from tokens import signals
from tokens.base import Base, UTCDateTime, execute_compiled, known_row, utcnow
from tokens.catalog import Costs, ModelPrice
from tokens.errors import InvalidAmount
from tokens.periods import Month, day_of

COST_KINDS = ("llm", "messaging", "platform")
REVENUE_KINDS = ("pack", "subscription", "affiliate")
BUCKET_COLUMNS = {"free": "tokens_free", "subscription": "tokens_subscription",
                  "bonus": "tokens_bonus", "paid": "tokens_paid"}
DIRECTIONS = ("in", "out")


class CostEntry(Base):
    """One cost the operator paid for a person's interaction, in µUSD. Never updated."""

    __tablename__ = "cost_entries"
    __table_args__ = (
        CheckConstraint("amount_musd >= 0", name="amount_not_negative"),
        CheckConstraint(f"kind IN ({', '.join(repr(k) for k in COST_KINDS)})", name="kind_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    month: Mapped[str] = mapped_column(String(7))
    kind: Mapped[str] = mapped_column(String(16))
    amount_musd: Mapped[int] = mapped_column(BigInteger)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    intent: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(64))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    channel: Mapped[str | None] = mapped_column(String(16))
    direction: Mapped[str | None] = mapped_column(String(3))
    units: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MonthAmounts(Protocol):
    """A month's COGS and revenue by kind, µUSD (ints): an `AccountMonth`, a report's row of
    its columns, or (for SQL) the `AccountMonth` class itself."""

    @property
    def cost_llm_musd(self) -> Any: ...
    @property
    def cost_messaging_musd(self) -> Any: ...
    @property
    def cost_platform_musd(self) -> Any: ...
    @property
    def revenue_pack_musd(self) -> Any: ...
    @property
    def revenue_subscription_musd(self) -> Any: ...
    @property
    def revenue_affiliate_musd(self) -> Any: ...


def cogs_musd(month: MonthAmounts) -> Any:
    """The month's COGS, µUSD: LLM + messaging + platform. An int for a row; a SQL expression
    for the `AccountMonth` class (`AccountMonth.cost_musd`)."""
    return month.cost_llm_musd + month.cost_messaging_musd + month.cost_platform_musd


def revenue_musd(month: MonthAmounts) -> Any:
    """The month's net revenue, µUSD: packs (purchases less refunds and lost disputes) + paid
    subscription invoices + confirmed affiliate commissions. An int for a row; a SQL
    expression for the `AccountMonth` class (`AccountMonth.revenue_musd`)."""
    return month.revenue_pack_musd + month.revenue_subscription_musd + month.revenue_affiliate_musd


def exposure_musd(month: MonthAmounts) -> Any:
    """What the person has cost and not paid for in the month: COGS - revenue, µUSD
    (docs/economy.md, "Levels"); negative for a paying person."""
    return cogs_musd(month) - revenue_musd(month)


class AccountMonth(Base):
    """One account's month: what it cost (µUSD by kind), its traffic and its LLM usage.

    Attributes (all sums over the month, UTC):
        cost_llm_musd, cost_messaging_musd, cost_platform_musd: COGS by kind, µUSD.
        messages_in, messages_out: messages received from and sent to the person.
        units_in, units_out: billed messaging units (SMS segments, WhatsApp messages).
        llm_calls, llm_prompt_tokens, llm_completion_tokens: LLM calls that reached the API
            and their usage (cached answers are not calls).
        tokens_charged: tokens debited for answers, less tokens given back for replies
            that were not delivered; `tokens_<bucket>` split it by the bucket they came from.
        revenue_pack_musd, revenue_subscription_musd, revenue_affiliate_musd: revenue by
            kind, net of reversals, µUSD.
    """

    __tablename__ = "account_months"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    cost_llm_musd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cost_messaging_musd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cost_platform_musd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    messages_in: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    messages_out: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    units_in: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    units_out: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    llm_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    llm_prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    llm_completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    tokens_charged: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    revenue_pack_musd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    revenue_subscription_musd: Mapped[int] = mapped_column(BigInteger, default=0,
                                                          server_default="0")
    revenue_affiliate_musd: Mapped[int] = mapped_column(BigInteger, default=0,
                                                       server_default="0")
    tokens_free: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    tokens_subscription: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    tokens_bonus: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    tokens_paid: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    @hybrid_property
    def cost_musd(self) -> int:
        """Total COGS of the month, µUSD (`cogs_musd`; on the class, its SQL expression)."""
        amount: int = cogs_musd(self)
        return amount

    @hybrid_property
    def revenue_musd(self) -> int:
        """Net revenue of the month, µUSD (`revenue_musd`; on the class, its SQL
        expression)."""
        amount: int = revenue_musd(self)
        return amount

    @hybrid_property
    def exposure_musd(self) -> int:
        """Cost - revenue of the month, µUSD (`exposure_musd`; on the class, its SQL
        expression); negative for a paying person."""
        amount: int = exposure_musd(self)
        return amount


class AccountMonthIntent(Base):
    """One account's month for one intent: answers given, tokens charged, LLM cost (µUSD)."""

    __tablename__ = "account_month_intents"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    intent: Mapped[str] = mapped_column(String(32), primary_key=True)
    answers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tokens_charged: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cost_llm_musd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class AccountDay(Base):
    """One account's day (UTC): its cost and net revenue, µUSD, for the daily chart of the
    admin overview. Updated with every cost and revenue entry, so the chart reads at most one
    row per person and day, not every event."""

    __tablename__ = "account_days"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True, index=True)
    cost_musd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    revenue_musd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class RevenueEntry(Base):
    """Money a person brought in, or a reversal of it (negative), in µUSD. Never updated.

    Keys: `revenue:checkout:<session>`, `revenue:refund:<charge>:<amount refunded>`,
    `revenue:dispute:<dispute>`, `revenue:invoice:<invoice>`.
    """

    __tablename__ = "revenue_entries"
    __table_args__ = (
        CheckConstraint("amount_musd <> 0", name="amount_not_zero"),
        CheckConstraint(f"kind IN ({', '.join(repr(k) for k in REVENUE_KINDS)})",
                        name="kind_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    month: Mapped[str] = mapped_column(String(7))
    kind: Mapped[str] = mapped_column(String(16))
    amount_musd: Mapped[int] = mapped_column(BigInteger)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    memo: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


@dataclass(frozen=True)
class LlmUsage:
    """What one LLM call used, from the response's `usage` (tokens)."""

    model: str
    prompt_tokens: int
    completion_tokens: int


def record_llm(
    session: Session,
    account_id: int,
    usage: LlmUsage,
    price: ModelPrice,
    *,
    key: str,
    intent: str | None = None,
    now: datetime | None = None,
) -> int:
    """Record the cost of one LLM call, once per `key` (e.g. "llm:<MessageSid>"): a cost entry
    of kind "llm", added to the day's, the month's and (given an `intent`) the intent's rollups.

    Returns:
        The cost in µUSD (0 when `key` was recorded before: nothing changes).

    Raises:
        InvalidAmount: negative token counts.
    """
    if usage.prompt_tokens < 0 or usage.completion_tokens < 0:
        raise InvalidAmount(f"LLM usage cannot be negative: {usage}")
    amount = price.cost_musd(usage.prompt_tokens, usage.completion_tokens)
    entry = {"kind": "llm", "amount_musd": amount, "idempotency_key": key, "intent": intent,
             "model": usage.model, "prompt_tokens": usage.prompt_tokens,
             "completion_tokens": usage.completion_tokens}
    return _record(session, account_id, now, _COSTS, [(entry, {
        "cost_llm_musd": amount, "llm_calls": 1, "llm_prompt_tokens": usage.prompt_tokens,
        "llm_completion_tokens": usage.completion_tokens})], intent=intent)


def record_llm_estimate(
    session: Session,
    account_id: int,
    amount_musd: int,
    model: str,
    *,
    key: str,
    intent: str | None = None,
    now: datetime | None = None,
) -> int:
    """Record an LLM call whose usage is unknown (it timed out or the connection dropped; the
    provider may still bill it) at `amount_musd`, its ceiling, once per `key`: one LLM call
    without tokens in the rollups, as `record_llm` would.

    Returns:
        The amount recorded, µUSD (0 on a repeat).

    Raises:
        InvalidAmount: a negative or non-integer amount.
    """
    if type(amount_musd) is not int or amount_musd < 0:
        raise InvalidAmount(f"cannot record an LLM estimate of {amount_musd!r} µUSD")
    entry = {"kind": "llm", "amount_musd": amount_musd, "idempotency_key": key,
             "intent": intent, "model": model}
    return _record(session, account_id, now, _COSTS, [(entry, {
        "cost_llm_musd": amount_musd, "llm_calls": 1, "llm_prompt_tokens": 0,
        "llm_completion_tokens": 0})], intent=intent)


def record_messaging(
    session: Session,
    account_id: int,
    costs: Costs,
    channel: str,
    direction: str,
    units: int,
    *,
    key: str,
    now: datetime | None = None,
) -> int:
    """Record one message's messaging cost: `units` x the channel's rate for `direction`, once
    per `key`, added to the day's and the month's rollups (one message and `units` units in
    that direction). On every outbound reply's path: one statement on PostgreSQL, three on
    SQLite (see "Statements" in the module's docstring).

    Args:
        channel: "sms" or "whatsapp".
        direction: "in" or "out".
        units: billed units: SMS segments, or 1 per WhatsApp message (see the catalog's
            `costs.messaging.<channel>.unit`).
        key: e.g. "msg:in:<MessageSid>" or "msg:out:<message id>".

    Returns:
        The cost in µUSD (0 when `key` was recorded before).

    Raises:
        InvalidAmount: unknown channel or direction, or negative units.
    """
    rate = costs.messaging.get(channel)
    if rate is None or direction not in DIRECTIONS or type(units) is not int or units < 0:
        raise InvalidAmount(f"cannot price {units!r} units {direction!r} on {channel!r}")
    per_unit = rate.inbound_musd if direction == "in" else rate.outbound_musd
    amount = per_unit * units
    entry = {"kind": "messaging", "amount_musd": amount, "idempotency_key": key,
             "channel": channel, "direction": direction, "units": units}
    return _record(session, account_id, now, _COSTS, [(entry, {
        "cost_messaging_musd": amount, f"messages_{direction}": 1,
        f"units_{direction}": units})])


def record_inbound(
    session: Session,
    account_id: int,
    costs: Costs,
    channel: str,
    units: int,
    *,
    message_sid: str,
    now: datetime | None = None,
) -> int:
    """Record what receiving one message cost: its messaging units in
    (`msg:in:<MessageSid>`) and the platform's per-interaction cost
    (`platform:<MessageSid>`), as `record_messaging` and `record_platform` would, in fewer
    statements: both entries in one INSERT, and one upsert of each rollup (one statement in
    all on PostgreSQL, three on SQLite). This is on every inbound message's path
    (bench/load.py's profile).

    Each entry is recorded once per key: a repeat of this MessageSid records nothing, and if
    only one of the two keys was recorded before (by `record_messaging` or `record_platform`),
    only the other one is recorded now.

    Returns:
        The cost recorded now, µUSD (0 when this MessageSid was recorded before).

    Raises:
        InvalidAmount: unknown channel, or negative units.
    """
    rate = costs.messaging.get(channel)
    if rate is None or type(units) is not int or units < 0:
        raise InvalidAmount(f"cannot price {units!r} units in on {channel!r}")
    messaging = rate.inbound_musd * units
    platform = costs.platform_musd
    return _record(session, account_id, now, _COSTS, [
        ({"kind": "messaging", "amount_musd": messaging,
          "idempotency_key": f"msg:in:{message_sid}", "channel": channel, "direction": "in",
          "units": units},
         {"cost_messaging_musd": messaging, "messages_in": 1, "units_in": units}),
        ({"kind": "platform", "amount_musd": platform,
          "idempotency_key": f"platform:{message_sid}"},
         {"cost_platform_musd": platform}),
    ])


def record_platform(
    session: Session, account_id: int, costs: Costs, *, key: str, now: datetime | None = None
) -> int:
    """Record the fixed platform cost of one interaction, once per `key`
    (e.g. "platform:<MessageSid>"). Returns the cost in µUSD (0 on a repeat)."""
    amount = costs.platform_musd
    entry = {"kind": "platform", "amount_musd": amount, "idempotency_key": key}
    return _record(session, account_id, now, _COSTS, [(entry, {"cost_platform_musd": amount})])


def record_revenue(
    session: Session,
    account_id: int,
    kind: str,
    amount_musd: int,
    *,
    key: str,
    memo: str | None = None,
    now: datetime | None = None,
) -> int:
    """Record revenue (positive) or its reversal (negative), once per `key`, in the day's and
    the month's rollups.

    Args:
        kind: "pack" (token packs, net of refunds and lost disputes), "subscription" or
            "affiliate" (confirmed commissions).
        amount_musd: signed µUSD, not zero (`tokens.money.cents_to_musd` converts Stripe's cents).

    Returns:
        The amount recorded, µUSD (0 when `key` was recorded before).

    Raises:
        InvalidAmount: unknown kind, or a zero or non-integer amount.
    """
    if kind not in REVENUE_KINDS or type(amount_musd) is not int or amount_musd == 0:
        raise InvalidAmount(f"cannot record {amount_musd!r} µUSD of {kind!r} revenue")
    entry = {"kind": kind, "amount_musd": amount_musd, "idempotency_key": key, "memo": memo}
    return _record(session, account_id, now, _REVENUES,
                   [(entry, {f"revenue_{kind}_musd": amount_musd})])


def note_tokens_charged(
    session: Session,
    account_id: int,
    by_bucket: Sequence[tuple[str, int]],
    when: datetime | None = None,
    *,
    intent: str | None = None,
) -> None:
    """Add tokens charged (negative amounts: given back) to the month of `when`, by bucket,
    and count an answer of `intent` when one is given.

    Call it in the transaction of the ledger operation it mirrors, and only when that
    operation was not a replay: this is not idempotent. `by_bucket` is the operation's
    (bucket, tokens) pairs with spends positive, e.g. [("free", 3), ("paid", 2)]. One
    statement on PostgreSQL, one per table changed on SQLite (at most two).

    Raises:
        KeyError: an unknown bucket.
    """
    total = sum(tokens for _, tokens in by_bucket)
    label = str(Month.of(when or utcnow()))
    increments: dict[str, int] = {}
    for bucket, tokens in by_bucket:
        column = BUCKET_COLUMNS[bucket]
        increments[column] = increments.get(column, 0) + tokens
    bump_month = bool(total or increments)
    if not bump_month and intent is None:
        return
    if bump_month:
        increments["tokens_charged"] = total
    connection = session.connection()
    postgres = _dialect(connection) == "postgresql"
    keys = {"account_id": account_id, "month": label}
    intent_values = None
    if intent is not None:
        intent_values = {**keys, "intent": intent, "answers": 1, "tokens_charged": total}
        _expire_loaded(session, AccountMonthIntent, (account_id, label, intent))
    if intent_values is not None and not (bump_month and postgres):
        _execute(connection, ("upsert", "account_month_intents", tuple(intent_values), False),
                 _prefixed(intent_values))
    if not bump_month:
        return
    values = {**keys, **increments}
    if intent_values is not None and postgres:
        row = _execute(connection, ("tokens", tuple(values)),
                       {**_prefixed(values), **_prefixed(intent_values, "i_")}).one()
    else:
        row = _execute(connection, ("upsert", "account_months", tuple(values), True),
                       _prefixed(values)).one()
    _hold_month(session, dict(zip(_MONTH_COLUMNS, row, strict=True)))


def month(session: Session, account_id: int, when: str | datetime | None = None) -> AccountMonth:
    """The rollup of one account's month ("YYYY-MM", a moment in it, or None for now), as the
    session's `AccountMonth` (amounts in µUSD): its values are current in this transaction.

    A month without activity gives a zero row (not stored, not in the session). A month that
    this transaction has recorded in is known from the recording (its upsert returned the
    row, which stays locked until the transaction ends), so reading it sends no statement;
    otherwise this is one SELECT (none if the row is already loaded and not expired).
    """
    label = when if isinstance(when, str) else str(Month.of(when or utcnow()))
    key = (account_id, label)
    held = _held_month(session, key)
    if held is not None:
        return held
    connection = session.connection()
    if _dialect(connection) == "sqlite":
        # SQLite's recordings return no row (their triggers add to it, migration 0019):
        # read it with one compiled SELECT and hold it. The row stays current for the
        # transaction: SQLite's lock keeps other writers out of it until it ends, and this
        # session's own writes to it hold it again or drop it (`_hold_month`, `_forget_month`).
        found = _execute(connection, ("month",), {"account_id": account_id,
                                                  "month": label}).first()
        if found is not None:
            _hold_month(session, dict(zip(_MONTH_COLUMNS, found, strict=True)))
            held = _held_month(session, key)
            if held is not None:
                return held
    row = session.get(AccountMonth, key)
    if row is None:
        row = AccountMonth(account_id=account_id, month=label)
        for column in _MONTHS.columns:
            if column.name not in ("account_id", "month"):
                setattr(row, column.name, 0)
    return row


def entries(session: Session, account_id: int, label: str) -> list[CostEntry]:
    """The cost entries of one account's month, oldest first."""
    return list(session.scalars(
        select(CostEntry)
        .where(CostEntry.account_id == account_id, CostEntry.month == label)
        .order_by(CostEntry.id)
    ))


def intents_of(session: Session, account_id: int, label: str) -> list[AccountMonthIntent]:
    """The per-intent rows of one account's month."""
    return list(session.scalars(
        select(AccountMonthIntent)
        .where(AccountMonthIntent.account_id == account_id, AccountMonthIntent.month == label)
        .order_by(AccountMonthIntent.intent)))


# --- statements -------------------------------------------------------------------------------
#
# The hot paths write with SQLAlchemy Core, not ORM objects: an entry is
# `INSERT ... ON CONFLICT (idempotency_key) DO NOTHING RETURNING ...` (nothing returned: a
# repeat, and no rollup changes), and each rollup is one
# `INSERT ... ON CONFLICT (primary key) DO UPDATE SET col = col + excluded.col`, which creates
# the row on first use and is safe under concurrency (no savepoint, no retry). On PostgreSQL a
# recording is one statement: the entry INSERT and the rollup upserts are data-modifying CTEs
# of one query, the upserts reading the entries the INSERT returned (none on a repeat). SQLite
# has no data-modifying CTEs: there it is the entry INSERT, and the tables' AFTER INSERT
# triggers (migration 0019) run the same upserts for each entry inserted. The increments
# `_record` is given are what those triggers add; the two are checked against each other on
# both databases (tests/tokens/test_costs.py).
# Each statement is built and compiled once per shape and database driver (`_execute`), with
# bound parameters, so a call costs a parameter dict and a round trip. PostgreSQL does not
# specify the order in which a statement's CTEs run; in practice it is the same for every
# recording here (entries, month, then day and intent: unreferenced CTEs run last), so two
# transactions of one account lock its rollup rows in the same order.

_COSTS: Table = CostEntry.__table__  # type: ignore[assignment]
_REVENUES: Table = RevenueEntry.__table__  # type: ignore[assignment]
_MONTHS: Table = AccountMonth.__table__  # type: ignore[assignment]
_DAYS: Table = AccountDay.__table__  # type: ignore[assignment]
_INTENTS: Table = AccountMonthIntent.__table__  # type: ignore[assignment]
_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_MONTH_COLUMNS = tuple(column.name for column in _MONTHS.columns)
# session.info key: the `AccountMonth` rows this session's recordings returned, by
# (account_id, month), each with the transaction (or savepoint) that wrote it last.
_HELD = "tokens.costs.months"

Increments = dict[str, int]


def _dialect(connection: Connection) -> str:
    """The name of the connection's database dialect: "postgresql" or "sqlite".

    Raises:
        NotImplementedError: any other database (no `INSERT ... ON CONFLICT` wired).
    """
    name = connection.dialect.name
    if name not in _INSERTS:
        raise NotImplementedError(f"INSERT ... ON CONFLICT is not wired for {name}")
    return name


def _execute(connection: Connection, key: tuple[Any, ...], params: dict[str, Any]) -> Any:
    """Run the statement `key` names (see `_build`) with `params`, in the session's
    transaction, compiled once per database driver (`tokens.base.execute_compiled`: dialect
    `INSERT ... ON CONFLICT` constructs are not in SQLAlchemy 2.0's compiled cache)."""
    return execute_compiled(connection, ("tokens.costs", key),
                            lambda name: _build(_dialect(connection), key), params)


def _prefixed(values: dict[str, Any], prefix: str = "v_") -> dict[str, Any]:
    return {prefix + name: value for name, value in values.items()}


def _record(
    session: Session,
    account_id: int,
    now: datetime | None,
    table: Table,
    rows: Sequence[tuple[dict[str, Any], Increments]],
    *,
    intent: str | None = None,
) -> int:
    """Insert cost or revenue entries once per idempotency key, and add the ones inserted to
    the rollups: `amount_musd` to the day's row (`cost_musd` or `revenue_musd`), each entry's
    increments to the month's row, and (given an `intent`) `amount_musd` to the intent's
    `cost_llm_musd`. `rows` pairs an entry's values (kind, amount_musd, idempotency_key and
    any optional column) with its increments of `AccountMonth` columns. Returns the µUSD
    inserted (0 when every key was recorded before)."""
    moment = now or utcnow()
    label, day = str(Month.of(moment)), day_of(moment)
    connection = session.connection()
    columns = _ENTRY_COLUMNS[table.name]
    params: dict[str, Any] = {"account_id": account_id, "month": label, "day": day,
                              "intent": intent}
    for i, (entry, increments) in enumerate(rows):
        values = {**dict.fromkeys(columns), **entry, "account_id": account_id, "month": label,
                  "created_at": moment}
        params.update((f"e{i}_{name}", values[name]) for name in columns)
        params.update((f"m{i}_{name}", amount) for name, amount in increments.items())
    _expire_loaded(session, AccountDay, (account_id, day))
    if intent is not None:
        _expire_loaded(session, AccountMonthIntent, (account_id, label, intent))
    if _dialect(connection) == "postgresql":
        shape = tuple(tuple(sorted(increments)) for _, increments in rows)
        found = _execute(connection, ("recording", table.name, shape, intent is not None),
                         params).first()
        if found is None:
            return 0  # every key was recorded before
        _hold_month(session, dict(zip(_MONTH_COLUMNS, found[:-2], strict=True)))
        _tell(table, rows, set(found[-1]))
        return int(found[-2])
    inserted = {key for key, in _execute(connection, ("entries", table.name, len(rows)),
                                         params)}
    if not inserted:
        return 0  # every key was recorded before
    _tell(table, rows, inserted)
    # The tables' triggers added the entries inserted to the rollups (migration 0019), so
    # the month's row the session holds or has loaded is stale: `month` reads it again.
    _forget_month(session, (account_id, label))
    return sum(entry["amount_musd"] for entry, _ in rows
               if entry["idempotency_key"] in inserted)


def _tell(table: Table, rows: Sequence[tuple[dict[str, Any], Increments]],
          inserted: set[str]) -> None:
    """Send `tokens.signals.costs_recorded` for the cost entries among `rows` whose keys
    were `inserted` (revenue entries have no signal)."""
    if table is not _COSTS:
        return
    signals.costs_recorded.send(None, entries=[
        (entry.get("channel"), entry["kind"], int(entry["amount_musd"]))
        for entry, _ in rows if entry["idempotency_key"] in inserted])


_ENTRY_COLUMNS = {
    "cost_entries": ("account_id", "month", "kind", "amount_musd", "idempotency_key", "intent",
                     "model", "prompt_tokens", "completion_tokens", "channel", "direction",
                     "units", "created_at"),
    "revenue_entries": ("account_id", "month", "kind", "amount_musd", "idempotency_key",
                        "memo", "created_at"),
}
_TABLES = {table.name: table for table in (_COSTS, _REVENUES, _MONTHS, _DAYS, _INTENTS)}
_KEYS = {"account_months": ("account_id", "month"), "account_days": ("account_id", "day"),
         "account_month_intents": ("account_id", "month", "intent")}
_ZERO = literal_column("0", BigInteger)


def _build(dialect: str, key: tuple[Any, ...]) -> Any:
    """The statement `key` names, for `dialect` ("postgresql" or "sqlite"):

    - ("month",): SQLite, the month's row of `account_id` and `month`;
    - ("entries", table, n): n entries, once per key, returning the keys inserted;
    - ("upsert", table, columns, returning): add to a rollup row (`_upsert`);
    - ("recording", table, increments, intent): PostgreSQL, a whole recording (`_recording`);
    - ("tokens", columns): PostgreSQL, tokens charged to the month and the intent's answer.
    """
    kind, *args = key
    if kind == "month":
        return select(*_MONTHS.columns).where(
            _MONTHS.c.account_id == bindparam("account_id", type_=Integer),
            _MONTHS.c.month == bindparam("month", type_=String))
    if kind == "entries":
        name, count = args
        table = _TABLES[name]
        return (_INSERTS[dialect](table).values(_entries_values(table, count))
                .on_conflict_do_nothing(index_elements=[table.c.idempotency_key])
                .returning(table.c.idempotency_key))
    if kind == "upsert":
        name, columns, returning = args
        return _upsert(dialect, _TABLES[name], columns, returning)
    if kind == "recording":
        return _recording(*args)
    assert kind == "tokens"
    return _upsert_with_intent(*args)


def _entries_values(table: Table, count: int) -> list[dict[str, Any]]:
    """The VALUES of `count` entries of `table`, bound to `e<i>_<column>`."""
    return [{name: bindparam(f"e{i}_{name}", type_=table.c[name].type)
             for name in _ENTRY_COLUMNS[table.name]} for i in range(count)]


def _upsert(dialect: str, table: Table, columns: tuple[str, ...], returning: bool) -> Any:
    """Add `columns` (bound to `v_<column>`; the primary key's too) to a rollup row, creating
    it on first use; returns the row when `returning`."""
    keys = _KEYS[table.name]
    # Every other column is a zero literal, not left to its Python default (one more bound
    # parameter each, which a statement with a CTE would not fill in).
    insert = _INSERTS[dialect](table).values({
        column.name: bindparam(f"v_{column.name}", type_=column.type)
        if column.name in columns else _ZERO for column in table.columns})
    statement = insert.on_conflict_do_update(
        index_elements=[table.c[name] for name in keys],
        set_={name: table.c[name] + insert.excluded[name] for name in columns
              if name not in keys})
    return statement.returning(*table.columns) if returning else statement


def _upsert_with_intent(columns: tuple[str, ...]) -> Any:
    """PostgreSQL: `_upsert` of the month (returning it) and of the intent's row (`i_answers`,
    `i_tokens_charged`, its key bound to `i_<column>`), in one statement."""
    intent_columns = ("account_id", "month", "intent", "answers", "tokens_charged")
    values: dict[str, Any] = {name: bindparam(f"i_{name}", type_=_INTENTS.c[name].type)
                              for name in intent_columns}
    values["cost_llm_musd"] = _ZERO
    intent = postgresql.insert(_INTENTS).values(values)
    intent = intent.on_conflict_do_update(
        index_elements=[_INTENTS.c[name] for name in _KEYS["account_month_intents"]],
        set_={name: _INTENTS.c[name] + intent.excluded[name]
              for name in ("answers", "tokens_charged")})
    cte = intent.returning(_INTENTS.c.account_id).cte("intent_row")
    return _upsert("postgresql", _MONTHS, columns, True).add_cte(cte)


def _from_entries(table: Table, values: dict[str, Any], entries: Any) -> Any:
    """PostgreSQL: INSERT ... SELECT `values` FROM `entries` (a CTE), one row when any entry
    was inserted and none otherwise, adding to the row of the same key on conflict."""
    keys = _KEYS[table.name]
    query = select(*values.values()).select_from(entries).having(func.count() > _ZERO)
    insert = postgresql.insert(table).from_select(list(values), query, include_defaults=False)
    return insert.on_conflict_do_update(
        index_elements=[table.c[name] for name in keys],
        set_={name: table.c[name] + insert.excluded[name] for name in values
              if name not in keys})


def _recording(name: str, increments: tuple[tuple[str, ...], ...], intent: bool) -> Any:
    """PostgreSQL: one recording (see `_record`) as one statement, the entries' INSERT and
    the rollups' upserts as data-modifying CTEs. `increments[i]` names the month's columns
    entry i adds to (bound to `m<i>_<column>`). Its result is the month's row and then the
    µUSD inserted, or no row at all when every key was recorded before."""
    table = _TABLES[name]
    entries = (postgresql.insert(table).values(_entries_values(table, len(increments)))
               .on_conflict_do_nothing(index_elements=[table.c.idempotency_key])
               .returning(table.c.idempotency_key, table.c.amount_musd).cte("entry"))
    account = bindparam("account_id", type_=Integer)
    label = bindparam("month", type_=String)
    amount = cast(func.sum(entries.c.amount_musd), BigInteger)
    day_column = "cost_musd" if table is _COSTS else "revenue_musd"
    ctes = [_from_entries(_DAYS, {"account_id": account, "day": bindparam("day", type_=String),
                                  day_column: amount}, entries)
            .returning(_DAYS.c.account_id).cte("day_row")]
    if intent:
        ctes.append(_from_entries(_INTENTS, {"account_id": account, "month": label,
                                             "intent": bindparam("intent", type_=String),
                                             "cost_llm_musd": amount}, entries)
                    .returning(_INTENTS.c.account_id).cte("intent_row"))
    month_values: dict[str, Any] = {"account_id": account, "month": label}
    for column in sorted({column for columns in increments for column in columns}):
        # Only what the entries inserted add: a key recorded before adds nothing.
        whens = [(entries.c.idempotency_key == bindparam(f"e{i}_idempotency_key"),
                  bindparam(f"m{i}_{column}", type_=BigInteger))
                 for i, columns in enumerate(increments) if column in columns]
        month_values[column] = cast(func.sum(case(*whens, else_=_ZERO)), BigInteger)
    month_row = (_from_entries(_MONTHS, month_values, entries)
                 .returning(*_MONTHS.columns).cte("month_row"))
    inserted = select(cast(func.sum(entries.c.amount_musd), BigInteger)).scalar_subquery()
    keys = select(func.array_agg(entries.c.idempotency_key)).scalar_subquery()
    return select(*month_row.c, inserted.label("inserted_musd"),
                  keys.label("inserted_keys")).add_cte(*ctes)


# --- the session's view of the rollups ---------------------------------------------------------


def _hold_month(session: Session, values: dict[str, Any]) -> None:
    """Make the `AccountMonth` row an upsert returned (`values`: its columns) the session's
    current view of that row, so `month` reads it without a statement.

    The row stays locked by this transaction until it ends (PostgreSQL's row lock, SQLite's
    write lock), so no other transaction changes it meanwhile. The row is held for the
    transaction or savepoint that wrote it: once that ends (committed, or rolled back and the
    write undone), `month` expires the row and reads it again.
    """
    key = (values["account_id"], values["month"])
    held: dict[tuple[int, str], tuple[SessionTransaction, AccountMonth]] = \
        session.info.setdefault(_HELD, {})
    for stale in [k for k, (transaction, _) in held.items() if not transaction.is_active]:
        _drop_held(session, held, stale)
    row = session.identity_map.get(Session.identity_key(AccountMonth, key))
    fresh = {column.key: values[column.name] for column in _MONTHS.columns}
    if row is None:
        row = known_row(session, AccountMonth, fresh)
    elif inspect(row).modified:  # changed through the ORM meanwhile: reload it instead
        session.expire(row)
        held.pop(key, None)
        return
    else:
        for name, value in fresh.items():
            set_committed_value(row, name, value)
    owner = object_session(row)  # the Session itself, also when given a scoped_session
    assert owner is not None
    transaction = owner.get_nested_transaction() or owner.get_transaction()
    assert transaction is not None  # the upsert just ran in it
    held[key] = (transaction, row)


def _held_month(session: Session, key: tuple[int, str]) -> AccountMonth | None:
    """The `AccountMonth` a recording of this transaction returned, if still current."""
    held = session.info.get(_HELD)
    if not held or key not in held:
        return None
    transaction, row = held[key]
    if transaction.is_active and row in session:
        return row  # type: ignore[no-any-return]
    _drop_held(session, held, key)
    return None


def _forget_month(session: Session, key: tuple[int, str]) -> None:
    """The month's row `key` changed behind the session (a trigger): drop what it holds or
    has loaded of it."""
    held = session.info.get(_HELD)
    if held and key in held:
        _drop_held(session, held, key)
    _expire_loaded(session, AccountMonth, key)


def _drop_held(session: Session, held: dict[tuple[int, str], Any], key: tuple[int, str]) -> None:
    _, row = held.pop(key)
    if row in session:
        session.expire(row)


def _expire_loaded(session: Session, model: type[Base], ident: tuple[Any, ...]) -> None:
    """A Core upsert bypasses the identity map: let a loaded row of `model` reload its sums."""
    row = session.identity_map.get(Session.identity_key(model, ident))
    if row is not None:
        session.expire(row)
