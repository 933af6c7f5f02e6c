"""The admin pages' blueprint: login and logout, the session check, CSRF and security headers.

- Every `/admin/...` page (not `/admin/api`, which has its own blueprint and bearer token)
  needs a logged-in admin; anyone else is sent to `/admin/login?next=<path>`.
- The session is Flask's signed cookie (Secure in production, HttpOnly, SameSite=Lax, 8 h). It
  holds the admin's id and their `session_epoch`; logout bumps the epoch, so every cookie
  issued before stops working, wherever it is.
- Every POST is checked for the form's CSRF token (Flask-WTF's `CSRFProtect.protect`); a
  missing or wrong token is a 400 that changes nothing.
- POST /admin/login is rate limited per client address (`ADMIN_LOGIN_RATE_LIMIT`,
  Flask-Limiter). Per username, wrong passwords make the next attempt wait longer and longer
  (no hard lockout anyone could trigger), except from a browser the admin logged in from
  before (a device cookie): see `app.admin.guard`.
- A session lasts `PERMANENT_SESSION_LIFETIME` (8 h) from the login, not from the last page.
- Pages are `no-store` and carry a CSP that allows no script at all (the charts are SVG made on
  the server).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError

from app.admin import guard
from app.extensions import csrf, db, limiter
from app.ids import use_id_converter
from tokens import admin
from tokens.admin import Actor, AdminUser
from tokens.base import utcnow

bp = Blueprint("admin", __name__, url_prefix="/admin")
use_id_converter(bp)  # before any route: ids in paths are `<id:...>` (404 when out of range)
log = logging.getLogger(__name__)
OPEN_ENDPOINTS = frozenset({"admin.login"})
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": ("default-src 'self'; script-src 'none'; "
                                "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
}


@bp.before_request
def require_admin() -> ResponseReturnValue | None:
    """Check the CSRF token of every POST, then the session (except on the login page)."""
    # Flask-WTF caches the form token in `g`, which outlives a request when an app context was
    # pushed before it (tests, scripts): the token must come from this request's session.
    g.pop("csrf_token", None)
    if request.method == "POST":
        csrf.protect()
    g.admin = _session_admin()
    if g.admin is None and request.endpoint not in OPEN_ENDPOINTS:
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
    return None


@bp.after_request
def security_headers(response: Response) -> Response:
    """No caching of admin pages, no framing, no scripts (see `SECURITY_HEADERS`)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.errorhandler(CSRFError)
def csrf_failed(error: CSRFError) -> ResponseReturnValue:
    """A POST without a valid CSRF token: 400 with the reason, nothing done."""
    return render_template("admin/error.html", title="Form expired",
                           message=f"{error.description} Reload the page and try again."), 400


def actor() -> Actor:
    """The logged-in admin (only called from views behind `require_admin`)."""
    current: Actor = g.admin
    return current


def _session_admin() -> Actor | None:
    admin_id, epoch = session.get("admin_id"), session.get("admin_epoch")
    since = session.get("admin_since")
    if not isinstance(admin_id, int) or not isinstance(epoch, int) or not isinstance(since, int):
        return None
    # The lifetime counts from the login, however often the cookie is re-issued.
    lifetime = current_app.permanent_session_lifetime.total_seconds()
    if time.time() - since > lifetime:
        return None
    user = db.session.get(AdminUser, admin_id)
    if user is None or user.session_epoch != epoch:
        return None
    return Actor(user.id, user.username)


