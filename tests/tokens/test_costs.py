"""Cost of goods per interaction and the per-account monthly rollup (docs/economy.md, "Cost and
revenue"), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from app.extensions import db
from tokens import costs, ledger
from tokens.catalog import Costs, MessagingRate, load_catalog
from tokens.costs import AccountMonth, CostEntry, LlmUsage
from tokens.errors import InvalidAmount

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
NOV_LAST = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
DEC_FIRST = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
CATALOG = load_catalog()
COSTS = CATALOG.costs
MINI = COSTS.model("gpt-4o-mini")
ROLLUP_SUMS = ("cost_llm_musd", "cost_messaging_musd", "cost_platform_musd", "messages_in",
               "messages_out", "units_in", "units_out", "llm_calls", "llm_prompt_tokens",
               "llm_completion_tokens", "tokens_charged")


@pytest.fixture
def account(session) -> int:
    account_id = ledger.open_account(session, NOV).id
    session.commit()
    return account_id


def rollup(session, account_id: int, when: str | datetime = NOV) -> dict[str, int]:
    session.expire_all()
    row = costs.month(session, account_id, when)
    return {name: getattr(row, name) for name in ROLLUP_SUMS}


def recomputed(session, account_id: int, label: str) -> dict[str, int]:
    """The rollup's sums recomputed from the cost entries of the month (tokens_charged aside)."""
    rows = costs.entries(session, account_id, label)
    by_kind = {kind: sum(e.amount_musd for e in rows if e.kind == kind)
               for kind in ("llm", "messaging", "platform")}
    msgs = [e for e in rows if e.kind == "messaging"]
    llm = [e for e in rows if e.kind == "llm"]
    return {
        "cost_llm_musd": by_kind["llm"],
        "cost_messaging_musd": by_kind["messaging"],
        "cost_platform_musd": by_kind["platform"],
        "messages_in": sum(1 for e in msgs if e.direction == "in"),
        "messages_out": sum(1 for e in msgs if e.direction == "out"),
        "units_in": sum(e.units or 0 for e in msgs if e.direction == "in"),
        "units_out": sum(e.units or 0 for e in msgs if e.direction == "out"),
        "llm_calls": len(llm),
        "llm_prompt_tokens": sum(e.prompt_tokens or 0 for e in llm),
        "llm_completion_tokens": sum(e.completion_tokens or 0 for e in llm),
    }


def assert_rollup_matches_entries(session, account_id: int, label: str) -> None:
    sums = rollup(session, account_id, label)
    sums.pop("tokens_charged")
    assert sums == recomputed(session, account_id, label)


def one_interaction(session, account_id: int, sid: str, now: datetime = NOV) -> int:
    """An SMS of 1 segment in, an LLM answer, a 2-segment reply out: what the router records."""
    total = costs.record_messaging(session, account_id, COSTS, "sms", "in", 1,
                                   key=f"msg:in:{sid}", now=now)
    total += costs.record_platform(session, account_id, COSTS, key=f"platform:{sid}", now=now)
    total += costs.record_llm(session, account_id, LlmUsage("gpt-4o-mini", 1000, 400), MINI,
                              key=f"llm:{sid}", intent="meal_plan", now=now)
    total += costs.record_messaging(session, account_id, COSTS, "sms", "out", 2,
                                    key=f"msg:out:{sid}", now=now)
    return total


# --- worked examples --------------------------------------------------------------------------


def test_one_sms_interaction_costs_what_the_catalog_says(session, account):
    """7900 in + 200 platform + (150 + 240) LLM + 2 x 7900 out = 24 290 µUSD."""
    assert one_interaction(session, account, "SM1") == 7900 + 200 + 390 + 15_800
    session.commit()
    assert rollup(session, account) == {
        "cost_llm_musd": 390, "cost_messaging_musd": 23_700, "cost_platform_musd": 200,
        "messages_in": 1, "messages_out": 1, "units_in": 1, "units_out": 2,
        "llm_calls": 1, "llm_prompt_tokens": 1000, "llm_completion_tokens": 400,
        "tokens_charged": 0,
    }
    assert costs.month(session, account, "2026-11").cost_musd == 24_290
    llm = [e for e in costs.entries(session, account, "2026-11") if e.kind == "llm"]
    assert [(e.model, e.intent, e.amount_musd, e.idempotency_key) for e in llm] == [
        ("gpt-4o-mini", "meal_plan", 390, "llm:SM1"),
    ]
    assert_rollup_matches_entries(session, account, "2026-11")


