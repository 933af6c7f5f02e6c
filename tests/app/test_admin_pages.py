"""The admin pages: login, sessions, CSRF, the login rate limit, the overview, the people table,
a person's page and the operator's actions (and what they change in the router)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.config import Config
from app.extensions import bot_settings, db
from bot.models import Contact
from testing.admin import PASSWORD, csrf_token, logged_in, make_admin
from testing.deployment import post_signed
from testing.payloads import sms
from tests.app.test_twilio_webhook import messages_of
from tests.tokens.test_reports import fill_month
from tokens import ledger, levels
from tokens.admin import AdminAction, AdminError, AdminUser, authenticate, create_user
from tokens.ledger import Account, LedgerEntry

PAGES = ("/admin/", "/admin/people", "/admin/people/1", "/admin/payments", "/admin/affiliates",
         "/admin/webhooks", "/admin/queues", "/admin/report.csv")
PHONE = "+16505558893"


def person_of(session, address: str = PHONE) -> int:
    return session.scalars(select(Contact.account_id).where(Contact.address == address)).one()


# --- users and login ------------------------------------------------------------------------


def test_admin_users_have_argon2_hashes_and_checked_names(session):
    user = create_user(session, "Alice", PASSWORD)
    assert user.username == "alice" and user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    assert authenticate(session, "alice", PASSWORD) is user
    assert authenticate(session, "alice", "wrong password!!") is None
    assert authenticate(session, "nobody", PASSWORD) is None
    with pytest.raises(AdminError, match="taken"):
        create_user(session, "alice", PASSWORD)
    with pytest.raises(AdminError, match="12 characters"):
        create_user(session, "bob", "short")
    with pytest.raises(AdminError, match="username"):
        create_user(session, "bad name!", PASSWORD)


def test_create_user_command(runner, session):
    done = runner.invoke(args=["admin", "create-user", "carol"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert done.exit_code == 0, done.output
    assert "created admin carol" in done.output
    assert session.scalars(select(AdminUser.username)).all() == ["carol"]
    again = runner.invoke(args=["admin", "create-user", "carol", "--password", PASSWORD])
    assert again.exit_code != 0 and "taken" in again.output
    short = runner.invoke(args=["admin", "create-user", "dave", "--password", "short"])
    assert short.exit_code != 0 and "12 characters" in short.output


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_visitors_are_sent_to_the_login_page(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=")


def test_login_sets_a_hardened_session_cookie_and_logout_ends_it(app):
    make_admin()
    client = app.test_client()
    wrong = client.post("/admin/login", data={"username": "alice", "password": "nope-nope-nope",
                                              "csrf_token": csrf_token(client)})
    assert wrong.status_code == 401 and "Wrong username or password" in wrong.text
    response = client.post("/admin/login", data={
        "username": "alice", "password": PASSWORD, "csrf_token": csrf_token(client),
        "next": "/admin/people"})
    assert response.status_code == 303 and response.headers["Location"] == "/admin/people"
    cookie, = (c for c in response.headers.getlist("Set-Cookie") if c.startswith("session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.get("/admin/").status_code == 200
    stolen = client.get_cookie("session").value
    token = csrf_token(client, "/admin/")
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/admin/").status_code == 302
    # The cookie from before the logout no longer works anywhere.
    other = app.test_client()
    other.set_cookie("session", stolen)
    assert other.get("/admin/").status_code == 302


def test_the_cookie_is_secure_in_production():
    config = Config({"APP_ENV": "production", "SECRET_KEY": "k" * 32,
                     "TWILIO_AUTH_TOKEN": "t", "PUBLIC_BASE_URL": "https://bot.example"})
    assert config.SESSION_COOKIE_SECURE and config.SESSION_COOKIE_HTTPONLY
    assert Config({}).SESSION_COOKIE_SECURE is False


def test_login_does_not_redirect_off_site(app):
    make_admin()
    client = app.test_client()
    response = client.post("/admin/login", data={
        "username": "alice", "password": PASSWORD, "csrf_token": csrf_token(client),
        "next": "https://evil.example/admin"})
    assert response.headers["Location"] == "/admin/"


def test_login_needs_the_csrf_token(app):
    make_admin()
    client = app.test_client()
    response = client.post("/admin/login", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 400 and "CSRF" in response.text
    assert client.get("/admin/").status_code == 302


def test_login_attempts_are_rate_limited_per_address(app):
    """`ADMIN_LOGIN_RATE_LIMIT` (5 a minute) per client address, whatever the username (the
    per-username delays are tests/app/test_admin_login_guard.py)."""
    make_admin()
    client = app.test_client()
    token = csrf_token(client)
    codes = [client.post("/admin/login", data={"username": f"guess{i}", "password": "guess-1",
                                                "csrf_token": token}).status_code
             for i in range(6)]
    assert codes == [401] * 5 + [429]
    # Even the right password waits out the limit.
    right = client.post("/admin/login", data={"username": "alice", "password": PASSWORD,
                                              "csrf_token": token})
    assert right.status_code == 429 and int(right.headers["Retry-After"]) > 0
    assert client.get("/admin/").status_code == 302
    # Another address is not limited.
    other = app.test_client()
    assert other.post("/admin/login", data={
        "username": "alice", "password": PASSWORD, "csrf_token": csrf_token(other)},
        environ_base={"REMOTE_ADDR": "10.9.9.9"}).status_code == 303


def test_pages_carry_security_headers(app):
    client = logged_in(app)
    headers = client.get("/admin/").headers
    assert headers["Cache-Control"] == "no-store" and headers["X-Frame-Options"] == "DENY"
    assert "script-src 'none'" in headers["Content-Security-Policy"]


# --- the report pages ------------------------------------------------------------------------


def test_the_overview_shows_the_hand_computed_month_with_five_charts(app, session):
    fill_month(session)
    page = logged_in(app).get("/admin/?month=2026-11")
    assert page.status_code == 200
    text = page.text
    for label, value in (("Revenue", "$10.15"), ("COGS", "$0.66"), ("Gross margin", "93.5%"),
                         ("Active people", "4"), ("Paying people", "3"), ("ARPU", "$2.5375"),
                         ("At the $3.00 target", "50.0%"), ("Pack conversion", "25.0%")):
        assert re.search(rf'class="label">{re.escape(label)}</div><div class="value[^"]*">'
                         rf'{re.escape(value)}<', text), label
    assert text.count("<svg") == 5 and "<script" not in text
    assert "+15550000001" not in text
    assert logged_in(app, "bob").get("/admin/?month=November").status_code == 400


def test_the_people_table_masks_sorts_searches_and_pages(app, session):
    month = fill_month(session)
    client = logged_in(app)
    page = client.get("/admin/people?month=2026-11&sort=cost&dir=desc").text
    assert "+15550000002" not in page and "+1********02" in page
    rows = re.findall(r'<td><a href="/admin/people/(\d+)">#', page)
    assert [int(r) for r in rows] == [month["ben"], month["ana"], month["cleo"], month["dan"]]
    ascending = client.get("/admin/people?month=2026-11&sort=profit&dir=asc").text
    assert int(re.findall(r'/admin/people/(\d+)">#', ascending)[0]) == month["ben"]
    found = client.get("/admin/people?month=2026-11&q=555-000-0003").text
    assert re.findall(r'/admin/people/(\d+)">#', found) == [str(month["cleo"])]
    by_id = client.get(f"/admin/people?month=2026-11&q=%23{month['dan']}").text
    assert re.findall(r'/admin/people/(\d+)">#', by_id) == [str(month["dan"])]
    assert "Nobody matches" in client.get("/admin/people?month=2026-11&q=9999").text


def test_the_people_table_pages_by_fifty(app, session):
    from bot.contacts import resolve_contact
    from tokens import costs

    now = datetime(2026, 11, 3, tzinfo=UTC)
    for i in range(60):
        account = resolve_contact(session, f"+1555100{i:04d}", now).account_id
        costs.record_platform(session, account, bot_settings(app).catalog.costs,
                              key=f"p{i}", now=now)
    session.commit()
    client = logged_in(app)
    first = client.get("/admin/people?month=2026-11&sort=account&dir=asc").text
    second = client.get("/admin/people?month=2026-11&sort=account&dir=asc&page=2").text
    assert "60 people" in first and "page 1 of 2" in first
    assert len(re.findall(r'">#\d+</a>', first)) == 50
    assert len(re.findall(r'">#\d+</a>', second)) == 10 and "Next" not in second


def test_a_persons_page_shows_every_token_and_no_bodies(app, client, session):
    assert "meal plan" in messages_of(post_signed(client, sms("meal plan", sid="SM1")))[0].lower()
    post_signed(client, sms("BALANCE", sid="SM2"))
    account_id = person_of(session)
    page = logged_in(app).get(f"/admin/people/{account_id}").text
    assert PHONE not in page and "+1********93" in page
    assert "meal plan" not in page.lower() and "BALANCE" not in page
    ledger_rows = re.findall(
        r'<td class="num (?:neg|pos)">([+-]\d+)</td>\s*<td class="num">(\d+)</td>', page)
    entries = session.scalars(select(LedgerEntry.amount).where(
        LedgerEntry.account_id == account_id).order_by(LedgerEntry.id.desc())).all()
    assert [int(amount) for amount, _ in ledger_rows] == entries
    # Newest first: the first "balance after" is the posted balance now.
    assert int(ledger_rows[0][1]) == session.get(Account, account_id).balance
    assert 'id="messages"' in page and page.count("<td>sms</td>") >= 4  # 2 in, 2 out


def test_an_unknown_person_is_a_404(app):
    assert logged_in(app).get("/admin/people/999999").status_code == 404


# --- actions -----------------------------------------------------------------------------


def form(client, account_id: int) -> tuple[str, str]:
    """(CSRF token, form key) of the person's page."""
    page = client.get(f"/admin/people/{account_id}").text
    key = re.search(r'name="key" value="([0-9a-f]{32})"', page)
    assert key
    return csrf_token(client, f"/admin/people/{account_id}"), key.group(1)


