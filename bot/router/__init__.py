"""The router: one inbound message in, the replies out, the ledger moved exactly once.

The package has four parts (docs/pipeline.md tells the whole flow):

- `bot.router.turn`: the turn context and the outcome kinds (`BotSettings`, `Outcome`,
  `ReplyNow`, `Turn`);
- `bot.router.steps`: the ordered steps (`STEPS`) that `handle_inbound` runs, from the
  MessageSid dedupe to the hold;
- `bot.router.answer`: the answer half (the skill, the capture or void, the stored replies);
- `bot.router.pipeline`: `answer_message`, the one orchestrator of "answer a message" that the
  webhook, the worker, the inline fallback, `flask chat` and the simulator call, and
  `drain_person`, which answers one person's inbox in arrival order.
"""

from __future__ import annotations

from bot.router.answer import (
    PendingAnswer,
    SkillResult,
    billed_units,
    pending_answer,
    record_llm_cost,
    run_skill,
    settle,
    skill,
    store_replies,
    stored_reply_ids,
    waiting_answers,
)
from bot.router.pipeline import answer_message, drain_person, resume_answer
from bot.router.steps import STEPS, handle_inbound
from bot.router.turn import (
    ANSWER_OUTCOMES,
    CONTENT_OUTCOMES,
    HELP,
    OPT_IN,
    OPT_OUT,
    BotSettings,
    Outcome,
    ReplyNow,
    Turn,
)

__all__ = [
    "ANSWER_OUTCOMES", "CONTENT_OUTCOMES", "HELP", "OPT_IN", "OPT_OUT", "STEPS", "BotSettings",
    "Outcome", "PendingAnswer", "ReplyNow", "SkillResult", "Turn", "answer_message",
    "billed_units", "drain_person", "handle_inbound", "pending_answer", "record_llm_cost",
    "resume_answer", "run_skill", "settle", "skill", "store_replies", "stored_reply_ids",
    "waiting_answers",
]