@pytest.mark.parametrize(
    ("channel", "direction", "units", "musd"),
    [
        ("sms", "in", 1, 7900),
        ("sms", "out", 3, 3 * 7900),
        ("whatsapp", "in", 1, 7500),
        ("whatsapp", "out", 1, 7500),
        ("sms", "out", 0, 0),  # nothing billed, e.g. a reply that was never sent
    ],
)
def test_messaging_cost_is_units_times_the_rate_of_the_direction(
    session, account, channel, direction, units, musd
):
    assert costs.record_messaging(session, account, COSTS, channel, direction, units,
                                  key="msg:1", now=NOV) == musd
    session.commit()
    (entry,) = costs.entries(session, account, "2026-11")
    assert (entry.kind, entry.channel, entry.direction, entry.units, entry.amount_musd) == (
        "messaging", channel, direction, units, musd,
    )
    sums = rollup(session, account)
    assert sums["cost_messaging_musd"] == musd
    assert (sums[f"messages_{direction}"], sums[f"units_{direction}"]) == (1, units)
    other = "out" if direction == "in" else "in"
    assert (sums[f"messages_{other}"], sums[f"units_{other}"]) == (0, 0)


def test_inbound_and_outbound_rates_are_applied_separately(session, account):
    """With distinct rates per direction, each direction uses its own."""
    lopsided = Costs(
        platform_musd=COSTS.platform_musd,
        messaging={**COSTS.messaging, "sms": MessagingRate("sms", "segment", 100, 7000)},
        llm_models=COSTS.llm_models,
    )
    assert costs.record_messaging(session, account, lopsided, "sms", "in", 2, key="i",
                                  now=NOV) == 200
    assert costs.record_messaging(session, account, lopsided, "sms", "out", 2, key="o",
                                  now=NOV) == 14_000
    session.commit()
    assert rollup(session, account)["cost_messaging_musd"] == 14_200


@pytest.mark.parametrize(
    ("channel", "direction", "units"),
    [
        ("telegram", "in", 1),
        ("sms", "sideways", 1),
        ("sms", "IN", 1),
        ("sms", "out", -1),
        ("whatsapp", "in", 1.5),
        ("sms", "in", True),
    ],
)
def test_unpriceable_messaging_is_refused(session, account, channel, direction, units):
    with pytest.raises(InvalidAmount):
        costs.record_messaging(session, account, COSTS, channel, direction, units, key="bad",
                               now=NOV)
    session.rollback()
    assert costs.entries(session, account, "2026-11") == []
    assert session.get(AccountMonth, (account, "2026-11")) is None


def test_negative_llm_usage_is_refused(session, account):
    with pytest.raises(InvalidAmount):
        costs.record_llm(session, account, LlmUsage("gpt-4o-mini", -1, 10), MINI, key="llm:x",
                         now=NOV)
    with pytest.raises(InvalidAmount):
        costs.record_llm(session, account, LlmUsage("gpt-4o-mini", 10, -1), MINI, key="llm:x",
                         now=NOV)
    session.rollback()
    assert costs.entries(session, account, "2026-11") == []


def test_llm_cost_is_rounded_up_per_call(session, account):
    """Three calls of 1 prompt token each cost 1 µUSD each (0.15 rounded up), not 1 in all."""
    for i in range(3):
        assert costs.record_llm(session, account, LlmUsage("gpt-4o-mini", 1, 0), MINI,
                                key=f"llm:{i}", now=NOV) == 1
    session.commit()
    assert rollup(session, account)["cost_llm_musd"] == 3
    assert rollup(session, account)["llm_calls"] == 3


# --- idempotency ------------------------------------------------------------------------------


