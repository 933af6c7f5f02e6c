"""The answer half: a held message's skill, its settlement and its stored replies.

`pending_answer` reads what a deferred answer needs, `run_skill` runs the skill (no database),
`settle` captures or voids the hold, records the LLM cost and stores the replies; all under
the account's row lock. `bot.router.pipeline.answer_message` calls them in order.

Costs (`tokens.costs`) are recorded as they happen: the LLM call when the skill ran, and each
reply when it is given (TwiML) or accepted by Twilio (REST, in `bot.outbound`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import LABEL_STYLE_TABLENAME_PLUS_COL, Integer, Select, Table, bindparam, select
from sqlalchemy.orm import Session

from bot import replies
from bot.allergies import decode as decode_allergies
from bot.contacts import reply_language
from bot.errors import SkillFailed
from bot.intents import Skill, SkillAnswer, SkillRequest, UnknownIntent, skill_for
from bot.intents.llm import LlmSkill
from bot.models import MESSAGE_COLUMNS, Contact, InboxMessage, Message, OutcomeKind
from bot.router.turn import ANSWER_OUTCOMES, CONTENT_OUTCOMES, BotSettings, Outcome
from bot.segments import (
    MAX_MESSAGE_CHARS,
    cap_sms,
    count_segments,
    fold_for_gsm,
    normalise_for_gsm,
    split_message,
)
from tokens import alerts, costs, ledger, levels, payments
from tokens.base import (
    execute_compiled,
    execute_core,
    insert_values,
    known_row,
    load_joined,
    utcnow,
    write_changes,
)
from tokens.catalog import IntentSpec
from tokens.costs import LlmUsage
from tokens.errors import HoldNotPending, InsufficientTokens

log = logging.getLogger(__name__)
# `Session.info` key: the auto top-ups a settlement recorded (`tokens.alerts.after_debit`), to
# charge once the transaction is committed (`bot.router.pipeline.answer_message`).
TOP_UPS = "auto_top_ups_due"
# `Session.info` key: inbound message id -> the ids of the REST replies just stored for it.
REPLY_IDS = "stored_reply_ids"


@dataclass(frozen=True)
class PendingAnswer:
    """A priced message whose hold is placed and whose skill has not run yet.

    Attributes:
        message_id: the inbound `Message` row.
        message_sid: its MessageSid (the hold is `hold:<sid>`, the debit `debit:<sid>`).
        account_id: the person's account.
        channel: "sms" or "whatsapp".
        intent: the classified intent.
        hold_id: the pending hold of the intent's price; None for an answer settled in the
            transaction that routed it with no hold (`steps.reserve`): the price is debited
            directly (`tokens.ledger.debit`).
        request: what the skill gets (text, channel, conversation context, tier).
        hold_live: the hold is still pending and within its TTL. A job that comes too late
            (a worker outage) finds it expired: the person is told, and nothing is charged.
        opted_out: the person sent STOP on this channel since asking: no skill, no reply.
        level: the restriction level decided when the message came in (`choose_level`).
        placed: the hold as `ledger.hold` placed it, when the turn that placed it built
            this (an inline offline answer, or a deferred one settled by the same job): the
            capture does not read it again. A later transaction may use it because `settle`
            locks the account's row first and the capture's conditional UPDATE decides.
        available_after_hold: the available balance with this hold placed (tokens), when
            known without a statement: the inline answer knows it from the turn, the job
            from the account's lock (`settle`). The balance watch after the capture
            (`tokens.alerts.after_debit`) needs it.
        note: a line put before the reply, when the turn that built this has one: what this
            message made the bot remember (`bot.allergies.noted_text`).
    """

    message_id: int
    message_sid: str
    account_id: int
    channel: str
    intent: IntentSpec
    hold_id: int | None
    request: SkillRequest
    hold_live: bool = True
    opted_out: bool = False
    level: str = levels.NORMAL
    placed: ledger.HoldResult | None = None
    available_after_hold: int | None = None
    note: str | None = None


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
    # The message, its hold and its contact in one SELECT.
    row = session.execute(
        select(Message, ledger.Hold, Contact)
        .join(Contact, Contact.id == Message.contact_id)
        .join(ledger.Hold, ledger.Hold.idempotency_key == f"hold:{message_sid}")
        .where(Message.message_sid == message_sid)
    ).first()
    if row is None:
        return None
    message, hold, contact = row
    if message.intent is None or message.outcome != OutcomeKind.QUEUED:
        return None
    spec = settings.catalog.intent(message.intent)
    return PendingAnswer(
        message_id=message.id,
        message_sid=message_sid,
        account_id=hold.account_id,
        channel=message.channel,
        intent=spec,
        hold_id=hold.id,
        request=skill_request(session, settings, spec, message, message.level,
                              language=contact.language,
                              allergies=decode_allergies(contact.allergies)),
        hold_live=hold.status == "pending" and hold.expires_at > now,
        level=message.level or levels.NORMAL,
        opted_out=contact.opted_out_at(message.channel) is not None,
    )


def waiting_answers(session: Session, older_than: timedelta, now: datetime | None = None
                    ) -> list[str]:
    """MessageSids whose answer job was lost (Redis flushed, a crash between the commit and
    the enqueue, a worker that died holding the person's turn): inbox rows not routed, and
    priced messages still "queued", after `older_than`. Oldest first, inbox first."""
    now = now or utcnow()
    cutoff = now - older_than
    inbox = session.scalars(
        select(InboxMessage.message_sid).where(InboxMessage.received_at <= cutoff)
        .order_by(InboxMessage.id))
    queued = session.scalars(
        select(Message.message_sid)
        .where(Message.outcome == OutcomeKind.QUEUED, Message.direction == "in",
               Message.created_at <= cutoff)
        .order_by(Message.id)
    )
    return [sid for sid in [*inbox, *queued] if sid is not None]


def skill(settings: BotSettings, spec: IntentSpec, level: str = levels.NORMAL) -> Skill:
    """The skill that answers `spec` at `level`: the LLM (with the offline skill as fallback)
    when a client is configured and the level allows it (NORMAL, REDUCED), else the offline
    skill (templates: no LLM cost)."""
    use_llm = settings.chat is not None and level in levels.LLM_TIER_OF
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
    lang = pending.request.language or reply_language(None, pending.request.text)
    if pending.opted_out:
        return SkillResult(None, "")
    if not pending.hold_live:
        return SkillResult(None, replies.took_too_long(lang))
    try:
        answer = skill(settings, spec, pending.level).answer(pending.request)
    except SkillFailed as exc:
        log.warning("skill failed", extra={"intent": spec.name, "reason": str(exc)})
        unbilled = str(exc) in ("llm: timeout", "llm: connection failed") and exc.usage is None
        return SkillResult(None, exc.reply or replies.skill_failed(lang), exc.usage,
                           unbilled_call=unbilled)
    except Exception:
        # A bug in one skill must not cost the person tokens or lose their message.
        log.exception("skill raised", extra={"intent": spec.name})
        return SkillResult(None, replies.skill_failed(lang))
    return SkillResult(answer, usage=answer.usage)


# The message and its contact, re-read under the account's lock (`settle`); built once, as
# the ORM query and as the Core SELECT of both tables' columns that `load_joined` sends.
_SETTLING = (select(Message, Contact).join(Contact, Contact.id == Message.contact_id)
             .where(Message.id == bindparam("message_id", type_=Integer()))
             .execution_options(populate_existing=True))
_MESSAGES: Table = Message.__table__  # type: ignore[assignment]
_CONTACTS: Table = Contact.__table__  # type: ignore[assignment]
_SETTLING_ROW = (
    select(*_MESSAGES.c, *_CONTACTS.c)
    .select_from(_MESSAGES.join(_CONTACTS, _CONTACTS.c.id == _MESSAGES.c.contact_id))
    .where(_MESSAGES.c.id == bindparam("message_id", type_=Integer()))
    .set_label_style(LABEL_STYLE_TABLENAME_PLUS_COL))


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
    available = ledger.lock_account(session, pending.account_id)
    pending = dataclasses.replace(pending, available_after_hold=available)
    message, contact = load_joined(session, _SETTLING_ROW, _SETTLING, (Message, Contact),
                                   {"message_id": pending.message_id})
    if message.outcome != OutcomeKind.QUEUED:
        log.info("answer already settled", extra={"message_sid": pending.message_sid})
        return Outcome(kind=OutcomeKind.DUPLICATE, intent=pending.intent.name,
                       message_id=pending.message_id)
    kind, texts, charged = settle_ledger(session, pending, result, settings, now)
    message.outcome = kind
    message.tokens_charged = charged
    sent = store_replies(session, contact, message, kind, texts, settings,
                         transport=transport, now=now)
    return Outcome(kind=kind, replies=sent, intent=pending.intent.name, tokens_charged=charged,
                   message_id=pending.message_id)


def store_replies(
    session: Session,
    contact: Contact,
    inbound: Message,
    kind: OutcomeKind,
    texts: tuple[str, ...],
    settings: BotSettings,
    *,
    transport: str,
    now: datetime,
    lang: str | None = None,
) -> tuple[str, ...]:
    """Shape the reply texts for the channel and store one outbound row per message.

    SMS: typographic characters become GSM-7 ones, and so do á, í, ó and ú when that keeps
    the message GSM-7 (`bot.segments.fold_for_gsm`: 153 characters a segment, not 67). A
    content reply longer than the catalog's `sms_max_segments` is cut on a sentence or
    list-item boundary (else between words) with the "Reply MORE" hint in the person's
    language, counted in the cap (the rest waits on the contact for the free MORE command).
    Every message stays within 1,600 characters; a long WhatsApp reply is split on sentence
    boundaries, and cut the same way after `whatsapp_max_messages` (`bot.segments`). The caps
    bound what one reply can cost (`tokens.levels.reply_ceiling_musd`).

    TwiML replies are costed now (they are sent with the webhook's answer); REST replies are
    stored `pending` and costed when Twilio accepts them.

    Args:
        lang: the language of the MORE hint, "en" or "es"; None: the contact's
            (`bot.contacts.reply_language`, from the inbound text while it is not known).

    Returns:
        The messages, in order, as they will be sent.
    """
    channel = inbound.channel
    catalog = settings.catalog
    hint = replies.more_hint(lang or reply_language(contact, inbound.body))
    parts: list[str] = []
    for index, text in enumerate(texts):
        if channel == "sms":
            text = fold_for_gsm(normalise_for_gsm(text))
        rest = ""
        # An answer's later texts are notes (a low-balance alert, `tokens.alerts`): sent
        # whole, and they leave the answer's continuation alone.
        note = kind in ANSWER_OUTCOMES and index > 0
        if note:
            parts.extend(split_message(text))
            continue
        if channel == "sms" and kind in CONTENT_OUTCOMES:
            head, rest = cap_sms(text, catalog.sms_max_segments, hint)
            parts.extend(split_message(head))
        elif kind in CONTENT_OUTCOMES:
            pieces = split_message(text)
            cap = catalog.whatsapp_max_messages
            if len(pieces) > cap:  # cut, leaving room for the hint in the last message kept
                pieces = split_message(text, MAX_MESSAGE_CHARS - len(hint))
                rest = " ".join(pieces[cap:])
                pieces = [*pieces[: cap - 1], pieces[cap - 1] + hint]
            parts.extend(pieces)
        else:
            parts.extend(split_message(text))
        if kind in ANSWER_OUTCOMES:
            contact.more_text = rest or None  # a new answer replaces the continuation
        elif rest:
            contact.more_text = rest
    ids: list[int] = []
    for part in parts:
        # One Core INSERT ... RETURNING id per message, the row then known to the session as
        # stored (as `bot.router.steps.store_inbound` does): the id keys its cost, and the
        # sender knows it without reading it back (`stored_reply_ids`). The turn's other
        # changes are written at the end (`write_changes`).
        values = {
            "contact_id": contact.id, "direction": "out", "channel": channel, "body": part,
            "message_sid": None, "num_media": 0, "intent": None, "outcome": None,
            "tokens_charged": 0, "in_reply_to_id": inbound.id, "status":
            "pending" if transport == "rest" else None, "error_code": None,
            "units": billed_units(channel, part), "level": None, "estimate_musd": None,
            "status_at": None, "created_at": now,
        }
        stored = execute_core(session, _STORE_REPLY, values).scalar_one()
        row = known_row(session, Message, {"id": stored, **values})
        ids.append(stored)
        if transport == "twiml":
            costs.record_messaging(session, contact.account_id, catalog.costs, channel, "out",
                                   row.units, key=f"msg:out:{stored}", now=now)
    if transport == "rest" and ids:
        session.info.setdefault(REPLY_IDS, {})[inbound.id] = ids
    # The turn's changes to the contact and the inbound message, written now: one UPDATE
    # each, without the flush's unit of work at the commit.
    write_changes(session, contact, inbound)
    return tuple(parts)


_STORE_REPLY = insert_values(_MESSAGES, MESSAGE_COLUMNS, returning=("id",))


def stored_reply_ids(session: Session, inbound_id: int) -> list[int] | None:
    """The ids of the `pending` replies `store_replies` stored for `inbound_id` in this
    session (taken: a second call answers None), or None when it stored none here (a resumed
    answer: the caller reads them, `bot.outbound.pending_outbound`)."""
    known: dict[int, list[int]] = session.info.get(REPLY_IDS, {})
    return known.pop(inbound_id, None)


def billed_units(channel: str, text: str) -> int:
    """What a message is billed in: SMS segments (GSM-7 or UCS-2), or 1 WhatsApp message."""
    if channel == "sms":
        return max(count_segments(text).segments, 1)
    return 1


def record_llm_cost(session: Session, pending: PendingAnswer, result: SkillResult,
                    settings: BotSettings, now: datetime | None = None) -> bool:
    """Record what the skill's LLM call cost (keyed `llm:<MessageSid>`, so once), under the
    account's lock; True when there was a call to record. `settle` records it with the
    capture; `bot.router.pipeline` calls this alone, in its own transaction, when a
    settlement failed, so a call the provider billed stays costed (a retry answered from the
    cache would not see the usage again)."""
    if result.usage is None and not result.unbilled_call:
        return False
    ledger.lock_account(session, pending.account_id)
    _record_llm(session, pending, result, settings, now or utcnow())
    return True


def _record_llm(session: Session, pending: PendingAnswer, result: SkillResult,
                settings: BotSettings, now: datetime) -> None:
    if result.usage is not None:
        price = settings.catalog.costs.model(result.usage.model)
        costs.record_llm(session, pending.account_id, result.usage, price,
                         key=f"llm:{pending.message_sid}", intent=pending.intent.name, now=now)
    elif result.unbilled_call:
        catalog = settings.catalog
        tier = catalog.llm.tier(levels.LLM_TIER_OF.get(pending.level, "normal"))
        costs.record_llm_estimate(
            session, pending.account_id, levels.llm_ceiling_musd(catalog, tier, pending.intent),
            tier.model, key=f"llm:{pending.message_sid}", intent=pending.intent.name, now=now)


def settle_ledger(
    session: Session,
    pending: PendingAnswer,
    result: SkillResult,
    settings: BotSettings,
    now: datetime,
) -> tuple[OutcomeKind, tuple[str, ...], int]:
    """Capture or void the hold and record the LLM cost: (outcome kind, texts, tokens).

    The caller holds the account's row lock (taken before any other row, so no deadlock).
    """
    _record_llm(session, pending, result, settings, now)
    if result.answer is None:
        if pending.hold_id is not None:
            try:
                ledger.void(session, pending.hold_id, now=now)  # a lapsed hold: a no-op
            except HoldNotPending:
                log.error("a failed answer's hold was captured",
                          extra={"hold": pending.hold_id})
        failure = _noted(pending, result.failure_reply) if result.failure_reply else None
        return OutcomeKind.FAILED, (failure,) if failure else (), 0
    charged = _charge(session, pending, now)
    if charged is None:
        return OutcomeKind.ANSWERED, (_noted(pending, result.answer.text),), 0
    posted, released = charged
    watch = alerts.AfterDebit()
    if not posted.replayed:
        costs.note_tokens_charged(session, pending.account_id,
                                  [(b, -n) for b, n in posted.by_bucket], now,
                                  intent=pending.intent.name)
        if pending.available_after_hold is not None:
            after = pending.available_after_hold + released
            watch = alerts.after_debit(
                session, pending.account_id, settings.catalog,
                before=after + posted.amount, after=after, now=now,
                provider_name=settings.payments.name if settings.payments else None)
            if watch.top_up is not None:
                # Charged after the commit, with no transaction open (`answer_message`).
                session.info.setdefault(TOP_UPS, []).append(watch.top_up)
    text = _noted(pending, result.answer.text)
    lang = pending.request.language or reply_language(None, pending.request.text)
    if pending.level != levels.NORMAL and levels.take_upsell(
            session, pending.account_id, settings.catalog, now, pending.level):
        available = ledger.balance(session, pending.account_id, now).available
        notice = replies.level_notice(settings.catalog, pending.level, available, lang=lang)
        text = f"{notice}\n{text}"
    if watch.alert is not None:
        link = payments.issue_pay_link(session, pending.account_id,
                                       settings.catalog.default_pack,
                                       ttl_seconds=settings.catalog.pay_link_ttl_seconds,
                                       now=now)
        alert = replies.low_balance_text(settings.catalog, watch.available,
                                         settings.pay_url(link.token), lang)
        return OutcomeKind.ANSWERED, (text, alert), posted.amount
    return OutcomeKind.ANSWERED, (text,), posted.amount


def _noted(pending: PendingAnswer, text: str) -> str:
    """`text` after the turn's note, when it has one (`PendingAnswer.note`)."""
    return f"{pending.note}\n{text}" if pending.note else text


def _charge(session: Session, pending: PendingAnswer, now: datetime
            ) -> tuple[ledger.Posted, int] | None:
    """Charge an answer given: capture its hold, or debit the price directly when it was
    routed without one (`steps.reserve`); (the debit entries, tokens released). None when
    nothing could be charged and the answer goes out free (logged): the hold lapsed while
    the skill ran (a stalled job), or, without a hold, the balance no longer covered it
    (which the account's row lock rules out)."""
    key = f"debit:{pending.message_sid}"
    if pending.hold_id is None:
        try:
            return ledger.debit(session, pending.account_id, pending.intent.price, key=key,
                                memo=pending.intent.name, now=now), 0
        except InsufficientTokens:
            log.error("a direct debit found too few tokens; answer given free",
                      extra={"message_sid": pending.message_sid})
            return None
    try:
        captured = ledger.capture(session, pending.hold_id, key=key, now=now,
                                  placed=pending.placed)
    except HoldNotPending:
        log.warning("hold lapsed before capture; answer given free",
                    extra={"hold": pending.hold_id, "message_sid": pending.message_sid})
        return None
    return captured.posted, captured.released


def _uses_history(intent: str) -> bool:
    """Whether the offline skill of `intent` reads `SkillRequest.history`."""
    try:
        return bool(getattr(skill_for(intent), "uses_history", False))
    except UnknownIntent:
        return False


def _history_statement(limit: int) -> Select[tuple[str, str]]:
    """The conversation before a message, newest first: (direction, body), at most `limit`."""
    return (select(Message.direction, Message.body)
            .where(Message.contact_id == bindparam("contact_id", type_=Integer()),
                   Message.id < bindparam("message_id", type_=Integer()), Message.body != "")
            .order_by(Message.id.desc())
            .limit(limit))


def skill_request(
    session: Session, settings: BotSettings, spec: IntentSpec, message: Message,
    level: str | None = None, language: str | None = None,
    allergies: tuple[str, ...] = (),
) -> SkillRequest:
    """The skill's input: the text, the channel, the conversation before this message, the
    LLM tier of the level, the person's language (`Contact.language`; None while it is not
    known, and the skill reads it from the text) and their remembered allergies
    (`bot.allergies` keys, `Contact.allergies`).

    The conversation (at most the catalog's `llm.history_messages` earlier messages) is read
    only for a skill that uses it: the LLM, or an offline skill whose class sets
    `uses_history = True` (the grocery list, which lists the meal plan just sent); the other
    answers save the statement. It is sent compiled once per catalog limit
    (`tokens.base.execute_compiled`), without a flush: it reads only rows stored before
    `message`, which earlier turns committed."""
    history: tuple[tuple[str, str], ...] = ()
    limit = settings.catalog.llm.history_messages
    if limit and (settings.chat is not None or _uses_history(spec.name)):
        rows = execute_compiled(
            session.connection(), ("bot.router.answer.history", limit),
            lambda _dialect: _history_statement(limit),
            {"contact_id": message.contact_id, "message_id": message.id}).all()
        history = tuple(
            ("user" if direction == "in" else "assistant", body)
            for direction, body in reversed(rows)
        )
    return SkillRequest(intent=spec.name, text=message.body, channel=message.channel,
                        history=history,
                        tier=levels.LLM_TIER_OF.get(level or levels.NORMAL, "normal"),
                        language=language, allergies=allergies)


