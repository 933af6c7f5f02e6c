"""What a debit past the threshold starts (`tokens.alerts.after_debit`, issue #16): a
low-balance alert at most once a UTC day and from the daily budget of free replies, or, with
auto top-up on, a top-up to charge instead."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from tokens import auto_topup, ledger, levels
from tokens.alerts import AfterDebit, after_debit
from tokens.auto_topup import AutoTopup
from tokens.catalog import load_catalog

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()
THRESHOLD = CATALOG.auto_topup_threshold()
FREE_REPLIES = CATALOG.levels.free_replies_per_day


def account(session) -> int:
    return ledger.open_account(session, NOV).id


def debit(session, account_id: int, before: int = THRESHOLD, after: int = THRESHOLD - 1,
          now: datetime = NOV, provider: str | None = None) -> AfterDebit:
    return after_debit(session, account_id, CATALOG, before=before, after=after, now=now,
                       provider_name=provider)


def with_auto_topup(session) -> int:
    account_id = account(session)
    auto_topup.card_saved(session, account_id, "cus_1", "pm_1", NOV, pack_code="starter")
    return account_id


@pytest.mark.parametrize("before, after, alert", [
    (THRESHOLD, THRESHOLD - 1, "low"),  # from at the threshold to under it
    (100, 1, "low"),
    (100, 0, "empty"),
    (THRESHOLD - 1, 0, "empty"),  # from above 0 to 0, already under the threshold
    (THRESHOLD - 1, 1, None),  # under it before and after: no new crossing
    (0, 0, None),
])
def test_which_debits_are_crossings(session, before, after, alert):
    assert debit(session, account(session), before, after) == AfterDebit(alert, after)


def test_a_debit_that_stays_at_the_threshold_reads_and_writes_nothing(session):
    ana = account(session)
    assert debit(session, ana, 100, THRESHOLD) == AfterDebit(None, THRESHOLD)
    assert session.scalar(select(func.count()).select_from(levels.LevelState)) == 0


def test_one_alert_a_utc_day_from_the_budget_of_free_replies(session):
    ana = account(session)
    assert debit(session, ana).alert == "low"
    state = levels.state_of(session, ana)
    assert (state.alert_day, state.free_replies) == ("2026-11-21", 1)
    assert debit(session, ana, 100, 0, NOV + timedelta(hours=11, minutes=59)).alert is None
    assert state.free_replies == 1  # a refused alert costs no free reply
    next_day = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    assert debit(session, ana, now=next_day).alert == "low"
    assert (state.alert_day, state.free_replies) == ("2026-11-22", 1)


def test_no_alert_when_the_free_replies_of_the_day_are_spent(session):
    ana = account(session)
    for _ in range(FREE_REPLIES):
        assert levels.take_free_reply(session, ana, CATALOG, NOV)
    assert debit(session, ana) == AfterDebit(None, THRESHOLD - 1)
    assert levels.state_of(session, ana).alert_day is None  # so tomorrow's may still go
    assert debit(session, ana, now=NOV + timedelta(days=1)).alert == "low"


def test_with_auto_top_up_on_a_crossing_charges_instead_of_alerting(session):
    ana = with_auto_topup(session)
    found = debit(session, ana, provider="sandbox")
    assert found.alert is None and found.top_up is not None
    assert (found.top_up.key, found.top_up.pack_code, found.top_up.retry) == (
        f"auto_topup:{ana}:1", "starter", False)
    assert levels.state_of(session, ana).alert_day is None
    # A later debit while still under it asks again: the same attempt, never a second one.
    again = debit(session, ana, THRESHOLD - 1, 1, NOV + timedelta(minutes=1), "sandbox")
    assert again.top_up is not None and (again.top_up.key, again.top_up.retry) == (
        found.top_up.key, True)


def test_auto_top_up_without_a_provider_alerts_instead(session):
    ana = with_auto_topup(session)
    assert debit(session, ana, provider=None) == AfterDebit("low", THRESHOLD - 1)
    assert session.get(AutoTopup, ana).crossings == 0


def test_no_top_up_due_past_the_monthly_cap_alerts_instead(session):
    ana = with_auto_topup(session)
    row = session.get(AutoTopup, ana)
    row.month, row.month_count = "2026-11", CATALOG.auto_topup.max_per_month
    assert debit(session, ana, provider="sandbox") == AfterDebit("low", THRESHOLD - 1)


def test_a_pack_gone_from_the_catalog_is_logged_and_the_alert_still_goes(session, caplog):
    ana = with_auto_topup(session)
    session.get(AutoTopup, ana).pack_code = "retired"
    with caplog.at_level(logging.ERROR, logger="tokens.alerts"):
        assert debit(session, ana, provider="sandbox") == AfterDebit("low", THRESHOLD - 1)
    assert [r.getMessage() for r in caplog.records] == ["auto top-up skipped"]
