"""A person's own account page: its short-lived links and its once-only actions.

Design (docs/account.md):

- ACCOUNT (CUENTA) sends `PUBLIC_BASE_URL/account/link/<token>`. The token is
  `secrets.token_urlsafe(32)` (256 bits); only its SHA-256 is stored (`AccountLink`), so the
  table does not hold a working link. A link opens that one account for `LINK_TTL` (15
  minutes) from when it was sent, and may be opened more than once in that time (a phone's
  link preview fetches it too); after that it answers 410.
- Every action of the page (buy, auto top-up, language, billing portal, delete my data)
  carries a random key from the form that rendered it. `claim_action` stores it once
  (`UNIQUE(key)`), so a double submit acts once: the second gets the first one's result.

Domain functions take the `Session` and flush; the caller (the route) commits. Nothing here
logs a token.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tokens.base import Base, UTCDateTime, insert_on_conflict, utcnow
from tokens.errors import AccountLinkExpired, AccountLinkNotFound

# How long a link sent by ACCOUNT opens the page, and how long the page stays open after the
# link is opened (the issue's "expires in 15 minutes").
LINK_TTL = timedelta(minutes=15)
# The actions of the page; `AccountAction.action` is one of them.
ACTIONS = ("buy", "auto_topup", "language", "portal", "allergies", "delete")
# A form key: 32 lower-case hex characters (`new_form_key`).
FORM_KEY = re.compile(r"[0-9a-f]{32}")
# A token as `issue_link` makes it: URL-safe base64 of 32 bytes.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


class AccountLink(Base):
    """One link to a person's account page: the SHA-256 of its token, whose account, and its
    expiry (`LINK_TTL` after it was sent). `opened_at` is the last time it was opened."""

    __tablename__ = "account_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AccountAction(Base):
    """One action taken from the account page, once per form key.

    Attributes:
        key: the form's random key (`FORM_KEY`), unique.
        account_id: whose page it was.
        action: one of `ACTIONS`.
        result: where the action sent the person (a path such as "/account" or "/pay/..."),
            set when it is done; a double submit is sent there too.
    """

    __tablename__ = "account_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(32), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    result: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


@dataclass(frozen=True)
class IssuedLink:
    """A link just made: the token for the URL (never stored, never logged) and its expiry."""

    token: str
    expires_at: datetime


@dataclass(frozen=True)
class Claim:
    """The result of `claim_action`.

    Attributes:
        first: this submit is the first with its key: do the action, then `finish_action`.
        result: for a repeat, where the first one sent the person (None while it is not done,
            or when it was refused and rolled back: then nothing is stored at all).
    """

    first: bool
    result: str | None = None


def token_hash(token: str) -> str:
    """The stored form of a link's token: SHA-256, 64 hex characters."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_form_key() -> str:
    """A fresh random form key (128 bits, 32 hex characters) for one rendered form."""
    return secrets.token_hex(16)


def issue_link(session: Session, account_id: int, now: datetime | None = None) -> IssuedLink:
    """A new link to the account's page, valid for `LINK_TTL`.

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: whose page the link opens.
        now: when it is sent (UTC).

    Returns:
        The `IssuedLink`; its token goes into the URL and nowhere else.
    """
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    session.add(AccountLink(token_hash=token_hash(token), account_id=account_id,
                            created_at=now, expires_at=now + LINK_TTL))
    session.flush()
    return IssuedLink(token, now + LINK_TTL)


def open_link(session: Session, token: str, now: datetime | None = None) -> AccountLink:
    """The valid link with this token, marked opened now.

    Raises:
        AccountLinkNotFound: no link has this token (or it is not a token's shape).
        AccountLinkExpired: the link's 15 minutes have passed.
    """
    now = now or utcnow()
    if not _TOKEN.fullmatch(token):
        raise AccountLinkNotFound("no account link has this token")
    link = session.scalar(select(AccountLink).where(AccountLink.token_hash == token_hash(token)))
    if link is None:
        raise AccountLinkNotFound("no account link has this token")
    if link.expires_at <= now:
        raise AccountLinkExpired("this account link has expired")
    link.opened_at = now
    session.flush()
    return link


def claim_action(session: Session, account_id: int, key: str, action: str,
                 now: datetime | None = None) -> Claim:
    """Record that the form with `key` is being acted on, once (`INSERT ... ON CONFLICT DO
    NOTHING` on `UNIQUE(key)`: two concurrent submits, one inserts and the other waits for
    its commit, then finds it).

    Args:
        key: the form's key (`FORM_KEY`).
        action: one of `ACTIONS`.

    Returns:
        `Claim(first=True)` for the first submit; otherwise the first one's result. A key
        used by another account is refused as if it were not valid.

    Raises:
        ValueError: the key is not a form key, the action is unknown, or the key belongs to
            another account's form.
    """
    if not FORM_KEY.fullmatch(key):
        raise ValueError("the form has no valid key: reload the page")
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    inserted = session.execute(_CLAIM, {
        "key": key, "account_id": account_id, "action": action, "result": None,
        "created_at": now or utcnow()}).scalar()
    if inserted is not None:
        return Claim(first=True)
    row = session.execute(select(AccountAction.account_id, AccountAction.result)
                          .where(AccountAction.key == key)).one()
    if row.account_id != account_id:
        raise ValueError("the form has no valid key: reload the page")
    return Claim(first=False, result=row.result)


def finish_action(session: Session, key: str, result: str) -> None:
    """Store where the action of `key` sent the person (a path), for a repeat submit."""
    row = session.scalar(select(AccountAction).where(AccountAction.key == key))
    if row is not None:
        row.result = result[:255]
        session.flush()


def forget_links(session: Session, account_id: int) -> int:
    """Delete every link of the account (delete my data: a link forwarded or still in the
    messages opens nothing after it). Returns how many were deleted."""
    result = session.execute(delete(AccountLink).where(AccountLink.account_id == account_id)
                             .execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


_CLAIM = insert_on_conflict(AccountAction.__table__, ("key", "account_id", "action", "result",
                                                      "created_at"), ("key",),
                            returning=("id",))