def test_every_record_is_once_per_key(session, account):
    """A repeated delivery or a retried job records nothing the second time and returns 0."""
    first = one_interaction(session, account, "SM1")
    session.commit()
    before = rollup(session, account)
    assert one_interaction(session, account, "SM1") == 0
    assert costs.record_platform(session, account, COSTS, key="platform:SM1",
                                 now=NOV + timedelta(days=20)) == 0  # even in another month
    session.commit()
    assert first > 0 and rollup(session, account) == before
    assert len(costs.entries(session, account, "2026-11")) == 4
    assert costs.entries(session, account, "2026-12") == []
    assert session.get(AccountMonth, (account, "2026-12")) is None
    assert_rollup_matches_entries(session, account, "2026-11")


def test_a_repeated_key_within_one_transaction_is_recorded_once(session, account):
    assert costs.record_platform(session, account, COSTS, key="platform:SM9", now=NOV) == 200
    assert costs.record_platform(session, account, COSTS, key="platform:SM9", now=NOV) == 0
    session.commit()
    assert rollup(session, account)["cost_platform_musd"] == 200


def test_rollup_equals_the_sum_of_entries_per_kind(session, account):
    """Many interactions, in and out, SMS and WhatsApp, several models: the rollup row is the
    recomputed sum of the month's entries, kind by kind."""
    nano = COSTS.model("gpt-4.1-nano")
    for i in range(6):
        sid = f"SM{i}"
        channel = "sms" if i % 2 else "whatsapp"
        costs.record_messaging(session, account, COSTS, channel, "in", 1, key=f"msg:in:{sid}",
                               now=NOV)
        costs.record_platform(session, account, COSTS, key=f"platform:{sid}", now=NOV)
        if i % 3:
            usage = LlmUsage("gpt-4.1-nano", 100 + i * 37, 20 * i)
            costs.record_llm(session, account, usage, nano, key=f"llm:{sid}", intent="chat",
                             now=NOV)
        costs.record_messaging(session, account, COSTS, channel, "out", 1 + i % 3,
                               key=f"msg:out:{sid}", now=NOV)
        if i == 4:
            session.commit()  # half in one transaction, half in the next
    costs.note_tokens_charged(session, account, [("free", 7)], NOV)
    session.commit()
    assert_rollup_matches_entries(session, account, "2026-11")
    sums = rollup(session, account)
    assert (sums["messages_in"], sums["messages_out"], sums["llm_calls"]) == (6, 6, 4)
    assert sums["cost_platform_musd"] == 6 * 200
    assert sums["tokens_charged"] == 7
    total = session.scalar(
        select(func.sum(CostEntry.amount_musd)).where(CostEntry.account_id == account)
    )
    assert costs.month(session, account, NOV).cost_musd == total


def test_rollups_are_per_account(session, account):
    other = ledger.open_account(session, NOV).id
    one_interaction(session, account, "SM1")
    costs.record_platform(session, account, COSTS, key="platform:SM2", now=NOV)
    costs.record_platform(session, other, COSTS, key="platform:SM3", now=NOV)
    session.commit()
    assert rollup(session, account)["cost_platform_musd"] == 400
    assert rollup(session, other)["cost_platform_musd"] == 200
    assert rollup(session, other)["cost_llm_musd"] == 0
    assert [e.idempotency_key for e in costs.entries(session, other, "2026-11")] == [
        "platform:SM3",
    ]


# --- months -----------------------------------------------------------------------------------


def test_entries_go_to_the_utc_month_of_their_time(session, account):
    """23:59 on 30 November is November; 00:00 on 1 December is December."""
    costs.record_platform(session, account, COSTS, key="platform:late", now=NOV_LAST)
    costs.record_platform(session, account, COSTS, key="platform:early", now=DEC_FIRST)
    costs.record_llm(session, account, LlmUsage("gpt-4o-mini", 1000, 400), MINI,
                     key="llm:early", now=DEC_FIRST)
    session.commit()
    assert [e.idempotency_key for e in costs.entries(session, account, "2026-11")] == [
        "platform:late",
    ]
    assert [e.idempotency_key for e in costs.entries(session, account, "2026-12")] == [
        "platform:early", "llm:early",
    ]
    assert rollup(session, account, "2026-11")["cost_platform_musd"] == 200
    assert rollup(session, account, "2026-11")["cost_llm_musd"] == 0
    december = rollup(session, account, DEC_FIRST + timedelta(days=30, hours=23))
    assert (december["cost_platform_musd"], december["cost_llm_musd"]) == (200, 390)
    assert costs.month(session, account, "2027-01").cost_musd == 0
    entry = costs.entries(session, account, "2026-11")[0]
    assert entry.created_at == NOV_LAST  # stored as given, read back as aware UTC


