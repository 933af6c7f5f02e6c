"""`GET /r/<token>`, `POST /webhooks/affiliates/<network>` and `flask affiliates import`
(docs/economy.md, "Affiliate gating"), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

import tokens.affiliates  # noqa: F401  (registers the models until app/__init__ imports them)
from app.affiliates import affiliates_group, bp
from app.extensions import bot_settings
from tokens import costs, ledger, money
from tokens.affiliates import (
    Click,
    Conversion,
    OfferLink,
    issue_offer_links,
    unlocked,
    use_unlock,
)
from tokens.base import utcnow
from tokens.costs import RevenueEntry

SECRET = "whsec-affiliate-test-0123456789"
NETWORK = "awin"
PATH = f"/webhooks/affiliates/{NETWORK}"


@pytest.fixture(autouse=True)
def affiliates_registered(app, monkeypatch):
    """The blueprint and the CLI group on the test app (before any request), and the
    postback secret of the "awin" network."""
    if "affiliates" not in app.blueprints:
        app.register_blueprint(bp)
    if "affiliates" not in app.cli.commands:
        app.cli.add_command(affiliates_group)
    monkeypatch.setenv("AFFILIATE_SECRET_AWIN", SECRET)
    monkeypatch.delenv("AFFILIATE_SECRET_IMPACT", raising=False)


@pytest.fixture
def account(session) -> int:
    account_id = ledger.open_account(session).id
    session.commit()
    return account_id


def catalog(app):
    return bot_settings(app).catalog


def offer_token(app, session, account_id: int, intent: str = "meal_plan") -> str:
    (_, link), *_ = issue_offer_links(session, account_id, intent, catalog(app), utcnow())
    session.commit()
    return link.token


def click_rows(session) -> list[Click]:
    session.expire_all()
    return list(session.scalars(select(Click).order_by(Click.id)))


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Signature": f"sha256={digest}", "Content-Type": "application/json"}


def postback(client, fields: dict[str, object], *, path: str = PATH, secret: str = SECRET):
    body = json.dumps(fields).encode()
    return client.post(path, data=body, headers=signed(body, secret))


def conversions(session) -> list[Conversion]:
    session.expire_all()
    return list(session.scalars(select(Conversion).order_by(Conversion.id)))


def affiliate_revenue(session, account_id: int) -> int:
    session.expire_all()
    return costs.month(session, account_id).revenue_affiliate_musd


# --- GET /r/<token> -----------------------------------------------------------------------


class Clock:
    """A settable `utcnow` for `tokens.affiliates` (the routes pass no time)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """The affiliate domain's clock, at the start of the current UTC hour plus 10 minutes."""
    moment = Clock(utcnow().replace(minute=10, second=0, microsecond=0))
    monkeypatch.setattr(tokens.affiliates, "utcnow", moment)
    return moment


def subid(response) -> str:
    return parse_qs(urlsplit(response.headers["Location"]).query)["subid"][0]


def test_100_gets_of_one_link_in_an_hour_are_one_click_with_one_click_id(
        app, client, session, account, clock):
    """Issue #16: 100 GETs of one link recorded 105 clicks, each with a new click id."""
    token = offer_token(app, session, account)
    locations = set()
    for i in range(100):
        clock.now = clock.now.replace(minute=10) + timedelta(seconds=29 * i)
        response = client.get(f"/r/{token}")
        assert response.status_code == 302
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        locations.add(response.headers["Location"])
    (row,) = click_rows(session)
    assert (row.account_id, row.opens) == (account, 100)
    (location,) = locations
    parts = urlsplit(location)
    allowed = catalog(app).affiliates.allowed_domains
    assert parts.scheme == "https"
    assert any(parts.hostname == d or parts.hostname.endswith("." + d) for d in allowed)
    assert parts.hostname == "www.freshbox.example"
    assert parse_qs(parts.query)["subid"] == [row.click_id]
    # The next clock hour: a new click, a new click id.
    clock.now = clock.now.replace(minute=0, second=0) + timedelta(hours=1)
    later = client.get(f"/r/{token}")
    rows = click_rows(session)
    assert [r.opens for r in rows] == [100, 1]
    assert subid(later) == rows[1].click_id != rows[0].click_id


