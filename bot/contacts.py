"""Contacts: finding or creating the person behind a sender, and masking their number for logs."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.models import (
    ConsentEvent,
    Contact,
    ErasedContact,
    InboxMessage,
    Message,
    MessageStatusEvent,
)
from tokens import ledger
from tokens.base import utcnow


def erasure_key(secret_key: str) -> bytes:
    """The HMAC key of forgotten numbers (`ErasedContact`), derived from the app's
    `SECRET_KEY` so that it is this deployment's alone and separate from the key that signs
    sessions. Rotating `SECRET_KEY` forgets which numbers were forgotten."""
    return hmac.new(secret_key.encode(), b"erased-contacts", hashlib.sha256).digest()


def address_hmac(key: bytes, address: str) -> str:
    """Hex HMAC-SHA256 of `address` (E.164 or "wa:<id>") under `key` (`erasure_key`)."""
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()


def resolve_contact(session: Session, address: str, now: datetime,
                    erased_key: bytes | None = None) -> Contact:
    """The contact for `address`, created on first contact: with a new account, or with the
    account the number had before it was forgotten (`forget`), so that erasure never hands
    out a second free allowance or resets a level.

    Args:
        session: the caller's session; this function flushes, never commits.
        address: the sender identity of `InboundMessage.sender` (E.164 or "wa:<id>").
        now: the current time (UTC).
        erased_key: `erasure_key(SECRET_KEY)`; None: forgotten numbers are not looked up
            (tests of the router alone).

    Returns:
        The `Contact`. Two concurrent first messages from one person create one contact: the
        later INSERT hits `UNIQUE(address)` in a SAVEPOINT and the winner's row is returned.
    """
    contact = find_contact(session, address)
    if contact is not None:
        return contact
    try:
        with session.begin_nested():
            erased = None
            if erased_key is not None:
                erased = session.get(ErasedContact, address_hmac(erased_key, address))
            if erased is not None:
                account_id = erased.account_id
                session.delete(erased)  # the contact row ties the number to it again
            else:
                account_id = ledger.open_account(session, now).id
            contact = Contact(address=address, account_id=account_id, created_at=now)
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


def forget(session: Session, address: str, erased_key: bytes | None = None,
           now: datetime | None = None) -> Forgotten | None:
    """Delete a person's conversation data (docs/SECURITY.md, "Erasure"): their messages
    (bodies, metadata, delivery callbacks, and any still waiting in the inbox), their consent
    log, the unread "MORE" text and the contact row that ties their number to the account.
    Money records stay: the account, its ledger, holds, costs, revenue, payments and affiliate
    records keep their ids and are no longer linked to any number.

    What is kept of the number is its keyed hash (`ErasedContact`, HMAC-SHA256 under
    `erased_key`), tied to the account: if the same number writes again it gets that account
    back (`resolve_contact`), with its balance, this month's allowance already granted, and its
    exposure and level, instead of a fresh free allowance.

    Args:
        session: the caller's session; this function flushes, never commits.
        address: the sender identity (E.164 or "wa:<id>").
        erased_key: `erasure_key(SECRET_KEY)`; None keeps no hash (the number would start
            over as a new person).
        now: when (UTC); default now.

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
    session.execute(delete(ConsentEvent).where(ConsentEvent.contact_id == contact.id)
                    .execution_options(synchronize_session=False))
    account_id = contact.account_id
    if erased_key is not None:
        session.merge(ErasedContact(address_hmac=address_hmac(erased_key, address),
                                    account_id=account_id, erased_at=now or utcnow()))
    session.delete(contact)
    session.flush()
    deleted = int(messages.rowcount) + int(waiting.rowcount)  # type: ignore[attr-defined]
    return Forgotten(account_id, deleted, int(events.rowcount))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ConsentLine:
    """One line of the consent log, for pages and exports: the number masked."""

    account_id: int
    contact: str  # masked (`mask_address`)
    channel: str
    action: str  # "opt_out" or "opt_in"
    keyword: str
    source: str
    at: datetime


def consent_log(session: Session, account_id: int | None = None,
                limit: int | None = None) -> list[ConsentLine]:
    """The consent log (`ConsentEvent`), newest first: one account's, or everyone's.

    Args:
        account_id: only this account's contacts; None: all.
        limit: at most this many lines; None: all.
    """
    query = (select(ConsentEvent, Contact.account_id, Contact.address)
             .join(Contact, Contact.id == ConsentEvent.contact_id)
             .order_by(ConsentEvent.at.desc(), ConsentEvent.id.desc()))
    if account_id is not None:
        query = query.where(Contact.account_id == account_id)
    if limit is not None:
        query = query.limit(limit)
    return [ConsentLine(owner, mask_address(address), event.channel, event.action,
                        event.keyword, event.source, event.at)
            for event, owner, address in session.execute(query)]


def mask_address(address: str) -> str:
    """A log-safe form of a sender: country code and last two digits, e.g. "+1*********67".

    messaging.md (Privacy): logs never carry full phone numbers.
    """
    if address.startswith("+") and len(address) > 6:
        return address[:2] + "*" * (len(address) - 4) + address[-2:]
    return "id:" + hashlib.sha256(address.encode()).hexdigest()[:12]
