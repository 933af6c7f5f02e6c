"""The router's docstring lists exactly the steps of `STEPS`, in their order (issue #18: one
order of the steps, written once in the code and described where a reader looks)."""

from __future__ import annotations

import re

from bot.router import steps

# How the docstring names each step (the last one runs the skill and settles).
NAMES = {
    "sender_contact": "contact", "serialise": "lock the account", "store_inbound": "store",
    "language": "language", "inbound_flood": "inbound flood",
    "compliance_keywords": "compliance keywords", "silence_opted_out": "opted-out silence",
    "silence_suspended": "suspended silence", "rate_limit": "rate limit",
    "monthly_allowance": "monthly allowance", "past_the_cutoff": "past the cutoff",
    "no_text": "no text", "free_commands": "free commands", "remembered_allergies": "allergies",
    "small_talk": "small talk",
    "classify_intent": "intent", "choose_level": "level", "reserve": "hold",
    "defer_or_answer": "[defer] -> skill -> capture",
}


def documented_chain() -> list[str]:
    doc = steps.__doc__ or ""
    block = doc.split("\n\n")[1]  # the indented chain after the first paragraph
    chain = " ".join(block.split())
    return [re.sub(r"\s*\(.*?\)", "", part).strip() for part in chain.split("->")]


def test_the_docstring_lists_the_steps_in_order():
    expected = " -> ".join(NAMES[step.__name__] for step in steps.STEPS).split(" -> ")
    assert documented_chain() == expected
    assert set(NAMES) == {step.__name__ for step in steps.STEPS}
