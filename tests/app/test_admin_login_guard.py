"""The admin login's protection against guessing (app.admin.guard, tokens.admin): growing
per-username delays instead of a lockout, device cookies, `admin unlock`, no username
enumeration; and out-of-range ids in admin paths (app.ids)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.admin import guard
from app.extensions import db
from testing.admin import CSRF, PASSWORD, csrf_token, logged_in, make_admin
from testing.deployment import queued_environment
from tokens import admin
from tokens.admin import (
    FAILED_LOGINS_FORGOTTEN_AFTER,
    MAX_LOGIN_WAIT_SECONDS,
    AdminUser,
    failed_logins_after,
    login_wait_seconds,
)

T0 = datetime(2026, 11, 10, 9, 0, 0, tzinfo=UTC)
WRONG = "not the password at all"


class Clock:
    """The login's clock (`app.admin.web.utcnow`), moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("app.admin.web.utcnow", fake)
    return fake


@pytest.fixture
def roomy(make_app: Callable[..., Flask]) -> Flask:
    """The app with a per-address limit that the tests of per-username delays never reach."""
    return make_app(ADMIN_LOGIN_RATE_LIMIT="1000 per minute")


def attempt(client: FlaskClient, username: str, password: str, address: str = "127.0.0.1"):
    """POST the login form (as a browser already logged in would, too: the form token is
    then taken from the overview)."""
    logged_in_already = client.get("/admin/login").status_code == 302
    token = csrf_token(client, "/admin/" if logged_in_already else "/admin/login")
    return client.post("/admin/login", data={
        "username": username, "password": password, "csrf_token": token},
        environ_base={"REMOTE_ADDR": address})


def user(name: str = "carol") -> AdminUser:
    db.session.expire_all()
    found = admin.find_user(db.session, name)
    assert found is not None
    return found


def device_cookie_header(response) -> str:
    found = [c for c in response.headers.getlist("Set-Cookie")
             if c.startswith(guard.DEVICE_COOKIE + "=")]
    assert len(found) == 1, response.headers.getlist("Set-Cookie")
    return found[0]


# --- the policy (pure) -----------------------------------------------------------------------


def test_the_wait_doubles_after_three_free_failures_and_is_capped():
    assert [login_wait_seconds(n, T0, T0) for n in range(9)] == [0, 0, 0, 1, 2, 4, 8, 16, 32]
    assert login_wait_seconds(13, T0, T0) == MAX_LOGIN_WAIT_SECONDS == 900
    assert login_wait_seconds(10**6, T0, T0) == 900
    # Counted from the last failure, rounded up to whole seconds.
    assert login_wait_seconds(6, T0, T0 + timedelta(seconds=3.5)) == 5
    assert login_wait_seconds(6, T0, T0 + timedelta(seconds=8)) == 0
    assert login_wait_seconds(6, None, T0) == 0
    # A failure "in the future" (clock skew) never makes the wait longer than the delay.
    assert login_wait_seconds(4, T0 + timedelta(hours=1), T0) == 2
    # Failures a day old are forgotten; the next one counts as the first.
    old = T0 - FAILED_LOGINS_FORGOTTEN_AFTER
    assert login_wait_seconds(13, old, T0) == 0
    assert failed_logins_after(13, old, T0) == 1
    assert failed_logins_after(13, T0 - timedelta(hours=23), T0) == 14
    assert failed_logins_after(0, None, T0) == 1


# --- the attack of the issue -----------------------------------------------------------------


def test_wrong_guesses_from_many_addresses_do_not_lock_the_admin_out(app, clock):
    """Five wrong guesses for carol from five addresses, at once; the real carol from a sixth
    address gets in as soon as the short delay is over (before: 429 for the hour)."""
    make_admin("carol")
    codes = [attempt(app.test_client(), "carol", f"{WRONG} {i}", f"10.0.0.{i}").status_code
             for i in range(1, 6)]
    # The 4th and 5th come inside the first delay (1 s): refused, and not counted.
    assert codes == [401, 401, 401, 429, 429]
    assert user().failed_logins == 3 and user().last_failed_at == T0
    carol = app.test_client()
    clock.advance(1)
    response = attempt(carol, "carol", PASSWORD, "10.0.0.6")
    assert response.status_code == 303
    assert carol.get("/admin/").status_code == 200
    assert user().failed_logins == 0 and user().last_failed_at is None


