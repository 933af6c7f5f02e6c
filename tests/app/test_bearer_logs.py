"""No bearer token in any log line (app.logs, `BEARER_ROUTES`).

A pay link's token, an affiliate link's token and a sandbox checkout's id each open what they
name. One scripted session (text BUY, open the pay link with a query string, open and pay the
sandbox checkout, come back to the done page, open the pay link percent-encoded, follow an
offer link) runs against a real gunicorn (its access log on stdout, its error log and the
app's JSON lines on stderr) and against werkzeug's dev server (`flask run`); no line holds a
secret, and each line still names its route (`/pay/***`).

Routes whose path carries a secret: found from the app's URL map (every rule with a variable
is either a bearer route or one of the known non-secret kinds below). No route reads a secret
from its query string (`request.args` is read only by the admin pages: month, sort, page, a
search cut to 6 digits); the query string of a bearer route is masked anyway.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from flask import Flask
from werkzeug.serving import make_server

from app.config import PROJECT_ROOT
from app.extensions import bot_settings, db
from app.logs import BearerPathFilter, configure, mask_bearer, mask_environ
from testing.deployment import AUTH_TOKEN, INBOUND_PATH, PUBLIC_BASE_URL, sign
from testing.payloads import sms
from testing.redis_server import HOST, free_port
from tokens import ledger
from tokens.affiliates import issue_offer_links
from tokens.base import utcnow

pytestmark = pytest.mark.backends("sqlite")

PHONE = "+16505558893"
# Rules with a path variable that carry no secret: admin pages and actions (behind a login;
# account and job ids), provider webhooks (a network's name; the body is signed), static files.
NOT_SECRET = ("/admin/", "/webhooks/", "/static/")
# gunicorn's default access format, plus the path, query, Location, Referer and raw URI atoms.
ACCESS_FORMAT = ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
                 'path=%(U)s query=%(q)s location="%({location}o)s" referer="%({referer}i)s" '
                 'raw="%({raw_uri}e)s"')

Call = Callable[..., tuple[int, dict[str, str], str]]


def http_caller(port: int) -> Call:
    """A plain HTTP/1.1 client on loopback that follows no redirect (they point to
    PUBLIC_BASE_URL, which is not this server)."""

    def call(method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        connection = http.client.HTTPConnection(HOST, port, timeout=15)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            connection.close()

    return call


def scripted_session(call: Call, offer: str) -> dict[str, str]:
    """BUY, the pay link (with a query), the sandbox checkout and its Pay button, the done
    page, the pay link percent-encoded, the offer link; returns the secrets it used."""
    fields = sms("BUY", sender=PHONE)
    status, _, twiml = call("POST", INBOUND_PATH, urlencode(fields).encode(), {
        "X-Twilio-Signature": sign(PUBLIC_BASE_URL + INBOUND_PATH, fields),
        "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, twiml
    found = re.search(re.escape(PUBLIC_BASE_URL) + r"/pay/([A-Za-z0-9_-]+)", twiml)
    assert found, twiml
    token = found.group(1)
    status, headers, _ = call("GET", f"/pay/{token}?utm_source=sms&t={token}")
    assert status == 303
    checkout = headers["Location"].rsplit("/", 1)[1]
    assert headers["Location"] == f"{PUBLIC_BASE_URL}/sandbox/checkout/{checkout}"
    assert call("GET", f"/sandbox/checkout/{checkout}")[0] == 200
    status, headers, _ = call("POST", f"/sandbox/checkout/{checkout}/pay", b"", {
        "Referer": f"{PUBLIC_BASE_URL}/sandbox/checkout/{checkout}"})
    assert status == 303 and headers["Location"].endswith(f"/pay/{token}/done")
    assert call("GET", f"/pay/{token}/done")[0] == 200
    # Decoded, this is the pay link's path: it opens the checkout, so it is masked too.
    assert call("GET", f"/pay%2F{token}")[0] == 303
    assert call("GET", f"/r/{offer}?src=reply")[0] == 302
    return {"pay link token": token, "checkout id": checkout, "offer token": offer}


def offer_token(app: Flask) -> str:
    """A fresh affiliate offer link's token, committed."""
    session = db.session
    account_id = ledger.open_account(session).id
    (_, link), *_ = issue_offer_links(session, account_id, "meal_plan",
                                      bot_settings(app).catalog, utcnow())
    session.commit()
    return str(link.token)


