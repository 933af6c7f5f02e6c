"""Typed errors of the conversation domain, all under one root, `BotError`."""

from __future__ import annotations


class BotError(Exception):
    """Root of every error raised by the `bot` package."""


class InvalidInbound(BotError):
    """A provider payload cannot become an `InboundMessage` (missing or malformed field).

    Protects: nothing half-parsed gets past the channel adapter; the web layer answers 400 with
    this message as the reason.
    """


class InvalidSender(InvalidInbound):
    """The sender is not a phone number in a form we can normalise to E.164."""


class SkillFailed(BotError):
    """A skill could not produce an answer, so nothing is charged.

    Protects: nobody pays tokens for a request that was not answered (economy.md, rule 3).
    `reply`, when given, tells the person why (e.g. an unknown food) instead of the generic
    apology.
    """

    def __init__(self, reason: str, reply: str | None = None) -> None:
        super().__init__(reason)
        self.reply = reply
