"""Contacts: finding or creating the person behind a sender, and masking their number for logs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.models import Contact, InboxMessage, Message, MessageStatusEvent
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


@dataclass(frozen=True)
class Forgotten:
    """What `forget` deleted: the account kept, and counts of rows removed."""

    account_id: int
    messages: int
    status_events: int


def forget(session: Session, address: str) -> Forgotten | None:
    """Delete a person's conversation data (messaging.md, "Privacy"): their messages (bodies,
    metadata, delivery callbacks, and any still waiting in the inbox), the unread "MORE" text
    and the contact row that ties their number to the account. Money records stay: the
    account, its ledger, holds, costs, revenue, payments and affiliate records keep their ids
    and are no longer linked to any number.

    A person who writes again later starts as a new contact with a new account.

    Args:
        session: the caller's session; this function flushes, never commits.
        address: the sender identity (E.164 or "wa:<id>").

    Returns:
        The counts, or None when no contact has this address (its messages still waiting in
        the inbox, if any, are deleted all the same).
    """
    # Messages acknowledged and not yet routed go too: nothing will answer them.
    waiting = session.execute(delete(InboxMessage).where(InboxMessage.sender == address)
                              .execution_options(synchronize_session=False))
    contact = find_contact(session, address)
    if contact is None:
        return None
    ledger.lock_account(session, contact.account_id)
    sids = select(Message.message_sid).where(Message.contact_id == contact.id,
                                             Message.message_sid.is_not(None))
    events = session.execute(
        delete(MessageStatusEvent).where(MessageStatusEvent.message_sid.in_(sids))
        .execution_options(synchronize_session=False))
    # Replies point at the message they answer: unlink them first, then delete every row.
    session.execute(update(Message).where(Message.contact_id == contact.id)
                    .values(in_reply_to_id=None).execution_options(synchronize_session=False))
    messages = session.execute(delete(Message).where(Message.contact_id == contact.id)
                               .execution_options(synchronize_session=False))
    account_id = contact.account_id
    session.delete(contact)
    session.flush()
    deleted = int(messages.rowcount) + int(waiting.rowcount)  # type: ignore[attr-defined]
    return Forgotten(account_id, deleted, int(events.rowcount))  # type: ignore[attr-defined]


def mask_address(address: str) -> str:
    """A log-safe form of a sender: country code and last two digits, e.g. "+1*********67".

    messaging.md (Privacy): logs never carry full phone numbers.
    """
    if address.startswith("+") and len(address) > 6:
        return address[:2] + "*" * (len(address) - 4) + address[-2:]
    return "id:" + hashlib.sha256(address.encode()).hexdigest()[:12]
