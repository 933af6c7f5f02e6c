"""The router: one inbound message in, the replies out, the ledger moved exactly once.

The pipeline is an ordered list of small named steps over one `Turn` (shared/design/
architecture.md, "The main flow"); a step that has the final answer raises `ReplyNow`.

    dedupe -> contact -> lock the account -> store -> compliance keywords -> opted-out silence
    -> monthly allowance -> past the cutoff -> no text -> free commands -> intent -> level
    -> hold -> [defer] -> skill -> capture (or void)

Compliance keywords come first and are free; after STOP nothing is charged or sent. Free
commands (BALANCE, BUY, MORE) never reach pricing. The level (`tokens.tiers`) decides what the
answer may cost: a cheaper LLM tier, templates, partner offers, or a pay link instead. The
price is held before the skill runs (`hold:<MessageSid>`) and captured (`debit:<MessageSid>`)
only when the skill answered; a skill that fails voids the hold, so a repeat delivery or a
failed skill charges nothing.

With `defer=True` (Redis configured) the pipeline stops after the hold with the outcome
"queued"; a job later calls `pending_answer`, `run_skill` (no transaction open while the LLM
thinks) and `settle`, which are the same steps the inline path takes. Every turn locks the
person's account row first, so one person's messages are handled one at a time.

Costs (economy.md, "Cost and revenue") are recorded as they happen: the inbound message and
the platform cost when it is stored, the LLM call when the skill ran, and each reply when it
is given (TwiML) or accepted by Twilio (REST, in `bot.outbound`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot import replies
from bot.contacts import mask_address, resolve_contact
from bot.errors import SkillFailed
from bot.intents import Skill, SkillAnswer, SkillRequest, UnknownIntent, skill_for
from bot.intents.classifier import classify
from bot.intents.llm import LlmSkill
from bot.llm import ChatClient
from bot.messages import InboundMessage
from bot.models import Contact, Message
from bot.ratelimit import SenderLimits
from bot.segments import (
    MAX_MESSAGE_CHARS,
    MORE_HINT,
    cap_sms,
    count_segments,
    normalise_for_gsm,
    split_message,
)
from tokens import costs, ledger, payments, tiers
from tokens.base import utcnow
from tokens.catalog import Catalog, IntentSpec, normalise_command
from tokens.costs import LlmUsage
from tokens.errors import HoldNotPending, InsufficientTokens

log = logging.getLogger(__name__)

# Compliance keyword families (Twilio's default opt-out keywords, messaging.md), plus Spanish forms.
OPT_OUT = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT",
     "PARAR", "BAJA", "CANCELAR"}
)
OPT_IN = frozenset({"START", "UNSTOP", "YES", "ALTA", "INICIAR"})
HELP = frozenset({"HELP", "INFO", "AYUDA"})
# Outcomes whose reply is cut at the channel's cap (SMS segments, WhatsApp messages) with a
# free "Reply MORE" for the rest: answers, their fallbacks and continuations. The bot's own
# notices (HELP, BALANCE, confirmations) are written short and sent whole.
# Refusals, offers and "not enough tokens" replies are capped the same way (their texts are
# written to fit): what one reply can cost is then bounded by the channel's cap
# (`tokens.tiers.reply_ceiling_musd`). Only answers and their continuations replace a pending
# MORE.
CONTENT_OUTCOMES = frozenset({"answered", "failed", "more", "refused", "offers",
                              "insufficient"})
ANSWER_OUTCOMES = frozenset({"answered", "failed", "more"})


@dataclass(frozen=True)
class BotSettings:
    """What the router needs from configuration.

    Attributes:
        catalog: the economy catalog.
        public_base_url: where people reach the app, for pay links (no trailing slash needed).
        app_confirms_opt_out: channels on which the app, not Twilio, answers STOP and START.
            Twilio answers them itself on SMS (default opt-out handling); on WhatsApp it does
            not, so the app sends the one confirmation.
        chat: the LLM client when one is configured (`OPENAI_API_KEY`); None: offline skills.
        sender_limits: per-sender rate limits (`bot.ratelimit`); None: no limits (router tests).
    """

    catalog: Catalog
    public_base_url: str
    app_confirms_opt_out: frozenset[str] = frozenset({"whatsapp"})
    chat: ChatClient | None = None
    sender_limits: SenderLimits | None = None

    def pay_url(self, token: str) -> str:
        """The public URL of a pay link token."""
        return f"{self.public_base_url.rstrip('/')}/pay/{token}"


@dataclass(frozen=True)
class Outcome:
    """What the router did with one inbound message.

    Attributes:
        kind: "duplicate", "opted_out", "suspended", "throttled", "opt_out", "opt_in", "help",
            "no_text", "balance", "buy", "premium", "more", "insufficient", "refused"
            (PAYMENT_REQUIRED), "offers" (AFFILIATE), "queued" (the skill runs in a job),
            "failed" or "answered".
        replies: the messages to send back, in order, as sent (an SMS answer cut with
            "Reply MORE", a long WhatsApp answer split); empty: an empty `<Response/>`.
        intent: the classified intent, when the message got that far.
        tokens_charged: tokens debited for this message (0 unless kind is "answered").
    """

    kind: str
    replies: tuple[str, ...] = ()
    intent: str | None = None
    tokens_charged: int = 0


class ReplyNow(Exception):  # noqa: N818  (control flow, not an error)
    """Raised by a step that has the final answer; carries the outcome kind and reply texts."""

    def __init__(self, kind: str, *texts: str) -> None:
        super().__init__(kind)
        self.kind = kind
        self.texts = texts


@dataclass
class Turn:
    """The context the steps share while one message is routed."""

    session: Session
    msg: InboundMessage
    settings: BotSettings
    now: datetime
    defer: bool = False
    contact: Contact | None = None
    message: Message | None = None
    intent: IntentSpec | None = None
    hold_id: int | None = None
    charged: int = 0
    level: str = tiers.NORMAL

    @property
    def catalog(self) -> Catalog:
        return self.settings.catalog

    @property
    def account_id(self) -> int:
        assert self.contact is not None, "the contact step runs first"
        return self.contact.account_id


Step = Callable[[Turn], None]


def dedupe(turn: Turn) -> None:
    """A MessageSid seen before is a repeat delivery: answer nothing, change nothing."""
    seen = turn.session.scalar(
        select(Message.id).where(Message.message_sid == turn.msg.message_sid)
    )
    if seen is not None:
        raise ReplyNow("duplicate")


def find_contact(turn: Turn) -> None:
    """The person behind the sender, created with an account on first contact."""
    turn.contact = resolve_contact(turn.session, turn.msg.sender, turn.now)


def serialise(turn: Turn) -> None:
    """Lock the person's account row for the rest of the turn: two quick messages from one
    person are handled one after the other, never racing on the balance or the conversation
    (messaging.md, "Per-person order")."""
    ledger.lock_account(turn.session, turn.account_id)


def store_inbound(turn: Turn) -> None:
    """Store the message before acting; `UNIQUE(message_sid)` settles concurrent repeats.

    Records what receiving it cost (messaging units in, and the platform's per-interaction
    cost), once per MessageSid.
    """
    assert turn.contact is not None
    msg = turn.msg
    message = Message(
        contact_id=turn.contact.id,
        direction="in",
        channel=msg.channel,
        message_sid=msg.message_sid,
        body=msg.text,
        num_media=len(msg.media),
        created_at=turn.now,
    )
    try:
        with turn.session.begin_nested():
            turn.session.add(message)
            turn.session.flush()
    except IntegrityError:
        raise ReplyNow("duplicate") from None
    turn.message = message
    turn.contact.last_channel = msg.channel
    turn.contact.last_inbound_at = turn.now
    if msg.channel == "whatsapp":
        turn.contact.whatsapp_last_inbound_at = turn.now
    costs.record_inbound(turn.session, turn.account_id, turn.catalog.costs, msg.channel,
                         billed_units(msg.channel, msg.text), message_sid=msg.message_sid,
                         now=turn.now)


def compliance_keywords(turn: Turn) -> None:
    """STOP, START and HELP families, before anything else and free (messaging.md, step 4).

    Twilio Advanced Opt-Out's `OptOutType` is authoritative when present.
    """
    assert turn.contact is not None
    family = _keyword_family(turn.msg)
    if family is None:
        return
    contact = turn.contact
    channel = turn.msg.channel
    confirms = channel in turn.settings.app_confirms_opt_out
    if family == "STOP":
        first_time = contact.opted_out_at(channel) is None
        if first_time:
            source = "twilio_opt_out_type" if turn.msg.opt_out_type else "keyword"
            contact.set_opted_out(channel, turn.now, f"{source}:{channel}")
        log.info("contact opted out", extra={"contact": mask_address(contact.address),
                                             "channel": channel})
        if confirms and first_time:
            raise ReplyNow("opt_out", replies.stop_text(turn.catalog))
        raise ReplyNow("opt_out")
    if family == "START":
        contact.set_opted_out(channel, None, None)
        if confirms:
            raise ReplyNow("opt_in", replies.start_text(turn.catalog))
        raise ReplyNow("opt_in")
    if contact.opted_out_at(channel) is not None:
        raise ReplyNow("opted_out")
    raise ReplyNow("help", replies.help_text(turn.catalog, turn.now))


def silence_opted_out(turn: Turn) -> None:
    """After STOP on this channel nothing is charged or sent on it until START."""
    assert turn.contact is not None
    if turn.contact.opted_out_at(turn.msg.channel) is not None:
        raise ReplyNow("opted_out")


def silence_suspended(turn: Turn) -> None:
    """An operator suspended this person (admin pages): no answer and nothing charged, until
    unsuspended. STOP and HELP, answered above, still work."""
    account = turn.session.get(ledger.Account, turn.account_id)
    if account is not None and account.suspended_at is not None:
        raise ReplyNow("suspended")


def rate_limit(turn: Turn) -> None:
    """Per-sender rate limits (messaging.md; `bot.ratelimit`), per person: past them, no skill
    and no charge; one short notice an hour at most, and only within the daily budget of
    free replies (`tiers.take_refusal`), so that throttling itself cannot cost without limit.
    STOP, START and HELP were answered above and are never throttled."""
    limits = turn.settings.sender_limits
    if limits is None:
        return
    verdict = limits.check(f"account:{turn.account_id}", turn.now)
    if verdict.allowed:
        return
    log.info("message throttled", extra={"limit": verdict.limit})
    if verdict.notify and tiers.take_refusal(turn.session, turn.account_id, turn.catalog,
                                             turn.now):
        raise ReplyNow("throttled", replies.THROTTLED)
    raise ReplyNow("throttled")


def monthly_allowance(turn: Turn) -> None:
    """The free monthly allowance, granted lazily on the first message of the month."""
    ledger.grant_monthly_allowance(
        turn.session, turn.account_id, turn.catalog.free_monthly_allowance, turn.now
    )


def past_the_cutoff(turn: Turn) -> None:
    """Past the cutoff (economy.md, rule 1), the bot's free replies (BALANCE, BUY, MORE, "tell
    me in words") share the daily refusal budget, then stop: what a non-paying person costs
    stays bounded. Priced requests are decided in `choose_level`; HELP and STOP, which the
    carriers require, are answered before this step."""
    catalog = turn.catalog
    words = frozenset().union(*catalog.commands.values())
    if turn.msg.text.strip() and normalise_command(turn.msg.text) not in words:
        return  # a priced request: `choose_level` decides
    ceiling = tiers.reply_ceiling_musd(catalog, turn.msg.channel)
    if _exposure(turn) + ceiling < catalog.tiers.payment_required_musd:
        return
    if payments.has_premium(turn.session, turn.account_id, turn.now,
                            catalog.premium.grace_days):
        return
    if not tiers.take_refusal(turn.session, turn.account_id, catalog, turn.now):
        raise ReplyNow("refused")


def no_text(turn: Turn) -> None:
    """A photo or a location without words cannot be priced or answered yet: say so, free."""
    if not turn.msg.text.strip():
        raise ReplyNow("no_text", replies.NO_TEXT)


def free_commands(turn: Turn) -> None:
    """BALANCE, BUY, BUY PREMIUM and MORE (and their Spanish forms): whole-message matches,
    free."""
    command = normalise_command(turn.msg.text)
    commands = turn.catalog.commands
    if command in commands["balance"]:
        available = ledger.balance(turn.session, turn.account_id, turn.now).available
        raise ReplyNow("balance", replies.balance_text(turn.catalog, available, turn.now))
    if command in commands["buy"]:
        raise ReplyNow("buy", replies.buy_text(turn.catalog.pack(), _pay_url(turn)))
    if command in commands["premium"]:
        plan = turn.catalog.premium
        if payments.has_premium(turn.session, turn.account_id, turn.now, plan.grace_days):
            url = _pay_url(turn, "", purpose="portal")
            raise ReplyNow("premium", replies.premium_manage_text(plan, url))
        url = _pay_url(turn, plan.code, purpose="premium")
        raise ReplyNow("premium", replies.premium_text(plan, url))
    if command in commands["more"]:
        assert turn.contact is not None
        if turn.contact.more_text:
            raise ReplyNow("more", turn.contact.more_text)
        raise ReplyNow("more", replies.NOTHING_MORE)


def classify_intent(turn: Turn) -> None:
    """The intent, and so the price, from the catalog's patterns."""
    turn.intent = classify(turn.msg.text, turn.catalog)


