"""The LLM-backed skill: one per intent, with the offline skill as its fallback.

On an LLM error or timeout the person gets the offline answer (or an apology) and is charged
nothing: the skill raises `SkillFailed` with that reply, and the router voids the hold (issue
#4; economy.md, rule 3).
"""

from __future__ import annotations

import logging

from bot import replies
from bot.errors import SkillFailed
from bot.intents import Skill, SkillAnswer, SkillRequest
from bot.llm import ChatClient, LlmError, build_request
from tokens.catalog import IntentSpec, LlmSettings

log = logging.getLogger(__name__)


class LlmSkill:
    """Answers one intent with the LLM.

    Args:
        spec: the intent (its `prompt` is sent after the system prompt).
        settings: the catalog's LLM settings (system prompt, tiers).
        chat: the client (usually a `CachedChat` around `OpenAIChat`).
        fallback: the offline skill of the intent, used when the LLM fails; None for none.
    """

    def __init__(
        self, spec: IntentSpec, settings: LlmSettings, chat: ChatClient, fallback: Skill | None
    ) -> None:
        self.intent = spec.name
        self.spec = spec
        self.settings = settings
        self.chat = chat
        self.fallback = fallback

    def answer(self, request: SkillRequest) -> SkillAnswer:
        """Ask the LLM within the tier's caps.

        Raises:
            SkillFailed: the LLM gave no usable answer; `reply` is the offline answer marked
                as free, or the apology, and `usage` what the failed call used.
            CatalogError: the catalog has no LLM settings for `request.tier`.
        """
        tier = self.settings.tier(request.tier)
        chat_request = build_request(self.settings, tier, self.spec, request.text,
                                     request.history, request.channel)
        try:
            reply = self.chat.complete(chat_request)
        except LlmError as exc:
            raise SkillFailed(f"llm: {exc}", reply=self._fallback(request),
                              usage=exc.usage) from None
        return SkillAnswer(reply.text, source="cache" if reply.cached else "llm",
                           usage=reply.usage)

    def _fallback(self, request: SkillRequest) -> str:
        if self.fallback is None:
            return replies.SKILL_FAILED
        try:
            offline = self.fallback.answer(request)
        except SkillFailed as exc:
            return exc.reply or replies.SKILL_FAILED
        return f"{replies.OFFLINE_FREE}\n{offline.text}"
