"""Cost of goods (COGS) per interaction, and per-account monthly rollups.

Design (shared/design/economy.md, "Cost and revenue"):

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

Functions take the SQLAlchemy `Session` explicitly and flush; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Integer, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from tokens.base import Base, UTCDateTime, utcnow
from tokens.catalog import Costs, ModelPrice
from tokens.errors import InvalidAmount
from tokens.ledger import day_of, month_of

COST_KINDS = ("llm", "messaging", "platform")
REVENUE_KINDS = ("pack", "subscription", "affiliate")
BUCKET_COLUMNS = {"free": "tokens_free", "subscription": "tokens_subscription",
                  "bonus": "tokens_bonus", "paid": "tokens_paid"}
# Stripe amounts are in the currency's minor unit: 1 cent = 10,000 µUSD (USD packs only).
MUSD_PER_CENT = 10_000
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

    @property
    def cost_musd(self) -> int:
        """Total COGS of the month, µUSD."""
        return self.cost_llm_musd + self.cost_messaging_musd + self.cost_platform_musd

    @property
    def revenue_musd(self) -> int:
        """Net revenue of the month (purchases less refunds and lost disputes, paid
        subscription invoices, confirmed affiliate commissions), µUSD."""
        return self.revenue_pack_musd + self.revenue_subscription_musd + self.revenue_affiliate_musd

    @property
    def exposure_musd(self) -> int:
        """What this person has cost and not paid for this month: cost - revenue, µUSD
        (economy.md, "Tiers"); negative for a paying person."""
        return self.cost_musd - self.revenue_musd


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
    """Record the cost of one LLM call, once per `key` (e.g. "llm:<MessageSid>").

    Returns:
        The cost in µUSD (0 when `key` was recorded before: nothing changes).

    Raises:
        InvalidAmount: negative token counts.
    """
    if usage.prompt_tokens < 0 or usage.completion_tokens < 0:
        raise InvalidAmount(f"LLM usage cannot be negative: {usage}")
    amount = price.cost_musd(usage.prompt_tokens, usage.completion_tokens)
    entry = CostEntry(kind="llm", amount_musd=amount, intent=intent, model=usage.model,
                      prompt_tokens=usage.prompt_tokens,
                      completion_tokens=usage.completion_tokens)
    return _post_llm(session, account_id, entry, key, now)


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
    provider may still bill it) at `amount_musd`, its ceiling, once per `key`. Returns the
    amount recorded (0 on a repeat)."""
    entry = CostEntry(kind="llm", amount_musd=amount_musd, intent=intent, model=model)
    return _post_llm(session, account_id, entry, key, now)