def test_grant_and_adjust_are_recorded_with_the_admin_and_happen_once(app, client, session):
    post_signed(client, sms("BALANCE", sid="SM1"))
    account_id = person_of(session)
    admin_client = logged_in(app)
    before = ledger.balance(session, account_id).available
    token, key = form(admin_client, account_id)
    data = {"csrf_token": token, "key": key, "tokens": "50", "reason": "outage goodwill"}
    done = admin_client.post(f"/admin/people/{account_id}/grant", data=data)
    assert done.status_code == 303
    again = admin_client.post(f"/admin/people/{account_id}/grant", data=data)  # double submit
    assert again.status_code == 303
    session.expire_all()
    assert ledger.balance(session, account_id).available == before + 50
    entry = session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "grant",
                                                      LedgerEntry.bucket == "bonus")).one()
    assert entry.actor == "admin:alice" and entry.memo == "outage goodwill"
    page = admin_client.get(f"/admin/people/{account_id}").text
    assert "Tokens granted." in page and "+50 tokens: outage goodwill" in page

    token, key = form(admin_client, account_id)
    too_much = admin_client.post(f"/admin/people/{account_id}/adjust", data={
        "csrf_token": token, "key": key, "tokens": "-100000", "reason": "typo"})
    assert too_much.status_code == 400 and "role=\"alert\"" in too_much.text
    no_reason = admin_client.post(f"/admin/people/{account_id}/adjust", data={
        "csrf_token": token, "key": key, "tokens": "-5", "reason": " "})
    assert no_reason.status_code == 400
    not_a_number = admin_client.post(f"/admin/people/{account_id}/grant", data={
        "csrf_token": token, "key": key, "tokens": "5.5", "reason": "x"})
    assert not_a_number.status_code == 400 and "whole number" in not_a_number.text
    taken = admin_client.post(f"/admin/people/{account_id}/adjust", data={
        "csrf_token": token, "key": key, "tokens": "-5", "reason": "double grant"})
    assert taken.status_code == 303
    session.expire_all()
    assert ledger.balance(session, account_id).available == before + 45
    actions = session.scalars(select(AdminAction.action).where(
        AdminAction.account_id == account_id).order_by(AdminAction.id)).all()
    assert actions == ["grant", "adjust"]


