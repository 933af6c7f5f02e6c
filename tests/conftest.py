"""Shared fixtures: real servers, the app on SQLite and on PostgreSQL, signed Twilio posts.

The PostgreSQL server is a real `postgres` started by this suite (pytest-postgresql's executor)
on a free loopback port; the schema is built once by the Alembic migrations into a template
database, and every test gets a fresh copy of it. SQLite tests get a copy of a migrated file.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from flask_migrate import upgrade
from hypothesis import HealthCheck, settings
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from app import create_app
from app.config import Config
from app.extensions import configure_sqlite, db
from tests.support.openai_standin import OpenAIStandIn
from tests.support.postgres import PG_USER, postgres_server
from tests.support.postgres import url as postgres_url
from tests.support.redis_server import RedisServer, redis_server
from tests.support.twilio_standin import TwilioStandIn

# In CI the property tests draw the same examples on every run, so a release never waits on a
# rare example; locally they stay random (and remember failures in .hypothesis/).
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
if os.environ.get("CI"):
    settings.load_profile("ci")

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
SMS_FROM = "+15005550006"
WHATSAPP_FROM = "+14155238886"
PUBLIC_BASE_URL = "https://bot.example.com"
INBOUND_PATH = "/webhooks/twilio/messages"
TEMPLATE_DB = "bot_template"


def config_for(database_url: str, **overrides: str) -> type[Config]:
    """A `Config` subclass for tests: no `.env`, a known auth token and public URL."""
    environ = {
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "SECRET_KEY": "test-secret",
        # Many tests send dozens of messages from one number within a second; the rate limit
        # tests (tests/app/test_rate_limits.py) pass "" for the product's default.
        "SENDER_RATE_LIMIT": "1000 per minute",
        # `flask worker` run in the test process must not lower the whole suite's priority.
        "WORKER_NICE": "0",
        **overrides,
    }

    class TestConfig(Config):
        load_dotenv_file = False

        def __init__(self) -> None:
            super().__init__(environ=environ)

    return TestConfig


def migrate(database_url: str) -> None:
    """Build the schema with the project's Alembic migrations (`flask db upgrade`)."""
    app = create_app(config_for(database_url))
    with app.app_context():
        upgrade()
        db.engine.dispose()


