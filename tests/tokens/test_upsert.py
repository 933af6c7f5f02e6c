"""`tokens.base.insert_on_conflict`: one ON CONFLICT statement for PostgreSQL and SQLite that
SQLAlchemy's statement cache keeps (its dialect constructs are compiled on every execution)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from bot.models import InboxMessage
from tokens import ledger
from tokens.base import insert_on_conflict
from tokens.costs import AccountDay

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
BUMP = insert_on_conflict(AccountDay.__table__, ("account_id", "day", "cost_musd", "revenue_musd"),
                          ("account_id", "day"), add=("cost_musd", "revenue_musd"))
ONCE = insert_on_conflict(InboxMessage.__table__,
                          ("message_sid", "sender", "channel", "payload", "received_at"),
                          ("message_sid",), returning=("id",))


def test_a_conflict_adds_to_the_stored_row(session: Session) -> None:
    account = ledger.open_account(session, NOW).id
    for cost, revenue in ((5, 0), (7, 100), (-2, 0)):
        session.execute(BUMP, {"account_id": account, "day": "2026-12-02", "cost_musd": cost,
                               "revenue_musd": revenue})
    row = session.execute(select(AccountDay.cost_musd, AccountDay.revenue_musd)
                          .where(AccountDay.account_id == account)).one()
    assert tuple(row) == (10, 100)


def test_do_nothing_returns_the_new_id_once_and_keeps_types(session: Session) -> None:
    values = {"message_sid": "SMonce", "sender": "+15550001111", "channel": "sms",
              "payload": "{\"text\": \"hi\"}", "received_at": NOW}
    first = session.execute(ONCE, values).scalar()
    again = session.execute(ONCE, {**values, "sender": "+15550002222"}).scalar()
    assert isinstance(first, int) and again is None
    row = session.get(InboxMessage, first)
    assert row is not None
    assert row.sender == "+15550001111" and row.payload == "{\"text\": \"hi\"}"
    assert row.received_at == NOW  # UTCDateTime's processing, aware UTC on both backends


def test_a_naive_time_is_refused_as_by_the_orm(session: Session) -> None:
    values = {"message_sid": "SMnaive", "sender": "+15550001111", "channel": "sms",
              "payload": "{}", "received_at": datetime(2026, 12, 2, 12, 0)}
    with pytest.raises(Exception, match="naive datetime"):
        session.execute(ONCE, values)


def test_the_statement_is_compiled_once(session: Session) -> None:
    stats: list[str] = []

    def record(conn: object, cursor: object, statement: str, parameters: object,
               context: object, executemany: bool) -> None:
        stats.append(context._get_cache_stats())  # type: ignore[attr-defined]

    engine = session.get_bind()
    event.listen(engine, "after_cursor_execute", record)
    try:
        for i in range(3):
            session.execute(ONCE, {"message_sid": f"SMc{i}", "sender": "+15550001111",
                                   "channel": "sms", "payload": "{}", "received_at": NOW})
    finally:
        event.remove(engine, "after_cursor_execute", record)
    stats = [s for s in stats if s != "raw sql"]  # SQLite's BEGIN IMMEDIATE
    assert len(stats) == 3
    assert all(s.startswith("cached since") for s in stats[1:]), stats


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="identifier"):
        insert_on_conflict(InboxMessage.__table__, ("sender; drop",), ("message_sid",))
    with pytest.raises(ValueError, match="no column"):
        insert_on_conflict(InboxMessage.__table__, ("nope",), ("message_sid",))


def test_the_inbox_statement_is_the_cacheable_kind() -> None:
    from bot import inbox

    assert inbox._STORE._generate_cache_key() is not None