def test_unknown_tampered_and_expired_tokens_are_404_without_redirect(
        app, client, session, account):
    token = offer_token(app, session, account)
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    expired = offer_token(app, session, account, intent="grocery_list")
    session.scalars(select(OfferLink).where(OfferLink.token == expired)).one().expires_at = (
        utcnow() - timedelta(seconds=1))
    session.commit()
    for bad in ("unknown-token", tampered, token + "x", expired, "x" * 300):
        response = client.get(f"/r/{bad}")
        assert response.status_code == 404, bad
        assert "Location" not in response.headers
        assert response.content_type.startswith("text/plain")
    response = client.get("/r/https:%2F%2Fevil.example")
    assert response.status_code == 404
    assert "Location" not in response.headers
    # Query parameters cannot choose the target either.
    response = client.get(f"/r/{token}?url=https://evil.example/&next=https://evil.example/")
    assert urlsplit(response.headers["Location"]).hostname == "www.freshbox.example"
    assert len(click_rows(session)) == 1


def test_a_partner_url_moved_off_the_allow_list_is_refused_at_click_time(
        app, client, session, account):
    token = offer_token(app, session, account)
    settings = bot_settings(app)
    affiliates = settings.catalog.affiliates
    partners = tuple(replace(p, url="https://evil.example/landing?subid={click_id}")
                     if p.code == "freshbox" else p for p in affiliates.partners)
    changed = replace(settings.catalog, affiliates=replace(affiliates, partners=partners))
    app.extensions["bot_settings"] = replace(settings, catalog=changed)
    response = client.get(f"/r/{token}")
    assert response.status_code == 404
    assert "Location" not in response.headers
    assert click_rows(session) == []


def test_a_click_unlocks_one_answer_in_click_to_unlock_mode(app, client, session, account):
    token = offer_token(app, session, account)
    assert not unlocked(session, account)
    assert client.get(f"/r/{token}").status_code == 302
    session.expire_all()
    assert unlocked(session, account)
    assert use_unlock(session, account)
    session.commit()
    assert not unlocked(session, account)
    assert not use_unlock(session, account)


# --- POST /webhooks/affiliates/<network> --------------------------------------------------


def clicked(app, client, session, account_id: int) -> str:
    token = offer_token(app, session, account_id)
    location = client.get(f"/r/{token}").headers["Location"]
    return parse_qs(urlsplit(location).query)["subid"][0]


def test_a_signed_postback_records_revenue_once_for_the_clicker(app, client, session, account):
    other = ledger.open_account(session).id
    session.commit()
    click_id = clicked(app, client, session, account)
    fields = {"conversion_id": "AW-1001", "click_id": click_id, "sale_amount": "45.00",
              "commission": "4.50"}
    first = postback(client, fields)
    assert first.status_code == 200, first.get_data(as_text=True)
    assert first.get_json() == {"recorded": True, "status": "approved"}
    again = postback(client, fields)
    assert again.status_code == 200
    assert again.get_json() == {"recorded": False, "status": "approved"}
    changed = postback(client, {**fields, "commission": "99.00"})
    assert changed.get_json() == {"recorded": False, "status": "approved"}

    (row,) = conversions(session)
    assert (row.network, row.conversion_id, row.account_id, row.status, row.sale_amount_cents,
            row.commission_musd) == ("awin", "AW-1001", account, "approved", 4_500,
                                     450 * money.MUSD_PER_CENT)
    assert affiliate_revenue(session, account) == 450 * money.MUSD_PER_CENT
    assert affiliate_revenue(session, other) == 0
    assert session.scalar(select(func.count()).select_from(RevenueEntry)) == 1


def test_a_postback_for_an_unknown_click_is_kept_unattributed(client, session):
    response = postback(client, {"conversion_id": "AW-7", "click_id": "someone-elses",
                                 "sale_amount": "10", "commission": "1.00"})
    assert response.get_json() == {"recorded": True, "status": "approved"}
    (row,) = conversions(session)
    assert (row.account_id, row.partner_code, row.status, row.booked_musd) == (
        None, None, "approved", 0)
    assert session.scalar(select(func.count()).select_from(RevenueEntry)) == 0


def test_bad_or_missing_signatures_are_401_and_store_nothing(app, client, session, account):
    click_id = clicked(app, client, session, account)
    body = json.dumps({"conversion_id": "AW-2", "click_id": click_id, "sale_amount": "10.00",
                       "commission": "1.00"}).encode()
    good = signed(body)["X-Signature"]
    attempts = [
        {},
        {"X-Signature": ""},
        {"X-Signature": good.removeprefix("sha256=")},
        {"X-Signature": "sha1=" + good.removeprefix("sha256=")},
        {"X-Signature": signed(body, "another-secret")["X-Signature"]},
        {"X-Signature": signed(body + b" ")["X-Signature"]},
        {"X-Signature": good[:-1]},
        {"X-Signature": "sha256=\u00e9\u00e9"},
    ]
    for headers in attempts:
        response = client.post(PATH, data=body,
                               headers={**headers, "Content-Type": "application/json"})
        assert response.status_code == 401, headers
        assert response.get_data(as_text=True).strip()
    # A valid signature over another body does not carry over.
    tampered = body.replace(b'"1.00"', b'"900.00"')
    assert client.post(PATH, data=tampered, headers={"X-Signature": good}).status_code == 401
    assert conversions(session) == []
    assert affiliate_revenue(session, account) == 0
    # The signature's hex is not case-sensitive; the body is what it covers.
    response = client.post(PATH, data=body, headers={"X-Signature": "SHA256=" + good[7:].upper()})
    assert response.get_json() == {"recorded": True, "status": "approved"}