def choose_level(turn: Turn) -> None:
    """The restriction level of this answer (economy.md, "Tiers"; `tokens.tiers.decide`), on
    the exposure including answers still queued, under the account's lock.

    PAYMENT_REQUIRED: a pay link and nothing charged (at most `refusals_per_day` replies a day,
    then silence). AFFILIATE, for a costly intent: partner offers, nothing charged. Otherwise
    the answer goes ahead at this level (`run_skill`).
    """
    assert turn.intent is not None and turn.message is not None
    spec, catalog, session = turn.intent, turn.catalog, turn.session
    exposure = _exposure(turn)
    balance = ledger.balance(session, turn.account_id, turn.now)
    # Paying: purchased tokens cover the price, or premium. Their tokens are honoured even
    # while free tokens (spent first) remain, so a paying person is never refused; the cost
    # of that is bounded by the free allowance (`tiers.monthly_loss_ceiling_musd`).
    purchased = sum(n for bucket, n in balance.by_bucket.items() if bucket != "free")
    paying = purchased >= spec.price or payments.has_premium(
        session, turn.account_id, turn.now, catalog.premium.grace_days)
    ceiling = tiers.ceilings(catalog, spec, turn.msg.channel, turn.settings.chat is not None)
    # An operator's override (admin pages, with an expiry) replaces the policy's level.
    turn.level = (tiers.override_of(session, turn.account_id, turn.now)
                  or tiers.decide(exposure, ceiling, catalog, paying=paying))
    turn.message.level = turn.level
    turn.message.estimate_musd = ceiling[turn.level]
    if turn.level == tiers.PAYMENT_REQUIRED:
        if not tiers.take_refusal(session, turn.account_id, catalog, turn.now):
            raise ReplyNow("refused")  # silence until they pay or the month turns
        raise ReplyNow("refused", replies.payment_required_text(
            catalog, balance.available, _pay_url(turn), turn.now))
    if turn.level == tiers.AFFILIATE and spec.price >= catalog.tiers.affiliate_min_price:
        if _unlocked_by_click(turn, exposure, ceiling):
            turn.level = turn.message.level = tiers.NORMAL
            turn.message.estimate_musd = ceiling[tiers.NORMAL]
            return
        offers = _offers(turn)
        if offers:
            raise ReplyNow("offers", replies.offers_text(catalog, spec, balance.available,
                                                         offers, turn.now))


