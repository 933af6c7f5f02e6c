"""Operators: admin users (argon2id password hashes) and what they do to a person's account.

Every operation here locks the person's account row first (as every path does), writes its
effect and an `AdminAction` naming the admin in the same transaction, and flushes; the caller
commits. Token operations go through the ledger with a caller-supplied idempotency key (the
admin form's nonce), so a double-submitted form changes nothing the second time.

Password hashing is argon2-cffi's `PasswordHasher` with its defaults (argon2id, RFC 9106's
low-memory profile); a hash made with older parameters is replaced at the next login.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tokens import ledger, levels
from tokens.base import Base, UTCDateTime, insert_once, utcnow
from tokens.errors import TokensError, UnknownAccount

USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,62}")
MIN_PASSWORD_CHARS = 12  # NIST SP 800-63B asks for at least 8; operators hold money powers.
ACTIONS = ("grant", "adjust", "suspend", "unsuspend", "override", "reprocess", "requeue")
_hasher = PasswordHasher()
# Checked against when the username is unknown, so a login takes as long either way.
_DUMMY_HASH = _hasher.hash("not a password of anyone")
# Login throttling per username (`login_wait_seconds`): wrong passwords that cost nothing, the
# longest wait, and how long a username's failures are remembered without a new one.
FREE_FAILED_LOGINS = 3
MAX_LOGIN_WAIT_SECONDS = 15 * 60
FAILED_LOGINS_FORGOTTEN_AFTER = timedelta(days=1)
_MAX_COUNTED_FAILURES = 10_000  # far past the cap; keeps the column's integer small


class AdminError(TokensError):
    """An admin operation was refused (bad username or password, unknown level, ...); the
    message says why, for the form or the CLI."""


class AdminUser(Base):
    """An operator who can log in to the admin pages.

    Attributes:
        username: lower-case login name (`USERNAME`).
        password_hash: the argon2id hash (PHC string).
        session_epoch: bumped at logout; a session cookie carries the epoch it was issued in,
            so logging out ends that admin's sessions everywhere.
        last_login_at: the last successful login (UTC).
        failed_logins: wrong passwords since the last successful login (or `admin unlock`);
            each one past the free few makes the next attempt wait longer
            (`login_wait_seconds`). Wrong passwords from a trusted device (app.admin.guard)
            are not counted here.
        last_failed_at: the last wrong password (UTC).
    """

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AdminAction(Base):
    """What an admin did, and to whom: the audit trail of the admin pages.

    Attributes:
        admin_id: who.
        account_id: whose account (None for actions on the service, e.g. a reprocessed event).
        action: one of `ACTIONS`.
        detail: what exactly, e.g. "+50 tokens: refund for outage" (at most 500 characters).
    """

    __tablename__ = "admin_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("admin_users.id"), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


@dataclass(frozen=True)
class Actor:
    """The admin acting, as the session knows them."""

    id: int
    username: str

    @property
    def label(self) -> str:
        """The ledger's `actor` field: "admin:<username>"."""
        return f"admin:{self.username}"


def create_user(session: Session, username: str, password: str,
                now: datetime | None = None) -> AdminUser:
    """Add an admin user.

    Raises:
        AdminError: the username is not 2-63 characters of a-z, 0-9, ".", "_", "-" starting
            with a letter or digit; it is taken; or the password is shorter than
            `MIN_PASSWORD_CHARS` characters.
    """
    name = username.strip().lower()
    if not USERNAME.fullmatch(name):
        raise AdminError("a username is 2-63 characters: a-z, 0-9, '.', '_' or '-'")
    if len(password) < MIN_PASSWORD_CHARS:
        raise AdminError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    user = AdminUser(username=name, password_hash=_hasher.hash(password),
                     created_at=now or utcnow(), session_epoch=0)
    if not insert_once(session, user):
        raise AdminError(f"the username {name!r} is taken")
    return user


def set_password(session: Session, username: str, password: str) -> AdminUser:
    """Replace an admin's password and end their sessions.

    Raises:
        AdminError: no such admin, or the password is too short.
    """
    user = session.scalars(select(AdminUser).where(
        AdminUser.username == username.strip().lower())).first()
    if user is None:
        raise AdminError(f"no admin is called {username!r}")
    if len(password) < MIN_PASSWORD_CHARS:
        raise AdminError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    user.password_hash = _hasher.hash(password)
    user.session_epoch += 1
    session.flush()
    return user


