"""How many SQL statements the profit engine's hot paths send (issue "the message pipeline at
the limit"), and that a repeated idempotency key changes no rollup, on SQLite and PostgreSQL.

PostgreSQL records an entry and all its rollups in one statement (data-modifying CTEs), whose
month row the session then holds; on SQLite a recording is the entries' INSERT alone (their
triggers add them to the rollups, migration 0019), and the month is read when asked for, with
one SELECT, and held until the next recording."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from tests.support.statements import counted
from tokens import costs, ledger
from tokens.catalog import load_catalog
from tokens.costs import AccountDay, AccountMonth, AccountMonthIntent, CostEntry, LlmUsage

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
COSTS = load_catalog().costs
MINI = COSTS.model("gpt-4o-mini")
# Statements per call: (PostgreSQL, SQLite). BEGIN is not counted.
BOUNDS = {
    "record_inbound": (1, 1),
    "record_messaging": (1, 1),
    "record_llm": (1, 1),
    "note_tokens_charged": (1, 2),
}


@pytest.fixture
def account(session) -> int:
    account_id = ledger.open_account(session, NOV).id
    session.commit()
    return account_id


def on_sqlite(session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def bound(session, name: str) -> int:
    postgres, sqlite = BOUNDS[name]
    return sqlite if on_sqlite(session) else postgres


def one_message(session, account_id: int, sid: str, now: datetime) -> dict[str, int]:
    """What one answered message records, call by call; the statements each call sent."""
    sent: dict[str, int] = {}
    calls = {
        "record_inbound": lambda: costs.record_inbound(
            session, account_id, COSTS, "sms", 1, message_sid=sid, now=now),
        "record_llm": lambda: costs.record_llm(
            session, account_id, LlmUsage("gpt-4o-mini", 1000, 400), MINI, key=f"llm:{sid}",
            intent="meal_plan", now=now),
        "note_tokens_charged": lambda: costs.note_tokens_charged(
            session, account_id, [("free", 3), ("paid", 2)], now, intent="meal_plan"),
        "record_messaging": lambda: costs.record_messaging(
            session, account_id, COSTS, "sms", "out", 2, key=f"msg:out:{sid}", now=now),
    }
    for name, call in calls.items():
        with counted() as statements:
            call()
        sent[name] = len(statements)
    return sent


def test_steady_state_statements(session, account):
    """A returning person: every rollup row exists already."""
    one_message(session, account, "SM0", NOV)
    session.commit()
    sent = one_message(session, account, "SM1", NOV)
    session.commit()
    assert sent == {name: bound(session, name) for name in sent}


def test_first_of_the_day_and_of_the_month_statements(session, account):
    """No rollup row yet (a new day, a new month): the same statements create them."""
    sent = one_message(session, account, "SM1", NOV)
    session.commit()
    assert sent == {name: bound(session, name) for name in sent}
    sent = one_message(session, account, "SM2", NOV + timedelta(days=10))  # 1 December
    session.commit()
    assert sent == {name: bound(session, name) for name in sent}
    days = session.scalars(select(AccountDay.day).where(AccountDay.account_id == account)
                           .order_by(AccountDay.day)).all()
    assert days == ["2026-11-21", "2026-12-01"]


def test_the_month_just_recorded_is_read_with_at_most_one_statement(session, account):
    """The router reads the exposure right after `record_inbound`: on PostgreSQL the upsert
    returned the row (no statement); on SQLite one SELECT reads it, and a second read in the
    same transaction sends nothing until the next recording."""
    costs.record_inbound(session, account, COSTS, "sms", 1, message_sid="SM1", now=NOV)
    reads = 1 if on_sqlite(session) else 0
    with counted() as statements:
        row = costs.month(session, account, NOV)
        exposure = row.exposure_musd
    assert len(statements) == reads
    with counted() as statements:
        assert costs.month(session, account, NOV) is row
    assert statements == []
    assert exposure == COSTS.messaging["sms"].inbound_musd + COSTS.platform_musd
    costs.record_messaging(session, account, COSTS, "sms", "out", 2, key="msg:out:1", now=NOV)
    with counted() as statements:
        assert costs.month(session, account, NOV) is row
        assert row.cost_messaging_musd == 3 * COSTS.messaging["sms"].inbound_musd
    assert len(statements) == reads
    session.commit()
    assert costs.month(session, account, NOV).cost_musd == exposure + 15_800  # read again


def test_a_savepoint_rolled_back_is_not_read_from_the_held_row(session, account):
    costs.record_platform(session, account, COSTS, key="platform:1", now=NOV)
    savepoint = session.begin_nested()
    costs.record_platform(session, account, COSTS, key="platform:2", now=NOV)
    assert costs.month(session, account, NOV).cost_platform_musd == 400
    savepoint.rollback()
    assert costs.month(session, account, NOV).cost_platform_musd == 200
    session.commit()
    assert costs.month(session, account, NOV).cost_platform_musd == 200


def snapshot(session, account_id: int) -> tuple:
    session.expire_all()
    months = session.scalars(select(AccountMonth).where(AccountMonth.account_id == account_id)
                             .order_by(AccountMonth.month)).all()
    days = session.execute(select(AccountDay.day, AccountDay.cost_musd, AccountDay.revenue_musd)
                           .where(AccountDay.account_id == account_id)
                           .order_by(AccountDay.day)).all()
    intents = session.execute(
        select(AccountMonthIntent.intent, AccountMonthIntent.answers,
               AccountMonthIntent.tokens_charged, AccountMonthIntent.cost_llm_musd)
        .where(AccountMonthIntent.account_id == account_id)).all()
    columns = [column.name for column in AccountMonth.__table__.columns]
    entries = session.scalar(select(func.count()).select_from(CostEntry))
    return ([tuple(getattr(row, name) for name in columns) for row in months],
            list(days), list(intents), entries)


def test_a_repeated_key_changes_no_rollup(session, account):
    """Provider retries, in any order and on another day: nothing changes, 0 is returned."""
    one_message(session, account, "SM1", NOV)
    costs.record_revenue(session, account, "pack", 5_000_000, key="revenue:1", now=NOV)
    session.commit()
    before = snapshot(session, account)
    later = NOV + timedelta(days=3)
    with counted() as statements:
        repeats = [
            costs.record_messaging(session, account, COSTS, "sms", "out", 2, key="msg:out:SM1",
                                   now=later),
            costs.record_llm(session, account, LlmUsage("gpt-4o-mini", 1000, 400), MINI,
                             key="llm:SM1", intent="meal_plan", now=later),
            costs.record_llm_estimate(session, account, 999, "gpt-4o-mini", key="llm:SM1",
                                      intent="meal_plan", now=later),
            costs.record_inbound(session, account, COSTS, "sms", 1, message_sid="SM1",
                                 now=later),
            costs.record_platform(session, account, COSTS, key="platform:SM1", now=later),
            costs.record_messaging(session, account, COSTS, "sms", "in", 1, key="msg:in:SM1",
                                   now=later),
            costs.record_revenue(session, account, "pack", 5_000_000, key="revenue:1",
                                 now=later),
        ]
    assert repeats == [0] * len(repeats)
    assert len(statements) == len(repeats)  # one INSERT ... DO NOTHING each, nothing more
    session.commit()
    assert snapshot(session, account) == before


def test_an_inbound_half_recorded_before_records_the_other_half(session, account):
    """`record_inbound` after `record_platform` of the same MessageSid adds only the
    messaging cost, once."""
    costs.record_platform(session, account, COSTS, key="platform:SM1", now=NOV)
    inbound = COSTS.messaging["sms"].inbound_musd
    assert costs.record_inbound(session, account, COSTS, "sms", 1, message_sid="SM1",
                                now=NOV) == inbound
    assert costs.record_inbound(session, account, COSTS, "sms", 1, message_sid="SM1",
                                now=NOV) == 0
    session.commit()
    row = costs.month(session, account, NOV)
    assert (row.cost_platform_musd, row.cost_messaging_musd, row.messages_in, row.units_in) == (
        COSTS.platform_musd, inbound, 1, 1)
    (day,) = session.execute(select(AccountDay.cost_musd)).scalars().all()
    assert day == COSTS.platform_musd + inbound


def test_a_row_expired_by_a_commit_is_refreshed_by_the_next_recording(session, account):
    row = costs.month(session, account, NOV)  # nothing yet: a zero row, not stored
    costs.record_platform(session, account, COSTS, key="platform:1", now=NOV)
    row = costs.month(session, account, NOV)
    session.commit()  # expires `row`
    costs.record_platform(session, account, COSTS, key="platform:2", now=NOV)
    with counted() as statements:
        assert row.cost_platform_musd == 400
        assert costs.month(session, account, NOV) is row
    # SQLite: the recording returned no row, so `row` refreshes itself and `month` reads it.
    assert len(statements) == (2 if on_sqlite(session) else 0)
