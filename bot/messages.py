"""The channel-neutral message shapes that cross from channel adapters into the router."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

CHANNELS = ("sms", "whatsapp")


@dataclass(frozen=True)
class Media:
    """One media item of an inbound message (Twilio `MediaUrl<n>` / `MediaContentType<n>`)."""

    url: str
    content_type: str


@dataclass(frozen=True)
class Location:
    """A shared location (WhatsApp). Coordinates stay decimal strings as Twilio sent them."""

    latitude: str
    longitude: str
    address: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class InboundMessage:
    """An inbound message, normalised at the edge (docs/messaging.md, Inbound step 2).

    Attributes:
        channel: "sms" or "whatsapp" (the console chat speaks as one of them).
        sender: the person's identity: E.164 ("+15551234567") when there is a phone number,
            else "wa:<WhatsApp user id>".
        text: what the person wrote (`Body`, or the button text of a quick reply); "" if none.
        message_sid: the provider's message id (Twilio `MessageSid`), unique per message.
        to: the number or address the person wrote to, as the provider gave it.
        account_sid: the provider account (Twilio `AccountSid`), if any.
        media: attached media items, in order.
        location: a shared location, if any.
        wa_id: WhatsApp user id (`WaId`), if any.
        button_payload: the developer-set id of a tapped quick-reply button, if any.
        opt_out_type: Twilio Advanced Opt-Out's `OptOutType` (STOP, START or HELP), if present;
            it is authoritative over keyword matching.
        idempotency_token: the `I-Twilio-Idempotency-Token` header, if present.
    """

    channel: str
    sender: str
    text: str
    message_sid: str
    to: str = ""
    account_sid: str | None = None
    media: tuple[Media, ...] = ()
    location: Location | None = None
    wa_id: str | None = None
    button_payload: str | None = None
    opt_out_type: str | None = None
    idempotency_token: str | None = None


def to_payload(msg: InboundMessage) -> str:
    """`msg` as a JSON object (what the inbox stores; `from_payload` reads it back exactly)."""
    return json.dumps(asdict(msg), ensure_ascii=False, separators=(",", ":"))


def from_payload(payload: str) -> InboundMessage:
    """The `InboundMessage` that `to_payload` wrote.

    Raises:
        ValueError: `payload` is not such an object (a row written by another version).
    """
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("an inbox payload is a JSON object")
    media = tuple(Media(**item) for item in data.pop("media", ()))
    location = data.pop("location", None)
    try:
        return InboundMessage(**data, media=media,
                              location=Location(**location) if location else None)
    except TypeError as exc:
        raise ValueError(f"not an inbox payload: {exc}") from None
