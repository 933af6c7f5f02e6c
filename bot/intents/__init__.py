"""Intents and their skills: one skill per intent, registered under the intent's catalog name.

A skill turns a `SkillRequest` into a `SkillAnswer`. The registered skills answer offline from
the content shipped in `bot/content/`; when an LLM is configured, `bot.intents.llm.LlmSkill`
answers instead, with the offline skill as its fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.errors import BotError
from tokens.catalog import DEFAULT_LLM_TIER
from tokens.costs import LlmUsage


@dataclass(frozen=True)
class SkillRequest:
    """What a skill gets.

    Attributes:
        intent: the intent name the router classified, e.g. "meal_plan".
        text: the person's message as they wrote it.
        channel: "sms" or "whatsapp" (an SMS answer should stay short).
        history: earlier turns of the conversation, oldest first, as (role, text) with role
            "user" or "assistant".
        tier: the LLM tier to answer with ("normal", "reduced"; `tokens.levels.LLM_TIER_OF`
            of the answer's level).
        language: "en" or "es" to answer in; None to use the language detected from `text`
            (`bot.intents.classifier.detect_language`).
        allergies: what the person said earlier they are allergic to (`bot.allergies` keys):
            the skill leaves it out as if this message asked it.
    """

    intent: str
    text: str
    channel: str
    history: tuple[tuple[str, str], ...] = ()
    tier: str = DEFAULT_LLM_TIER
    language: str | None = None
    allergies: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkillAnswer:
    """What a skill gives back.

    Attributes:
        text: the reply.
        source: "offline", "llm" or "cache" (an LLM answer from the cache).
        usage: the LLM call's usage, for its cost; None when no call was made.
    """

    text: str
    source: str = "offline"
    usage: LlmUsage | None = None


class Skill(Protocol):
    """The interface every intent's skill implements."""

    intent: str

    def answer(self, request: SkillRequest) -> SkillAnswer:
        """Answer `request`. Raises `bot.errors.SkillFailed` when no answer can be given."""
        ...


class UnknownIntent(BotError):
    """The catalog names an intent for which no skill is registered."""


_SKILLS: dict[str, Skill] = {}


def register_skill(skill: Skill) -> Skill:
    """Register `skill` under `skill.intent` and return it."""
    _SKILLS[skill.intent] = skill
    return skill


def skill_for(intent: str) -> Skill:
    """The skill registered for `intent`.

    Raises:
        UnknownIntent: no skill is registered under that name (a catalog names an intent this
            bot cannot answer).
    """
    from bot.intents import offline  # noqa: F401  (importing registers the offline skills)

    try:
        return _SKILLS[intent]
    except KeyError:
        raise UnknownIntent(f"no skill is registered for intent {intent!r}") from None
