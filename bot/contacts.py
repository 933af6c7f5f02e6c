"""Contacts: finding or creating the person behind a sender, and masking their number for logs."""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.models import Contact
from tokens import ledger


def resolve_contact(session: Session, address: str, now: datetime) -> Contact:
    """The contact for `address`, created with a new account on first contact.

    Args:
        session: the caller's session; this function flushes, never commits.
        address: the sender identity of `InboundMessage.sender` (E.164 or "wa:<id>").
        now: the current time (UTC).

    Returns:
        The `Contact`. Two concurrent first messages from one person create one contact: the
        later INSERT hits `UNIQUE(address)` in a SAVEPOINT and the winner's row is returned.
    """
    contact = find_contact(session, address)
    if contact is not None:
        return contact
    try:
        with session.begin_nested():
            account = ledger.open_account(session, now)
            contact = Contact(address=address, account_id=account.id, created_at=now)
            session.add(contact)
            session.flush()
    except IntegrityError:
        contact = find_contact(session, address)
        if contact is None:
            raise
    return contact


def find_contact(session: Session, address: str) -> Contact | None:
    """The contact with this address (E.164 or "wa:<id>"), or None."""
    return session.scalars(select(Contact).where(Contact.address == address)).first()


def mask_address(address: str) -> str:
    """A log-safe form of a sender: country code and last two digits, e.g. "+1*********67".

    messaging.md (Privacy): logs never carry full phone numbers.
    """
    if address.startswith("+") and len(address) > 6:
        return address[:2] + "*" * (len(address) - 4) + address[-2:]
    return "id:" + hashlib.sha256(address.encode()).hexdigest()[:12]