def test_five_counted_wrong_guesses_cost_the_admin_four_seconds(app, clock):
    make_admin("carol")
    for i, pause in enumerate([0, 0, 0, 1, 2], start=1):
        clock.advance(pause)
        assert attempt(app.test_client(), "carol", WRONG, f"10.0.0.{i}").status_code == 401
    assert user().failed_logins == 5
    carol = app.test_client()
    early = attempt(carol, "carol", PASSWORD, "10.0.0.6")
    assert early.status_code == 429 and early.headers["Retry-After"] == "4"
    assert "try again in 4 seconds" in early.text
    clock.advance(4)
    assert attempt(carol, "carol", PASSWORD, "10.0.0.6").status_code == 303


def test_attempts_inside_the_delay_are_refused_without_checking_the_password(
        roomy, clock, monkeypatch):
    make_admin("carol")
    attacker = roomy.test_client()
    for _ in range(3):
        assert attempt(attacker, "carol", WRONG).status_code == 401
    waits = []
    for _ in range(3, 8):
        # Inside the delay: even the right password, from an untrusted client, is refused.
        refused = attempt(roomy.test_client(), "carol", PASSWORD, "10.1.1.1")
        assert refused.status_code == 429 and "try again in" in refused.text
        waits.append(int(refused.headers["Retry-After"]))
        clock.advance(waits[-1] - 0.5)
        assert attempt(attacker, "carol", WRONG).status_code == 429  # still inside
        clock.advance(0.5)
        assert attempt(attacker, "carol", WRONG).status_code == 401  # counted: n + 1
    assert waits == [1, 2, 4, 8, 16]
    assert user().failed_logins == 8
    assert "try again in 32 seconds" in attempt(attacker, "carol", WRONG).text
    calls = []
    monkeypatch.setattr(admin, "verify_login", lambda *args: calls.append(args))
    refused = attempt(roomy.test_client(), "carol", PASSWORD)
    assert refused.status_code == 429 and calls == []  # no password check at all
    assert user().failed_logins == 8 and user().last_login_at is None


# --- device cookies --------------------------------------------------------------------------


def test_a_successful_login_makes_the_browser_a_trusted_device(roomy):
    make_admin("carol")
    response = attempt(roomy.test_client(), "carol", PASSWORD)
    cookie = device_cookie_header(response)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie
    assert "Max-Age=2592000" in cookie  # 30 days
    assert "Secure" not in cookie  # SESSION_COOKIE_SECURE is off outside production
    assert PASSWORD not in cookie


def test_the_device_cookie_is_secure_like_the_session_cookie(make_app):
    application = make_app()
    application.config["SESSION_COOKIE_SECURE"] = True
    with application.app_context():
        try:
            make_admin("carol")
            cookie = device_cookie_header(attempt(application.test_client(), "carol",
                                                  PASSWORD))
            assert "Secure" in cookie
        finally:
            db.session.remove()
            db.engine.dispose()


def test_a_trusted_device_logs_in_during_the_delay(roomy, clock):
    make_admin("carol")
    laptop = roomy.test_client()
    assert attempt(laptop, "carol", PASSWORD).status_code == 303
    assert laptop.post("/admin/logout", data={
        "csrf_token": csrf_token(laptop, "/admin/")}).status_code == 303
    for _ in range(5):
        clock.advance(60)
        attempt(roomy.test_client(), "carol", WRONG, "203.0.113.7")
    assert login_wait_seconds(user().failed_logins, user().last_failed_at, clock.now) > 0
    stranger = roomy.test_client()
    assert attempt(stranger, "carol", PASSWORD, "198.51.100.1").status_code == 429
    assert attempt(laptop, "carol", PASSWORD).status_code == 303
    assert laptop.get("/admin/").status_code == 200
    # The device cookie names carol: it does not skip the delay of another admin.
    make_admin("dave")
    for _ in range(3):
        attempt(roomy.test_client(), "dave", WRONG, "203.0.113.7")
    assert attempt(laptop, "dave", PASSWORD).status_code == 429
    # A forged or tampered cookie is no cookie.
    forged = roomy.test_client()
    for _ in range(3):
        attempt(roomy.test_client(), "carol", WRONG, "203.0.113.7")
    value = laptop.get_cookie(guard.DEVICE_COOKIE, path="/admin").value
    forged.set_cookie(guard.DEVICE_COOKIE, value[:-2] + ("AA" if value[-2:] != "AA" else "BB"),
                      path="/admin")
    assert attempt(forged, "carol", PASSWORD).status_code == 429


