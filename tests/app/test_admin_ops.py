"""The admin operations pages (issue #7): payments, affiliates, the webhook inbox (with
reprocess) and queue health (with requeue), on SQLite and PostgreSQL; queues against a real
redis-server."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.admin.ops import MONTH_YEARS, QUEUE_NAMES, last_line, money, usd_musd
from app.billing import apply_event, payment_provider
from app.extensions import bot_settings, db
from app.queue import QUEUE_NAME, answers_queue
from bot.models import Contact
from testing.admin import cells, csrf_token, kpi, logged_in, section
from testing.deployment import (
    PUBLIC_BASE_URL,
    post_signed,
    queued_environment,
    run_worker,
)
from testing.payloads import sms
from testing.redis_server import free_port
from testing.twilio_standin import TwilioStandIn
from tokens import ledger, payment_events
from tokens.admin import AdminAction
from tokens.affiliates import Click, issue_offer_links, record_click, record_conversion
from tokens.base import utcnow
from tokens.payment_events import record_failure
from tokens.payments import Checkout, FailedEvent, PaymentEvent
from tokens.periods import Month

PHONE = "+16505558893"
PAGES = ("/admin/payments", "/admin/affiliates", "/admin/webhooks", "/admin/queues")


# --- helpers ------------------------------------------------------------------------------


def text_of(response) -> str:
    return response.get_data(as_text=True)


def pay_link_checkout(client: FlaskClient, text: str = "BUY", phone: str = PHONE) -> str:
    """Text BUY (or BUY PREMIUM) and open the pay link; the sandbox checkout's session id."""
    reply = text_of(post_signed(client, sms(text, sender=phone)))
    match = re.search(re.escape(PUBLIC_BASE_URL) + r"(/pay/[A-Za-z0-9_-]+)", reply)
    assert match, reply
    opened = client.get(match.group(1))
    assert opened.status_code == 303
    return opened.headers["Location"].rsplit("/", 1)[1]


def account_of(phone: str = PHONE) -> int:
    account = db.session.scalar(select(Contact.account_id).where(Contact.address == phone))
    assert account is not None
    return int(account)


def completed_event(session_id: str, event_id: str, amount: int = 500) -> dict[str, object]:
    """The `checkout.session.completed` event the sandbox's Pay button builds, with a
    customer's email in it (which the inbox must never show)."""
    return {
        "id": event_id, "object": "event", "type": "checkout.session.completed",
        "livemode": False,
        "data": {"object": {
            "id": session_id, "object": "checkout.session", "mode": "payment",
            "payment_status": "paid", "status": "complete", "amount_total": amount,
            "currency": "usd", "payment_intent": f"pi_sandbox_{session_id}",
            "customer_details": {"email": "jane.doe@example.com"},
        }},
    }


def make_checkout(account_id: int, amount_cents: int, *, status: str = "open",
                  created_at: datetime | None = None, completed_at: datetime | None = None,
                  currency: str = "usd", refunded_cents: int = 0) -> Checkout:
    external = f"cs_test_{secrets.token_hex(8)}"
    row = Checkout(account_id=account_id, provider="sandbox", mode="payment",
                   item_code="starter", amount_cents=amount_cents, currency=currency,
                   tokens=100, bonus_tokens=20, external_id=external,
                   url=f"{PUBLIC_BASE_URL}/sandbox/checkout/{external}", status=status,
                   refunded_cents=refunded_cents, created_at=created_at or utcnow(),
                   completed_at=completed_at)
    db.session.add(row)
    db.session.flush()
    return row


def actions(kind: str) -> list[AdminAction]:
    db.session.expire_all()
    return list(db.session.scalars(select(AdminAction).where(AdminAction.action == kind)))


# --- formatting ---------------------------------------------------------------------------


def test_amounts_are_formatted_with_integer_arithmetic():
    assert money(1234) == "$12.34"
    assert money(5, "usd") == "$0.05"
    assert money(-250) == "-$2.50"
    assert money(1000, "eur") == "10.00 EUR"
    assert usd_musd(12_500_000) == "$12.50"
    assert usd_musd(12_345) == "$0.012345"
    assert usd_musd(10**17 + 10_000) == "$100000000000.01"  # no float rounding
    assert last_line("Traceback (most recent call last):\n  File x\nValueError: bad\n\n") == \
        "ValueError: bad"
    assert last_line(None) == ""


