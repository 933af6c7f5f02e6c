"""The month's report from the rollups, against numbers computed by hand (exact Decimals)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from bot.contacts import resolve_contact
from tokens import costs
from tokens.catalog import load_catalog
from tokens.costs import LlmUsage
from tokens.reports import month_report

NOV = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()
COSTS = CATALOG.costs
MINI = COSTS.model("gpt-4o-mini")


@pytest.fixture
def month(session):
    return fill_month(session)


def fill_month(session) -> dict[str, int]:
    """Ana paid for a pack, Ben used the LLM a lot for free, Cleo subscribed (WhatsApp) and
    brought an affiliate commission; Dan brought a commission but wrote nothing."""
    ana = resolve_contact(session, "+15550000001", NOV).account_id
    ben = resolve_contact(session, "+15550000002", NOV).account_id
    cleo = resolve_contact(session, "+15550000003", NOV).account_id
    dan = resolve_contact(session, "+15550000004", NOV).account_id
    for i in range(2):
        costs.record_messaging(session, ana, COSTS, "sms", "in", 1, key=f"a-in{i}", now=NOV)
        costs.record_messaging(session, ana, COSTS, "sms", "out", 1, key=f"a-out{i}", now=NOV)
        costs.record_platform(session, ana, COSTS, key=f"a-p{i}", now=NOV)
    costs.record_llm(session, ana, LlmUsage("gpt-4o-mini", 1000, 400), MINI, key="a-llm",
                     intent="meal_plan", now=NOV)  # 150 + 240 = 390
    costs.record_revenue(session, ana, "pack", 5_000_000, key="a-rev", now=NOV)
    costs.record_messaging(session, ben, COSTS, "sms", "in", 1, key="b-in", now=NOV)
    costs.record_messaging(session, ben, COSTS, "sms", "out", 1, key="b-out", now=NOV)
    costs.record_platform(session, ben, COSTS, key="b-p", now=NOV)
    costs.record_llm(session, ben, LlmUsage("gpt-4o-mini", 4_000_000, 0), MINI, key="b-llm",
                     intent="chat", now=NOV)  # 600,000
    costs.record_messaging(session, cleo, COSTS, "whatsapp", "in", 1, key="c-in", now=NOV)
    costs.record_messaging(session, cleo, COSTS, "whatsapp", "out", 1, key="c-out", now=NOV)
    costs.record_platform(session, cleo, COSTS, key="c-p", now=NOV)
    costs.record_revenue(session, cleo, "subscription", 5_000_000, key="c-sub", now=NOV)
    costs.record_revenue(session, cleo, "affiliate", 100_000, key="c-aff", now=NOV)
    costs.record_revenue(session, dan, "affiliate", 50_000, key="d-aff", now=NOV)
    session.commit()
    return {"ana": ana, "ben": ben, "cleo": cleo, "dan": dan}


def test_the_months_numbers_by_hand(session, month):
    report = month_report(session, "2026-11", CATALOG)
    # Costs: Ana 2x7,900 in + 2x7,900 out + 2x200 + 390 = 32,390; Ben 7,900 + 7,900 + 200 +
    # 600,000 = 616,000; Cleo 7,500 + 7,500 + 200 = 15,200. Dan wrote nothing but brought
    # revenue: he is one of the month's people.
    assert [p.account_id for p in report.people] == [month["ana"], month["ben"], month["cleo"],
                                                     month["dan"]]
    assert [p.cost_musd for p in report.people] == [32_390, 616_000, 15_200, 0]
    assert (report.active_people, report.paying_people) == (4, 3)
    assert report.revenue_musd == 10_150_000 and report.cost_musd == 663_590
    assert report.profit_musd == 9_486_410
    assert report.gross_margin == Decimal("0.9346")  # 9,486,410 / 10,150,000 = 0.93462...
    assert report.arpu_musd == 2_537_500 and report.average_cost_musd == 165_897
    assert report.share_profitable == Decimal("0.7500")  # Ana, Cleo and Dan
    assert report.share_at_target == Decimal("0.5000")  # Ana and Cleo >= $3.00 profit
    assert report.pack_conversion == Decimal("0.2500")  # Ana
    # 5,000,000 / 10,150,000 = 0.49261...; 150,000 / 10,150,000 = 0.01477...
    assert report.revenue_mix == {"pack": Decimal("0.4926"), "subscription": Decimal("0.4926"),
                                  "affiliate": Decimal("0.0148")}
    assert report.revenue_by_kind == {"pack": 5_000_000, "subscription": 5_000_000,
                                      "affiliate": 150_000}
    # Ben's exposure, $0.616, is past $0.60: AFFILIATE; the others paid: NORMAL.
    assert report.level_distribution == {"NORMAL": 3, "REDUCED": 0, "BASIC": 0, "AFFILIATE": 1,
                                         "PAYMENT_REQUIRED": 0}
    # Everything happened on the 15th; the other 29 days are zeros.
    assert len(report.daily) == 30 and report.daily[14] == ("2026-11-15", 10_150_000, 663_590)
    assert sum(revenue for _, revenue, _ in report.daily) == report.revenue_musd
    assert report.top_intents == [("chat", 600_000, 0), ("meal_plan", 390, 0)]


def test_the_report_as_json_and_an_empty_month(session, month):
    data = month_report(session, "2026-11", CATALOG).as_json()
    assert json.loads(json.dumps(data))["gross_margin"] == "0.9346"
    assert data["people"][1]["profit_musd"] == -616_000
    empty = month_report(session, "2026-10", CATALOG)
    assert (empty.active_people, empty.gross_margin, empty.arpu_musd) == (0, None, 0)


def test_the_report_command(runner, session, month):
    text = runner.invoke(args=["report", "--month", "2026-11"])
    assert text.exit_code == 0, text.output
    assert "4 active people, 3 paying" in text.output
    assert "Revenue $10.150000, COGS $0.663590" in text.output
    rows = runner.invoke(args=["report", "--month", "2026-11", "--csv"]).output.splitlines()
    assert rows[0].startswith("phone,account_id,level")
    assert len(rows) == 5 and "+15550000001" not in "\n".join(rows)
    assert rows[2].split(",")[2] == "AFFILIATE"
    bad = runner.invoke(args=["report", "--month", "November"])
    assert bad.exit_code != 0 and "YYYY-MM" in bad.output


@pytest.fixture
def api(make_app):
    """The app with the admin API on."""
    return make_app(ADMIN_API_TOKEN="admin-test-token")


def test_the_report_api_needs_the_bearer_token(api):
    from app.extensions import db

    client = api.test_client()
    assert client.get("/admin/api/report").status_code == 401
    wrong = client.get("/admin/api/report", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "Bearer" in wrong.headers["WWW-Authenticate"]
    ok = {"Authorization": "Bearer admin-test-token"}
    assert client.get("/admin/api/report?month=Nov", headers=ok).status_code == 400
    month_fixture = fill_month(db.session)  # the same hand-computed month
    data = client.get("/admin/api/report?month=2026-11", headers=ok).get_json()
    assert data["revenue_musd"] == 10_150_000 and data["gross_margin"] == "0.9346"
    assert [p["account_id"] for p in data["people"]] == [
        month_fixture["ana"], month_fixture["ben"], month_fixture["cleo"], month_fixture["dan"]]
    csv_text = client.get("/admin/api/report?month=2026-11&format=csv",
                          headers=ok).get_data(as_text=True)
    assert csv_text.startswith("phone,account_id,level")
    assert "+15550000001" not in csv_text and len(csv_text.splitlines()) == 5


def test_without_a_token_setting_the_api_is_off(client):
    assert client.get("/admin/api/report",
                      headers={"Authorization": "Bearer anything"}).status_code == 404