def test_actions_need_the_csrf_token(app, client, session):
    post_signed(client, sms("BALANCE", sid="SM1"))
    account_id = person_of(session)
    admin_client = logged_in(app)
    _, key = form(admin_client, account_id)
    response = admin_client.post(f"/admin/people/{account_id}/grant", data={
        "key": key, "tokens": "50", "reason": "no token"})
    assert response.status_code == 400
    forged = admin_client.post(f"/admin/people/{account_id}/suspend", data={
        "csrf_token": "forged", "reason": "x"})
    assert forged.status_code == 400
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(AdminAction)) == 0
    assert session.get(Account, account_id).suspended_at is None


def test_a_suspended_person_gets_no_answer_and_pays_nothing(app, client, session):
    post_signed(client, sms("BALANCE", sid="SM1"))
    account_id = person_of(session)
    admin_client = logged_in(app)
    token, _ = form(admin_client, account_id)
    assert admin_client.post(f"/admin/people/{account_id}/suspend", data={
        "csrf_token": token, "reason": "abuse"}).status_code == 303
    before = ledger.balance(session, account_id).available
    assert messages_of(post_signed(client, sms("meal plan", sid="SM2"))) == []
    assert "reply stop" in messages_of(post_signed(client, sms("HELP", sid="SM3")))[0].lower()
    session.expire_all()
    assert ledger.balance(session, account_id).available == before
    token, _ = form(admin_client, account_id)
    admin_client.post(f"/admin/people/{account_id}/unsuspend", data={"csrf_token": token})
    assert "meal plan" in messages_of(post_signed(client, sms("meal plan", sid="SM4")))[0].lower()