def revenue_of_month(session, account_id: int, when: datetime) -> int:
    session.expire_all()
    return costs.month(session, account_id, when).revenue_affiliate_musd


def revenue_rows(session) -> list[tuple[str, int, datetime]]:
    session.expire_all()
    return [(e.idempotency_key, e.amount_musd, e.created_at)
            for e in session.scalars(select(RevenueEntry).order_by(RevenueEntry.id))]


def test_postbacks_move_a_conversion_pending_approved_reversed(
        app, client, session, account, clock):
    """Pending books nothing; the approval books the commission in its own month; a
    negative amount reverses it once; repeats and late reports are 200 no-ops."""
    click_id = clicked(app, client, session, account)
    fields = {"conversion_id": "AW-77", "click_id": click_id, "sale_amount": "80.00",
              "commission": "8.00"}
    reported = clock.now = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert postback(client, {**fields, "status": "pending"}).get_json() == {
        "recorded": True, "status": "pending"}
    assert postback(client, {**fields, "status": "pending"}).get_json() == {
        "recorded": False, "status": "pending"}
    assert revenue_rows(session) == []

    approved = clock.now = datetime(2026, 12, 2, 8, 30, tzinfo=UTC)
    response = postback(client, {**fields, "commission": "9.00", "status": "Approved"})
    assert response.get_json() == {"recorded": True, "status": "approved"}
    (row,) = conversions(session)
    assert (row.status, row.created_at, row.approved_at, row.reversed_at, row.booked_musd,
            row.commission_musd) == ("approved", reported, approved, None, 9_000_000,
                                     9_000_000)
    assert revenue_of_month(session, account, reported) == 0
    assert revenue_of_month(session, account, approved) == 9_000_000
    assert revenue_rows(session) == [("affiliate:awin:AW-77", 9_000_000, approved)]
    for late in ({**fields, "status": "approved"}, {**fields, "status": "pending"}, fields):
        assert postback(client, late).get_json() == {"recorded": False, "status": "approved"}

    reversed_at = clock.now = datetime(2027, 1, 9, 17, 0, tzinfo=UTC)
    negative = {**fields, "sale_amount": "-80.00", "commission": "-9.00"}
    assert postback(client, negative).get_json() == {"recorded": True, "status": "reversed"}
    for late in (negative, {**fields, "status": "reversed"}, {**fields, "status": "approved"},
                 {**fields, "status": "pending"}):
        assert postback(client, late).get_json() == {"recorded": False, "status": "reversed"}
    (row,) = conversions(session)
    assert (row.status, row.approved_at, row.reversed_at, row.booked_musd) == (
        "reversed", approved, reversed_at, 9_000_000)
    assert revenue_of_month(session, account, approved) == 9_000_000
    assert revenue_of_month(session, account, reversed_at) == -9_000_000
    assert revenue_rows(session) == [("affiliate:awin:AW-77", 9_000_000, approved),
                                     ("affiliate-reversal:awin:AW-77", -9_000_000,
                                      reversed_at)]


def test_a_reversal_postback_before_the_approval_books_nothing(app, client, session,
                                                                  account, clock):
    click_id = clicked(app, client, session, account)
    fields = {"conversion_id": "AW-78", "click_id": click_id, "sale_amount": "20.00",
              "commission": "-2.00"}
    assert postback(client, fields).get_json() == {"recorded": True, "status": "reversed"}
    clock.now += timedelta(days=3)
    for word in ("approved", "pending", None):
        late = postback(client, {**fields, "commission": "2.00", "status": word})
        assert late.get_json() == {"recorded": False, "status": "reversed"}
    declined = {"conversion_id": "AW-79", "click_id": click_id, "sale_amount": "20.00",
                "commission": "2.00"}
    assert postback(client, {**declined, "status": "pending"}).get_json()["recorded"]
    assert postback(client, {**declined, "status": "declined"}).get_json() == {
        "recorded": True, "status": "reversed"}
    assert postback(client, {**declined, "status": "approved"}).get_json() == {
        "recorded": False, "status": "reversed"}
    assert [(c.conversion_id, c.status, c.approved_at, c.booked_musd)
            for c in conversions(session)] == [("AW-78", "reversed", None, 0),
                                               ("AW-79", "reversed", None, 0)]
    assert revenue_rows(session) == []
    assert affiliate_revenue(session, account) == 0


