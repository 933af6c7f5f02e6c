"""Shared fixtures: real servers, the app on SQLite and on PostgreSQL, signed Twilio posts.

The PostgreSQL server is a real `postgres` started by this suite (pytest-postgresql's executor)
on a free loopback port; the schema is built once by the Alembic migrations into a template
database, and every test gets a fresh copy of it. SQLite tests get a copy of a migrated file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from hypothesis import HealthCheck, settings
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from app.extensions import configure_sqlite, db
from testing.deployment import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    STRIPE_API_KEY,
    migrate,
    queued_environment,
    running_app,
    stripe_environment,
)
from testing.openai_standin import OpenAIStandIn
from testing.postgres import PG_USER, postgres_server
from testing.postgres import url as postgres_url
from testing.redis_server import RedisServer, redis_server
from testing.stripe_standin import StripeStandIn
from testing.twilio_standin import TwilioStandIn

# In CI the property tests draw the same examples on every run, so a release never waits on a
# rare example; locally they stay random (and remember failures in .hypothesis/).
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
if os.environ.get("CI"):
    settings.load_profile("ci")

TEMPLATE_DB = "bot_template"


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


@pytest.fixture
def stripe_api() -> Iterator[StripeStandIn]:
    """The Stripe API stand-in, accepting `testing.deployment.STRIPE_API_KEY`."""
    with StripeStandIn(api_key=STRIPE_API_KEY) as standin:
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
def make_app(database_url: str) -> Iterator[Callable[..., Flask]]:
    """`make_app(**env) -> Flask`: the app on this test's fresh database with `env` on top of
    the test settings (`testing.deployment.config_for`), inside its app context until the
    test ends; then each app's session is removed and its engine disposed, last made first.

    `make_app(database_url=..., **env)` builds it on another database. An error of
    `create_app` (a `ConfigError`) propagates and leaves nothing to clean up."""
    with contextlib.ExitStack() as stack:

        def make(database_url: str = database_url, **env: str) -> Flask:
            return stack.enter_context(running_app(database_url, **env))

        yield make


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The app on a fresh database, inside an app context."""
    return make_app()


@pytest.fixture
def stripe_app(make_app: Callable[..., Flask], stripe_api: StripeStandIn,
               twilio_api: TwilioStandIn) -> Flask:
    """The app with Stripe (the stand-in) and Twilio REST sending (the stand-in), no Redis:
    notices are sent right after the event's commit."""
    return make_app(**stripe_environment(stripe_api, twilio_api))


@pytest.fixture
def queued_app(make_app: Callable[..., Flask], redis_srv: RedisServer,
               twilio_api: TwilioStandIn, openai_api: OpenAIStandIn) -> Flask:
    """The app as deployed with Redis + RQ, the Twilio REST API and OpenAI (all local)."""
    import redis

    connection = redis.Redis.from_url(redis_srv.url)
    connection.flushdb()
    connection.close()
    return make_app(**queued_environment(redis_srv.url, twilio_api, openai_api))


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


