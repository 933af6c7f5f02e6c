"""Health checks: `GET /healthz` (the process answers) and `GET /readyz` (the database, and
Redis when configured, answer)."""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.extensions import db
from app.queue import redis_connection

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Liveness: 200 while the process serves requests."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Readiness: 200 when the database answers `SELECT 1` and Redis (if configured) answers
    PING; else 503 naming what is unreachable."""
    checks = {"database": "ok"}
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("readiness check failed: database unreachable (%s)", type(exc).__name__)
        checks["database"] = "unreachable"
    connection = redis_connection(current_app._get_current_object())  # type: ignore[attr-defined]
    if connection is not None:
        try:
            connection.ping()
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            log.warning("readiness check failed: redis unreachable (%s)", type(exc).__name__)
            checks["redis"] = "unreachable"
    if any(value != "ok" for value in checks.values()):
        return jsonify(status="unavailable", **checks), 503
    return jsonify(status="ok", **checks)
