"""Pay link pages and health checks."""

from __future__ import annotations

from datetime import timedelta

from tokens import ledger, payments
from tokens.base import utcnow


def test_a_pay_link_opens_the_sandbox_checkout_that_says_no_money_moves(client, session):
    account = ledger.open_account(session)
    link = payments.issue_pay_link(session, account.id, "starter", ttl_seconds=3600)
    session.commit()
    response = client.get(f"/pay/{link.token}")
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "120 tokens" in page and "$5.00" in page
    assert "no money moves" in page


def test_unknown_and_expired_pay_links_get_friendly_pages(client, session):
    assert client.get("/pay/not-a-token").status_code == 404
    account = ledger.open_account(session)
    link = payments.issue_pay_link(session, account.id, "starter", ttl_seconds=3600,
                                   now=utcnow() - timedelta(hours=2))
    session.commit()
    response = client.get(f"/pay/{link.token}")
    assert response.status_code == 410
    assert "Text <strong>BUY</strong>" in response.get_data(as_text=True)


def test_a_stale_pay_link_is_replaced_not_reused(session):
    account = ledger.open_account(session)
    now = utcnow()
    old = payments.issue_pay_link(session, account.id, "starter", ttl_seconds=7200,
                                  now=now - timedelta(hours=1, minutes=1))
    fresh = payments.issue_pay_link(session, account.id, "starter", ttl_seconds=7200, now=now)
    assert fresh.token != old.token
    assert payments.issue_pay_link(session, account.id, "starter", ttl_seconds=7200,
                                   now=now).token == fresh.token


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ok", "database": "ok"}
