"""The admin pages' blueprint: login and logout, the session check, CSRF and security headers.

- Every `/admin/...` page (not `/admin/api`, which has its own blueprint and bearer token)
  needs a logged-in admin; anyone else is sent to `/admin/login?next=<path>`.
- The session is Flask's signed cookie (Secure in production, HttpOnly, SameSite=Lax, 8 h). It
  holds the admin's id and their `session_epoch`; logout bumps the epoch, so every cookie
  issued before stops working, wherever it is.
- Every POST is checked for the form's CSRF token (Flask-WTF's `CSRFProtect.protect`); a
  missing or wrong token is a 400 that changes nothing.
- POST /admin/login is rate limited per client address and per username
  (`ADMIN_LOGIN_RATE_LIMIT` each, Flask-Limiter), so guesses spread over many addresses
  are limited too.
- A session lasts `PERMANENT_SESSION_LIFETIME` (8 h) from the login, not from the last page.
- Pages are `no-store` and carry a CSP that allows no script at all (the charts are SVG made on
  the server).
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError

from app.extensions import csrf, db, limiter
from tokens import admin
from tokens.admin import Actor, AdminUser

bp = Blueprint("admin", __name__, url_prefix="/admin")
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
@limiter.limit(lambda: str(current_app.config["ADMIN_LOGIN_RATE_LIMIT"]), methods=["POST"],
               key_func=lambda: "admin-user:" + request.form.get("username", "").strip().lower(),
               scope="admin-login-username")
def login() -> ResponseReturnValue:
    """The login form; POST checks the username and password (argon2) and starts a session.

    A wrong username or password gets the form again with 401 and one message for both.
    """
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if g.admin is not None:
            return redirect(next_url)
        return render_template("admin/login.html", next=next_url, error=None)
    username = request.form.get("username", "")
    user = admin.authenticate(db.session, username, request.form.get("password", ""))
    if user is None:
        db.session.rollback()
        log.warning("admin login failed")
        return render_template("admin/login.html", next=next_url,
                               error="Wrong username or password."), 401
    db.session.commit()
    session.clear()  # a new session: nothing from before the login carries over
    g.pop("csrf_token", None)
    session.permanent = True
    session["admin_id"], session["admin_epoch"] = user.id, user.session_epoch
    session["admin_since"] = int(time.time())
    log.info("admin logged in", extra={"admin": user.username})
    return redirect(next_url, code=303)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End this admin's sessions everywhere and go back to the login page."""
    admin.end_sessions(db.session, actor().id)
    db.session.commit()
    session.clear()
    return redirect(url_for("admin.login"), code=303)