def test_a_level_override_applies_until_it_expires(app, client, session):
    post_signed(client, sms("BALANCE", sid="SM1"))
    account_id = person_of(session)
    admin_client = logged_in(app)
    token, _ = form(admin_client, account_id)
    until = datetime.now(UTC) + timedelta(days=1)
    bad = admin_client.post(f"/admin/people/{account_id}/override", data={
        "csrf_token": token, "level": "PAYMENT_REQUIRED", "until": "tomorrow", "reason": "x"})
    assert bad.status_code == 400
    done = admin_client.post(f"/admin/people/{account_id}/override", data={
        "csrf_token": token, "level": "PAYMENT_REQUIRED", "until": f"{until:%Y-%m-%dT%H:%M}",
        "reason": "chargeback risk"})
    assert done.status_code == 303
    refused = messages_of(post_signed(client, sms("meal plan", sid="SM2")))
    assert refused and "meal plan" not in refused[0].lower()  # a pay link, nothing charged
    session.expire_all()
    assert session.get(Account, account_id).held == 0
    state = session.get(levels.LevelState, account_id)
    state.override_until = datetime.now(UTC) - timedelta(minutes=1)  # expired
    session.commit()
    assert "meal plan" in messages_of(post_signed(client, sms("meal plan", sid="SM3")))[0].lower()
    details = session.scalars(select(AdminAction.detail)).all()
    assert details and details[0].startswith("PAYMENT_REQUIRED until")


def test_admins_can_log_in_while_redis_is_down(make_app, twilio_api):
    """The login limit counts in memory when Redis is unreachable (the Queues page must stay
    reachable during the outage it shows)."""
    from testing.deployment import queued_environment

    env = queued_environment("redis://127.0.0.1:9/0", twilio_api, None)
    application = make_app(**env)
    with application.app_context():
        try:
            client = logged_in(application)
            assert client.get("/admin/queues").status_code == 200
        finally:
            db.session.remove()
            db.engine.dispose()


def test_search_by_full_number_keeps_it_out_of_the_url(app, session):
    month = fill_month(session)
    client = logged_in(app)
    token = csrf_token(client, "/admin/people?month=2026-11")
    moved = client.post("/admin/people/search", data={
        "csrf_token": token, "q": "+1 555 000 0003", "month": "2026-11", "sort": "cost"})
    assert moved.status_code == 303
    assert "5550000003" not in moved.headers["Location"] and "000003" in moved.headers["Location"]
    found = client.get(moved.headers["Location"]).text
    assert re.findall(r'/admin/people/(\d+)">#', found) == [str(month["cleo"])]


def test_absurd_pages_and_months_are_handled(app, session):
    fill_month(session)
    client = logged_in(app)
    page = client.get("/admin/people?month=2026-11&page=99999999999999999999")
    assert page.status_code == 200 and "page 1 of 1" in page.text
    assert client.get("/admin/people?month=٢٠٢٦-11").status_code == 400


def test_money_is_shown_exactly_with_the_sign_first():
    from app.admin.pages import usd

    assert [usd(15_800), usd(32), usd(5_000_000), usd(-616_000), usd(-4_000, 2)] == [
        "$0.0158", "$0.000032", "$5.00", "-$0.616", "-$0.00"]


def test_a_suspended_person_cannot_pay_and_gets_no_notices(app, client, session):
    from bot.notify import queue_notice
    from tokens import admin as operations
    from tokens.payments import PayLink

    post_signed(client, sms("BUY", sid="SM1"))
    account_id = person_of(session)
    link = session.scalars(select(PayLink)).one()
    make_admin()
    actor = operations.Actor(session.scalars(select(AdminUser.id)).one(), "alice")
    operations.suspend(session, actor, account_id, "fraud")
    session.commit()
    page = client.get(f"/pay/{link.token}")
    assert page.status_code == 403 and "suspended" in page.text
    assert queue_notice(session, account_id, "Thank you! 120 tokens were added.") == []


def test_a_session_ends_eight_hours_after_the_login(app, monkeypatch):
    import time as clock

    client = logged_in(app)
    assert client.get("/admin/").status_code == 200
    later = clock.time() + 8 * 3600 + 1
    monkeypatch.setattr("app.admin.web.time.time", lambda: later)
    assert client.get("/admin/").status_code == 302
