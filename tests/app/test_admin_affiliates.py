"""The admin affiliates page (issue #16): clicks per person, link and hour with their
openings, conversions by state, and commission booked in the month it is approved (and
taken back in the month it is reversed), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from app.extensions import bot_settings
from testing.admin import cells, kpi, logged_in, section
from tokens import ledger
from tokens.affiliates import Click, issue_offer_links, record_click, record_conversion
from tokens.periods import Month


def test_affiliates_page_shows_clicks_openings_states_and_the_approval_month(app, session):
    catalog = bot_settings(app).catalog
    account = ledger.open_account(session).id
    now = datetime.now(UTC)
    this_month = Month.of(now)
    last_month = this_month.previous
    reported = last_month.start + timedelta(days=3)
    (partner, link), *_ = issue_offer_links(session, account, "meal_plan", catalog, now)
    hour = now.replace(minute=0, second=0, microsecond=0)
    for i in range(5):  # five openings in one hour: one click
        record_click(session, link.token, catalog, hour + timedelta(minutes=i))
    click_id = session.scalars(select(Click.click_id)).one()
    # Reported pending last month, approved this month: booked this month.
    record_conversion(session, "awin", "conv-late", click_id, 5_000, 1_250, reported,
                      status="pending")
    record_conversion(session, "awin", "conv-late", click_id, 5_000, 1_250, now,
                      status="approved")
    # Reported and approved last month, reversed this month: taken back this month.
    record_conversion(session, "awin", "conv-back", click_id, 2_000, 300, reported)
    record_conversion(session, "awin", "conv-back", click_id, -2_000, -300, now)
    # This month: one pending, one declined before approval, one unattributed.
    record_conversion(session, "awin", "conv-wait", click_id, 4_000, 400, now,
                      status="pending")
    record_conversion(session, "awin", "conv-no", click_id, 1_000, 100, now,
                      status="declined")
    record_conversion(session, "awin", "conv-else", "not-ours", 1_000, 100, now)
    session.commit()

    client = logged_in(app)
    page = client.get("/admin/affiliates").get_data(as_text=True)
    assert kpi(page, "Clicks") == "1"
    assert kpi(page, "Link openings") == "5"
    assert kpi(page, "Conversions (attributed)") == "2"  # conv-wait, conv-no reported now
    # Booked this month: +12.50 (conv-late's approval) - 3.00 (conv-back's reversal).
    assert kpi(page, "Commission (revenue)") == "$9.50"
    assert kpi(page, "Pending commission (all months)") == "$4.00"
    assert kpi(page, "Pending conversions (all months)") == "1"
    assert kpi(page, "Unattributed conversions") == "1"
    assert cells(section(page, "Per partner"), partner.name) == [
        f"{partner.name} {partner.code}", "1", "1", "2", "$50.00", "$9.50", "5", "1", "1"]
    assert cells(section(page, "Per network"), "awin") == [
        "awin", "2", "1", "$60.00", "$9.50", "$1.00", "1", "1", "1"]
    latest = section(page, "Latest conversions")
    assert cells(latest, "conv-late")[1:8] == ["awin", "conv-late", partner.name,
                                              f"#{account}", "approved", "$50.00", "$12.50"]
    assert cells(latest, "conv-back")[5] == "reversed"
    assert cells(latest, "conv-wait")[5] == "pending"
    assert cells(latest, "conv-else")[3:6] == ["-", "-", "approved"]
    assert cells(latest, "conv-late")[8:] == [f"{now:%Y-%m-%d %H:%M}", "-"]
    clicks = section(page, "Latest clicks")
    assert len(re.findall(r"<tr>", clicks)) == 2  # header + 1 click
    assert cells(clicks, f"#{account}")[-1] == "5"
    assert click_id not in page  # our sub-ids are not shown

    page = client.get(f"/admin/affiliates?month={last_month}").get_data(as_text=True)
    # Last month: conv-late and conv-back were reported; only conv-back's approval booked.
    assert kpi(page, "Conversions (attributed)") == "2"
    assert kpi(page, "Commission (revenue)") == "$3.00"
    assert kpi(page, "Clicks") == "0"
    assert cells(section(page, "Per network"), "awin") == [
        "awin", "2", "0", "$70.00", "$3.00", "$0.00", "0", "1", "1"]