def reserve(turn: Turn) -> None:
    """Hold the price before the skill runs; below the price: a pay link and the cheaper
    options, nothing charged, at most `refusals_per_day` such replies a day (economy.md,
    Ledger: the check and the hold are one step)."""
    assert turn.intent is not None
    try:
        placed = ledger.hold(
            turn.session, turn.account_id, turn.intent.price,
            key=f"hold:{turn.msg.message_sid}", ttl_seconds=turn.catalog.hold_ttl_seconds,
            memo=turn.intent.name, now=turn.now,
        )
    except InsufficientTokens as refused:
        # Throttled like refusals (at most `refusals_per_day`, then silence): replies that
        # charge nothing must not cost without limit.
        if not tiers.take_refusal(turn.session, turn.account_id, turn.catalog, turn.now):
            raise ReplyNow("insufficient") from None
        raise ReplyNow("insufficient", _insufficient(turn, refused.available)) from None
    turn.hold_id = placed.hold_id


def defer_or_answer(turn: Turn) -> None:
    """Stop here when deferring: the hold is placed, and the skill runs after the commit, in
    a job or in the caller with no transaction open ("queued"). Otherwise (the fast offline
    skills) run the skill now and capture or void."""
    assert turn.intent is not None and turn.hold_id is not None
    assert turn.message is not None and turn.contact is not None
    if turn.defer:
        raise ReplyNow("queued")
    pending = PendingAnswer(
        message_id=turn.message.id,
        message_sid=turn.msg.message_sid,
        account_id=turn.account_id,
        channel=turn.msg.channel,
        intent=turn.intent,
        hold_id=turn.hold_id,
        request=_skill_request(turn.session, turn.settings, turn.intent, turn.message,
                               turn.level),
        level=turn.level,
    )
    result = run_skill(turn.settings, pending)
    kind, texts, charged = _settle_ledger(turn.session, pending, result, turn.settings, turn.now)
    turn.charged = charged
    raise ReplyNow(kind, *texts)


