"""The console channel: a person typing at `flask --app wsgi chat`, through the same router."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from bot.channels import register
from bot.channels.twilio import to_e164
from bot.errors import InvalidSender
from bot.messages import InboundMessage


@dataclass(frozen=True)
class ConsoleAdapter:
    """Input half: a typed line -> `InboundMessage`; output half: plain text."""

    name: str = "console"

    def parse_line(self, sender: str, text: str, channel: str = "sms") -> InboundMessage:
        """An `InboundMessage` as if `sender` had texted `text` on `channel` ("sms"/"whatsapp").

        Each line gets a fresh message id ("CONSOLE<32 hex>"), so it is never taken for a
        repeat delivery.

        Raises:
            InvalidSender: `sender` is not a phone number in E.164 form.
        """
        e164 = to_e164(sender.strip())
        if e164 is None:
            raise InvalidSender(
                f"{sender!r} is not a phone number in E.164 form, e.g. +15551234567"
            )
        return InboundMessage(
            channel=channel,
            sender=e164,
            text=text.strip(),
            message_sid=f"CONSOLE{uuid.uuid4().hex}",
            to="console",
        )

    def render_reply(self, texts: list[str]) -> str:
        """The reply texts, one paragraph each."""
        return "\n\n".join(texts)


CONSOLE = register(ConsoleAdapter())
