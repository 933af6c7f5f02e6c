"""Typed errors of the conversation domain, all under one root, `BotError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokens.costs import LlmUsage


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

    Protects: nobody pays tokens for a request that was not answered (docs/economy.md, rule 3).
    `reply`, when given, is what the person gets instead of the generic apology (why, e.g. an
    unknown food, or the offline answer when the LLM failed). `usage` is what a failed LLM call
    used, when the API reported it: its cost is recorded though nothing is charged.
    """

    def __init__(
        self, reason: str, reply: str | None = None, usage: LlmUsage | None = None
    ) -> None:
        super().__init__(reason)
        self.reply = reply
        self.usage = usage
