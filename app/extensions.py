"""Flask extensions, created unbound and bound to an app in `create_app`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import Engine, event, exc

from tokens.base import Base, UTCDateTime, execute_plain

if TYPE_CHECKING:
    from bot.outbound import OutboundSettings
    from bot.router import BotSettings

db = SQLAlchemy(metadata=Base.metadata)
migrate = Migrate()
# CSRF tokens for the admin forms (checked by the admin blueprint; WTF_CSRF_CHECK_DEFAULT off).
csrf = CSRFProtect()
# Rate limits by client address (behind a proxy, set TRUSTED_PROXY_HOPS); no default limits:
# each limited view says its own.
limiter = Limiter(key_func=get_remote_address)
# The providers' webhooks (Twilio's messages and status callbacks, Stripe's events) are signed
# and come from the providers' own addresses: no limit applies to them (per-person limits are
# the router's, bot.ratelimit). Filtered out before Flask-Limiter resolves any limit, which
# otherwise costs about 6 % of a webhook request's CPU (py-spy, 2026-12-08).
PROVIDER_WEBHOOKS = frozenset({"twilio", "stripe"})


@limiter.request_filter
def _provider_webhook() -> bool:
    return request.blueprint in PROVIDER_WEBHOOKS


# --- what create_app keeps in app.extensions, read through one typed accessor each ----------


def bot_settings(app: Flask | None = None) -> BotSettings:
    """The router's settings (`app.extensions["bot_settings"]`, set by `create_app`): the
    catalog, the LLM, the keys. `app` defaults to the current app."""
    settings: BotSettings = (app or current_app).extensions["bot_settings"]
    return settings


def outbound_settings(app: Flask | None = None) -> OutboundSettings:
    """How replies are sent (`app.extensions["outbound"]`, set by `create_app`). `app`
    defaults to the current app."""
    options: OutboundSettings = (app or current_app).extensions["outbound"]
    return options


def migrations_directory(app: Flask | None = None) -> str:
    """The Alembic migrations folder Flask-Migrate was given (`app.extensions["migrate"]`).
    `app` defaults to the current app."""
    directory: str = (app or current_app).extensions["migrate"].directory
    return directory


def configure_sqlite(engine: Engine) -> None:
    """Make SQLite behave for a ledger: foreign keys on, and every transaction `BEGIN IMMEDIATE`.

    pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINTs; taking the write
    lock at BEGIN serialises writers instead of failing one of them with "database is locked"
    half-way through (SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional DDL"
    for pysqlite). A no-op for other databases.
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        execute_plain(connection, "BEGIN IMMEDIATE")


# A pooled connection that sat unused this long is tested before it is handed out (seconds).
PING_AFTER_IDLE_SECONDS = 1.0


def ping_when_idle(engine: Engine, idle_seconds: float = PING_AFTER_IDLE_SECONDS) -> None:
    """Test a pooled connection before handing it out only when it sat unused `idle_seconds`
    or more, instead of before every checkout (`pool_pre_ping`).

    A connection that fails the test is replaced by a fresh one, as with `pool_pre_ping`
    (SQLAlchemy docs, "Dealing with Disconnects", the `checkout` event raising
    `DisconnectionError`). Under load each connection is back in use within milliseconds, so
    the test's round trip, once per transaction (five per answered message in the worker),
    is not paid; a connection that the server dropped (a restart, a failover) within
    `idle_seconds` of its last use fails its next statement instead, which SQLAlchemy then
    treats as a disconnect: it empties the pool, the request answers 503 as when the
    database is down, or the job fails (RQ retries it).
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < idle_seconds:
            return  # new, or in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise exc.DisconnectionError(
                f"pooled connection lost: {type(error).__name__}") from error
        if not alive:
            raise exc.DisconnectionError("pooled connection lost")


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Alembic autogenerate hook: write `UTCDateTime` columns as `sa.DateTime(timezone=True)`,
    so migrations do not import application code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False