STEPS: tuple[Step, ...] = (
    dedupe,
    find_contact,
    serialise,
    store_inbound,
    compliance_keywords,
    silence_opted_out,
    silence_suspended,
    rate_limit,
    monthly_allowance,
    past_the_cutoff,
    no_text,
    free_commands,
    classify_intent,
    choose_level,
    reserve,
    defer_or_answer,
)


def handle_inbound(
    session: Session,
    msg: InboundMessage,
    settings: BotSettings,
    now: datetime | None = None,
    *,
    defer: bool = False,
) -> Outcome:
    """Route one inbound message through `STEPS` and record what happened.

    Args:
        session: the caller's session; this function flushes, never commits. The caller
            commits after it returns (and rolls back if it raises).
        msg: the normalised inbound message.
        settings: catalog, public URL and LLM client.
        now: the current time (UTC); tests freeze it.
        defer: stop after the hold with outcome "queued"; the caller commits, then a job or
            the caller itself answers (`pending_answer`, commit, `run_skill`, `settle`).

    Returns:
        The `Outcome`: what to reply (as TwiML), the intent, and the tokens charged.
    """
    turn = Turn(session=session, msg=msg, settings=settings, now=now or utcnow(), defer=defer)
    try:
        for step in STEPS:
            step(turn)
        raise AssertionError("the last step always replies")  # pragma: no cover
    except ReplyNow as done:
        kind, texts = done.kind, done.texts
    sent: tuple[str, ...] = ()
    if turn.message is not None and turn.contact is not None:  # not a duplicate
        turn.message.intent = turn.intent.name if turn.intent else None
        turn.message.outcome = kind
        turn.message.tokens_charged = turn.charged
        sent = store_replies(session, turn.contact, turn.message, kind, texts, settings,
                             transport="twiml", now=turn.now)
    outcome = Outcome(
        kind=kind,
        replies=sent,
        intent=turn.intent.name if turn.intent else None,
        tokens_charged=turn.charged,
    )
    log.info(
        "inbound routed",
        extra={
            "message_sid": msg.message_sid,
            "channel": msg.channel,
            "sender": mask_address(msg.sender),
            "outcome": outcome.kind,
            "intent": outcome.intent,
            "tokens": outcome.tokens_charged,
        },
    )
    return outcome


