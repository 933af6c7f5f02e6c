"""Contacts: finding or creating the person behind a sender, and masking their number for logs."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.intents.classifier import (
    ENGLISH_WORDS,
    SPANISH_WORDS,
    detect_language,
    normalise_text,
)
from bot.models import (
    ConsentEvent,
    Contact,
    ErasedContact,
    InboxMessage,
    Message,
    MessageStatusEvent,
)
from tokens import ledger
from tokens.base import load_compiled, utcnow
from tokens.catalog import LANGUAGES


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
    """The contact with this address (E.164 or "wa:<id>"), or None: the first statement of
    every turn (`bot.router.steps.sender_contact`), one compiled SELECT
    (`tokens.base.load_compiled`; `UNIQUE(address)`)."""
    contact: Contact | None = load_compiled(session, Contact, "by_address", {"address": address})
    return contact


# A message is clearly in a language when it has at least this many of that language's marker
# words, and at least twice as many as of the other's ("what is arroz con pollo" is not).
CLEAR_LANGUAGE_MARKERS = 2


def clear_language(text: str) -> str | None:
    """The language `text` is clearly written in, "en" or "es", or None when it is not clear.

    The language is the project's own `bot.intents.classifier.detect_language` (a vote of
    marker words and Spanish letters; no general language identifier is installed). It is
    clear when the message has at least `CLEAR_LANGUAGE_MARKERS` marker words of that
    language (`SPANISH_WORDS`, `ENGLISH_WORDS`) and at least twice as many as of the other:
    "plan de comidas vegetariano" and "how do I make pancakes" are clear; "ok", "gracias",
    "BALANCE", an emoji or "what is arroz con pollo" are not.
    """
    words = normalise_text(text).split()
    if len(words) < CLEAR_LANGUAGE_MARKERS:
        return None
    detected = detect_language(text)
    own, other = ((SPANISH_WORDS, ENGLISH_WORDS) if detected == "es"
                  else (ENGLISH_WORDS, SPANISH_WORDS))
    mine = sum(1 for word in words if word in own)
    theirs = sum(1 for word in words if word in other)
    if mine >= CLEAR_LANGUAGE_MARKERS and mine >= 2 * theirs:
        return detected
    return None


@dataclass(frozen=True)
class LanguageState:
    """What the contact row keeps of a person's language (`Contact.language`,
    `language_candidate`, `language_chosen_at`), as a value: the router works out the next
    state early in the turn and writes it with the turn's other changes to the contact
    (`write`), so that knowing the language costs no statement of its own.

    Attributes:
        language: "en", "es", or None while not known.
        candidate: the other language of the last clear message, or None.
        chosen_at: when the person chose `language` with LANGUAGE / IDIOMA (UTC), or None.
    """

    language: str | None
    candidate: str | None = None
    chosen_at: datetime | None = None

    @classmethod
    def of(cls, contact: Contact) -> LanguageState:
        """The state as the contact row holds it."""
        return cls(contact.language, contact.language_candidate, contact.language_chosen_at)

    def write(self, contact: Contact) -> None:
        """Set the contact's columns that differ from this state (none: nothing is dirtied)."""
        if contact.language != self.language:
            contact.language = self.language
        if contact.language_candidate != self.candidate:
            contact.language_candidate = self.candidate
        if contact.language_chosen_at != self.chosen_at:
            contact.language_chosen_at = self.chosen_at


def noted_language(state: LanguageState, text: str) -> LanguageState:
    """The person's language after one more of their messages.

    The rule: the first message clearly in a language (`clear_language`) sets it; afterwards
    two clear messages in a row in the other language switch it (`candidate` keeps the first
    of the two; a clear message in the current language resets it). Messages that are not
    clear ("ok", "gracias", commands, emoji) change nothing. A language the person chose
    (`chosen_language`) is never changed by detection.
    """
    if state.chosen_at is not None:
        return state
    detected = clear_language(text)
    if detected is None:
        return state
    if state.language is None or state.candidate == detected:
        return LanguageState(detected)
    if detected == state.language:
        return LanguageState(detected)
    return LanguageState(state.language, detected)


def chosen_language(language: str, now: datetime) -> LanguageState:
    """The state after the person chose `language` ("en", "es") with LANGUAGE / IDIOMA: it
    stays until they choose again.

    Raises:
        ValueError: `language` is not one the bot speaks (`tokens.catalog.LANGUAGES`).
    """
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; the bot speaks {', '.join(LANGUAGES)}")
    return LanguageState(language, None, now)


def reply_language(known: Contact | LanguageState | None, text: str) -> str:
    """The language to reply to `text` in: the person's (`Contact.language`, or that of a
    `LanguageState`), or, while it is not known yet, the message's own (`detect_language`;
    English when in doubt)."""
    language = known.language if known is not None else None
    if language in LANGUAGES:
        assert language is not None
        return language
    return detect_language(text)


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
    """A log-safe form of a sender: the number's first digit and last two, e.g.
    "+1********67" for "+16505558867"; a WhatsApp id without a number keeps its "wa:" and
    last two characters ("wa:**********23"); an id of 4 characters or fewer is all stars.

    No hash: an id is usually a phone number's digits, and an unkeyed hash of those is undone
    by hashing every number. docs/messaging.md (Privacy): logs never carry full phone numbers.
    """
    if address.startswith("+") and len(address) > 6:
        return address[:2] + "*" * (len(address) - 4) + address[-2:]
    prefix = "wa:" if address.startswith("wa:") else ""
    rest = address[len(prefix):]
    if len(rest) <= 4:
        return prefix + "*" * len(rest)
    return prefix + "*" * (len(rest) - 2) + rest[-2:]
