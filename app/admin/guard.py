"""Slowing down password guessing at /admin/login without letting anyone lock an admin out.

Follows the OWASP Authentication Cheat Sheet ("Login Throttling") and OWASP's "Slow down
online guessing attacks with device cookies":

- Per client address, Flask-Limiter's `ADMIN_LOGIN_RATE_LIMIT` (in `app.admin.web`).
- Per username, no hard limit (which anyone knowing an admin's name could use to lock them
  out) but a delay that doubles with each wrong password past the first few
  (`tokens.admin.login_wait_seconds`). An attempt inside the delay is refused (429 with
  Retry-After) before the password is looked at. Known usernames count in
  `AdminUser.failed_logins` / `last_failed_at`; unknown ones get the very same bookkeeping
  here, in the `Scratch` store (never a database row), so an unknown username answers exactly
  like a known one.
- Device cookies: a successful login sets `DEVICE_COOKIE`, signed with the app's secret key
  (itsdangerous), HttpOnly, SameSite=Lax, Secure like the session cookie, for
  `DEVICE_COOKIE_DAYS` days, naming the username. An attempt carrying a valid device cookie
  for the username it logs in as skips that username's delay, so the real admin gets in from
  their usual browser while an attacker is slowed. Its wrong passwords do not count toward
  the username's delay (they would let whoever holds the cookie lock the username for
  everyone else); the device has its own lockout instead: after `DEVICE_MAX_FAILURES` (5)
  consecutive wrong passwords the cookie is no longer trusted (for its remaining life, even a
  copy of it) and is deleted, and that browser waits like any other. A success through the
  device clears its count.

The password is never logged, nor the username.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

import redis
from flask import Flask, current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.wrappers import Response

from app.queue import redis_connection
from tokens.admin import FAILED_LOGINS_FORGOTTEN_AFTER

log = logging.getLogger(__name__)
DEVICE_COOKIE = "admin_device"
DEVICE_COOKIE_DAYS = 30
DEVICE_MAX_FAILURES = 5
_DEVICE_SALT = "admin-device-cookie"
_PREFIX = "admin-login:"


class Scratch:
    """Small expiring values for the login's bookkeeping that must not create database rows.

    In Redis when `REDIS_URL` is set (shared by every process), else in this process's memory
    (at most `MAX_LOCAL` keys, the oldest dropped first). A Redis error falls back to memory
    (logged), so a login never fails because Redis is down; the counts are then per process
    until Redis answers again.
    """

    MAX_LOCAL = 10_000

    def __init__(self, app: Flask) -> None:
        self._app = app
        self._local: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        """The value stored under `key`, or None (never stored, or expired)."""
        connection = redis_connection(self._app)
        if connection is not None:
            try:
                raw = connection.get(_PREFIX + key)
                if raw is None:
                    return None
                return raw.decode() if isinstance(raw, bytes) else str(raw)
            except redis.RedisError as exc:
                self._redis_failed(exc)
        with self._lock:
            found = self._local.get(key)
            if found is None or found[0] <= time.monotonic():
                self._local.pop(key, None)
                return None
            return found[1]

    def put(self, key: str, value: str, ttl_seconds: int) -> None:
        """Store `value` under `key` for `ttl_seconds` seconds (>= 1)."""
        connection = redis_connection(self._app)
        if connection is not None:
            try:
                connection.set(_PREFIX + key, value, ex=max(1, ttl_seconds))
                return
            except redis.RedisError as exc:
                self._redis_failed(exc)
        with self._lock:
            self._local.pop(key, None)
            self._local[key] = (time.monotonic() + ttl_seconds, value)
            while len(self._local) > self.MAX_LOCAL:
                self._local.popitem(last=False)

    def delete(self, key: str) -> None:
        """Forget `key` (nothing happens when it is not stored)."""
        connection = redis_connection(self._app)
        if connection is not None:
            try:
                connection.delete(_PREFIX + key)
            except redis.RedisError as exc:
                self._redis_failed(exc)
        with self._lock:
            self._local.pop(key, None)

    @staticmethod
    def _redis_failed(exc: redis.RedisError) -> None:
        log.warning("admin login bookkeeping in memory: Redis cannot be reached",
                    extra={"error": type(exc).__name__})


def scratch() -> Scratch:
    """The current app's `Scratch` store (one per app)."""
    store: Scratch | None = current_app.extensions.get("admin_login_scratch")
    if store is None:
        store = current_app.extensions.setdefault(
            "admin_login_scratch", Scratch(current_app._get_current_object()))  # type: ignore[attr-defined]
    return store