def test_month_parsing():
    month = Month.parse("2026-12", years=MONTH_YEARS)
    assert (month.start, month.end) == (datetime(2026, 12, 1, tzinfo=UTC),
                                        datetime(2027, 1, 1, tzinfo=UTC))
    assert (str(month.previous), str(month.next)) == ("2026-11", "2027-01")
    assert str(Month.parse("2026-01", years=MONTH_YEARS).previous) == "2025-12"
    assert str(Month.of(datetime(2026, 3, 31, 23, 59, tzinfo=UTC))) == "2026-03"
    for bad in ("2026-13", "2026-1", "26-01", "2026-01-01", "x", "1999-12", "9999-01"):
        with pytest.raises(ValueError):
            Month.parse(bad, years=MONTH_YEARS)


# --- access -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_is_sent_to_the_login(app, path):
    response = app.test_client().get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login")


# --- payments -----------------------------------------------------------------------------


def test_payments_shows_the_months_checkouts_totals_and_subscriptions(app, session):
    buyer = app.test_client()
    pack = pay_link_checkout(buyer)
    assert buyer.post(f"/sandbox/checkout/{pack}/pay").status_code == 303
    premium = pay_link_checkout(buyer, "BUY PREMIUM")
    assert buyer.post(f"/sandbox/checkout/{premium}/pay").status_code == 303
    account = account_of()
    now = utcnow()
    make_checkout(account, 1234, status="completed", completed_at=now, refunded_cents=234)
    make_checkout(account, 999, status="completed", created_at=now - timedelta(days=70),
                  completed_at=now - timedelta(days=70))  # another month
    make_checkout(account, 700, status="flagged")
    session.commit()

    client = logged_in(app)
    page = text_of(response := client.get("/admin/payments"))
    assert response.status_code == 200
    assert kpi(page, "Completed checkouts") == "3"
    assert kpi(page, "Paid (USD, 3)") == "$22.34"  # 5.00 + 5.00 + 12.34
    assert kpi(page, "Refunded (USD)") == "$2.34"
    assert kpi(page, "Opened this month, now flagged") == "1"
    when = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d")
    row = cells(page, pack)
    assert row[1:9] == [f"#{account}", "starter", "payment", "sandbox", pack, "$5.00", "-",
                        "completed"]
    assert when.fullmatch(row[0]) and when.fullmatch(row[9])
    assert cells(page, premium)[3:9] == ["subscription", "sandbox", premium, "$5.00", "-",
                                         "completed"]
    assert cells(page, "$12.34")[6:9] == ["$12.34", "$2.34", "completed"]
    assert f'href="/admin/people/{account}"' in page
    subscriptions = section(page, "Subscriptions")
    row = cells(subscriptions, f"#{account}")
    assert row[:3] == [f"#{account}", "sandbox", "active"] and row[4] == "no"
    assert when.fullmatch(row[3])
    assert "active: 1" in subscriptions

    other = Month.of(now - timedelta(days=70))
    page = text_of(client.get(f"/admin/payments?month={other}"))
    assert kpi(page, "Completed checkouts") == "1"
    assert kpi(page, "Paid (USD, 1)") == "$9.99"
    page = text_of(client.get("/admin/payments?month=2001-01"))
    assert kpi(page, "Completed checkouts") == "0" and kpi(page, "Paid") == "$0.00"
    assert client.get("/admin/payments?month=2026-13").status_code == 400


def test_payments_are_paginated_50_a_page(app, session):
    account = ledger.open_account(session).id
    start = utcnow() - timedelta(hours=2)
    made = [make_checkout(account, 100 + n, created_at=start + timedelta(minutes=n)).external_id
            for n in range(51)]
    session.commit()
    client = logged_in(app)
    first = text_of(client.get("/admin/payments"))
    assert len(re.findall(r"cs_test_[0-9a-f]{16}", first)) == 50
    assert made[-1] in first and made[0] not in first  # newest first
    assert 'rel="next"' in first and "Next</a>" in first and "Previous</a>" not in first
    assert "Page 1 of 2" in first
    second = text_of(client.get("/admin/payments?page=2"))
    assert re.findall(r"cs_test_[0-9a-f]{16}", second) == [made[0]]
    assert "Previous</a>" in second and "Next</a>" not in second
    assert cells(second, made[0])[6] == "$1.00"
    # Past the end, or not a number: a page that exists.
    assert "Page 2 of 2" in text_of(client.get("/admin/payments?page=99"))
    assert "Page 1 of 2" in text_of(client.get("/admin/payments?page=x"))


# --- affiliates ---------------------------------------------------------------------------


