"""Tables of the conversation domain: contacts (people) and the messages they exchange."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tokens.base import Base, UTCDateTime, utcnow

CHANNEL_CHECK = "channel IN ('sms', 'whatsapp', 'console')"


class Contact(Base):
    """A person the bot talks to, on any channel.

    `address` is the person's identity: E.164 for anyone with a phone number (so the SMS and
    WhatsApp forms of one number are one contact and share one account), or "wa:<id>" for a
    WhatsApp user without one. Opt-out is per person: after STOP on any channel nothing is
    charged or sent until START.
    """

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    opt_out_source: Mapped[str | None] = mapped_column(String(32))
    last_channel: Mapped[str | None] = mapped_column(String(16))
    last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    whatsapp_last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def opted_out(self) -> bool:
        """True after STOP and until START."""
        return self.opted_out_at is not None


class Message(Base):
    """One message in or out. Inbound rows carry the provider's unique `message_sid`.

    `UNIQUE(message_sid)` is the dedupe of Twilio's at-least-once delivery: a second delivery of
    a sid cannot be stored, so it cannot be charged (messaging.md, Inbound step 3). Outbound
    replies given inline as TwiML have no sid.
    """

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("direction IN ('in', 'out')", name="direction_known"),
        CheckConstraint(CHANNEL_CHECK, name="channel_known"),
        CheckConstraint("tokens_charged >= 0", name="tokens_charged_not_negative"),
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
    in_reply_to_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