# --- the answer, inline or in a job ------------------------------------------------------


@dataclass(frozen=True)
class PendingAnswer:
    """A priced message whose hold is placed and whose skill has not run yet.

    Attributes:
        message_id: the inbound `Message` row.
        message_sid: its MessageSid (the hold is `hold:<sid>`, the debit `debit:<sid>`).
        account_id: the person's account.
        channel: "sms" or "whatsapp".
        intent: the classified intent.
        hold_id: the pending hold of the intent's price.
        request: what the skill gets (text, channel, conversation context, tier).
        hold_live: the hold is still pending and within its TTL. A job that comes too late
            (a worker outage) finds it expired: the person is told, and nothing is charged.
        opted_out: the person sent STOP on this channel since asking: no skill, no reply.
        level: the restriction level decided when the message came in (`choose_level`).
    """

    message_id: int
    message_sid: str
    account_id: int
    channel: str
    intent: IntentSpec
    hold_id: int
    request: SkillRequest
    hold_live: bool = True
    opted_out: bool = False
    level: str = tiers.NORMAL


@dataclass(frozen=True)
class SkillResult:
    """What running a skill gave: an answer, or the reply for a failure (nothing charged).

    Attributes:
        answer: the skill's answer; None when it failed.
        failure_reply: what the person gets when it failed (apology or offline answer).
        usage: the LLM usage to record as cost, if a call was made.
        unbilled_call: an LLM call that reported no usage (a timeout, a dropped connection):
            the provider may still bill it, so its ceiling is recorded as its cost.
    """

    answer: SkillAnswer | None
    failure_reply: str = ""
    usage: LlmUsage | None = None
    unbilled_call: bool = False


def pending_answer(
    session: Session, message_sid: str, settings: BotSettings, now: datetime | None = None
) -> PendingAnswer | None:
    """The deferred answer of `message_sid`, or None when there is none to give: no such
    message, or it is no longer "queued" (it was answered already).

    Only reads; a job calls it, commits, and then runs the skill with no transaction open.
    `settle` checks the "queued" mark again under the account's lock, so two runs of one job
    cannot both answer.
    """
    now = now or utcnow()
    message = session.scalar(select(Message).where(Message.message_sid == message_sid))
    if message is None or message.intent is None or message.outcome != "queued":
        return None
    hold = session.scalar(
        select(ledger.Hold).where(ledger.Hold.idempotency_key == f"hold:{message_sid}")
    )
    contact = session.get(Contact, message.contact_id)
    if hold is None or contact is None:
        return None
    spec = settings.catalog.intent(message.intent)
    return PendingAnswer(
        message_id=message.id,
        message_sid=message_sid,
        account_id=hold.account_id,
        channel=message.channel,
        intent=spec,
        hold_id=hold.id,
        request=_skill_request(session, settings, spec, message, message.level),
        hold_live=hold.status == "pending" and hold.expires_at > now,
        level=message.level or tiers.NORMAL,
        opted_out=contact.opted_out_at(message.channel) is not None,
    )