def test_a_month_without_activity_is_a_zero_row_not_stored(session, account):
    row = costs.month(session, account, "2026-10")
    assert (row.account_id, row.month, row.cost_musd) == (account, "2026-10", 0)
    assert all(getattr(row, name) == 0 for name in ROLLUP_SUMS)
    session.commit()
    assert session.scalar(select(func.count()).select_from(AccountMonth)) == 0


def test_tokens_charged_follow_captures_and_releases(session, account):
    costs.note_tokens_charged(session, account, [("free", 3), ("paid", 2)], NOV,
                              intent="meal_plan")
    costs.note_tokens_charged(session, account, [("free", 2)], NOV, intent="recipe_search")
    # A reply that was not delivered gives its tokens back to where they came from.
    costs.note_tokens_charged(session, account, [("free", -3), ("paid", -2)], NOV)
    costs.note_tokens_charged(session, account, [], NOV)  # no-op, creates nothing
    costs.note_tokens_charged(session, account, [("bonus", 3)], DEC_FIRST)
    session.commit()
    november = costs.month(session, account, "2026-11")
    assert november.tokens_charged == 2
    assert (november.tokens_free, november.tokens_paid, november.tokens_bonus) == (2, 0, 0)
    december = costs.month(session, account, "2026-12")
    assert december.tokens_charged == 3 and december.tokens_bonus == 3
    by_intent = {row.intent: (row.answers, row.tokens_charged)
                 for row in costs.intents_of(session, account, "2026-11")}
    assert by_intent == {"meal_plan": (1, 5), "recipe_search": (1, 2)}
    # tokens charged are not costs
    assert costs.month(session, account, "2026-11").cost_musd == 0


def test_a_loaded_rollup_sees_later_records(session, account):
    """The rollup is bumped by UPDATE statements; a row already in the session is refreshed."""
    costs.record_platform(session, account, COSTS, key="p1", now=NOV)
    row = costs.month(session, account, NOV)
    assert row.cost_platform_musd == 200
    costs.record_platform(session, account, COSTS, key="p2", now=NOV)
    assert row.cost_platform_musd == 400
    assert costs.month(session, account, NOV).cost_platform_musd == 400


def test_the_month_is_the_utc_month_even_for_a_non_utc_time(session, account):
    paris = timezone(timedelta(hours=1))
    moment = datetime(2026, 12, 1, 0, 30, tzinfo=paris)
    assert moment.astimezone(UTC).month == 11
    costs.record_platform(session, account, COSTS, key="platform:tz", now=moment)
    session.commit()
    (entry,) = session.scalars(select(CostEntry)).all()
    assert entry.created_at == datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    assert entry.month == "2026-11"
    assert rollup(session, account, "2026-11")["cost_platform_musd"] == 200


# --- the database's guarantees ----------------------------------------------------------------


def test_cost_entries_are_append_only(session, account):
    """The database itself refuses to change or remove a cost entry (triggers)."""
    costs.record_platform(session, account, COSTS, key="platform:SM1", now=NOV)
    session.commit()
    statements = [
        update(CostEntry).where(CostEntry.idempotency_key == "platform:SM1")
        .values(amount_musd=1),
        update(CostEntry).where(CostEntry.idempotency_key == "platform:SM1")
        .values(intent="edited"),
        delete(CostEntry).where(CostEntry.idempotency_key == "platform:SM1"),
    ]
    for statement in statements:
        with pytest.raises(IntegrityError, match="append-only"):
            session.execute(statement)
        session.rollback()
    # through the ORM too
    entry = session.scalars(select(CostEntry)).one()
    entry.amount_musd = 0
    with pytest.raises(IntegrityError):
        session.flush()
    session.rollback()
    assert [e.amount_musd for e in costs.entries(session, account, "2026-11")] == [200]


