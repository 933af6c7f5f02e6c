"""Progressive restriction: the level a person's next answer gets (docs/economy.md,
"Levels").

Exposure E = this month's cost - this month's revenue (µUSD, `tokens.costs.AccountMonth`).
Each level bounds what an answer may cost (its *ceiling*: the LLM call at the caps of the
level's LLM tier plus the reply's messaging at the channel's cap), and the decision is made on
E + that ceiling:

    NORMAL            if E + ceiling(NORMAL)  < reduced           ($0.20)
    REDUCED           if E + ceiling(REDUCED) < basic             ($0.40)
    BASIC             if E + ceiling(BASIC)   < affiliate         ($0.60)
    AFFILIATE         if E + ceiling(AFFILIATE) < payment_required ($2.00)
    PAYMENT_REQUIRED  otherwise

so no answer can carry a person past the next threshold, nor past the cutoff (rule 1, bounded
loss), and more exposure never gives a better level (rule 2, monotonic). A paying person (an
active premium subscription, or purchased tokens that cover the price) gets NORMAL: the levels
never degrade what they paid for (rule 3). Past the cutoff a person gets only short
refusals. Every reply the bot sends that exposure does not gate (HELP, START and STOP
confirmations, throttle notices, refusals, alerts and billing notices, free replies past the
cutoff) draws on one daily budget, `free_replies_per_day`, and BALANCE/BUY/BUY PREMIUM past
the cutoff on `billing_replies_per_day`, so the month's loss has a ceiling computable from the
catalog (`monthly_loss_ceiling_musd`).

`decide` is a pure function; `LevelState` keeps the throttles (last upsell, the day's budgets).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, Session, mapped_column

from tokens.base import Base, UTCDateTime, get_compiled
from tokens.catalog import Catalog, IntentSpec, LlmTier
from tokens.periods import Month

NORMAL, REDUCED, BASIC, AFFILIATE, PAYMENT_REQUIRED = (
    "NORMAL", "REDUCED", "BASIC", "AFFILIATE", "PAYMENT_REQUIRED")
LEVELS = (NORMAL, REDUCED, BASIC, AFFILIATE, PAYMENT_REQUIRED)  # best to worst
# The LLM tier each level may use; the others answer from templates (no LLM cost).
LLM_TIER_OF = {NORMAL: "normal", REDUCED: "reduced"}
# Tokens a chat API adds per message beyond its text (role and separators), counted generously.
TOKEN_OVERHEAD_PER_MESSAGE = 8
UTF8_MAX_BYTES = 4


def upper_bounds(catalog: Catalog) -> dict[str, int]:
    """The exposure (µUSD) each level must stay under, answer included."""
    t = catalog.levels
    return {NORMAL: t.reduced_musd, REDUCED: t.basic_musd, BASIC: t.affiliate_musd,
            AFFILIATE: t.payment_required_musd}


# The longest constraints clause (with a retry's correction) the LLM skill adds to the system
# prompt, characters: `bot.llm.MAX_CONSTRAINTS_CHARS` (tokens/ does not import bot/; a test
# checks the two agree).
CONSTRAINTS_MAX_CHARS = 1000
# An answer that breaks the person's exclusions is asked for once more (bot/intents/llm.py).
CALLS_PER_ANSWER = 2


def llm_ceiling_musd(catalog: Catalog, tier: LlmTier, spec: IntentSpec) -> int:
    """The most one LLM answer at the LLM tier `tier` can cost, µUSD.

    Input tokens are bounded by UTF-8 bytes (a byte-level BPE token is at least one byte, and
    a character at most 4 bytes): the system and intent prompts, the constraints clause
    (`CONSTRAINTS_MAX_CHARS`), the input cap, and a per-message overhead for each context
    message; output tokens by `max_tokens` ("the actual cost is bounded by the estimate's
    ceiling", docs/pipeline.md). Calls are made without library retries, and an answer
    that breaks the person's exclusions is asked for once more (`bot.intents.llm`), so one
    answer is at most `CALLS_PER_ANSWER` calls of that size.
    """
    llm = catalog.llm
    prompt_chars = len(llm.system_prompt) + len(spec.prompt) + 64 + CONSTRAINTS_MAX_CHARS
    messages = llm.history_messages + 2
    input_tokens = (UTF8_MAX_BYTES * (prompt_chars + tier.max_input_chars)
                    + TOKEN_OVERHEAD_PER_MESSAGE * messages)
    one_call = catalog.costs.model(tier.model).cost_musd(input_tokens, tier.max_tokens)
    return CALLS_PER_ANSWER * one_call


def reply_ceiling_musd(catalog: Catalog, channel: str) -> int:
    """The most a content reply's messaging can cost, µUSD: the channel's cap on one reply
    (SMS segments, WhatsApp messages; the rest waits for the free MORE) at the outbound rate."""
    rate = catalog.costs.messaging[channel]
    units = catalog.sms_max_segments if channel == "sms" else catalog.whatsapp_max_messages
    return rate.outbound_musd * units


def ceilings(catalog: Catalog, spec: IntentSpec, channel: str, llm_enabled: bool
             ) -> dict[str, int]:
    """The cost ceiling (µUSD) of answering `spec` on `channel` at each level.

    Args:
        llm_enabled: an LLM is configured (without one every level answers from templates).
    """
    reply = reply_ceiling_musd(catalog, channel)
    result = {}
    for level in LEVELS:
        cost = reply
        llm_tier_name = LLM_TIER_OF.get(level)
        if llm_enabled and llm_tier_name is not None:
            cost += llm_ceiling_musd(catalog, catalog.llm.tier(llm_tier_name), spec)
        result[level] = cost
    return result


def decide(exposure_musd: int, ceiling_by_level: Mapping[str, int], catalog: Catalog, *,
           paying: bool) -> str:
    """The level of the next answer: the best one whose threshold E + its ceiling stays
    under (see the module docstring); NORMAL for a paying person.

    Args:
        exposure_musd: month-to-date cost - revenue, plus the ceilings of answers still
            being given (queued), µUSD.
        ceiling_by_level: `ceilings(...)` for the request.
        catalog: the thresholds.
        paying: premium, or purchased tokens cover the price.
    """
    if paying:
        return NORMAL
    bounds = upper_bounds(catalog)
    for level in LEVELS[:-1]:
        if exposure_musd + ceiling_by_level[level] < bounds[level]:
            return level
    return PAYMENT_REQUIRED


def monthly_loss_ceiling_musd(catalog: Catalog, days_in_month: int = 31, *,
                              holds_purchased_tokens: bool = False,
                              classify_call_musd: int = 0) -> int:
    """The most a person can cost in a month beyond what they paid that month, µUSD, counting
    every reply the bot sends; not counting their own inbound messages (the carrier bills
    those whatever we do; reported beside it, and a flood past `inbound_flood_per_day`
    silences the person for the day).

        ceiling = payment_required + days x (free_replies_per_day + billing_replies_per_day)
                  x reply

    where `reply` is the dearest channel's reply at its segment cap (`reply_ceiling_musd`).
    Answers and the free replies exposure gates (MORE, small talk, BALANCE/BUY before the
    cutoff) go out only while exposure plus their ceiling stays under the cutoff
    (`payment_required`); every other reply (HELP, START, STOP confirmations, throttle
    notices, refusals, alerts, billing notices, free replies past the cutoff) draws on the
    daily `free_replies_per_day`, and BALANCE/BUY/BUY PREMIUM past the cutoff on
    `billing_replies_per_day`. Notices that follow money in (a pack credited, premium
    started) are outside the budget: the payment covers them.

    A person holding purchased tokens is served NORMAL whatever their exposure, while the
    free tokens, spent first, last (`holds_purchased_tokens`): add the free allowance's
    answers at the dearest answer's ceiling.

    With an LLM, the classification calls asked before the turn for messages the rules are
    unsure of add `days x llm.classify_per_day x channels x classify_call_musd` (the budget
    is per sender address, and a person has one per channel); the caller passes the call's
    ceiling (`bot.intents.llm_classify.classification_ceiling_musd`), 0 without an LLM.
    """
    reply = max(reply_ceiling_musd(catalog, channel) for channel in catalog.costs.messaging)
    ceiling = (catalog.levels.payment_required_musd
               + (catalog.levels.free_replies_per_day + catalog.levels.billing_replies_per_day)
               * days_in_month * reply)
    ceiling += (days_in_month * catalog.llm.classify_per_day * len(catalog.costs.messaging)
                * classify_call_musd)
    if holds_purchased_tokens:
        cheapest = min(spec.price for spec in catalog.intents)
        dearest = max(ceilings(catalog, spec, channel, True)[NORMAL]
                      for spec in catalog.intents for channel in catalog.costs.messaging)
        ceiling += catalog.free_monthly_allowance // cheapest * dearest
    return ceiling


def days_in(moment: datetime) -> int:
    """Days in the month of `moment` (its own calendar month, as given: no zone conversion)."""
    return Month(moment.year, moment.month).day_count


class LevelState(Base):
    """Per-person throttles of the level notices and the daily budgets of free replies.

    Attributes:
        last_upsell_at: when the last upsell line went out (at most one per
            `upsell_every_hours`, unless the level changed).
        last_upsell_level: the level that line explained.
        reply_day: the UTC day ("YYYY-MM-DD") the day's counters count.
        free_replies: replies sent that day from the budget of free replies (at most
            `free_replies_per_day`, then silence): HELP, START/STOP confirmations, throttle
            notices, refusals, alerts, billing notices, free replies past the cutoff.
        billing_replies: BALANCE/BUY/BUY PREMIUM replies sent that day past the cutoff (at
            most `billing_replies_per_day`, then silence).
        help_day: the UTC day the full HELP answer last went out (once a day; later HELPs
            that day get the one-line form).
        alert_day: the UTC day the last low-balance alert went out (at most one a day,
            `tokens.alerts`).
        flooded_day: the UTC day the person's inbound messages passed
            `inbound_flood_per_day` (silenced for the rest of that day; flagged on the
            admin pages).
        override_level, override_until: an operator's level for this person until then (UTC),
            used instead of `decide` (admin pages; the operator owns the cost it allows).
    """

    __tablename__ = "level_states"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    last_upsell_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_upsell_level: Mapped[str | None] = mapped_column(String(16))
    reply_day: Mapped[str | None] = mapped_column(String(10))
    free_replies: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    billing_replies: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    help_day: Mapped[str | None] = mapped_column(String(10))
    alert_day: Mapped[str | None] = mapped_column(String(10))
    flooded_day: Mapped[str | None] = mapped_column(String(10))
    override_level: Mapped[str | None] = mapped_column(String(16))
    override_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


def state_of(session: Session, account_id: int) -> LevelState:
    """The person's throttle state (created on first use; the caller holds the account lock)."""
    state: LevelState | None = get_compiled(session, LevelState, account_id)
    if state is None:
        state = LevelState(account_id=account_id, free_replies=0, billing_replies=0)
        session.add(state)
        session.flush()
    return state


def override_of(session: Session, account_id: int, now: datetime) -> str | None:
    """The operator's level for this person at `now` (UTC), or None when none is in force."""
    state: LevelState | None = get_compiled(session, LevelState, account_id)
    if (state is None or state.override_level is None or state.override_until is None
            or state.override_until <= now):
        return None
    return state.override_level


def take_upsell(session: Session, account_id: int, catalog: Catalog, now: datetime,
                level: str) -> bool:
    """Whether the notice of `level` (with its upsell) may go out now: on reaching a worse
    level than the one last explained, else at most once per `upsell_every_hours` (so a person
    whose level flips back and forth is not told every time); if so, it is counted."""
    state = state_of(session, account_id)
    every = timedelta(hours=catalog.levels.upsell_every_hours)
    worse = (state.last_upsell_level is None
             or LEVELS.index(level) > LEVELS.index(state.last_upsell_level))
    if not worse and state.last_upsell_at is not None and now - state.last_upsell_at < every:
        return False
    state.last_upsell_at, state.last_upsell_level = now, level
    return True


def take_free_reply(session: Session, account_id: int, catalog: Catalog, now: datetime
                    ) -> bool:
    """Whether a reply from the daily budget of free replies may go out now (at most
    `free_replies_per_day` a UTC day: HELP, START/STOP confirmations, throttle notices,
    refusals, alerts, billing notices, free replies past the cutoff); if so, it is counted.
    The caller holds the account's lock."""
    state = _today(session, account_id, now)
    if state.free_replies >= catalog.levels.free_replies_per_day:
        return False
    state.free_replies += 1
    return True


def take_help(session: Session, account_id: int, catalog: Catalog, now: datetime
              ) -> str | None:
    """The HELP reply allowed now: "full" (the first of the UTC day), "short" (the one-line
    form, for later HELPs that day), or None when the budget of free replies is spent
    (`take_free_reply`; counted when allowed)."""
    if not take_free_reply(session, account_id, catalog, now):
        return None
    state = _today(session, account_id, now)
    if state.help_day == state.reply_day:
        return "short"
    state.help_day = state.reply_day
    return "full"


def mark_flooded(session: Session, account_id: int, now: datetime) -> None:
    """Note that the person's inbound flood passed `inbound_flood_per_day` today (the admin
    pages flag it)."""
    state = state_of(session, account_id)
    state.flooded_day = f"{now:%Y-%m-%d}"


def take_billing_reply(session: Session, account_id: int, catalog: Catalog, now: datetime
                       ) -> bool:
    """Whether a BALANCE, BUY or BUY PREMIUM reply may go out past the cutoff now (at most
    `billing_replies_per_day` a UTC day, a budget of their own: the free replies never use
    it up);
    if so, it is counted."""
    state = _today(session, account_id, now)
    if state.billing_replies >= catalog.levels.billing_replies_per_day:
        return False
    state.billing_replies += 1
    return True


def _today(session: Session, account_id: int, now: datetime) -> LevelState:
    """The person's `LevelState` with its day counters reset on a new UTC day."""
    state = state_of(session, account_id)
    day = f"{now:%Y-%m-%d}"
    if state.reply_day != day:
        state.reply_day, state.free_replies, state.billing_replies = day, 0, 0
    return state