def waiting_answers(session: Session, older_than: timedelta, now: datetime | None = None
                    ) -> list[str]:
    """MessageSids of priced messages still "queued" after `older_than`: their job was lost
    (Redis flushed, a crash between the commit and the enqueue). Oldest first."""
    now = now or utcnow()
    return list(session.scalars(
        select(Message.message_sid)
        .where(Message.outcome == "queued", Message.direction == "in",
               Message.created_at <= now - older_than)
        .order_by(Message.id)
    ))


def skill(settings: BotSettings, spec: IntentSpec, level: str = tiers.NORMAL) -> Skill:
    """The skill that answers `spec` at `level`: the LLM (with the offline skill as fallback)
    when a client is configured and the level allows it (NORMAL, REDUCED), else the offline
    skill (templates: no LLM cost)."""
    use_llm = settings.chat is not None and level in tiers.LLM_TIER_OF
    try:
        offline: Skill | None = skill_for(spec.name)
    except UnknownIntent:
        if not use_llm:
            raise
        offline = None
    if not use_llm or settings.chat is None:
        assert offline is not None
        return offline
    return LlmSkill(spec, settings.catalog.llm, settings.chat, offline)


def run_skill(settings: BotSettings, pending: PendingAnswer) -> SkillResult:
    """Run the intent's skill. Touches no database, so a job holds no transaction while an
    LLM answers. Never raises for a skill's failure: that is a `SkillResult` without answer.

    No skill runs for a person who opted out since asking (no reply at all), or when the hold
    lapsed before the job ran (an apology; nothing charged)."""
    spec = pending.intent
    if pending.opted_out:
        return SkillResult(None, "")
    if not pending.hold_live:
        return SkillResult(None, replies.TOOK_TOO_LONG)
    try:
        answer = skill(settings, spec, pending.level).answer(pending.request)
    except SkillFailed as exc:
        log.warning("skill failed", extra={"intent": spec.name, "reason": str(exc)})
        unbilled = str(exc) in ("llm: timeout", "llm: connection failed") and exc.usage is None
        return SkillResult(None, exc.reply or replies.SKILL_FAILED, exc.usage,
                           unbilled_call=unbilled)
    except Exception:
        # A bug in one skill must not cost the person tokens or lose their message.
        log.exception("skill raised", extra={"intent": spec.name})
        return SkillResult(None, replies.SKILL_FAILED)
    return SkillResult(answer, usage=answer.usage)


def settle(
    session: Session,
    pending: PendingAnswer,
    result: SkillResult,
    settings: BotSettings,
    *,
    transport: str,
    now: datetime | None = None,
) -> Outcome:
    """Capture (answered) or void (failed) the hold, record the LLM cost, and store the
    replies; the job's half of `defer_or_answer`.

    Args:
        transport: "rest": the replies are stored `pending` for `bot.outbound` to send;
            "twiml": they were given in the webhook's answer.

    Returns:
        The `Outcome` with the replies as they will be sent; kind "duplicate" (nothing done)
        when the message was settled already.
    """
    now = now or utcnow()
    # The account row first, as everywhere, then re-read the message under that lock: only
    # the first of two runs of one job finds it still "queued".
    ledger.lock_account(session, pending.account_id)
    message = session.get(Message, pending.message_id, populate_existing=True)
    assert message is not None
    if message.outcome != "queued":
        log.info("answer already settled", extra={"message_sid": pending.message_sid})
        return Outcome(kind="duplicate", intent=pending.intent.name)
    contact = session.get(Contact, message.contact_id)
    assert contact is not None
    kind, texts, charged = _settle_ledger(session, pending, result, settings, now)
    message.outcome = kind
    message.tokens_charged = charged
    sent = store_replies(session, contact, message, kind, texts, settings,
                         transport=transport, now=now)
    return Outcome(kind=kind, replies=sent, intent=pending.intent.name, tokens_charged=charged)