def test_affiliates_shows_the_months_links_clicks_conversions_and_commission(app, session):
    catalog = bot_settings(app).catalog
    account = ledger.open_account(session).id
    now = utcnow()
    offers = issue_offer_links(session, account, "meal_plan", catalog, now)
    partner, link = offers[0]
    record_click(session, link.token, catalog, now)
    record_click(session, link.token, catalog, now)
    click_id = session.scalars(select(Click.click_id).order_by(Click.id)).first()
    assert record_conversion(session, "awin", "conv-1", click_id, 5000, 1250, now).changed
    assert record_conversion(session, "awin", "conv-2", "not-one-of-ours", 1000, 100,
                             now).changed
    earlier = now - timedelta(days=70)
    old_offers = issue_offer_links(session, account, "grocery_list", catalog, earlier)
    session.commit()

    client = logged_in(app)
    page = text_of(response := client.get("/admin/affiliates"))
    assert response.status_code == 200
    assert kpi(page, "Offer links issued") == str(len(offers))
    assert kpi(page, "Clicks") == "1"  # two openings in one hour: one click
    assert kpi(page, "Link openings") == "2"
    assert kpi(page, "Conversions (attributed)") == "1"
    assert kpi(page, "Commission (revenue)") == "$12.50"
    assert kpi(page, "Unattributed conversions") == "1"
    assert cells(section(page, "Per partner"), partner.name) == [
        f"{partner.name} {partner.code}", "1", "1", "1", "$50.00", "$12.50", "2", "0", "0"]
    assert cells(section(page, "Per network"), "awin") == [
        "awin", "1", "1", "$60.00", "$12.50", "$1.00", "0", "2", "0"]
    latest = section(page, "Latest conversions")
    assert cells(latest, "conv-2")[1:8] == ["awin", "conv-2", "-", "-", "approved",
                                           "$10.00", "$1.00"]
    assert cells(latest, "conv-1")[1:8] == ["awin", "conv-1", partner.name, f"#{account}",
                                           "approved", "$50.00", "$12.50"]
    clicks = section(page, "Latest clicks")
    assert len(re.findall(r"<tr>", clicks)) == 2  # header + 1 click (2 openings)
    assert f'href="/admin/people/{account}"' in clicks
    assert click_id not in page  # our sub-ids are not shown

    page = text_of(client.get(f"/admin/affiliates?month={Month.of(earlier)}"))
    assert kpi(page, "Offer links issued") == str(len(old_offers))
    assert kpi(page, "Clicks") == "0" and kpi(page, "Commission (revenue)") == "$0.00"
    assert client.get("/admin/affiliates?month=soon").status_code == 400


# --- the webhook inbox --------------------------------------------------------------------


def fail_once(app: Flask, monkeypatch, event: dict[str, object]) -> FailedEvent:
    """Apply `event` with its handler raising, as a database hiccup would: a FailedEvent."""
    def broken(*_args: object) -> None:
        raise RuntimeError("database hiccup")

    monkeypatch.setitem(payment_events.HANDLERS, "checkout.session.completed", broken)
    with pytest.raises(RuntimeError):
        apply_event(app, payment_provider(app), event)
    db.session.expire_all()
    row = db.session.scalar(select(FailedEvent).where(FailedEvent.event_id == event["id"]))
    assert row is not None
    return row