def find_user(session: Session, username: str, lock: bool = False) -> AdminUser | None:
    """The admin called `username` (compared trimmed and lower-cased), or None.

    Args:
        lock: lock the row until the transaction ends (`SELECT ... FOR UPDATE`), so that
            concurrent logins for one username see each other's failures.
    """
    statement = select(AdminUser).where(AdminUser.username == username.strip().lower())
    if lock:
        statement = statement.with_for_update()
    return session.scalars(statement).first()


def authenticate(session: Session, username: str, password: str,
                 now: datetime | None = None) -> AdminUser | None:
    """The admin whose username and password these are, or None. An unknown username costs the
    same hash check as a wrong password. See `verify_login` for what a success records; a
    failure records nothing (the login page calls `record_failed_login`)."""
    user = find_user(session, username)
    return user if verify_login(session, user, password, now) else None


def verify_login(session: Session, user: AdminUser | None, password: str,
                 now: datetime | None = None) -> bool:
    """Whether `password` is `user`'s. With `user` None the check runs against a dummy hash,
    so it takes as long, and is False.

    On success: an outdated hash is replaced, `last_login_at` is set, `failed_logins` goes
    back to 0 and `last_failed_at` to None (flushed; the caller commits). A wrong password
    changes nothing here.
    """
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    if user is None:
        return False
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.last_login_at = now or utcnow()
    user.failed_logins, user.last_failed_at = 0, None
    session.flush()
    return True


def login_wait_seconds(failed_logins: int, last_failed_at: datetime | None,
                       now: datetime) -> int:
    """How many more seconds a username's next login attempt must wait (0: check it now).

    The policy of the OWASP Authentication Cheat Sheet ("Login Throttling"; OWASP's "Slow
    down online guessing attacks with device cookies"): throttle by username with growing
    delays instead of a hard lockout, which anyone who knows an admin's name could trigger
    to lock them out. The first `FREE_FAILED_LOGINS` (3) wrong passwords cost nothing; after
    the n-th (n >= 3) the next attempt waits 2**(n - 3) seconds from the last one (1, 2, 4,
    8 s, ...), at most `MAX_LOGIN_WAIT_SECONDS` (900 s, 15 minutes). Failures whose last one
    is `FAILED_LOGINS_FORGOTTEN_AFTER` (1 day) old no longer count. A pure function: no
    database, no clock.

    Args:
        failed_logins: wrong passwords so far (`AdminUser.failed_logins`), >= 0.
        last_failed_at: the latest one (UTC, timezone-aware), None when there is none.
        now: the attempt's time (UTC, timezone-aware). A `last_failed_at` after `now` (clock
            skew between servers) counts as `now`, so the wait never exceeds the full delay.

    Returns:
        Whole seconds, rounded up: 0 to `MAX_LOGIN_WAIT_SECONDS`.
    """
    if failed_logins < FREE_FAILED_LOGINS or last_failed_at is None:
        return 0
    elapsed = max((now - last_failed_at).total_seconds(), 0.0)
    if elapsed >= FAILED_LOGINS_FORGOTTEN_AFTER.total_seconds():
        return 0
    doublings = min(failed_logins - FREE_FAILED_LOGINS, 30)  # 2**30 s is far past the cap
    delay = min(1 << doublings, MAX_LOGIN_WAIT_SECONDS)
    return max(0, math.ceil(delay - elapsed))


def failed_logins_after(failed_logins: int, last_failed_at: datetime | None,
                        now: datetime) -> int:
    """The count of wrong passwords to store after one more at `now`: one more than before,
    or 1 when the earlier ones are forgotten (`login_wait_seconds`). A pure function."""
    if last_failed_at is None or (
            now - last_failed_at >= FAILED_LOGINS_FORGOTTEN_AFTER):
        return 1
    return min(max(failed_logins, 0) + 1, _MAX_COUNTED_FAILURES)


def record_failed_login(session: Session, user: AdminUser, now: datetime | None = None) -> int:
    """Count a wrong password for `user` (`failed_logins`, `last_failed_at`; flushed, the
    caller commits, even though the login failed). Returns the new count."""
    moment = now or utcnow()
    user.failed_logins = failed_logins_after(user.failed_logins, user.last_failed_at, moment)
    user.last_failed_at = moment
    session.flush()
    return user.failed_logins


def unlock(session: Session, username: str) -> AdminUser:
    """Forget an admin's wrong passwords, so their next login need not wait (flushed).

    Raises:
        AdminError: no such admin.
    """
    user = find_user(session, username)
    if user is None:
        raise AdminError(f"no admin is called {username!r}")
    user.failed_logins, user.last_failed_at = 0, None
    session.flush()
    return user


def end_sessions(session: Session, admin_id: int) -> None:
    """Log an admin out everywhere (their session cookies stop being accepted)."""
    user = session.get(AdminUser, admin_id)
    if user is not None:
        user.session_epoch += 1
        session.flush()


