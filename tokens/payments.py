"""Payments, starting with pay links: the short `PUBLIC_BASE_URL/pay/<token>` a reply carries.

A pay link token is random (256 bits, URL-safe), stored with the account, the pack and an expiry,
and carries no phone number or amount (shared/design/payments.md, "Pay links"). The checkout
behind the link (Stripe or the sandbox provider) is created when the link is opened.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tokens.base import Base, UTCDateTime, utcnow
from tokens.errors import PayLinkExpired, PayLinkNotFound


class PayLink(Base):
    """A stored pay link: opaque `token` -> (account, pack code, expiry)."""

    __tablename__ = "pay_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    pack_code: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


def issue_pay_link(
    session: Session,
    account_id: int,
    pack_code: str,
    *,
    ttl_seconds: int,
    now: datetime | None = None,
) -> PayLink:
    """A pay link for this account and pack: the newest one still valid for more than half its
    lifetime, or a new one.

    Re-using a fresh link keeps one link per person in their recent messages instead of a new
    URL for each refusal; a link close to expiry is replaced so that a person never receives a
    link that dies minutes later.

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: the paying account.
        pack_code: a pack code of the catalog.
        ttl_seconds: lifetime of a new link (catalog `pay_link_ttl_hours`, default 72 h).
        now: the current time (UTC).

    Returns:
        The `PayLink`; its `token` goes into the URL.
    """
    now = now or utcnow()
    fresh_after = now + timedelta(seconds=ttl_seconds // 2)
    link = session.scalars(
        select(PayLink)
        .where(
            PayLink.account_id == account_id,
            PayLink.pack_code == pack_code,
            PayLink.expires_at > fresh_after,
        )
        .order_by(PayLink.expires_at.desc())
        .limit(1)
    ).first()
    if link is not None:
        return link
    link = PayLink(
        token=secrets.token_urlsafe(32),
        account_id=account_id,
        pack_code=pack_code,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    session.add(link)
    session.flush()
    return link


def find_pay_link(session: Session, token: str, now: datetime | None = None) -> PayLink:
    """The valid pay link with this token.

    Raises:
        PayLinkNotFound: no link has this token.
        PayLinkExpired: the link's expiry has passed.
    """
    link = session.scalars(select(PayLink).where(PayLink.token == token)).first()
    if link is None:
        raise PayLinkNotFound("no pay link has this token")
    if link.expires_at <= (now or utcnow()):
        raise PayLinkExpired("this pay link has expired")
    return link