def _post_llm(session: Session, account_id: int, entry: CostEntry, key: str,
              now: datetime | None) -> int:
    """Post an LLM cost entry once per `key` and add it to the month's and the intent's
    rollups; returns its µUSD (0 on a repeat)."""
    if not _post(session, account_id, entry, key, now):
        return 0
    _bump(session, account_id, entry.month, cost_llm_musd=entry.amount_musd, llm_calls=1,
          llm_prompt_tokens=entry.prompt_tokens or 0,
          llm_completion_tokens=entry.completion_tokens or 0)
    if entry.intent is not None:
        _bump_intent(session, account_id, entry.month, entry.intent,
                     cost_llm_musd=entry.amount_musd)
    return entry.amount_musd


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
    """Record one message's messaging cost: `units` x the channel's rate for `direction`.

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
    entry = CostEntry(kind="messaging", amount_musd=amount, channel=channel,
                      direction=direction, units=units)
    if not _post(session, account_id, entry, key, now):
        return 0
    if direction == "in":
        _bump(session, account_id, entry.month, cost_messaging_musd=amount, messages_in=1,
              units_in=units)
    else:
        _bump(session, account_id, entry.month, cost_messaging_musd=amount, messages_out=1,
              units_out=units)
    return amount


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
    statements: both entries in one savepoint, and one update of each rollup. This is on
    every inbound message's path (bench/load.py's profile).

    Returns:
        The cost in µUSD (0 when this MessageSid was recorded before).

    Raises:
        InvalidAmount: unknown channel, or negative units.
    """
    rate = costs.messaging.get(channel)
    if rate is None or type(units) is not int or units < 0:
        raise InvalidAmount(f"cannot price {units!r} units in on {channel!r}")
    moment = now or utcnow()
    label = month_of(moment)
    messaging = CostEntry(kind="messaging", amount_musd=rate.inbound_musd * units,
                          channel=channel, direction="in", units=units)
    platform = CostEntry(kind="platform", amount_musd=costs.platform_musd)
    keys = (f"msg:in:{message_sid}", f"platform:{message_sid}")
    for entry, key in zip((messaging, platform), keys, strict=True):
        entry.account_id, entry.idempotency_key = account_id, key
        entry.month, entry.created_at = label, moment
    try:
        with session.begin_nested():
            session.add_all((messaging, platform))
            session.flush()
    except IntegrityError:
        if session.scalar(select(CostEntry.id).where(CostEntry.idempotency_key.in_(keys))):
            return 0  # recorded before (a repeat of this MessageSid)
        raise
    total = messaging.amount_musd + platform.amount_musd
    _bump_day(session, account_id, day_of(moment), cost_musd=total)
    _bump(session, account_id, label, cost_messaging_musd=messaging.amount_musd,
          cost_platform_musd=platform.amount_musd, messages_in=1, units_in=units)
    return total


def record_platform(
    session: Session, account_id: int, costs: Costs, *, key: str, now: datetime | None = None
) -> int:
    """Record the fixed platform cost of one interaction, once per `key`
    (e.g. "platform:<MessageSid>"). Returns the cost in µUSD (0 on a repeat)."""
    amount = costs.platform_musd
    entry = CostEntry(kind="platform", amount_musd=amount)
    if not _post(session, account_id, entry, key, now):
        return 0
    _bump(session, account_id, entry.month, cost_platform_musd=amount)
    return amount


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
    """Record revenue (positive) or its reversal (negative), once per `key`.

    Args:
        kind: "pack" (token packs, net of refunds and lost disputes), "subscription" or
            "affiliate" (confirmed commissions).
        amount_musd: signed µUSD, not zero (`MUSD_PER_CENT` converts Stripe's cents).

    Returns:
        The amount recorded, µUSD (0 when `key` was recorded before).

    Raises:
        InvalidAmount: unknown kind, or a zero or non-integer amount.
    """
    if kind not in REVENUE_KINDS or type(amount_musd) is not int or amount_musd == 0:
        raise InvalidAmount(f"cannot record {amount_musd!r} µUSD of {kind!r} revenue")
    entry = RevenueEntry(kind=kind, amount_musd=amount_musd, memo=memo)
    if not _post(session, account_id, entry, key, now):
        return 0
    _bump(session, account_id, entry.month, **{f"revenue_{kind}_musd": amount_musd})
    return amount_musd


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
    operation was not a replay. `by_bucket` is the operation's (bucket, tokens) pairs with
    spends positive, e.g. [("free", 3), ("paid", 2)].
    """
    total = sum(tokens for _, tokens in by_bucket)
    label = month_of(when or utcnow())
    increments: dict[str, int] = {}
    for bucket, tokens in by_bucket:
        column = BUCKET_COLUMNS[bucket]
        increments[column] = increments.get(column, 0) + tokens
    if total or increments:
        _bump(session, account_id, label, tokens_charged=total, **increments)
    if intent is not None:
        _bump_intent(session, account_id, label, intent, answers=1, tokens_charged=total)


def month(session: Session, account_id: int, when: str | datetime | None = None) -> AccountMonth:
    """The rollup of one account's month ("YYYY-MM", a moment in it, or None for now).

    A month without activity gives a zero row (not stored).
    """
    label = when if isinstance(when, str) else month_of(when or utcnow())
    row = session.get(AccountMonth, (account_id, label))
    if row is None:
        row = AccountMonth(account_id=account_id, month=label)
        for column in AccountMonth.__table__.columns:
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


def _post(
    session: Session, account_id: int, entry: CostEntry | RevenueEntry, key: str,
    now: datetime | None,
) -> bool:
    """Insert a cost or revenue `entry` under `key`; False when the key was recorded before."""
    model = type(entry)

    def exists() -> bool:
        return session.scalar(select(model.id).where(model.idempotency_key == key)) is not None

    if exists():
        return False
    moment = now or utcnow()
    entry.account_id = account_id
    entry.idempotency_key = key
    entry.month = month_of(moment)
    entry.created_at = moment
    try:
        with session.begin_nested():
            session.add(entry)
            session.flush()
    except IntegrityError:
        if not exists():  # not a concurrent repeat of the key: a real error
            raise
        return False
    column = "cost_musd" if isinstance(entry, CostEntry) else "revenue_musd"
    _bump_day(session, account_id, day_of(moment), **{column: entry.amount_musd})
    return True


def _bump_day(session: Session, account_id: int, day: str, **increments: int) -> None:
    """Add `increments` to the account's day row, creating it on first use."""
    key = (AccountDay.account_id == account_id, AccountDay.day == day)
    values = {name: getattr(AccountDay, name) + amount for name, amount in increments.items()}
    statement = (update(AccountDay).where(*key).values(**values)
                 .execution_options(synchronize_session=False))
    if session.execute(statement).rowcount == 1:  # type: ignore[attr-defined]
        return
    try:
        with session.begin_nested():
            session.add(AccountDay(account_id=account_id, day=day, **increments))
            session.flush()
    except IntegrityError:
        session.execute(statement)