def test_reprocess_applies_a_failed_event_once(app, session, monkeypatch):
    sid = pay_link_checkout(app.test_client())
    account = account_of()
    failed = fail_once(app, monkeypatch, completed_event(sid, "evt_admin_1"))
    failed_id = failed.id
    assert (failed.provider, failed.type, failed.attempts, failed.resolved_at) == (
        "sandbox", "checkout.session.completed", 1, None)
    assert failed.error == "RuntimeError: database hiccup"
    assert session.scalar(select(func.count()).select_from(PaymentEvent)) == 0

    client = logged_in(app)
    page = text_of(client.get("/admin/webhooks"))
    row = cells(page, "evt_admin_1")
    assert row[:5] == ["sandbox", "evt_admin_1", "checkout.session.completed",
                       "RuntimeError: database hiccup", "1"]
    assert row[7:] == ["unresolved", "Reprocess"]
    assert kpi(page, "Unresolved failed events") == "1"
    assert "jane.doe@example.com" not in page
    path = f"/admin/webhooks/{failed_id}/reprocess"

    # No CSRF token: 400, nothing done.
    assert client.post(path).status_code == 400
    token = csrf_token(client, "/admin/webhooks")

    # The handler still fails: counted again, flashed, nothing credited.
    response = client.post(path, data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/admin/webhooks"
    session.expire_all()
    failed = session.get(FailedEvent, failed_id)
    assert failed.attempts == 2 and failed.resolved_at is None
    assert "failed again: RuntimeError: database hiccup" in text_of(client.get("/admin/webhooks"))
    assert ledger.balance(session, account).posted == 100
    assert actions("reprocess") == []

    # Fixed: reprocessing credits the pack once and resolves the failure.
    monkeypatch.undo()
    response = client.post(path, data={"csrf_token": token})
    assert response.status_code == 303
    session.expire_all()
    assert ledger.balance(session, account).posted == 220
    assert session.get(FailedEvent, failed_id).resolved_at is not None
    assert session.scalar(select(PaymentEvent.outcome)) == "credited 120 tokens"
    assert session.scalar(select(Checkout.status)) == "completed"
    [action] = actions("reprocess")
    assert action.detail == "checkout.session.completed evt_admin_1: credited 120 tokens"
    assert action.account_id is None
    page = text_of(client.get("/admin/webhooks"))
    assert "Reprocessed checkout.session.completed evt_admin_1: credited 120 tokens" in page
    assert "Reprocess</button>" not in page
    assert kpi(page, "Unresolved failed events") == "0"

    # Again: already handled, nothing changes.
    assert client.post(path, data={"csrf_token": token}).status_code == 303
    assert "already handled" in text_of(client.get("/admin/webhooks"))
    session.expire_all()
    assert ledger.balance(session, account).posted == 220
    assert len(actions("reprocess")) == 1
    assert session.scalar(select(func.count()).select_from(PaymentEvent)) == 1


def test_reprocess_of_an_event_applied_meanwhile_resolves_it(app, session):
    sid = pay_link_checkout(app.test_client())
    account = account_of()
    event = completed_event(sid, "evt_admin_2")
    record_failure(session, "sandbox", event, RuntimeError("stripe down"), utcnow())
    session.commit()  # the first delivery failed...
    failed_id = session.scalar(select(FailedEvent.id))
    apply_event(app, payment_provider(app), event)  # ...the provider's retry went through
    session.get(FailedEvent, failed_id).resolved_at = None  # as an older version left it
    session.commit()
    # A late failure of the applied event does not reopen or count anything.
    record_failure(session, "sandbox", event, RuntimeError("late"), utcnow())
    assert session.get(FailedEvent, failed_id).attempts == 1
    client = logged_in(app)
    response = client.post(f"/admin/webhooks/{failed_id}/reprocess",
                           data={"csrf_token": csrf_token(client, "/admin/webhooks")})
    assert response.status_code == 303
    session.expire_all()
    assert session.get(FailedEvent, failed_id).resolved_at is not None
    assert ledger.balance(session, account).posted == 220
    [action] = actions("reprocess")
    assert action.detail == "checkout.session.completed evt_admin_2: duplicate"


def test_reprocess_refuses_another_provider_and_unknown_ids(app, session):
    sid = pay_link_checkout(app.test_client())
    record_failure(session, "stripe", completed_event(sid, "evt_admin_3"),
                   RuntimeError("boom"), utcnow())
    session.commit()
    failed_id = session.scalar(select(FailedEvent.id))
    client = logged_in(app)
    token = csrf_token(client, "/admin/webhooks")
    response = client.post(f"/admin/webhooks/{failed_id}/reprocess",
                           data={"csrf_token": token})
    assert response.status_code == 303
    page = text_of(client.get("/admin/webhooks"))
    assert "came from stripe; the configured provider is sandbox" in page
    session.expire_all()
    failed = session.get(FailedEvent, failed_id)
    assert (failed.attempts, failed.resolved_at) == (1, None)
    assert session.scalar(select(func.count()).select_from(PaymentEvent)) == 0
    assert actions("reprocess") == []
    assert client.post(f"/admin/webhooks/{failed_id + 1}/reprocess",
                       data={"csrf_token": token}).status_code == 404


def test_inbox_lists_the_latest_events_and_highlights_flagged_ones(app, session):
    buyer = app.test_client()
    paid = pay_link_checkout(buyer)
    other = pay_link_checkout(buyer, phone="+16505558894")
    provider = payment_provider(app)
    apply_event(app, provider, completed_event(paid, "evt_paid"))
    apply_event(app, provider, completed_event(other, "evt_wrong_amount", amount=1))
    client = logged_in(app)
    page = text_of(response := client.get("/admin/webhooks"))
    assert response.status_code == 200
    events = section(page, "Latest events received")
    assert cells(events, "evt_paid")[1:] == ["sandbox", "checkout.session.completed",
                                             "evt_paid", "credited 120 tokens"]
    flagged = cells(events, "evt_wrong_amount")
    assert flagged[4] == "flagged flagged: paid 1 usd, expected 500 usd"
    assert 'badge bad">flagged' in events
    assert events.index("evt_wrong_amount") < events.index("evt_paid")  # newest first
    assert kpi(page, "Flagged events (all time)") == "1"
    assert "No failed events." in page
    assert "jane.doe@example.com" not in page and "customer_details" not in page


# --- queues -------------------------------------------------------------------------------


def explode(secret: str) -> None:
    """A job that fails (run by the worker below)."""
    raise RuntimeError("kaput")


def fine() -> str:
    """A job that succeeds."""
    return "ok"


def test_queue_health_shows_counts_and_requeues_a_failed_job(queued_app):
    assert QUEUE_NAMES == (QUEUE_NAME,)
    queue = answers_queue(queued_app)
    assert queue is not None
    queue.enqueue(f"{__name__}.explode", "s3cret-argument", job_id="explode-1")
    queue.enqueue(f"{__name__}.fine", job_id="fine-1")
    assert run_worker(queued_app) == 1
    queue.enqueue(f"{__name__}.fine", job_id="fine-2")

    client = logged_in(queued_app)
    page = text_of(response := client.get("/admin/queues"))
    assert response.status_code == 200
    assert (kpi(page, "Queued"), kpi(page, "Started"), kpi(page, "Failed"),
            kpi(page, "Scheduled"), kpi(page, "Deferred"), kpi(page, "Finished"),
            kpi(page, "Workers")) == ("1", "0", "1", "0", "0", "1", "0")
    row = cells(page, "explode-1")
    assert row[:2] == ["explode-1", f"{__name__}.explode"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", row[2])
    assert row[3:] == ["RuntimeError: kaput", "Requeue"]
    assert "s3cret-argument" not in page and "Traceback" not in page

    path = "/admin/queues/answers/failed/explode-1/requeue"
    assert client.post(path).status_code == 400  # no CSRF token
    assert queue.failed_job_registry.count == 1
    token = csrf_token(client, "/admin/queues")
    unknown = client.post("/admin/queues/answers/failed/nope/requeue",
                          data={"csrf_token": token})
    assert unknown.status_code == 303
    assert "No failed job nope in the answers queue." in text_of(client.get("/admin/queues"))
    assert client.post("/admin/queues/other/failed/explode-1/requeue",
                       data={"csrf_token": token}).status_code == 404
    assert actions("requeue") == []

    response = client.post(path, data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == "/admin/queues"
    assert queue.failed_job_registry.count == 0 and len(queue) == 2
    assert "explode-1" in queue.get_job_ids()
    [action] = actions("requeue")
    assert action.detail == "answers explode-1"
    page = text_of(client.get("/admin/queues"))
    assert "Requeued explode-1 on the answers queue." in page
    assert (kpi(page, "Queued"), kpi(page, "Failed")) == ("2", "0")


def test_queues_without_redis_say_answers_run_inline(app):
    client = logged_in(app)
    page = text_of(response := client.get("/admin/queues"))
    assert response.status_code == 200
    assert "No Redis configured: answers run inline in the web process." in page
    response = client.post("/admin/queues/answers/failed/x/requeue",
                           data={"csrf_token": csrf_token(client, "/admin/queues")})
    assert response.status_code == 303
    assert actions("requeue") == []


@pytest.fixture
def redis_down_app(make_app: Callable[..., Flask], twilio_api: TwilioStandIn) -> Flask:
    """The app as deployed with Redis, but REDIS_URL points at a loopback port nobody
    listens on."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    return make_app(**queued_environment(closed, twilio_api, None))


def test_queues_with_redis_down_show_the_error_not_a_500(redis_down_app):
    # The login's rate limit counts in memory while Redis is down, so the login works.
    client = logged_in(redis_down_app)
    page = text_of(response := client.get("/admin/queues"))
    assert response.status_code == 200
    assert "Redis cannot be reached: ConnectionError" in page
    response = client.post("/admin/queues/answers/failed/x/requeue",
                           data={"csrf_token": csrf_token(client, "/admin/queues")})
    assert response.status_code == 303
    assert "nothing was requeued" in text_of(client.get("/admin/queues"))
    assert actions("requeue") == []
