"""Health checks: `GET /healthz` (the process answers) and `GET /readyz` (the database answers
and has the code's schema, and Redis answers when configured)."""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.extensions import db, migrations_directory
from app.queue import redis_connection
from app.schema import cached_schema_state

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Liveness: 200 while the process serves requests."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Readiness: 200 when the database answers `SELECT 1` and is at the migrations' head
    (`app.schema`; an "ok" is remembered for 30 s) and Redis (if configured) answers PING;
    else 503 naming what is wrong, e.g. `"database": "schema missing: run flask --app wsgi db
    upgrade"`. A database at a revision newer than the code stays ready (a deploy's old
    processes), with a `"schema"` note."""
    checks = {"database": "ok"}
    session = db.session()
    began = not session.in_transaction()
    try:
        session.execute(text("SELECT 1"))
        state = cached_schema_state(session.connection(),
                                    migrations_directory())
        checks["database"] = state.readiness()
        if state.blocks_serving:
            log.warning("readiness check failed: %s", state.problem())
        elif not state.ok:
            checks["schema"] = f"at {', '.join(state.current)}, unknown to this code"
    except SQLAlchemyError as exc:
        log.warning("readiness check failed: database unreachable (%s)", type(exc).__name__)
        checks["database"] = "unreachable"
    finally:
        if began:  # a probe holds no transaction (on SQLite: no write lock) past its answer
            session.rollback()
    connection = redis_connection(current_app._get_current_object())  # type: ignore[attr-defined]
    if connection is not None:
        try:
            connection.ping()
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            log.warning("readiness check failed: redis unreachable (%s)", type(exc).__name__)
            checks["redis"] = "unreachable"
    if any(value != "ok" for name, value in checks.items() if name != "schema"):
        return jsonify(status="unavailable", **checks), 503
    return jsonify(status="ok", **checks)
