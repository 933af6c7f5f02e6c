"""Tables of the conversation domain: contacts (people) and the messages they exchange."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from bot.messages import CHANNELS
from tokens.base import Base, UTCDateTime, utcnow
from tokens.catalog import LANGUAGES

CHANNEL_CHECK = f"channel IN ({', '.join(repr(c) for c in CHANNELS)})"
LANGUAGE_LIST = ", ".join(repr(language) for language in LANGUAGES)

# Outbound delivery states (docs/messaging.md, "Outbound"). "pending": the row is written, the send
# not yet made; "submitting": the send is being made; "unknown": the send timed out, so Twilio
# may or may not have the message (neither is ever resent); "skipped": not sent on purpose
# (opted out, outside the WhatsApp window without a template). Twilio's own states follow, and
# only move forward.
OUTBOUND_STATES = (
    "pending", "submitting", "unknown", "skipped",
    "accepted", "scheduled", "queued", "sending", "sent", "delivered", "read",
    "undelivered", "failed", "canceled",
)
# The states of a reply on its way: stored or being sent, not yet accepted by the provider,
# so not yet costed (the exposure of the level decisions counts them, `bot.router.steps`).
ON_THE_WAY_STATES = ("pending", "submitting", "unknown")
ON_THE_WAY_SQL = f"status IN ({', '.join(repr(state) for state in ON_THE_WAY_STATES)})"



class OutcomeKind(StrEnum):
    """What the router did with one inbound message (`bot.router.turn.Outcome.kind`), stored
    in `Message.outcome`. The values are the stored strings."""

    DUPLICATE = "duplicate"  # a repeat delivery: nothing done
    FLOODED = "flooded"  # inbound past `inbound_flood_per_day` today
    OPTED_OUT = "opted_out"  # the person opted out on this channel
    SUSPENDED = "suspended"  # an operator suspended the account
    THROTTLED = "throttled"  # a per-sender rate limit
    OPT_OUT = "opt_out"  # STOP
    OPT_IN = "opt_in"  # START
    HELP = "help"
    NO_TEXT = "no_text"
    BALANCE = "balance"
    BUY = "buy"
    PREMIUM = "premium"
    AUTO_TOPUP = "auto_topup"  # AUTO ON / AUTO OFF
    ACCOUNT = "account"  # ACCOUNT: the account page's link
    MORE = "more"
    LANGUAGE = "language"  # LANGUAGE / IDIOMA
    ALLERGIES = "allergies"  # ALLERGIES / FORGET ALLERGIES (`bot.allergies`)
    SMALL_TALK = "small_talk"  # thanks, ok, an emoji...: free
    INSUFFICIENT = "insufficient"  # not enough tokens
    REFUSED = "refused"  # PAYMENT_REQUIRED
    OFFERS = "offers"  # AFFILIATE
    QUEUED = "queued"  # the skill runs in a job
    FAILED = "failed"
    ANSWERED = "answered"


OUTCOME_KINDS = tuple(kind.value for kind in OutcomeKind)


class Contact(Base):
    """A person the bot talks to, on any channel.

    `address` is the person's identity: E.164 for anyone with a phone number (so the SMS and
    WhatsApp forms of one number are one contact and share one account), or "wa:<id>" for a
    WhatsApp user without one.

    Opt-out is per channel, as Twilio enforces it: STOP by SMS blocks SMS (Twilio refuses
    every later SMS with error 21610 until the person texts START by SMS), and STOP on
    WhatsApp stops WhatsApp. On a channel where the person opted out, nothing is charged or
    sent until START arrives on that channel.
    """

    __tablename__ = "contacts"
    __table_args__ = (
        CheckConstraint(f"language IS NULL OR language IN ({LANGUAGE_LIST})",
                        name="language_known"),
        CheckConstraint(f"language_candidate IS NULL OR language_candidate IN ({LANGUAGE_LIST})",
                        name="language_candidate_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    sms_opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    whatsapp_opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    opt_out_source: Mapped[str | None] = mapped_column(String(32))
    last_channel: Mapped[str | None] = mapped_column(String(16))
    last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    whatsapp_last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    more_text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The language of the person's replies (`bot.contacts.note_language`): "en", "es", or
    # NULL until one of their messages is clearly in a language. `language_candidate` is the
    # other language of their last clear message (a second in a row switches); set
    # `language_chosen_at` (LANGUAGE / IDIOMA) and detection no longer changes it.
    language: Mapped[str | None] = mapped_column(String(2))
    language_candidate: Mapped[str | None] = mapped_column(String(2))
    language_chosen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # What the person said they are allergic to (`bot.allergies`): comma-separated keys
    # ("peanut,diet:gluten_free"), NULL when nothing is remembered. Every later answer leaves
    # these out, and one that does not is not charged; FORGET ALLERGIES clears it.
    allergies: Mapped[str | None] = mapped_column(String(300))

    def opted_out_at(self, channel: str) -> datetime | None:
        """When the person sent STOP on `channel` ("sms" or "whatsapp"), or None."""
        if channel == "whatsapp":
            return self.whatsapp_opted_out_at
        return self.sms_opted_out_at

    def set_opted_out(self, channel: str, at: datetime | None, source: str | None) -> None:
        """Record STOP (`at` a time) or START (`at` None) on `channel`."""
        if channel == "whatsapp":
            self.whatsapp_opted_out_at = at
        else:
            self.sms_opted_out_at = at
        self.opt_out_source = source


# Consent actions (docs/SECURITY.md, "Consent log"): an opt-out (STOP family or Twilio's
# OptOutType=STOP) and an opt-in (START family on a channel the person had opted out of).
CONSENT_ACTIONS = ("opt_out", "opt_in")


class ConsentEvent(Base):
    """One opt-in or opt-out, appended and never changed: the consent history the carrier
    rules ask for (who, which channel, what word or `OptOutType`, from where, when).

    Attributes:
        contact_id: whose consent; the rows go with the contact when it is forgotten.
        channel: "sms" or "whatsapp".
        action: one of `CONSENT_ACTIONS`.
        keyword: the word the person sent, upper-cased (at most 32 characters), or the
            provider's `OptOutType` when it sent one ("STOP", "START").
        source: how it arrived: "keyword" (our keyword list), "twilio" (Twilio's OptOutType on
            the webhook) or "admin".
        at: when (UTC).
    """

    __tablename__ = "consent_events"
    __table_args__ = (
        CheckConstraint(CHANNEL_CHECK, name="channel_known"),
        CheckConstraint("action IN ('opt_out', 'opt_in')", name="action_known"),
        Index("ix_consent_events_contact_id_at", "contact_id", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(8))
    keyword: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class ErasedContact(Base):
    """A forgotten number's keyed hash, tied to the account it had (`contacts forget`).

    The number itself is gone; `address_hmac` is HMAC-SHA256 of it under a key derived from
    the app's `SECRET_KEY`, so only this deployment can match it, and only when the same number
    writes again. That person is then given back the same account: no second free allowance
    this month, the same level and exposure, the same balance (bot.contacts.resolve_contact).

    Attributes:
        address_hmac: hex HMAC-SHA256 of the address (E.164 or "wa:<id>"), 64 characters.
        account_id: the account the number had.
        erased_at: when it was forgotten (UTC).
    """

    __tablename__ = "erased_contacts"

    address_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Message(Base):
    """One message in or out. Inbound rows carry the provider's unique `message_sid`.

    `UNIQUE(message_sid)` is the dedupe of Twilio's at-least-once delivery: a second delivery of
    a sid cannot be stored, so it cannot be charged (docs/messaging.md, Inbound step 3). Outbound
    replies given inline as TwiML have no sid.
    """

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("direction IN ('in', 'out')", name="direction_known"),
        CheckConstraint(CHANNEL_CHECK, name="channel_known"),
        CheckConstraint("tokens_charged >= 0", name="tokens_charged_not_negative"),
        CheckConstraint(
            f"status IS NULL OR status IN ({', '.join(repr(s) for s in OUTBOUND_STATES)})",
            name="status_known",
        ),
        CheckConstraint(
            f"outcome IS NULL OR outcome IN ({', '.join(repr(k) for k in OUTCOME_KINDS)})",
            name="outcome_known",
        ),
        # Partial indexes of the few messages the turn's standing read sums for an account
        # (`bot.router.steps.serialise`): answers still queued, replies on their way. Without
        # them each turn read every message of the person's contacts, which grows with
        # their history (migration 0018).
        Index("ix_messages_queued", "contact_id",
              sqlite_where=text("outcome = 'queued'"),
              postgresql_where=text("outcome = 'queued'")),
        Index("ix_messages_on_the_way", "contact_id",
              sqlite_where=text(ON_THE_WAY_SQL), postgresql_where=text(ON_THE_WAY_SQL)),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    direction: Mapped[str] = mapped_column(String(3))
    channel: Mapped[str] = mapped_column(String(16))
    message_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    body: Mapped[str] = mapped_column(Text, default="")
    num_media: Mapped[int] = mapped_column(Integer, default=0)
    intent: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str | None] = mapped_column(String(16))
    tokens_charged: Mapped[int] = mapped_column(Integer, default=0)
    in_reply_to_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), index=True)
    status: Mapped[str | None] = mapped_column(String(16))
    error_code: Mapped[int | None] = mapped_column(Integer)
    units: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    level: Mapped[str | None] = mapped_column(String(16))
    estimate_musd: Mapped[int | None] = mapped_column(BigInteger)
    status_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# Every column of `messages` but its id: what the router's Core INSERTs of a message bind
# (`bot.router.steps.store_inbound`, `bot.router.answer.store_replies`), so that the row
# they write is known to the session whole.
MESSAGE_COLUMNS = ("contact_id", "direction", "channel", "message_sid", "body", "num_media",
                   "intent", "outcome", "tokens_charged", "in_reply_to_id", "status",
                   "error_code", "units", "level", "estimate_musd", "status_at", "created_at")


class MessageStatusEvent(Base):
    """One delivery status callback, kept once per (MessageSid, MessageStatus).

    Twilio retries callbacks and sends them out of order; `UNIQUE(message_sid, status)` makes a
    repeat a no-op (docs/messaging.md, "Outbound").
    """

    __tablename__ = "message_status_events"
    __table_args__ = (UniqueConstraint("message_sid", "status", name="sid_status_once"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_sid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class InboxMessage(Base):
    """An inbound message the webhook acknowledged and no worker has routed yet (the inbox).

    With Redis configured the webhook only checks the signature, parses the form and inserts
    this row (`INSERT ... ON CONFLICT (message_sid) DO NOTHING`, so a repeat delivery is a
    no-op), then enqueues the answer job. The worker routes the person's rows oldest first
    (`bot.router.answer.drain_person`) and deletes each row in the transaction that stores the
    routed `Message`, so the table holds only the backlog. docs/pipeline.md has the design.

    Attributes:
        sender: the person's identity (`InboundMessage.sender`: E.164 or "wa:<id>"); the
            key of per-person order.
        payload: the parsed `InboundMessage` as JSON (`bot.messages.to_payload`).
    """

    __tablename__ = "inbox"
    __table_args__ = (
        CheckConstraint(CHANNEL_CHECK, name="channel_known"),
        Index("ix_inbox_sender_id", "sender", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_sid: Mapped[str] = mapped_column(String(64), unique=True)
    sender: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
