"""`GET /r/<token>`, `POST /webhooks/affiliates/<network>` and `flask affiliates import`
(economy.md, "Affiliate gating"), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import replace
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

import tokens.affiliates  # noqa: F401  (registers the models until app/__init__ imports them)
from app.affiliates import affiliates_group, bp
from tokens import costs, ledger
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
    return app.extensions["bot_settings"].catalog


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


def test_offer_link_records_one_click_per_request_and_redirects_to_the_partner(
        app, client, session, account):
    token = offer_token(app, session, account)
    locations = []
    for expected in (1, 2):
        response = client.get(f"/r/{token}")
        assert response.status_code == 302
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert len(click_rows(session)) == expected
        locations.append(response.headers["Location"])
    rows = click_rows(session)
    allowed = catalog(app).affiliates.allowed_domains
    for location, row in zip(locations, rows, strict=True):
        parts = urlsplit(location)
        assert parts.scheme == "https"
        assert any(parts.hostname == d or parts.hostname.endswith("." + d) for d in allowed)
        assert parts.hostname == "www.freshbox.example"
        assert parse_qs(parts.query)["subid"] == [row.click_id]
        assert row.account_id == account
    assert rows[0].click_id != rows[1].click_id


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
    settings = app.extensions["bot_settings"]
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
    assert first.get_json() == {"recorded": True}
    again = postback(client, fields)
    assert again.status_code == 200
    assert again.get_json() == {"recorded": False}
    changed = postback(client, {**fields, "commission": "99.00"})
    assert changed.get_json() == {"recorded": False}

    (row,) = conversions(session)
    assert (row.network, row.conversion_id, row.account_id, row.status, row.sale_amount_cents,
            row.commission_musd) == ("awin", "AW-1001", account, "attributed", 4_500,
                                     450 * costs.MUSD_PER_CENT)
    assert affiliate_revenue(session, account) == 450 * costs.MUSD_PER_CENT
    assert affiliate_revenue(session, other) == 0
    assert session.scalar(select(func.count()).select_from(RevenueEntry)) == 1


def test_a_postback_for_an_unknown_click_is_kept_unattributed(client, session):
    response = postback(client, {"conversion_id": "AW-7", "click_id": "someone-elses",
                                 "sale_amount": "10", "commission": "1.00"})
    assert response.get_json() == {"recorded": True}
    (row,) = conversions(session)
    assert (row.account_id, row.status) == (None, "unattributed")
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
    assert response.get_json() == {"recorded": True}


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
    (b'{"conversion_id": "c", "sale_amount": "1.00", "commission": "-0.10"}', "commission"),
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
    assert "added 2, repeated 0, errors 1" in first.output
    assert "line 4: commission" in first.output
    second = runner.invoke(args=["affiliates", "import", "awin", str(path)])
    assert "added 0, repeated 2, errors 1" in second.output
    assert sorted(c.conversion_id for c in conversions(session)) == ["AW-1", "AW-2"]
    assert affiliate_revenue(session, account) == 450 * costs.MUSD_PER_CENT

    clean = tmp_path / "clean.csv"
    clean.write_text("conversion_id,click_id,sale_amount,commission\n"
                     f"AW-9,{click_id},5.00,0.50\n", encoding="utf-8")
    result = runner.invoke(args=["affiliates", "import", "awin", str(clean)])
    assert result.exit_code == 0, result.output
    assert "added 1, repeated 0, errors 0" in result.output


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
                                               app.extensions["bot_settings"].catalog)[:1]
    session.commit()
    assert client.head(f"/r/{link.token}").status_code == 200
    preview = client.get(f"/r/{link.token}", headers={"User-Agent": "WhatsApp/2.23.20.0 A"})
    assert preview.status_code == 200
    assert session.scalar(select(func.count()).select_from(affiliates.Click)) == 0
    assert client.get(f"/r/{link.token}").status_code == 302
    assert session.scalar(select(func.count()).select_from(affiliates.Click)) == 1