def record(session: Session, actor: Actor, action: str, detail: str,
           account_id: int | None = None, now: datetime | None = None) -> AdminAction:
    """Add an entry to the audit trail (`AdminAction`)."""
    row = AdminAction(admin_id=actor.id, account_id=account_id, action=action,
                      detail=detail[:500], created_at=now or utcnow())
    session.add(row)
    session.flush()
    return row


def grant_tokens(session: Session, actor: Actor, account_id: int, tokens: int, reason: str,
                 key: str, now: datetime | None = None) -> ledger.Posted:
    """Give the person `tokens` goodwill tokens (bucket "bonus", no expiry) with a reason.

    Args:
        key: the form's idempotency key; the same key posts once.

    Raises:
        AdminError: no reason. `InvalidAmount` (not a positive integer) and
            `UnknownAccount` come from the ledger.
    """
    if not reason.strip():
        raise AdminError("a grant needs a reason")
    ledger.lock_account(session, account_id)
    posted = ledger.grant(session, account_id, tokens, key=f"admin-grant:{key}",
                          bucket="bonus", memo=reason.strip()[:200], actor=actor.label,
                          now=now)
    if not posted.replayed:
        record(session, actor, "grant", f"+{tokens} tokens: {reason.strip()}", account_id, now)
    return posted


def adjust_tokens(session: Session, actor: Actor, account_id: int, tokens: int, reason: str,
                  key: str, now: datetime | None = None) -> ledger.Posted:
    """Correct the balance by `tokens` (signed, non-zero) with a reason (`ledger.adjust`).

    Raises:
        InvalidAmount: zero, or no reason. InsufficientTokens: taking more than is available.
        UnknownAccount: no such account.
    """
    ledger.lock_account(session, account_id)
    posted = ledger.adjust(session, account_id, tokens, key=f"admin-adjust:{key}",
                           reason=reason, actor=actor.label, now=now)
    if not posted.replayed:
        record(session, actor, "adjust", f"{tokens:+d} tokens: {reason.strip()}", account_id,
               now)
    return posted


def suspend(session: Session, actor: Actor, account_id: int, reason: str,
            now: datetime | None = None) -> None:
    """Stop answering the person (bot.router `silence_suspended`) until unsuspended.

    Raises:
        AdminError: no reason. UnknownAccount: no such account.
    """
    if not reason.strip():
        raise AdminError("a suspension needs a reason")
    account = _locked(session, account_id)
    if account.suspended_at is not None:
        return
    account.suspended_at = now or utcnow()
    account.suspension_reason = reason.strip()[:200]
    record(session, actor, "suspend", reason.strip(), account_id, now)


def unsuspend(session: Session, actor: Actor, account_id: int,
              now: datetime | None = None) -> None:
    """Answer the person again.

    Raises:
        UnknownAccount: no such account.
    """
    account = _locked(session, account_id)
    if account.suspended_at is None:
        return
    account.suspended_at = None
    account.suspension_reason = None
    record(session, actor, "unsuspend", "", account_id, now)


def override_level(session: Session, actor: Actor, account_id: int, level: str | None,
                   until: datetime | None, reason: str, now: datetime | None = None) -> None:
    """Set the person's restriction level until `until` (UTC), or clear it (`level` None).

    The override replaces `levels.decide` in the router; a better level than the policy's lets
    the person cost more than the loss ceiling, which the operator accepts by setting it.

    Raises:
        AdminError: an unknown level, an expiry not in the future, or no reason.
        UnknownAccount: no such account.
    """
    moment = now or utcnow()
    _locked(session, account_id)
    state = levels.state_of(session, account_id)
    if level is None:
        if state.override_level is None:
            return
        state.override_level = state.override_until = None
        record(session, actor, "override", f"cleared: {reason.strip()}".rstrip(": "),
               account_id, now)
        return
    if level not in levels.LEVELS:
        raise AdminError(f"unknown level {level!r} (one of {', '.join(levels.LEVELS)})")
    if until is None or until <= moment:
        raise AdminError("an override needs an expiry in the future")
    if not reason.strip():
        raise AdminError("an override needs a reason")
    state.override_level, state.override_until = level, until
    record(session, actor, "override",
           f"{level} until {until:%Y-%m-%d %H:%M} UTC: {reason.strip()}", account_id, now)


def _locked(session: Session, account_id: int) -> ledger.Account:
    ledger.lock_account(session, account_id)
    account = session.get(ledger.Account, account_id)
    if account is None:
        raise UnknownAccount(f"no account {account_id}")
    session.refresh(account)
    return account