def store_replies(
    session: Session,
    contact: Contact,
    inbound: Message,
    kind: str,
    texts: tuple[str, ...],
    settings: BotSettings,
    *,
    transport: str,
    now: datetime,
) -> tuple[str, ...]:
    """Shape the reply texts for the channel and store one outbound row per message.

    SMS: typographic characters become GSM-7 ones, and a content reply longer than the
    catalog's `sms_max_segments` is cut with "Reply MORE" (the rest waits on the contact for
    the free MORE command). Every message stays within 1,600 characters; a long WhatsApp reply
    is split on sentence boundaries, and cut the same way after `whatsapp_max_messages`
    (messaging.md, "Length and segments"). The caps bound what one reply can cost
    (`tokens.tiers.reply_ceiling_musd`).

    TwiML replies are costed now (they are sent with the webhook's answer); REST replies are
    stored `pending` and costed when Twilio accepts them.

    Returns:
        The messages, in order, as they will be sent.
    """
    channel = inbound.channel
    catalog = settings.catalog
    parts: list[str] = []
    for text in texts:
        if channel == "sms":
            text = normalise_for_gsm(text)
        rest = ""
        if channel == "sms" and kind in CONTENT_OUTCOMES:
            head, rest = cap_sms(text, catalog.sms_max_segments)
            parts.extend(split_message(head))
        elif kind in CONTENT_OUTCOMES:
            pieces = split_message(text)
            cap = catalog.whatsapp_max_messages
            if len(pieces) > cap:  # cut, leaving room for the hint in the last message kept
                pieces = split_message(text, MAX_MESSAGE_CHARS - len(MORE_HINT))
                rest = " ".join(pieces[cap:])
                pieces = [*pieces[: cap - 1], pieces[cap - 1] + MORE_HINT]
            parts.extend(pieces)
        else:
            parts.extend(split_message(text))
        if kind in ANSWER_OUTCOMES:
            contact.more_text = rest or None  # a new answer replaces the continuation
        elif rest:
            contact.more_text = rest
    for part in parts:
        row = Message(
            contact_id=contact.id,
            direction="out",
            channel=channel,
            body=part,
            in_reply_to_id=inbound.id,
            units=billed_units(channel, part),
            status="pending" if transport == "rest" else None,
            created_at=now,
        )
        session.add(row)
        session.flush()
        if transport == "twiml":
            costs.record_messaging(session, contact.account_id, catalog.costs, channel, "out",
                                   row.units, key=f"msg:out:{row.id}", now=now)
    return tuple(parts)


def billed_units(channel: str, text: str) -> int:
    """What a message is billed in: SMS segments (GSM-7 or UCS-2), or 1 WhatsApp message."""
    if channel == "sms":
        return max(count_segments(text).segments, 1)
    return 1


def record_llm_cost(session: Session, pending: PendingAnswer, result: SkillResult,
                    settings: BotSettings, now: datetime | None = None) -> None:
    """Record what the skill's LLM call cost (keyed `llm:<MessageSid>`, so once), under the
    account's lock. Callers commit it right after the call, in its own short transaction, so
    a call the provider billed stays costed even if settling the answer then fails (a retry
    answered from the cache would not see the usage again). `settle` records it too, a no-op
    after this."""
    if result.usage is None and not result.unbilled_call:
        return
    ledger.lock_account(session, pending.account_id)
    _record_llm(session, pending, result, settings, now or utcnow())


def _record_llm(session: Session, pending: PendingAnswer, result: SkillResult,
                settings: BotSettings, now: datetime) -> None:
    if result.usage is not None:
        price = settings.catalog.costs.model(result.usage.model)
        costs.record_llm(session, pending.account_id, result.usage, price,
                         key=f"llm:{pending.message_sid}", intent=pending.intent.name, now=now)
    elif result.unbilled_call:
        catalog = settings.catalog
        tier = catalog.llm.tier(tiers.LLM_TIER_OF.get(pending.level, "normal"))
        costs.record_llm_estimate(
            session, pending.account_id, tiers.llm_ceiling_musd(catalog, tier, pending.intent),
            tier.model, key=f"llm:{pending.message_sid}", intent=pending.intent.name, now=now)


def _settle_ledger(
    session: Session,
    pending: PendingAnswer,
    result: SkillResult,
    settings: BotSettings,
    now: datetime,
) -> tuple[str, tuple[str, ...], int]:
    """Capture or void the hold and record the LLM cost: (outcome kind, texts, tokens).

    The caller holds the account's row lock (taken before any other row, so no deadlock).
    """
    _record_llm(session, pending, result, settings, now)
    if result.answer is None:
        try:
            ledger.void(session, pending.hold_id, now=now)  # a lapsed hold: a no-op
        except HoldNotPending:
            log.error("a failed answer's hold was captured", extra={"hold": pending.hold_id})
        return "failed", (result.failure_reply,) if result.failure_reply else (), 0
    try:
        captured = ledger.capture(session, pending.hold_id,
                                  key=f"debit:{pending.message_sid}", now=now)
    except HoldNotPending:
        # The hold lapsed while the skill ran (a stalled job): the answer goes out free.
        log.warning("hold lapsed before capture; answer given free",
                    extra={"hold": pending.hold_id, "message_sid": pending.message_sid})
        return "answered", (result.answer.text,), 0
    if not captured.posted.replayed:
        costs.note_tokens_charged(session, pending.account_id,
                                  [(b, -n) for b, n in captured.posted.by_bucket], now,
                                  intent=pending.intent.name)
    text = result.answer.text
    if pending.level != tiers.NORMAL and tiers.take_upsell(
            session, pending.account_id, settings.catalog, now, pending.level):
        available = ledger.balance(session, pending.account_id, now).available
        text = f"{replies.level_notice(settings.catalog, pending.level, available)}\n{text}"
    return "answered", (text,), captured.posted.amount


