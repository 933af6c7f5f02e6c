"""Flask extensions, created unbound and bound to an app in `create_app`."""

from __future__ import annotations

from typing import Any

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import Engine, event

from tokens.base import Base, UTCDateTime

db = SQLAlchemy(metadata=Base.metadata)
migrate = Migrate()
# CSRF tokens for the admin forms (checked by the admin blueprint; WTF_CSRF_CHECK_DEFAULT off).
csrf = CSRFProtect()
# Rate limits by client address (behind a proxy, set TRUSTED_PROXY_HOPS); no default limits:
# each limited view says its own.
limiter = Limiter(key_func=get_remote_address)


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
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Alembic autogenerate hook: write `UTCDateTime` columns as `sa.DateTime(timezone=True)`,
    so migrations do not import application code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False