def _safe_next(target: str | None) -> str:
    """Only a path inside /admin may follow a login (no open redirect)."""
    default = url_for("admin.overview")
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin"):
        return default
    return target


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: str(current_app.config["ADMIN_LOGIN_RATE_LIMIT"]), methods=["POST"])
def login() -> ResponseReturnValue:
    """The login form; POST checks the username and password (argon2) and starts a session.

    A wrong username or password gets the form again with 401 and one message for both, and
    counts toward the username's delay (`tokens.admin.login_wait_seconds`). An attempt inside
    that delay gets 429, a Retry-After header (seconds) and "try again in N seconds", and its
    password is not checked. A valid device cookie for the username skips the delay
    (`app.admin.guard`). Known and unknown usernames behave alike. A success sets a new device
    cookie. More than `ADMIN_LOGIN_RATE_LIMIT` posts from one address: Flask-Limiter's 429.
    """
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if g.admin is not None:
            return redirect(next_url)
        return render_template("admin/login.html", next=next_url, error=None)
    username = request.form.get("username", "")
    now = utcnow()
    device = guard.trusted_device(username)
    user = admin.find_user(db.session, username, lock=True)
    failed, last_failed = ((user.failed_logins, user.last_failed_at) if user is not None
                           else guard.unknown_failures(username))
    wait = 0 if device is not None else admin.login_wait_seconds(failed, last_failed, now)
    if wait:
        db.session.rollback()
        log.warning("admin login refused: too soon after wrong passwords",
                    extra={"wait_seconds": wait})
        return _too_soon(next_url, wait)
    if not admin.verify_login(db.session, user, request.form.get("password", ""), now) or (
            user is None):  # (never both: no user, no right password)
        return _wrong_password(next_url, username, user, device, failed, last_failed, now)
    if device is not None:
        guard.device_succeeded(device)
    db.session.commit()
    session.clear()  # a new session: nothing from before the login carries over
    g.pop("csrf_token", None)
    session.permanent = True
    session["admin_id"], session["admin_epoch"] = user.id, user.session_epoch
    session["admin_since"] = int(time.time())
    log.info("admin logged in", extra={"admin": user.username})
    response = redirect(next_url, code=303)
    guard.set_device_cookie(response, user.username)
    return response


def _too_soon(next_url: str, wait: int) -> ResponseReturnValue:
    """429 for an attempt inside the username's delay, with Retry-After (seconds)."""
    unit = "second" if wait == 1 else "seconds"
    page = render_template("admin/login.html", next=next_url, error=(
        f"Too many wrong passwords for this username: try again in {wait} {unit}."))
    g.admin_login_retry_after = wait
    return page, 429, {"Retry-After": str(wait)}


def _retry_after_is_the_delay(response: Response) -> Response:
    """Flask-Limiter's app-level after_request (run after the blueprint's own) writes into
    every limited response a Retry-After of at least its window's reset; a login refused for
    the username's delay must say that delay, in seconds, as its message does."""
    wait = g.pop("admin_login_retry_after", None)
    if wait is not None:
        response.headers["Retry-After"] = str(wait)
    return response


# First in the app's list: Flask runs app-level after_request functions last-registered
# first, so this runs after Flask-Limiter's.
bp.record_once(lambda state: state.app.after_request_funcs.setdefault(None, []).insert(
    0, _retry_after_is_the_delay))


def _wrong_password(next_url: str, username: str, user: AdminUser | None, device: str | None,
                    failed: int, last_failed: datetime | None, now: datetime
                    ) -> ResponseReturnValue:
    """401 for a wrong username or password, after counting it: toward the device's lockout
    when it came through a trusted device, else toward the username's delay (in the database
    for a known username, committed; in `guard`'s store for an unknown one)."""
    response = make_response(render_template("admin/login.html", next=next_url,
                                             error="Wrong username or password."), 401)
    if device is not None:
        db.session.rollback()
        if guard.device_failed(device):
            guard.drop_device_cookie(response)
            log.warning("admin device cookie no longer trusted after wrong passwords")
    elif user is not None:
        admin.record_failed_login(db.session, user, now)
        db.session.commit()
    else:
        db.session.rollback()
        guard.record_unknown_failure(username, admin.failed_logins_after(
            failed, last_failed, now), now)
    log.warning("admin login failed", extra={"trusted_device": device is not None})
    return response


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End this admin's sessions everywhere and go back to the login page."""
    admin.end_sessions(db.session, actor().id)
    db.session.commit()
    session.clear()
    return redirect(url_for("admin.login"), code=303)