def test_wrong_passwords_from_a_trusted_device_lock_the_device_not_the_username(roomy):
    make_admin("carol")
    laptop = roomy.test_client()
    assert attempt(laptop, "carol", PASSWORD).status_code == 303
    laptop.post("/admin/logout", data={"csrf_token": csrf_token(laptop, "/admin/")})
    copy = laptop.get_cookie(guard.DEVICE_COOKIE, path="/admin").value
    codes = [attempt(laptop, "carol", WRONG).status_code for _ in range(4)]
    assert codes == [401] * 4 and user().failed_logins == 0  # the username owes nothing
    fifth = attempt(laptop, "carol", WRONG)
    assert fifth.status_code == 401
    assert device_cookie_header(fifth).startswith(guard.DEVICE_COOKIE + "=;")  # deleted
    assert laptop.get_cookie(guard.DEVICE_COOKIE, path="/admin") is None
    # From now on that browser is like any other: its failures count for the username...
    for _ in range(3):
        assert attempt(laptop, "carol", WRONG).status_code == 401
    assert user().failed_logins == 3
    # ...and a copy of the locked cookie no longer skips the delay.
    thief = roomy.test_client()
    thief.set_cookie(guard.DEVICE_COOKIE, copy, path="/admin")
    assert attempt(thief, "carol", PASSWORD).status_code == 429


def test_only_consecutive_wrong_passwords_lock_a_device(roomy):
    make_admin("carol")
    laptop = roomy.test_client()
    assert attempt(laptop, "carol", PASSWORD).status_code == 303
    for _ in range(3):
        for _ in range(4):
            assert attempt(laptop, "carol", WRONG).status_code == 401
        assert attempt(laptop, "carol", PASSWORD).status_code == 303
    assert laptop.get_cookie(guard.DEVICE_COOKIE, path="/admin") is not None


# --- admin unlock ----------------------------------------------------------------------------


def test_admin_unlock_clears_the_delay(app, runner, clock):
    make_admin("carol")
    for i in range(5):
        attempt(app.test_client(), "carol", WRONG, f"10.0.0.{i}")
    assert attempt(app.test_client(), "carol", PASSWORD, "10.0.1.1").status_code == 429
    done = runner.invoke(args=["admin", "unlock", "Carol"])
    assert done.exit_code == 0, done.output
    assert done.output.count("\n") == 1 and done.output.startswith("unlocked carol")
    assert user().failed_logins == 0 and user().last_failed_at is None
    assert attempt(app.test_client(), "carol", PASSWORD, "10.0.1.1").status_code == 303


def test_admin_unlock_of_an_unknown_admin_fails(runner):
    done = runner.invoke(args=["admin", "unlock", "nobody"])
    assert done.exit_code == 1
    assert done.output.strip() == "Error: no admin is called 'nobody'"


# --- no username enumeration -----------------------------------------------------------------


def transcript(app: Flask, clock: Clock, username: str) -> list[tuple[int, str | None, str]]:
    """What an attacker sees guessing `username`'s password on a schedule."""
    seen = []
    start = clock.now
    for pause in [0, 0, 0, 0, 1, 0.5, 1.5, 4, 0, 100]:
        clock.advance(pause)
        response = attempt(app.test_client(), username, WRONG, "192.0.2.1")
        # (Flask-Limiter puts its per-address window's Retry-After on every answer.)
        delay = response.headers["Retry-After"] if response.status_code == 429 else None
        seen.append((response.status_code, delay, CSRF.sub("", response.text)))
    clock.now = start
    return seen


def test_an_unknown_username_looks_exactly_like_a_known_one(roomy, clock):
    make_admin("carol")
    known = transcript(roomy, clock, "carol")
    clock.advance(3600)  # same schedule, later
    unknown = transcript(roomy, clock, "mallory")
    assert known == unknown
    assert [status for status, _, _ in known] == [401, 401, 401, 429, 401, 429, 401, 401, 429,
                                                  401]
    assert db.session.scalar(select(func.count()).select_from(AdminUser)) == 1  # no new row
    assert user().failed_logins == 7