def test_the_database_refuses_bad_cost_entries(session, account):
    def entry(**values):
        row = {"account_id": account, "month": "2026-11", "kind": "platform",
               "amount_musd": 200, "idempotency_key": f"k:{sorted(values.items())}",
               "created_at": NOV}
        row.update(values)
        return insert(CostEntry).values(**row)

    costs.record_platform(session, account, COSTS, key="taken", now=NOV)
    session.commit()
    for statement in [
        entry(amount_musd=-1),
        entry(kind="marketing"),
        entry(idempotency_key="taken"),
        entry(account_id=999_999),
    ]:
        with pytest.raises(DBAPIError):
            session.execute(statement)
        session.rollback()
    assert len(costs.entries(session, account, "2026-11")) == 1


# --- concurrency (PostgreSQL) -----------------------------------------------------------------


@pytest.mark.backends("postgresql")
def test_concurrent_records_for_a_new_month_land_in_one_rollup_row(app, account):
    """8 transactions record distinct keys for the same account and a month that has no row
    yet, all at once: every one commits, and the single rollup row holds the exact sum."""
    engine = db.engine
    workers = 8
    barrier = threading.Barrier(workers)

    def record(i: int) -> int:
        with Session(engine) as own:
            barrier.wait()
            amount = costs.record_llm(own, account, LlmUsage("gpt-4o-mini", 1000 * (i + 1), 400),
                                      MINI, key=f"llm:SM{i}", now=DEC_FIRST)
            amount += costs.record_messaging(own, account, COSTS, "sms", "in", 1,
                                             key=f"msg:in:SM{i}", now=DEC_FIRST)
            own.commit()
            return amount

    with ThreadPoolExecutor(max_workers=workers) as pool:
        amounts = list(pool.map(record, range(workers)))

    expected = [150 * (i + 1) + 240 + 7900 for i in range(workers)]
    assert amounts == expected
    with Session(engine) as check:
        rows = check.scalars(select(AccountMonth).where(AccountMonth.account_id == account)).all()
        assert [row.month for row in rows] == ["2026-12"]
        (row,) = rows
        assert row.cost_musd == sum(expected)
        assert (row.llm_calls, row.messages_in, row.units_in) == (workers, workers, workers)
        assert row.llm_prompt_tokens == 1000 * sum(range(1, workers + 1))
        assert len(costs.entries(check, account, "2026-12")) == 2 * workers
        assert_rollup_matches_entries(check, account, "2026-12")


@pytest.mark.backends("postgresql")
def test_concurrent_repeats_of_one_key_record_it_once(app, account):
    """The same delivery processed by 8 workers at once is one cost entry."""
    engine = db.engine
    workers = 8
    barrier = threading.Barrier(workers)

    def record(_: int) -> int:
        with Session(engine) as own:
            barrier.wait()
            amount = costs.record_platform(own, account, COSTS, key="platform:SM1", now=NOV)
            own.commit()
            return amount

    with ThreadPoolExecutor(max_workers=workers) as pool:
        amounts = list(pool.map(record, range(workers)))

    assert sorted(amounts) == [0] * (workers - 1) + [200]
    with Session(engine) as check:
        assert rollup(check, account)["cost_platform_musd"] == 200
        assert len(costs.entries(check, account, "2026-11")) == 1