def assert_no_secret(text: str, secrets: dict[str, str]) -> None:
    for name, secret in secrets.items():
        assert secret not in text, f"the {name} {secret!r} is in the logs"


def assert_routes_shown(lines: list[str]) -> None:
    """Each bearer route the session used shows, masked."""
    text = "\n".join(lines)
    for route in ("/pay/***", "/pay/***/done", "/sandbox/checkout/***",
                  "/sandbox/checkout/***/pay", "/r/***"):
        assert f"{route} " in text or f"{route}?" in text, (route, text)
    assert "/pay/***?***" in text and "/r/***?***" in text, text


class JsonLogs:
    """The production formatter (JSON lines on captured stderr). Started in the test body,
    after the database fixtures, whose migrations replace the root logger's handlers
    (alembic's `fileConfig`)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def start(self) -> None:
        configure("json", "INFO")
        for name in ("app", "bot", "tokens"):  # `flask chat` (tested elsewhere) quiets "bot"
            logging.getLogger(name).setLevel(logging.NOTSET)

    def records(self) -> list[dict]:
        err = self.capsys.readouterr().err
        return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[JsonLogs]:
    packages = [logging.getLogger(name) for name in ("app", "bot", "tokens")]
    levels = [logger.level for logger in packages]
    yield JsonLogs(capsys)
    for logger, level in zip(packages, levels, strict=True):
        logger.setLevel(level)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == "structlog":
            root.removeHandler(handler)


# --- the one pattern ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "masked"), [
    ('"GET /pay/AbC-12_x HTTP/1.1" 303 -', '"GET /pay/*** HTTP/1.1" 303 -'),
    ("GET /pay/tok?utm=1&t=tok HTTP/1.1", "GET /pay/***?*** HTTP/1.1"),
    ("/pay/tok/done", "/pay/***/done"),
    ("https://bot.example.com/r/tok?x=1", "https://bot.example.com/r/***?***"),
    ("GET http://127.0.0.1:8000/sandbox/checkout/cs_1/pay HTTP/1.1",
     "GET http://127.0.0.1:8000/sandbox/checkout/***/pay HTTP/1.1"),
    ("GET //pay/tok HTTP/1.1", "GET //pay/*** HTTP/1.1"),
    ("/pay%2Ftok", "/pay/***"),
    ("login?next=%2Fr%2Ftok", "login?next=/r/***"),
    ("Exception on /pay/tok [GET]", "Exception on /pay/*** [GET]"),
    ("\x1b[32mGET /r/tok HTTP/1.1\x1b[0m", "\x1b[32mGET /r/*** HTTP/1.1\x1b[0m"),
    # Not bearer routes: unchanged.
    ("/payments/1", "/payments/1"),
    ('File "/srv/app/pay/__init__.py", line 3', 'File "/srv/app/pay/__init__.py", line 3'),
    ("/admin/people?q=123456", "/admin/people?q=123456"),
    ("https://checkout.stripe.com/c/pay/cs_1", "https://checkout.stripe.com/c/pay/cs_1"),
    ("/r/", "/r/"),
])
def test_bearer_paths_are_masked_and_nothing_else(text, masked):
    assert mask_bearer(text) == masked
    assert mask_bearer(masked) == masked  # idempotent


def test_every_route_with_a_path_variable_is_masked_or_known_not_secret(app):
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.arguments or rule.rule.startswith(NOT_SECRET):
            continue
        path = re.sub(r"<[^>]+>", "S3cretValue", rule.rule)
        assert "S3cretValue" not in mask_bearer(path), (
            f"{rule.rule} carries a path variable: add its prefix to app.logs.BEARER_ROUTES "
            f"(or to NOT_SECRET here, if it is no secret)")
        checked += 1
    assert checked >= 5  # /pay/<t>, /pay/<t>/done, /r/<t>, /sandbox/checkout/<id>(/pay)


def test_the_environ_an_access_log_reads_is_masked():
    environ = {"PATH_INFO": "/pay/tok", "QUERY_STRING": "t=tok", "RAW_URI": "/pay%2Ftok?t=tok",
               "SCRIPT_NAME": "/bot", "HTTP_REFERER": "https://bot.example.com/r/tok2",
               "REQUEST_METHOD": "GET"}
    mask_environ(environ)
    assert environ == {"PATH_INFO": "/pay/***", "QUERY_STRING": "***",
                       "RAW_URI": "/bot/pay/***?***", "SCRIPT_NAME": "/bot",
                       "HTTP_REFERER": "https://bot.example.com/r/***", "REQUEST_METHOD": "GET"}
    other = {"PATH_INFO": "/healthz", "QUERY_STRING": "a=1", "RAW_URI": "/healthz?a=1"}
    mask_environ(other)
    assert other == {"PATH_INFO": "/healthz", "QUERY_STRING": "a=1", "RAW_URI": "/healthz?a=1"}


def test_the_filter_masks_arguments_messages_and_tracebacks():
    try:
        raise ValueError("no checkout for /sandbox/checkout/cs_secret")
    except ValueError:
        record = logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1,
                                   "Error handling request %s", ("/pay/tok?x=1",),
                                   sys.exc_info())
    assert BearerPathFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "Error handling request /pay/***?***" in text
    assert "cs_secret" not in text and "/sandbox/checkout/***" in text
    # A format string that itself holds the secret (a formatted call) is masked whole.
    record = logging.LogRecord("werkzeug", logging.INFO, __file__, 1,
                               "GET /r/tok %s", ("HTTP/1.1",), None)
    BearerPathFilter().filter(record)
    assert record.getMessage() == "GET /r/*** HTTP/1.1"


def test_app_lines_are_masked_by_the_formatter_and_flask_errors_by_the_filter(app, json_logs,
                                                                               caplog):
    json_logs.start()
    logging.getLogger("app.pay").warning("opened https://bot.example.com/pay/tok3n",
                                         extra={"url": "/r/tok3n?a=b"})
    (line,) = [r for r in json_logs.records() if r["logger"] == "app.pay"]
    assert line["event"] == "opened https://bot.example.com/pay/***"
    assert line["url"] == "/r/***?***"
    app.logger.error("Exception on /pay/tok3n [GET]")  # Flask's own line for a 500
    assert caplog.records[-1].getMessage() == "Exception on /pay/*** [GET]"


# --- real servers --------------------------------------------------------------------------


def test_werkzeug_dev_server_and_app_logs_show_no_secret(app, json_logs, caplog):
    offer = offer_token(app)
    db.session.remove()  # the server's threads use their own sessions
    json_logs.start()
    server = make_server(HOST, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.INFO):
            secrets = scripted_session(http_caller(server.server_port), offer)
    finally:
        server.shutdown()
        thread.join(10)
    lines = [json.dumps(line) for line in json_logs.records()]
    werkzeug = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert len(werkzeug) >= 7, werkzeug
    everything = [logging.Formatter().format(r) for r in caplog.records]
    assert_no_secret("\n".join(everything + lines), secrets)
    assert_routes_shown(werkzeug)
    assert any('"logger": "werkzeug"' in line and "/pay/***" in line for line in lines)


def test_gunicorn_access_and_error_logs_show_no_secret(make_app, database_url, tmp_path: Path):
    setup = make_app()
    with setup.app_context():
        offer = offer_token(setup)
        db.session.remove()
        db.engine.dispose()
    inherited = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "LC_ALL",
                                                      "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
                 if name in os.environ}
    # development, not test: the app configures its JSON logs, as deployed.
    env = {**inherited, "APP_ENV": "development", "DATABASE_URL": database_url,
           "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
           "SECRET_KEY": "test-secret-" + "x" * 32, "SENDER_RATE_LIMIT": "1000 per minute",
           "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", f"{HOST}:{port}",
               "--access-logfile", "-", "--access-logformat", ACCESS_FORMAT, "wsgi:app"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        call = http_caller(port)
        while True:
            try:
                if call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass  # not listening yet
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        secrets = scripted_session(call, offer)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    text = log_path.read_text()
    assert_no_secret(text, secrets)
    access = [line for line in text.splitlines() if '"GET ' in line or '"POST ' in line]
    assert len(access) >= 8, text
    assert_routes_shown(access)
    assert 'location="https://bot.example.com/sandbox/checkout/***"' in text
    assert 'referer="https://bot.example.com/sandbox/checkout/***"' in text
    assert 'raw="/pay/***"' in text  # the percent-encoded request, as gunicorn read it
    assert "Booting worker" in text  # the error log is in the capture too