def test_a_bad_postback_changes_a_known_conversion_in_no_way(app, client, session, account):
    click_id = clicked(app, client, session, account)
    fields = {"conversion_id": "AW-80", "click_id": click_id, "sale_amount": "20.00",
              "commission": "2.00", "status": "pending"}
    assert postback(client, fields).get_json()["recorded"]
    for bad in ({**fields, "status": "approved!"}, {**fields, "commission": "2.005"},
                {**fields, "status": "approved", "sale_amount": 20}):
        response = postback(client, bad)
        assert response.status_code == 400
        assert response.get_data(as_text=True).strip()
    (row,) = conversions(session)
    assert (row.status, row.booked_musd) == ("pending", 0)
    assert revenue_rows(session) == []


@pytest.mark.parametrize("network", ["impact", "unknown", "a.b", "x" * 40])
def test_a_network_without_a_secret_is_404(client, session, network):
    body = b'{"conversion_id": "1", "sale_amount": "1.00", "commission": "0.10"}'
    response = client.post(f"/webhooks/affiliates/{network}", data=body,
                           headers=signed(body))
    assert response.status_code == 404
    assert conversions(session) == []


@pytest.mark.parametrize("body, reason", [
    (b"not json", "JSON"),
    (b"[1, 2]", "object"),
    (b'{"click_id": "c", "sale_amount": "1.00", "commission": "0.10"}', "conversion_id"),
    (b'{"conversion_id": "", "sale_amount": "1.00", "commission": "0.10"}', "conversion_id"),
    (b'{"conversion_id": 17, "sale_amount": "1.00", "commission": "0.10"}', "conversion_id"),
    (b'{"conversion_id": "c", "sale_amount": 12.5, "commission": "0.10"}', "sale_amount"),
    (b'{"conversion_id": "c", "sale_amount": "1.00", "commission": "--0.10"}', "commission"),
    (b'{"conversion_id": "c", "sale_amount": "1.00", "commission": "+0.10"}', "commission"),
    (b'{"conversion_id": "c", "sale_amount": "-", "commission": "0.10"}', "sale_amount"),
    (b'{"conversion_id": "c", "sale_amount": "1", "commission": "1", "status": "maybe"}',
     "status"),
    (b'{"conversion_id": "c", "sale_amount": "1", "commission": "1", "status": 1}', "status"),
    (b'{"conversion_id": "c", "sale_amount": "1", "commission": "1", "status": ["ok"]}',
     "status"),
    (b'{"conversion_id": "c", "sale_amount": "1.00", "commission": "1e2"}', "commission"),
    (b'{"conversion_id": "c", "sale_amount": "1.00"}', "commission"),
    (b'{"conversion_id": "c", "click_id": 5, "sale_amount": "1.00", "commission": "1"}',
     "click_id"),
])
def test_an_invalid_body_is_400_with_the_reason(client, session, body, reason):
    response = client.post(PATH, data=body, headers=signed(body))
    assert response.status_code == 400
    assert reason in response.get_data(as_text=True)
    assert conversions(session) == []


def test_an_oversized_postback_is_refused(client, session):
    body = json.dumps({"conversion_id": "c", "sale_amount": "1", "commission": "1",
                       "padding": "x" * 20_000}).encode()
    assert client.post(PATH, data=body, headers=signed(body)).status_code == 413
    assert conversions(session) == []


# --- flask affiliates import --------------------------------------------------------------


def test_csv_import_is_idempotent_and_reports_bad_lines(app, client, runner, session, account,
                                                         tmp_path):
    click_id = clicked(app, client, session, account)
    path = tmp_path / "conversions.csv"
    path.write_text("conversion_id,click_id,sale_amount,commission\n"
                    f"AW-1,{click_id},45.00,4.50\n"
                    "AW-2,,10.00,1.00\n"
                    f"AW-3,{click_id},12.50,1.25.0\n", encoding="utf-8")
    first = runner.invoke(args=["affiliates", "import", "awin", str(path)])
    assert first.exit_code == 1, first.output
    assert "added 2, updated 0, repeated 0, errors 1" in first.output
    assert "line 4: commission" in first.output
    second = runner.invoke(args=["affiliates", "import", "awin", str(path)])
    assert "added 0, updated 0, repeated 2, errors 1" in second.output
    assert sorted(c.conversion_id for c in conversions(session)) == ["AW-1", "AW-2"]
    assert affiliate_revenue(session, account) == 450 * money.MUSD_PER_CENT

    clean = tmp_path / "clean.csv"
    clean.write_text("conversion_id,click_id,sale_amount,commission\n"
                     f"AW-9,{click_id},5.00,0.50\n", encoding="utf-8")
    result = runner.invoke(args=["affiliates", "import", "awin", str(clean)])
    assert result.exit_code == 0, result.output
    assert "added 1, updated 0, repeated 0, errors 0" in result.output