def test_record_inbound_equals_messaging_plus_platform_once(session, account):
    """The inbound path's combined recording posts what the two separate calls post."""
    other = ledger.open_account(session).id
    moment = datetime(2026, 11, 21, 10, tzinfo=UTC)
    combined = costs.record_inbound(session, account, COSTS, "sms", 2, message_sid="SMx",
                                    now=moment)
    separate = (costs.record_messaging(session, other, COSTS, "sms", "in", 2, key="msg:in:SMy",
                                       now=moment)
                + costs.record_platform(session, other, COSTS, key="platform:SMy", now=moment))
    assert combined == separate == 2 * COSTS.messaging["sms"].inbound_musd + COSTS.platform_musd
    assert costs.record_inbound(session, account, COSTS, "sms", 2, message_sid="SMx",
                                now=moment) == 0  # a repeat
    session.commit()
    columns = ("cost_messaging_musd", "cost_platform_musd", "messages_in", "units_in")
    mine, theirs = costs.month(session, account, moment), costs.month(session, other, moment)
    assert [getattr(mine, c) for c in columns] == [getattr(theirs, c) for c in columns]
    days = session.execute(select(costs.AccountDay.account_id, costs.AccountDay.cost_musd)
                           .order_by(costs.AccountDay.account_id)).all()
    assert [amount for _, amount in days] == [combined, separate]
    assert session.scalar(select(func.count()).select_from(CostEntry)) == 4


def test_every_recording_adds_to_the_day_month_and_intent_once(session, account):
    """On both backends (SQLite's rollup triggers, migration 0019; PostgreSQL's recording
    statement), a month of every kind of recording, each key recorded twice, ends with the
    day, month and intent rows that the entries add up to, and a second recording of a key
    in the same transaction changes nothing that `month` then reads."""
    days = [NOV, NOV_LAST]
    for i, now in enumerate(days):
        for _ in range(2):  # the second time, every key is a repeat
            costs.record_inbound(session, account, COSTS, "whatsapp", 1,
                                 message_sid=f"SMd{i}", now=now)
            costs.record_llm(session, account, LlmUsage("gpt-4o-mini", 900 + i, 300), MINI,
                             key=f"llm:d{i}", intent="meal_plan", now=now)
            costs.record_llm(session, account, LlmUsage("gpt-4o-mini", 10, 5), MINI,
                             key=f"llm:n{i}", now=now)
            costs.record_llm_estimate(session, account, 777, "gpt-4o-mini",
                                      key=f"llm-classify:d{i}", intent="recipe", now=now)
            costs.record_messaging(session, account, COSTS, "sms", "out", 3,
                                   key=f"msg:out:d{i}", now=now)
            costs.record_revenue(session, account, "pack", 5_000_000, key=f"rev:d{i}", now=now)
            costs.record_revenue(session, account, "affiliate", -1_000, key=f"aff:d{i}",
                                 now=now)
            held = costs.month(session, account, "2026-11")
            assert held.cost_musd == sum(e.amount_musd for e in
                                         costs.entries(session, account, "2026-11"))
    costs.record_revenue(session, account, "subscription", 9_000_000, key="sub:1", now=DEC_FIRST)
    session.commit()
    assert_rollup_matches_entries(session, account, "2026-11")
    month = costs.month(session, account, "2026-11")
    assert (month.revenue_pack_musd, month.revenue_affiliate_musd,
            month.revenue_subscription_musd) == (10_000_000, -2_000, 0)
    assert costs.month(session, account, "2026-12").revenue_subscription_musd == 9_000_000
    entries = costs.entries(session, account, "2026-11")
    by_day = {}
    for entry in entries:
        day = f"{entry.created_at:%Y-%m-%d}"
        by_day[day] = by_day.get(day, 0) + entry.amount_musd
    assert dict(session.execute(
        select(costs.AccountDay.day, costs.AccountDay.cost_musd)
        .where(costs.AccountDay.account_id == account, costs.AccountDay.day < "2026-12")
    ).all()) == by_day
    assert dict(session.execute(
        select(costs.AccountDay.day, costs.AccountDay.revenue_musd)
        .where(costs.AccountDay.account_id == account)).all()) == {
        "2026-11-21": 4_999_000, "2026-11-30": 4_999_000, "2026-12-01": 9_000_000}
    intents = {row.intent: row.cost_llm_musd
               for row in costs.intents_of(session, account, "2026-11")}
    assert intents == {
        "meal_plan": sum(e.amount_musd for e in entries if e.intent == "meal_plan"),
        "recipe": 2 * 777}