def _skill_request(
    session: Session, settings: BotSettings, spec: IntentSpec, message: Message,
    level: str | None = None,
) -> SkillRequest:
    """The skill's input: the text, the channel, the conversation before this message, and
    the LLM tier of the level."""
    history: tuple[tuple[str, str], ...] = ()
    limit = settings.catalog.llm.history_messages
    if settings.chat is not None and limit:
        rows = session.execute(
            select(Message.direction, Message.body)
            .where(Message.contact_id == message.contact_id, Message.id < message.id,
                   Message.body != "")
            .order_by(Message.id.desc())
            .limit(limit)
        ).all()
        history = tuple(
            ("user" if direction == "in" else "assistant", body)
            for direction, body in reversed(rows)
        )
    return SkillRequest(intent=spec.name, text=message.body, channel=message.channel,
                        history=history,
                        tier=tiers.LLM_TIER_OF.get(level or tiers.NORMAL, "normal"))


def _keyword_family(msg: InboundMessage) -> str | None:
    if msg.opt_out_type in ("STOP", "START", "HELP"):
        return msg.opt_out_type
    word = normalise_command(msg.text)
    if word in OPT_OUT:
        return "STOP"
    if word in OPT_IN:
        return "START"
    if word in HELP:
        return "HELP"
    return None


def _exposure(turn: Turn) -> int:
    """The person's exposure for a decision, µUSD: this month's cost - revenue, plus what is
    on its way and not yet costed: the ceilings of answers still queued, and the replies
    stored or being sent but not yet accepted by Twilio (rule 1, also under concurrency)."""
    session, account_id = turn.session, turn.account_id
    month = costs.month(session, account_id, turn.now)
    current = turn.message.id if turn.message is not None else -1
    queued = session.scalar(
        select(func.coalesce(func.sum(Message.estimate_musd), 0))
        .join(Contact, Contact.id == Message.contact_id)
        .where(Contact.account_id == account_id, Message.outcome == "queued",
               Message.id != current)
    )
    in_flight = session.execute(
        select(Message.channel, func.coalesce(func.sum(Message.units), 0))
        .join(Contact, Contact.id == Message.contact_id)
        .where(Contact.account_id == account_id,
               Message.status.in_(("pending", "submitting", "unknown")))
        .group_by(Message.channel)
    ).all()
    rates = turn.catalog.costs.messaging
    sending = sum(int(units) * rates[channel].outbound_musd for channel, units in in_flight)
    return month.exposure_musd + int(queued or 0) + sending


def _unlocked_by_click(turn: Turn, exposure: int, ceiling: dict[str, int]) -> bool:
    """Mode `click_to_unlock` (off by default; economy.md): a partner click in the last 24 h
    unlocks one full answer, if that answer still fits under the cutoff."""
    from tokens import affiliates

    catalog = turn.catalog
    if catalog.affiliates.mode != "click_to_unlock":
        return False
    if exposure + ceiling[tiers.NORMAL] >= catalog.tiers.payment_required_musd:
        return False
    return affiliates.use_unlock(turn.session, turn.account_id, turn.now)


def _offers(turn: Turn) -> list[tuple[str, str]]:
    """(partner name, our redirect URL) for the request's intent, 1-3 of them."""
    from tokens import affiliates

    assert turn.intent is not None
    links = affiliates.issue_offer_links(turn.session, turn.account_id, turn.intent.name,
                                         turn.catalog, turn.now)
    base = turn.settings.public_base_url.rstrip("/")
    return [(partner.name, f"{base}/r/{link.token}") for partner, link in links]


def _pay_url(turn: Turn, code: str | None = None, purpose: str = "pack") -> str:
    link = payments.issue_pay_link(
        turn.session, turn.account_id, code or turn.catalog.default_pack,
        ttl_seconds=turn.catalog.pay_link_ttl_seconds, purpose=purpose, now=turn.now,
    )
    return turn.settings.pay_url(link.token)


def _insufficient(turn: Turn, available: int) -> str:
    assert turn.intent is not None
    return replies.insufficient_text(turn.catalog, turn.intent, available, _pay_url(turn), turn.now)