def test_csv_reports_approve_and_reverse_conversions(app, client, runner, session, account,
                                                    tmp_path, clock):
    click_id = clicked(app, client, session, account)
    header = "conversion_id,click_id,sale_amount,commission,status\n"

    def run(name: str, rows: str):
        path = tmp_path / name
        path.write_text(header + rows, encoding="utf-8")
        return runner.invoke(args=["affiliates", "import", "awin", str(path)])

    reported = clock.now = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    first = run("pending.csv", f"AW-1,{click_id},45.00,4.50,pending\n"
                               f"AW-2,{click_id},10.00,1.00,pending\n")
    assert first.exit_code == 0, first.output
    assert "added 2, updated 0, repeated 0, errors 0" in first.output
    assert revenue_rows(session) == []

    approved = clock.now = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    second = run("approved.csv", f"AW-1,{click_id},45.00,4.50,approved\n"
                                 f"AW-2,{click_id},10.00,-1.00,\n"
                                 f"AW-1,{click_id},45.00,4.50,pending\n")
    assert "added 0, updated 2, repeated 1, errors 0" in second.output
    assert revenue_of_month(session, account, reported) == 0
    assert revenue_of_month(session, account, approved) == 4_500_000

    reversed_at = clock.now = datetime(2027, 2, 14, 12, 0, tzinfo=UTC)
    rows = (f"AW-1,{click_id},-45.00,-4.50,reversed\n"
            f"AW-2,{click_id},10.00,1.00,approved\n")
    third = run("reversed.csv", rows)
    assert "added 0, updated 1, repeated 1, errors 0" in third.output
    again = run("reversed-again.csv", rows)
    assert "added 0, updated 0, repeated 2, errors 0" in again.output
    assert revenue_rows(session) == [("affiliate:awin:AW-1", 4_500_000, approved),
                                     ("affiliate-reversal:awin:AW-1", -4_500_000, reversed_at)]
    assert [(c.conversion_id, c.status) for c in conversions(session)] == [
        ("AW-1", "reversed"), ("AW-2", "reversed")]


def test_csv_import_explains_a_bad_file(runner, session, tmp_path):
    missing = runner.invoke(args=["affiliates", "import", "awin", str(tmp_path / "no.csv")])
    assert missing.exit_code == 1
    assert "no such file" in missing.output
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage\x9c")
    result = runner.invoke(args=["affiliates", "import", "awin", str(binary)])
    assert result.exit_code == 1
    assert "not a UTF-8 text file" in result.output
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("AW-1,abc,45.00,4.50\n", encoding="utf-8")
    result = runner.invoke(args=["affiliates", "import", "awin", str(headerless)])
    assert result.exit_code == 1
    assert "header lacks" in result.output
    bad_network = runner.invoke(args=["affiliates", "import", "a.b", str(headerless)])
    assert bad_network.exit_code == 2
    assert "NETWORK" in bad_network.output
    directory = runner.invoke(args=["affiliates", "import", "awin", str(tmp_path)])
    assert directory.exit_code != 0
    assert conversions(session) == []


def test_link_previews_and_head_requests_record_no_click(app, session):
    """WhatsApp and iMessage fetch a link to preview it: that is not a person clicking."""
    from sqlalchemy import func, select

    from app.affiliates import bp
    from tokens import affiliates, ledger

    if "affiliates" not in app.blueprints:
        app.register_blueprint(bp)
    client = app.test_client()
    account = ledger.open_account(session)
    [(_, link)] = affiliates.issue_offer_links(session, account.id, "grocery_list",
                                               bot_settings(app).catalog)[:1]
    session.commit()
    assert client.head(f"/r/{link.token}").status_code == 200
    preview = client.get(f"/r/{link.token}", headers={"User-Agent": "WhatsApp/2.23.20.0 A"})
    assert preview.status_code == 200
    assert session.scalar(select(func.count()).select_from(affiliates.Click)) == 0
    assert client.get(f"/r/{link.token}").status_code == 302
    assert session.scalar(select(func.count()).select_from(affiliates.Click)) == 1