def _unknown_key(username: str) -> str:
    # Hashed: bounded length, and no typed username is kept in clear.
    name = username.strip().lower().encode("utf-8", "surrogatepass")
    return "unknown:" + hashlib.sha256(name).hexdigest()


def unknown_failures(username: str) -> tuple[int, datetime | None]:
    """An unknown username's wrong passwords as (count, last one UTC or None), counted like
    `AdminUser.failed_logins` / `last_failed_at`."""
    raw = scratch().get(_unknown_key(username))
    if raw is None:
        return 0, None
    try:
        data = json.loads(raw)
        return int(data["n"]), datetime.fromisoformat(data["at"])
    except (ValueError, KeyError, TypeError):
        return 0, None


def record_unknown_failure(username: str, failed_logins: int, now: datetime) -> None:
    """Store an unknown username's new count of wrong passwords (from
    `tokens.admin.failed_logins_after`) with its time `now` (UTC); it is forgotten after
    `FAILED_LOGINS_FORGOTTEN_AFTER`, as a known username's would be."""
    scratch().put(_unknown_key(username), json.dumps({"n": failed_logins, "at": now.isoformat()}),
                  int(FAILED_LOGINS_FORGOTTEN_AFTER.total_seconds()))


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key or "", salt=_DEVICE_SALT)


def _device_key(device: str) -> str:
    return "device:" + device


def trusted_device(username: str) -> str | None:
    """The id of this request's device cookie when it is validly signed, younger than
    `DEVICE_COOKIE_DAYS`, names `username` (trimmed, lower-cased) and is not locked after
    `DEVICE_MAX_FAILURES` wrong passwords; else None."""
    value = request.cookies.get(DEVICE_COOKIE)
    if not value:
        return None
    try:
        data: Any = _serializer().loads(value, max_age=DEVICE_COOKIE_DAYS * 86400)
    except BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    device, named = data.get("d"), data.get("u")
    if not isinstance(device, str) or named != username.strip().lower():
        return None
    failures = scratch().get(_device_key(device))
    if failures is not None and failures.isdigit() and int(failures) >= DEVICE_MAX_FAILURES:
        return None
    return device


def device_failed(device: str) -> bool:
    """Count a wrong password from a trusted device; True when that makes
    `DEVICE_MAX_FAILURES` in a row, and the device is no longer trusted."""
    raw = scratch().get(_device_key(device))
    failures = (int(raw) if raw is not None and raw.isdigit() else 0) + 1
    scratch().put(_device_key(device), str(failures), DEVICE_COOKIE_DAYS * 86400)
    return failures >= DEVICE_MAX_FAILURES


def device_succeeded(device: str) -> None:
    """A right password from a trusted device: its wrong passwords in a row start again at 0."""
    scratch().delete(_device_key(device))


def set_device_cookie(response: Response, username: str) -> None:
    """Make the browser a trusted device for `username`: a new signed cookie (a fresh random
    id), valid `DEVICE_COOKIE_DAYS` days, sent only to /admin."""
    value = _serializer().dumps({"u": username, "d": secrets.token_urlsafe(16)})
    response.set_cookie(DEVICE_COOKIE, value, max_age=timedelta(days=DEVICE_COOKIE_DAYS),
                        path="/admin", secure=bool(current_app.config["SESSION_COOKIE_SECURE"]),
                        httponly=True, samesite="Lax")


def drop_device_cookie(response: Response) -> None:
    """Delete the device cookie from the browser."""
    response.delete_cookie(DEVICE_COOKIE, path="/admin",
                           secure=bool(current_app.config["SESSION_COOKIE_SECURE"]),
                           httponly=True, samesite="Lax")