# --- servers -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgreSQLExecutor]:
    """A real PostgreSQL server on a free loopback port, for the whole session."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    """A real `redis-server` on a free loopback port, for the whole session."""
    with redis_server() as server:
        yield server


@pytest.fixture
def openai_api() -> Iterator[OpenAIStandIn]:
    """A local OpenAI-compatible API (chat completions) on loopback."""
    with OpenAIStandIn() as standin:
        yield standin


@pytest.fixture
def twilio_api() -> Iterator[TwilioStandIn]:
    """A local stand-in for Twilio's Messages REST resource, recording every send."""
    with TwilioStandIn(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as standin:
        yield standin


@pytest.fixture(scope="session")
def postgresql_template(postgresql_server: PostgreSQLExecutor) -> str:
    """A template database migrated to head; tests clone it."""
    janitor = DatabaseJanitor(
        user=PG_USER, host=postgresql_server.host, port=postgresql_server.port,
        dbname=TEMPLATE_DB,
    )
    janitor.init()
    migrate(postgres_url(postgresql_server, TEMPLATE_DB))
    return TEMPLATE_DB


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head; tests copy it."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A fresh, migrated database for one test, on the backend of the test's parameter."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "bot.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    server = request.getfixturevalue("postgresql_server")
    template_name = request.getfixturevalue("postgresql_template")
    janitor = DatabaseJanitor(
        user=PG_USER, host=server.host, port=server.port,
        dbname=f"test_{uuid.uuid4().hex[:12]}", template_dbname=template_name,
    )
    janitor.init()
    try:
        yield postgres_url(server, janitor.dbname)
    finally:
        janitor.drop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses the database on SQLite and on PostgreSQL, unless it is marked
    `@pytest.mark.backends("postgresql")` (or "sqlite")."""
    if "database_url" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    backends = list(marker.args) if marker else ["sqlite", "postgresql"]
    metafunc.parametrize("database_url", backends, indirect=True)


# --- the app -----------------------------------------------------------------------------


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    """The app on a fresh database, inside an app context."""
    application = create_app(config_for(database_url))
    with application.app_context():
        yield application
        db.session.remove()
        db.engine.dispose()


def queued_environment(
    redis_url: str, twilio: TwilioStandIn, openai_api: OpenAIStandIn | None
) -> dict[str, str]:
    """The environment of a deployment with Redis, Twilio REST and (optionally) OpenAI."""
    env = {
        "REDIS_URL": redis_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_SMS_FROM": SMS_FROM,
        "TWILIO_WHATSAPP_FROM": WHATSAPP_FROM,
        "TWILIO_API_BASE": twilio.base_url,
        "TWILIO_TIMEOUT_SECONDS": "2",
        "TWILIO_RETRY_BACKOFF_SECONDS": "0",
    }
    if openai_api is not None:
        env.update(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=openai_api.base_url,
                   OPENAI_TIMEOUT_SECONDS="2")
    return env


@pytest.fixture
def queued_app(
    database_url: str, redis_srv: RedisServer, twilio_api: TwilioStandIn,
    openai_api: OpenAIStandIn,
) -> Iterator[Flask]:
    """The app as deployed with Redis + RQ, the Twilio REST API and OpenAI (all local)."""
    import redis

    connection = redis.Redis.from_url(redis_srv.url)
    connection.flushdb()
    connection.close()
    application = create_app(config_for(
        database_url, **queued_environment(redis_srv.url, twilio_api, openai_api)
    ))
    with application.app_context():
        yield application
        db.session.remove()
        db.engine.dispose()


def run_worker(application: Flask, concurrency: int = 4, cpu_slots: int | None = None) -> int:
    """Run the real worker (`app.worker.ThreadedWorker`, burst mode, in this process) until
    the queue is empty and no job is in flight; returns the number of jobs it finished.
    `cpu_slots`: its CPU gate (`bot.waits`), the worker's default when None."""
    from app.extensions import db
    from app.queue import answers_queue, redis_connection
    from app.worker import ThreadedWorker

    db.session.commit()  # the test's own transaction must not hold SQLite's write lock
    queue = answers_queue(application)
    assert queue is not None
    finished = queue.finished_job_registry.count
    gate = {} if cpu_slots is None else {"cpu_slots": cpu_slots}
    ThreadedWorker([queue], connection=redis_connection(application), app=application,
                   concurrency=concurrency, **gate).work(burst=True)
    return int(queue.finished_job_registry.count - finished)


def routed_not_answered(app: Flask, session: Any, fields: dict[str, str]) -> None:
    """A message the webhook stored and a worker routed (stored, held), which then died
    before answering it: its job is gone, its message waits "queued"."""
    from sqlalchemy import select

    from app.queue import redis_connection
    from bot.messages import from_payload
    from bot.models import InboxMessage
    from bot.router import handle_inbound

    post_signed(app.test_client(), fields)
    connection = redis_connection(app)
    assert connection is not None
    connection.flushdb()
    row = session.scalar(select(InboxMessage).where(
        InboxMessage.message_sid == fields["MessageSid"]))
    outcome = handle_inbound(session, from_payload(row.payload), app.extensions["bot_settings"],
                             defer=True, transport="rest")
    assert outcome.kind == "queued"
    session.delete(row)
    session.commit()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def session(app: Flask) -> Session:
    """The app's session (what routes use); tests read state through it."""
    return db.session


# --- the database without the app --------------------------------------------------------


@pytest.fixture
def db_engine(database_url: str) -> Iterator[Engine]:
    """An engine on a fresh, migrated database, configured as the app configures its own
    (`app.extensions.configure_sqlite`: foreign keys on, `BEGIN IMMEDIATE`), with no Flask
    app: for the domain packages' tests (`tokens/`, `bot/`)."""
    engine = create_engine(database_url, hide_parameters=True)
    configure_sqlite(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(db_engine: Engine) -> Iterator[Session]:
    """A session on `db_engine` (no Flask app, no app context); closed after the test."""
    with Session(db_engine) as session:
        yield session


# --- Twilio helpers ----------------------------------------------------------------------


def load_fixture(name: str) -> dict[str, Any]:
    """A recorded provider payload from tests/fixtures (real Twilio and Stripe payloads)."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def twilio_fields(name: str, **changes: str) -> dict[str, str]:
    """The form fields of a Twilio fixture, with `changes` applied."""
    fields = dict(load_fixture(f"twilio/{name}")["fields"])
    fields.update(changes)
    return fields


def sign(url: str, fields: dict[str, str], token: str = AUTH_TOKEN) -> str:
    """`X-Twilio-Signature` as Twilio computes it (the library's own algorithm)."""
    return str(RequestValidator(token).compute_signature(url, fields))


def post_signed(
    client: FlaskClient,
    fields: dict[str, str],
    *,
    query: str = "",
    signed_url: str | None = None,
    token: str = AUTH_TOKEN,
    path: str = INBOUND_PATH,
) -> Any:
    """POST `fields` to a Twilio webhook the way Twilio does, signed over the public URL."""
    target = path + (f"?{query}" if query else "")
    url = signed_url if signed_url is not None else PUBLIC_BASE_URL + target
    return client.post(
        target,
        data=fields,
        headers={"X-Twilio-Signature": sign(url, fields, token)},
    )


SMS_FIXTURE = "sms_inbound_text_rawbody_specialchars__tigerfarm.json"
WHATSAPP_FIXTURE = "whatsapp_inbound_text__botbuilder_test.json"
INBOUND_FIXTURES = (
    SMS_FIXTURE,
    WHATSAPP_FIXTURE,
    "whatsapp_inbound_image__botbuilder_test.json",
    "whatsapp_inbound_location__botbuilder_test.json",
    "whatsapp_inbound_button_reply__100eyes_fixture.json",
)


def sms(body: str, sid: str | None = None, sender: str = "+16505558893") -> dict[str, str]:
    """The real SMS fixture with another Body, MessageSid and sender."""
    sid = sid or f"SM{uuid.uuid4().hex}"
    return twilio_fields(SMS_FIXTURE, Body=body, MessageSid=sid, SmsMessageSid=sid, SmsSid=sid,
                         From=sender)


def whatsapp(body: str, sid: str | None = None, sender: str = "+16505558893") -> dict[str, str]:
    """The real WhatsApp fixture with another Body, MessageSid and sender."""
    sid = sid or f"SM{uuid.uuid4().hex}"
    return twilio_fields(WHATSAPP_FIXTURE, Body=body, MessageSid=sid, SmsMessageSid=sid,
                         SmsSid=sid, From=f"whatsapp:{sender}")