def test_unknown_usernames_are_counted_in_redis_across_processes(
        make_app, redis_srv, twilio_api, clock):
    """Two app processes (two apps here) share an unknown username's count through Redis,
    as they share a known one's through the database; nothing of it is in clear there."""
    import redis

    connection = redis.Redis.from_url(redis_srv.url)
    connection.flushdb()
    env = queued_environment(redis_srv.url, twilio_api, None)
    first, second = (make_app(**env) for _ in range(2))
    with first.app_context():
        for i in range(3):
            assert attempt(first.test_client(), "Mallory", WRONG,
                           f"10.2.0.{i}").status_code == 401
        db.session.remove()
        db.engine.dispose()
    with second.app_context():
        refused = attempt(second.test_client(), "mallory ", WRONG, "10.2.0.9")
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        db.session.remove()
        db.engine.dispose()
    keys = [key.decode() for key in connection.keys("admin-login:*")]
    assert len(keys) == 1 and "mallory" not in keys[0].lower()
    connection.close()


def test_the_login_works_while_redis_is_down(make_app, twilio_api, clock):
    env = queued_environment("redis://127.0.0.1:9/0", twilio_api, None)
    application = make_app(**env)
    with application.app_context():
        try:
            for i in range(3):
                assert attempt(application.test_client(), "mallory", WRONG,
                               f"10.3.0.{i}").status_code == 401
            # The bookkeeping falls back to memory: still refused like a known name would be.
            assert attempt(application.test_client(), "mallory", WRONG,
                           "10.3.0.9").status_code == 429
            client = logged_in(application, "carol")
            assert client.get_cookie(guard.DEVICE_COOKIE, path="/admin") is not None
        finally:
            db.session.remove()
            db.engine.dispose()


def test_logs_name_neither_the_password_nor_the_username(roomy, clock, caplog):
    make_admin("carol")
    with caplog.at_level("INFO"):
        for _ in range(4):
            attempt(roomy.test_client(), "carol", WRONG)
        attempt(roomy.test_client(), "mallory", "another-secret-guess")
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "admin login failed" in text and "admin login refused" in text
    for secret in (WRONG, "another-secret-guess", "carol", "mallory"):
        assert secret not in text


# --- ids out of range in paths ---------------------------------------------------------------


HUGE = ("99999999999999999999999", str(2**63), str(2**31), "0", "٣")


@pytest.mark.parametrize("path", ["/admin/people/{}", "/admin/people/{}?entries=all"])
def test_absurd_person_ids_are_404(app, path):
    client = logged_in(app)
    for raw in HUGE:
        assert client.get(path.format(raw)).status_code == 404, raw
    # The largest id that fits is looked up: the page's own 404.
    page = client.get(path.format(2**31 - 1))
    assert page.status_code == 404 and f"No account #{2**31 - 1}" in page.text


@pytest.mark.parametrize("action", ["grant", "adjust", "suspend", "unsuspend", "override"])
def test_absurd_ids_in_actions_are_404(app, action):
    client = logged_in(app)
    token = csrf_token(client, "/admin/")
    for raw in HUGE:
        response = client.post(f"/admin/people/{raw}/{action}", data={
            "csrf_token": token, "tokens": "5", "reason": "r", "key": "a" * 32})
        assert response.status_code == 404, raw


def test_absurd_webhook_ids_are_404(app):
    client = logged_in(app)
    token = csrf_token(client, "/admin/webhooks")
    for raw in [*HUGE, str(2**31 - 1)]:
        response = client.post(f"/admin/webhooks/{raw}/reprocess", data={"csrf_token": token})
        assert response.status_code == 404, raw


def test_admin_paths_take_no_int_converter():
    """Every id in an admin (or other) path goes through `<id:...>`: none is a bare `<int:`."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "app"
    offenders = [str(p) for p in root.rglob("*.py")
                 if p.name != "ids.py" and "<int:" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_the_id_converter_bounds():
    from werkzeug.routing import Map, ValidationError

    from app.ids import MAX_ID, IdConverter

    converter = IdConverter(Map())
    assert converter.to_python("1") == 1 and converter.to_python(str(MAX_ID)) == MAX_ID
    for raw in ("0", str(MAX_ID + 1), "9" * 5000):
        with pytest.raises(ValidationError):
            converter.to_python(raw)
    assert IdConverter(Map(), max=10).max == 10 and IdConverter(Map(), max=2**40).max == MAX_ID