def _bump(session: Session, account_id: int, label: str, **increments: int) -> None:
    """Add `increments` to the account's month row, creating it on first use."""
    values = {name: getattr(AccountMonth, name) + amount for name, amount in increments.items()}
    statement = (
        update(AccountMonth)
        .where(AccountMonth.account_id == account_id, AccountMonth.month == label)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if session.execute(statement).rowcount == 1:  # type: ignore[attr-defined]
        _expire_cached(session, account_id, label)
        return
    try:
        with session.begin_nested():
            session.add(AccountMonth(account_id=account_id, month=label, **increments))
            session.flush()
    except IntegrityError:
        # Another transaction created the row first: add to it.
        session.execute(statement)
    _expire_cached(session, account_id, label)


def _bump_intent(session: Session, account_id: int, label: str, intent: str,
                 **increments: int) -> None:
    """Add `increments` to the account's month row for `intent`, creating it on first use."""
    key = (AccountMonthIntent.account_id == account_id, AccountMonthIntent.month == label,
           AccountMonthIntent.intent == intent)
    values = {name: getattr(AccountMonthIntent, name) + amount
              for name, amount in increments.items()}
    statement = (update(AccountMonthIntent).where(*key).values(**values)
                 .execution_options(synchronize_session=False))
    if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
        try:
            with session.begin_nested():
                session.add(AccountMonthIntent(account_id=account_id, month=label,
                                               intent=intent, **increments))
                session.flush()
        except IntegrityError:
            session.execute(statement)
    cached = session.identity_map.get(
        Session.identity_key(AccountMonthIntent, (account_id, label, intent)))
    if cached is not None:
        session.expire(cached)


def intents_of(session: Session, account_id: int, label: str) -> list[AccountMonthIntent]:
    """The per-intent rows of one account's month."""
    return list(session.scalars(
        select(AccountMonthIntent)
        .where(AccountMonthIntent.account_id == account_id, AccountMonthIntent.month == label)
        .order_by(AccountMonthIntent.intent)))


def _expire_cached(session: Session, account_id: int, label: str) -> None:
    """The UPDATE bypassed the identity map: let a loaded row reload its sums."""
    key = Session.identity_key(AccountMonth, (account_id, label))
    row = session.identity_map.get(key)
    if row is not None:
        session.expire(row)
