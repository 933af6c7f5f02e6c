"""The ordered steps that route one inbound message (`STEPS`, run by `handle_inbound`).

    contact -> lock the account -> store (a repeated MessageSid stops here) -> language
    -> inbound flood -> compliance keywords -> opted-out silence
    -> suspended silence -> rate limit -> monthly allowance -> past the cutoff -> no text
    -> free commands -> allergies -> small talk -> intent -> level -> hold -> [defer]
    -> skill -> capture (or void)

Every reply is in the person's language (`Contact.language`, `bot.contacts.note_language`).
Compliance keywords come first and are free; after STOP nothing is charged or sent. Free
commands (BALANCE, BUY, BUY PREMIUM, AUTO ON/OFF, ACCOUNT, MORE, LANGUAGE, ALLERGIES, FORGET
ALLERGIES) and small talk ("thanks", "ok") never reach pricing. An allergy the message states
is remembered, and every later answer leaves it out (`bot.allergies`). The level
(`tokens.levels`) decides what the answer may cost: a cheaper LLM tier, templates, partner
offers, or a pay link instead. The price is held before the skill runs
(`hold:<MessageSid>`) and captured (`debit:<MessageSid>`) only when the skill answered; a
skill that fails voids the hold, so a repeat delivery or a failed skill charges nothing.
Every turn locks the person's account row first.

With `defer=True` the steps stop after the hold with the outcome "queued", and
`bot.router.pipeline.answer_message` runs the skill with no transaction open and settles.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    String,
    bindparam,
    case,
    func,
    select,
)
from sqlalchemy.orm import Session

from bot import allergies as allergy_memory
from bot import replies
from bot.contacts import (
    LanguageState,
    chosen_language,
    mask_address,
    noted_language,
    reply_language,
    resolve_contact,
)
from bot.inbox import TAKE_IN_CTE, TAKE_IN_CTE_PARAMS, take_from_inbox
from bot.intents.classifier import classify
from bot.intents.llm import SERVING_INTENTS
from bot.intents.llm_classify import (
    LlmClassification,
    cheapest_tier,
    classification_ceiling_musd,
)
from bot.intents.offline import small_talk as small_talk_kind
from bot.knowledge import load_knowledge
from bot.messages import InboundMessage
from bot.models import (
    MESSAGE_COLUMNS,
    ON_THE_WAY_STATES,
    ConsentEvent,
    Contact,
    Message,
    OutcomeKind,
)
from bot.router.answer import (
    PendingAnswer,
    billed_units,
    run_skill,
    settle_ledger,
    skill_request,
    store_replies,
)
from bot.router.turn import (
    HELP,
    OPT_IN,
    OPT_OUT,
    BotSettings,
    Outcome,
    ReplyNow,
    Step,
    Turn,
    is_free_command,
)
from tokens import account_links, auto_topup, costs, ledger, levels, payments
from tokens.base import (
    UTCDateTime,
    execute_compiled,
    execute_core,
    insert_on_conflict,
    known_row,
    literal_words,
    on_postgresql,
    utcnow,
)
from tokens.catalog import normalise_command
from tokens.errors import InsufficientTokens, UnknownAccount

log = logging.getLogger(__name__)


def sender_contact(turn: Turn) -> None:
    """The person behind the sender, created with an account on first contact."""
    turn.contact = resolve_contact(turn.session, turn.msg.sender, turn.now,
                                   turn.settings.erased_key)


def serialise(turn: Turn) -> None:
    """Lock the person's account row for the rest of the turn, so nothing else (a payment,
    an operator, a second delivery of the same MessageSid) races on the balance or the
    conversation. The same statement reads the person's standing for the turn: suspended by
    an operator, premium (`payments.premium_exists`), an operator's level override in force
    (`levels.override_of`), whether this month's allowance was granted, and the purchased and
    premium tokens left (`ledger.purchased_available`, for `choose_level`), the available
    balance, whether a lot is due to expire (`ledger.lots_due`, for `reserve`), and what is
    on its way and not yet costed (`_on_the_way`, for the exposure of the level decisions).
    The order of one person's messages is kept by the worker's turn (docs/pipeline.md,
    "Per-person order")."""
    now = turn.now
    rates = turn.catalog.costs.messaging
    channels = tuple(sorted(rates))
    params: dict[str, object] = {
        "account_id": turn.account_id, "now": now,
        "grace_start": payments.grace_start(now, turn.catalog.premium.grace_days),
        "allowance_key": ledger.monthly_allowance_key(turn.account_id, now),
    }
    params.update((f"rate_{i}", rates[channel].outbound_musd)
                  for i, channel in enumerate(channels))
    row = execute_compiled(turn.session.connection(), ("bot.router.steps.standing", channels),
                           lambda _dialect: _standing_statement(channels), params).first()
    if row is None:
        raise UnknownAccount(f"account {turn.account_id} does not exist")
    turn.suspended = row[0] is not None
    turn.premium = bool(row[1])
    turn.override = row[2]
    turn.allowance_granted = bool(row[3])
    turn.purchased = int(row[4])
    turn.available = int(row[5])
    turn.lots_due = bool(row[6])
    turn.on_the_way_musd = int(row[7]) + int(row[8])


def _standing_statement(channels: tuple[str, ...]) -> Select[Any]:
    """The statement of `serialise` for the catalog's messaging `channels` (the replies on
    their way are priced at each channel's `rate_<i>`, µUSD per unit): the row lock of
    `tokens.ledger.lock_account` (FOR NO KEY UPDATE of the account row; SQLite: BEGIN
    IMMEDIATE) with the person's standing. `serialise` builds it once per database driver
    and set of channels (`tokens.base.execute_compiled` keeps the compiled SQL)."""
    queued, sending = _on_the_way(channels)
    return _standing(queued, sending)


def _on_the_way(channels: tuple[str, ...]) -> tuple[ColumnElement[int], ColumnElement[int]]:
    """Two SQL scalars over the locked account's messages (rule 1 of the level policy, README
    "How service steps down"): the µUSD ceilings of its answers still queued, and the µUSD of
    its replies stored or being sent but not yet accepted by the provider (`pending`,
    `submitting`, `unknown`), neither of which is costed yet."""
    # Literal values, not bound ones, so that the partial indexes of these messages
    # (`ix_messages_queued`, `ix_messages_on_the_way`) serve both subqueries.
    on_the_way = Message.status.in_(literal_words(*ON_THE_WAY_STATES))
    rate = case(*[(Message.channel == channel, bindparam(f"rate_{i}", type_=BigInteger()))
                  for i, channel in enumerate(channels)], else_=0)
    of_account = (select(Message.id).join(Contact, Contact.id == Message.contact_id)
                  .where(Contact.account_id == ledger.Account.id))
    queued = (of_account.with_only_columns(
        func.coalesce(func.sum(Message.estimate_musd), 0))
        .where(Message.outcome == literal_words(OutcomeKind.QUEUED)[0])
        .scalar_subquery())
    sending = (of_account.with_only_columns(
        func.coalesce(func.sum(Message.units * rate), 0))
        .where(on_the_way).scalar_subquery())
    return queued, sending


def _standing(queued: ColumnElement[int], sending: ColumnElement[int]) -> Select[Any]:
    """The lock of the account row with the columns `serialise` reads, in that order."""
    now = bindparam("now", type_=UTCDateTime())
    return (
        select(
            ledger.Account.suspended_at,
            payments.premium_exists(payments.Subscription.account_id == ledger.Account.id,
                                    bindparam("grace_start", type_=UTCDateTime())),
            select(levels.LevelState.override_level)
            .where(levels.LevelState.account_id == ledger.Account.id,
                   levels.LevelState.override_until > now)
            .scalar_subquery(),
            ledger.monthly_allowance_granted(bindparam("allowance_key", type_=String())),
            ledger.purchased_available(ledger.Account.id, now),
            ledger.Account.balance - ledger.Account.held,
            ledger.lots_due(ledger.Account.id, now),
            queued,
            sending,
        )
        .where(ledger.Account.id == bindparam("account_id", type_=Integer()))
        .with_for_update(key_share=True, of=ledger.Account)
    )


def store_inbound(turn: Turn) -> None:
    """Store the message before acting, in one `INSERT ... ON CONFLICT DO NOTHING`: a
    MessageSid stored before is a repeat delivery, which answers nothing and changes nothing
    (`UNIQUE(message_sid)`; under the account's lock, so a concurrent repeat waits for the
    first and then finds it).

    Records what receiving it cost (messaging units in, and the platform's per-interaction
    cost), once per MessageSid. On PostgreSQL the message's inbox row, when it came from one
    (`Turn.inbox_id`), is deleted by the same statement (`bot.inbox.TAKE_IN_CTE`).
    """
    assert turn.contact is not None
    msg, session = turn.msg, turn.session
    values = {
        "contact_id": turn.contact.id, "direction": "in", "channel": msg.channel,
        "message_sid": msg.message_sid, "body": msg.text, "num_media": len(msg.media),
        "intent": None, "outcome": None, "tokens_charged": 0, "in_reply_to_id": None,
        "status": None, "error_code": None, "units": 0, "level": None, "estimate_musd": None,
        "status_at": None, "created_at": turn.now,
    }
    if turn.inbox_id is not None and on_postgresql(session):
        # The inbox row goes in the same statement, a repeat delivery's too.
        stored = execute_core(session, _STORE_INBOUND_TAKING,
                              {**values, "inbox_id": turn.inbox_id}).scalar()
        turn.inbox_id = None  # taken
    else:
        stored = execute_core(session, _STORE_INBOUND, values).scalar()
    if stored is None:
        raise ReplyNow(OutcomeKind.DUPLICATE)
    # The row as stored, known to the session without reading it back.
    message = known_row(session, Message, {"id": stored, **values})
    turn.message = message
    costs.record_inbound(turn.session, turn.account_id, turn.catalog.costs, msg.channel,
                         billed_units(msg.channel, msg.text), message_sid=msg.message_sid,
                         now=turn.now)
    _record_classification(turn)


def _record_classification(turn: Turn) -> None:
    """The cost of the classification call made before the turn (`turn.classified`), once
    per MessageSid (`llm-classify:<MessageSid>`): its usage, or its ceiling when the call
    reported none (a timeout; the provider may still bill it)."""
    classified = turn.classified
    if classified is None or not classified.asked:
        return
    catalog, key = turn.catalog, f"llm-classify:{turn.msg.message_sid}"
    if classified.usage is not None:
        costs.record_llm(turn.session, turn.account_id, classified.usage,
                         catalog.costs.model(classified.usage.model), key=key,
                         intent=classified.spec.name, now=turn.now)
    elif classified.unbilled:
        tier = cheapest_tier(catalog)
        costs.record_llm_estimate(turn.session, turn.account_id,
                                  classification_ceiling_musd(catalog, tier), tier.model,
                                  key=key, intent=classified.spec.name, now=turn.now)


_STORE_INBOUND = insert_on_conflict(Message.__table__, MESSAGE_COLUMNS, ("message_sid",),
                                    returning=("id",))
_STORE_INBOUND_TAKING = insert_on_conflict(Message.__table__, MESSAGE_COLUMNS, ("message_sid",),
                                           returning=("id",), prefix=TAKE_IN_CTE,
                                           prefix_params=TAKE_IN_CTE_PARAMS)


def language(turn: Turn) -> None:
    """The language of this turn's replies: LANGUAGE / IDIOMA with a language chooses it (the
    confirmation is a free command, `free_commands`), any other message may set or switch the
    detected one (`bot.contacts.noted_language`). The contact is the one loaded for the turn,
    and its new language is written with the turn's other changes to it (`handle_inbound`):
    no statement is added."""
    assert turn.contact is not None
    state = LanguageState.of(turn.contact)
    chosen = turn.catalog.language_choices.get(turn.command)
    if chosen:
        state = chosen_language(chosen, turn.now)
    elif chosen is None:
        state = noted_language(state, turn.msg.text)
    turn.language_state = state
    turn.language = reply_language(state, turn.msg.text)


def compliance_keywords(turn: Turn) -> None:
    """STOP, START and HELP families, before anything else and free (docs/pipeline.md).

    Twilio Advanced Opt-Out's `OptOutType` is authoritative when present. The START family
    ("start", "yes", "unstop" ...) means START only for someone opted out on this channel;
    from anyone else it is ordinary text. Every opt-out and opt-in is appended to the
    person's consent log (`ConsentEvent`).
    """
    assert turn.contact is not None
    family = keyword_family(turn.msg)
    if family is None:
        return
    contact = turn.contact
    channel = turn.msg.channel
    confirms = channel in turn.settings.app_confirms_opt_out
    if family == "START" and contact.opted_out_at(channel) is None:
        if turn.msg.opt_out_type == "START":
            # Twilio's own opt-in handling has answered it (SMS); there is nothing to undo.
            raise ReplyNow(OutcomeKind.OPT_IN)
        return  # "yes", "start" from someone not opted out here: ordinary text
    if family in ("STOP", "START"):
        _log_consent(turn, "opt_out" if family == "STOP" else "opt_in")
    if family == "STOP":
        first_time = contact.opted_out_at(channel) is None
        if first_time:
            source = "twilio_opt_out_type" if turn.msg.opt_out_type else "keyword"
            contact.set_opted_out(channel, turn.now, f"{source}:{channel}")
        log.info("contact opted out", extra={"contact": mask_address(contact.address),
                                             "channel": channel})
        if confirms and first_time and not turn.flooded and _take_free_reply(turn):
            raise ReplyNow(OutcomeKind.OPT_OUT, replies.stop_text(turn.catalog, turn.language))
        raise ReplyNow(OutcomeKind.OPT_OUT)
    if family == "START":
        contact.set_opted_out(channel, None, None)
        if confirms and not turn.flooded and _take_free_reply(turn):
            raise ReplyNow(OutcomeKind.OPT_IN, replies.start_text(turn.catalog, turn.language))
        raise ReplyNow(OutcomeKind.OPT_IN)
    if turn.flooded:
        raise ReplyNow(OutcomeKind.FLOODED)
    if contact.opted_out_at(channel) is not None:
        raise ReplyNow(OutcomeKind.OPTED_OUT)
    allowed = levels.take_help(turn.session, turn.account_id, turn.catalog, turn.now)
    if allowed == "full":
        raise ReplyNow(OutcomeKind.HELP, replies.help_text(turn.catalog, turn.now, turn.language))
    if allowed == "short":
        raise ReplyNow(OutcomeKind.HELP, replies.help_short_text(turn.catalog, turn.language))
    raise ReplyNow(OutcomeKind.HELP)


def _take_free_reply(turn: Turn) -> bool:
    """One reply from the person's daily budget of free replies (`levels.take_free_reply`)."""
    return levels.take_free_reply(turn.session, turn.account_id, turn.catalog, turn.now)


def inbound_flood(turn: Turn) -> None:
    """A person whose inbound messages pass `inbound_flood_per_day` today is silenced for
    the rest of the day: no reply at all (STOP and START still change their consent, without
    a confirmation), and the first message past it flags them for the admin pages
    (`levels.mark_flooded`). The count lives with the rate limits
    (`bot.ratelimit.SenderLimits.count_day`): no SQL for ordinary messages."""
    limits = turn.settings.sender_limits
    if limits is None:
        return
    count = limits.count_day(f"account:{turn.account_id}", turn.now)
    threshold = turn.catalog.levels.inbound_flood_per_day
    if count is None or count <= threshold:
        return
    turn.flooded = True
    if count == threshold + 1:
        levels.mark_flooded(turn.session, turn.account_id, turn.now)
        log.warning("inbound flood: person silenced for the day",
                    extra={"contact": mask_address(turn.msg.sender)})
    if keyword_family(turn.msg) not in ("STOP", "START"):
        raise ReplyNow(OutcomeKind.FLOODED)


def _log_consent(turn: Turn, action: str) -> None:
    """Append the opt-out or opt-in to the person's consent log (`ConsentEvent`): the word
    they sent, or Twilio's `OptOutType` when it sent one."""
    assert turn.contact is not None
    msg = turn.msg
    keyword = msg.opt_out_type or normalise_command(msg.text).upper()
    turn.session.add(ConsentEvent(
        contact_id=turn.contact.id, channel=msg.channel, action=action,
        keyword=keyword[:32] or "-", source="twilio" if msg.opt_out_type else "keyword",
        at=turn.now))


def silence_opted_out(turn: Turn) -> None:
    """After STOP on this channel nothing is charged or sent on it until START."""
    assert turn.contact is not None
    if turn.contact.opted_out_at(turn.msg.channel) is not None:
        raise ReplyNow(OutcomeKind.OPTED_OUT)


def silence_suspended(turn: Turn) -> None:
    """An operator suspended this person (admin pages): no answer and nothing charged, until
    unsuspended. STOP and HELP, answered above, still work."""
    if turn.suspended:
        raise ReplyNow(OutcomeKind.SUSPENDED)


def rate_limit(turn: Turn) -> None:
    """Per-sender rate limits (`bot.ratelimit`), per person: past them, no skill
    and no charge; one short notice an hour at most, and only within the daily budget of
    free replies (`levels.take_free_reply`), so that throttling itself cannot cost without
    limit. STOP, START and HELP were answered above and are never throttled (they draw on the
    same budget)."""
    limits = turn.settings.sender_limits
    if limits is None:
        return
    verdict = limits.check(f"account:{turn.account_id}", turn.now)
    if verdict.allowed:
        return
    log.info("message throttled", extra={"limit": verdict.limit})
    if verdict.notify and _take_free_reply(turn):
        raise ReplyNow(OutcomeKind.THROTTLED, replies.throttled(turn.language))
    raise ReplyNow(OutcomeKind.THROTTLED)


def monthly_allowance(turn: Turn) -> None:
    """The free monthly allowance, granted lazily on the first message of the month (the
    locking statement of `serialise` read whether it was)."""
    if turn.allowance_granted:
        return
    granted = ledger.grant_monthly_allowance(
        turn.session, turn.account_id, turn.catalog.free_monthly_allowance, turn.now
    )
    if granted.replayed:
        return
    if turn.available == 0:  # nothing held or left to expire (a new person): no statement
        turn.available = granted.amount
    else:  # last month's free tokens expired too: read it again (once a month)
        turn.available = ledger.balance(turn.session, turn.account_id, turn.now).available


def past_the_cutoff(turn: Turn) -> None:
    """Past the cutoff (README, "How service steps down"), the bot's other free replies
    (MORE, LANGUAGE, ALLERGIES, small talk, "tell me in words") draw on the daily budget of free
    replies, then stop: what a non-paying person costs stays bounded. BALANCE, BUY, BUY
    PREMIUM, AUTO ON/OFF and ACCOUNT have a daily budget of their own
    (`billing_replies_per_day`, default 5): the free replies never use it up, so the way
    out of the cutoff is not silenced (issue #16), and what these replies cost stays within
    the loss bound
    (`levels.monthly_loss_ceiling_musd`). Priced requests are decided in `choose_level`;
    HELP, STOP and START, answered before this step, draw on the budget of free replies."""
    catalog = turn.catalog
    command = turn.command
    commands = catalog.commands
    billing = command in (commands["balance"] | commands["buy"] | commands["premium"]
                          | commands["auto_on"] | commands["auto_off"] | commands["account"])
    if (not billing and turn.msg.text.strip() and not is_free_command(command, catalog)
            and read_small_talk(turn) is None):
        return  # a priced request: `choose_level` decides
    ceiling = levels.reply_ceiling_musd(catalog, turn.msg.channel)
    if _exposure(turn) + ceiling < catalog.levels.payment_required_musd:
        return
    if turn.premium:
        return
    take = levels.take_billing_reply if billing else levels.take_free_reply
    if not take(turn.session, turn.account_id, catalog, turn.now):
        raise ReplyNow(OutcomeKind.REFUSED)


def no_text(turn: Turn) -> None:
    """A photo or a location without words cannot be priced or answered yet: say so, free."""
    if not turn.msg.text.strip():
        raise ReplyNow(OutcomeKind.NO_TEXT, replies.no_text(turn.language))


def free_commands(turn: Turn) -> None:
    """BALANCE, BUY, BUY PREMIUM, AUTO ON, AUTO OFF, ACCOUNT, MORE and LANGUAGE (and their
    Spanish forms): whole-message matches, free, in the person's language. ACCOUNT sends a
    link to the person's own account page, for them only and for 15 minutes
    (`tokens.account_links`, docs/account.md)."""
    command = turn.command
    catalog, lang = turn.catalog, turn.language
    commands = catalog.commands
    if command in commands["balance"]:
        available = ledger.balance(turn.session, turn.account_id, turn.now).available
        raise ReplyNow(OutcomeKind.BALANCE, replies.balance_text(catalog, available, turn.now,
                                                                 lang))
    if command in commands["buy"]:
        raise ReplyNow(OutcomeKind.BUY, replies.buy_text(catalog.pack(), _pay_url(turn), lang))
    if command in commands["premium"]:
        raise ReplyNow(OutcomeKind.PREMIUM, _premium_reply(turn))
    if command in commands["auto_on"] | commands["auto_off"]:
        raise ReplyNow(OutcomeKind.AUTO_TOPUP, _auto_topup_reply(turn,
                                                                 on=command in commands["auto_on"]))
    if command in commands["account"]:
        link = account_links.issue_link(turn.session, turn.account_id, turn.now)
        raise ReplyNow(OutcomeKind.ACCOUNT, replies.account_text(
            catalog, turn.settings.account_url(link.token), lang))
    if command in commands["more"]:
        assert turn.contact is not None
        if turn.contact.more_text:
            raise ReplyNow(OutcomeKind.MORE, turn.contact.more_text)
        raise ReplyNow(OutcomeKind.MORE, replies.nothing_more(lang))
    if command in commands["language"]:
        chosen = catalog.language_choices[command]  # applied by the `language` step
        raise ReplyNow(OutcomeKind.LANGUAGE, replies.language_set_text(chosen) if chosen
                       else replies.language_help_text(lang))


def remembered_allergies(turn: Turn) -> None:
    """ALLERGIES lists what the person told the bot they are allergic to, FORGET ALLERGIES
    clears it (both free, whole-message matches, English or Spanish). Any other message that
    states an allergy or an intolerance adds it (`bot.allergies.stated`), written with the
    turn's other changes to the contact; the answer then starts with a line saying so, and
    this and every later request leaves it out (`SkillRequest.allergies`)."""
    assert turn.contact is not None
    command = turn.command
    knowledge = load_knowledge()
    remembered = allergy_memory.decode(turn.contact.allergies)
    if command in allergy_memory.LIST_COMMANDS:
        raise ReplyNow(OutcomeKind.ALLERGIES,
                       allergy_memory.list_text(remembered, knowledge, turn.language))
    if command in allergy_memory.FORGET_COMMANDS:
        turn.contact.allergies = None
        raise ReplyNow(OutcomeKind.ALLERGIES, allergy_memory.forgotten_text(turn.language))
    new = [k for k in allergy_memory.stated(turn.msg.text, knowledge, turn.language)
           if k not in remembered]
    if new:
        stored = allergy_memory.encode((*remembered, *new))  # what no longer fits is dropped
        kept = [k for k in new if k in allergy_memory.decode(stored)]
        if kept:
            turn.contact.allergies = stored
            turn.allergy_note = allergy_memory.noted_text(kept, knowledge, turn.language)


def _auto_topup_reply(turn: Turn, *, on: bool) -> str:
    """AUTO ON: on at once with a saved card, else a pay link whose checkout saves the card
    for it (the person's consent, `tokens.auto_topup.request_on`); AUTO OFF: off. Without a
    payment provider, it says auto top-up is not available."""
    catalog, lang = turn.catalog, turn.language
    if turn.settings.payments is None:
        return replies.auto_topup_unavailable_text(lang)
    pack = catalog.auto_topup_pack()
    if not on:
        auto_topup.turn_off(turn.session, turn.account_id, turn.now)
        return replies.auto_topup_off_text(lang)
    result = auto_topup.request_on(turn.session, turn.account_id, pack.code, turn.now)
    if result.kind == "enabled":
        return replies.auto_topup_on_text(catalog, pack, lang)
    url = _pay_url(turn, pack.code, purpose="auto_topup")
    return replies.auto_topup_consent_text(catalog, pack, url, lang)


def _premium_reply(turn: Turn) -> str:
    """BUY PREMIUM: a subscriber gets the billing portal, and so does someone whose
    subscription is past due or unpaid (to fix the card: a checkout would open a second
    subscription); anyone else the subscription's pay link."""
    plan = turn.catalog.premium
    if turn.premium:
        url = _pay_url(turn, "", purpose="portal")
        return replies.premium_manage_text(plan, url, turn.language)
    if payments.has_unpaid_subscription(turn.session, turn.account_id):
        url = _pay_url(turn, "", purpose="portal")
        return replies.premium_unpaid_text(plan, url, turn.language)
    url = _pay_url(turn, plan.code, purpose="premium")
    return replies.premium_text(plan, url, turn.language)


def read_small_talk(turn: Turn) -> str | None:
    """The small-talk kind of the message (`bot.intents.offline.small_talk`), read once."""
    if turn.small_talk is None:
        turn.small_talk = small_talk_kind(turn.msg.text) or ""
    return turn.small_talk or None


def small_talk(turn: Turn) -> None:
    """Small talk, free (tokens/economy.yaml says so): "thanks", "ok" or an emoji get a short
    reply; "stop sending me messages" is told how STOP works (only the STOP keyword opts out,
    `compliance_keywords`); "cancel my subscription" gets the billing portal, as BUY PREMIUM
    gives it to a subscriber, or is told there is no subscription. Greetings and anything else
    are the priced `chat` intent."""
    kind = read_small_talk(turn)
    if kind is None:
        return
    if kind == "cancel_subscription":
        if turn.premium:
            raise ReplyNow(OutcomeKind.SMALL_TALK, _premium_reply(turn))
        kind = "no_subscription"
    raise ReplyNow(OutcomeKind.SMALL_TALK, replies.small_talk_text(kind, turn.catalog,
                                                                   turn.language))


def classify_intent(turn: Turn) -> None:
    """The intent, and so the price, from the catalog's patterns; or the one the LLM named
    before the turn for a message the patterns were unsure of (`turn.classified`,
    `bot.router.pipeline.classify_before_turn`), never cheaper than the patterns' own."""
    if turn.classified is not None:
        turn.intent = turn.classified.spec
        return
    turn.intent = classify(turn.msg.text, turn.catalog)


def choose_level(turn: Turn) -> None:
    """The restriction level of this answer (README, "How service steps down";
    `tokens.levels.decide`), on the exposure including answers still queued, under the
    account's lock.

    PAYMENT_REQUIRED: a pay link and nothing charged (from the daily budget of free replies,
    `free_replies_per_day`, then silence). AFFILIATE, for a costly intent: partner offers,
    nothing charged. Otherwise the answer goes ahead at this level (`run_skill`).
    """
    assert turn.intent is not None and turn.message is not None
    spec, catalog, session = turn.intent, turn.catalog, turn.session
    exposure = _exposure(turn)
    # Paying: purchased tokens cover the price, or premium. Their tokens are honoured even
    # while free tokens (spent first) remain, so a paying person is never refused; the cost
    # of that is bounded by the free allowance (`levels.monthly_loss_ceiling_musd`). The
    # purchased tokens were read with the lock (`serialise`); the whole balance is read only
    # for a refusal's or an offer's text.
    paying = turn.purchased >= spec.price or turn.premium
    ceiling = levels.ceilings(catalog, spec, turn.msg.channel, turn.settings.chat is not None)
    # An operator's override (admin pages, with an expiry) replaces the policy's level.
    turn.level = turn.override or levels.decide(exposure, ceiling, catalog, paying=paying)
    turn.estimate_musd = ceiling[turn.level]
    if turn.level == levels.PAYMENT_REQUIRED:
        if not _take_free_reply(turn):
            raise ReplyNow(OutcomeKind.REFUSED)  # silence until they pay or the day turns
        available = ledger.balance(session, turn.account_id, turn.now).available
        raise ReplyNow(OutcomeKind.REFUSED, replies.payment_required_text(
            catalog, available, _pay_url(turn), turn.now, turn.language))
    if turn.level == levels.AFFILIATE and spec.price >= catalog.levels.affiliate_min_price:
        if _unlocked_by_click(turn, exposure, ceiling):
            turn.level = levels.NORMAL
            turn.estimate_musd = ceiling[levels.NORMAL]
            return
        offers = _offers(turn)
        if offers:
            available = ledger.balance(session, turn.account_id, turn.now).available
            raise ReplyNow(OutcomeKind.OFFERS, replies.offers_text(catalog, spec, available,
                                                         offers, turn.now, turn.language))


def reserve(turn: Turn) -> None:
    """Hold the price before the skill runs; below the price: a pay link and the cheaper
    options, nothing charged, from the daily budget of free replies (the check and the hold
    are one step: `tokens.ledger.hold`).

    An answer given in this transaction (not deferred) needs no hold when the balance read
    under the lock covers the price and no lot is due to expire: the account's row stays
    locked until the answer is charged by `tokens.ledger.debit` (or not at all), so nothing
    can spend the tokens meanwhile. Three statements fewer than a hold and its capture."""
    assert turn.intent is not None
    if not turn.defer and not turn.lots_due and turn.available >= turn.intent.price:
        turn.direct = True
        turn.available -= turn.intent.price
        return
    try:
        placed = ledger.hold(
            turn.session, turn.account_id, turn.intent.price,
            key=f"hold:{turn.msg.message_sid}", ttl_seconds=turn.catalog.hold_ttl_seconds,
            memo=turn.intent.name, now=turn.now,
        )
    except InsufficientTokens as refused:
        # From the daily budget of free replies, then silence: replies that charge nothing
        # must not cost without limit.
        if not _take_free_reply(turn):
            raise ReplyNow(OutcomeKind.INSUFFICIENT) from None
        raise ReplyNow(OutcomeKind.INSUFFICIENT, _insufficient(turn, refused.available)) from None
    turn.hold_id = placed.hold_id
    turn.placed = placed
    turn.available -= turn.intent.price


def defer_or_answer(turn: Turn) -> None:
    """Stop here when deferring: the hold is placed, and the skill runs after the commit, in
    a job or in the caller with no transaction open ("queued"). Otherwise (the fast offline
    skills) run the skill now and capture or void."""
    assert turn.intent is not None and (turn.hold_id is not None or turn.direct)
    assert turn.message is not None and turn.contact is not None
    pending = PendingAnswer(
        message_id=turn.message.id,
        message_sid=turn.msg.message_sid,
        account_id=turn.account_id,
        channel=turn.msg.channel,
        intent=turn.intent,
        hold_id=turn.hold_id,
        request=skill_request(turn.session, turn.settings, turn.intent, turn.message,
                               turn.level, language=_known_language(turn),
                               allergies=allergy_memory.decode(turn.contact.allergies)),
        level=turn.level,
        placed=turn.placed,
        available_after_hold=turn.available,
        # A plan, recipe or list already says what it leaves out ("without peanuts"), and the
        # line would take room from it within the SMS cap: the note goes with advice only.
        note=None if turn.intent.name in SERVING_INTENTS else turn.allergy_note,
    )
    if turn.defer:
        # Everything the skill needs is known here; the caller commits and runs it with no
        # transaction open, without reading it back (the capture does not read the hold).
        turn.pending = pending
        raise ReplyNow(OutcomeKind.QUEUED)
    result = run_skill(turn.settings, pending)
    kind, texts, charged = settle_ledger(turn.session, pending, result, turn.settings, turn.now)
    turn.charged = charged
    raise ReplyNow(kind, *texts)


STEPS: tuple[Step, ...] = (
    sender_contact,
    serialise,
    store_inbound,
    language,
    inbound_flood,
    compliance_keywords,
    silence_opted_out,
    silence_suspended,
    rate_limit,
    monthly_allowance,
    past_the_cutoff,
    no_text,
    free_commands,
    remembered_allergies,
    small_talk,
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
    transport: str = "twiml",
    classified: LlmClassification | None = None,
    inbox_id: int | None = None,
) -> Outcome:
    """Route one inbound message through `STEPS` and record what happened.

    Args:
        session: the caller's session; this function flushes, never commits. The caller
            commits after it returns (and rolls back if it raises).
        msg: the normalised inbound message.
        settings: catalog, public URL and LLM client.
        now: the current time (UTC); tests freeze it.
        defer: stop after the hold with outcome "queued"; the caller commits, then answers
            with no transaction open (`bot.router.pipeline.answer_message` does all this).
        transport: "twiml": the replies go back in the webhook's answer and are costed now;
            "rest": they are stored `pending` for `bot.outbound` to send.
        classified: the LLM's classification of this message, asked before the turn with no
            transaction open (`bot.router.pipeline.classify_before_turn`); None: the rules.
        inbox_id: the inbox row `msg` came from, deleted in the caller's transaction (so a
            crash leaves either the inbox row or the routed message): by `store_inbound` on
            PostgreSQL, else here once the steps are done.

    Returns:
        The `Outcome`: what to reply (as TwiML), the intent, and the tokens charged.
    """
    turn = Turn(session=session, msg=msg, settings=settings, now=now or utcnow(), defer=defer,
                classified=classified, inbox_id=inbox_id)
    try:
        for step in STEPS:
            step(turn)
        raise AssertionError("the last step always replies")  # pragma: no cover
    except ReplyNow as done:
        kind, texts = done.kind, done.texts
    if turn.inbox_id is not None:  # not taken by `store_inbound`
        take_from_inbox(session, turn.inbox_id)
    sent: tuple[str, ...] = ()
    if turn.message is not None and turn.contact is not None:  # not a duplicate
        # Written with the rest of the turn's changes to the contact, in one UPDATE.
        if turn.language_state is not None:
            turn.language_state.write(turn.contact)
        turn.contact.last_channel = msg.channel
        turn.contact.last_inbound_at = turn.now
        if msg.channel == "whatsapp":
            turn.contact.whatsapp_last_inbound_at = turn.now
        if turn.estimate_musd is not None:  # priced: the level decided and its ceiling
            turn.message.level = turn.level
            turn.message.estimate_musd = turn.estimate_musd
        turn.message.intent = turn.intent.name if turn.intent else None
        turn.message.outcome = kind
        turn.message.tokens_charged = turn.charged
        sent = store_replies(session, turn.contact, turn.message, kind, texts, settings,
                             transport=transport, now=turn.now, lang=turn.language)
    outcome = Outcome(
        kind=kind,
        replies=sent,
        intent=turn.intent.name if turn.intent else None,
        tokens_charged=turn.charged,
        message_id=turn.message.id if turn.message is not None else None,
        pending=turn.pending if kind == "queued" else None,
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


def keyword_family(msg: InboundMessage) -> str | None:
    """The compliance keyword family of `msg`: "STOP", "START", "HELP" or None. Twilio
    Advanced Opt-Out's `OptOutType` wins over the text."""
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
    stored or being sent but not yet accepted by Twilio (rule 1, also under concurrency), as
    `serialise` read them under the account's lock (no statement here: the month's row was
    returned by the inbound message's cost)."""
    month = costs.month(turn.session, turn.account_id, turn.now)
    return month.exposure_musd + turn.on_the_way_musd


def _unlocked_by_click(turn: Turn, exposure: int, ceiling: dict[str, int]) -> bool:
    """Mode `click_to_unlock` (off by default; README, "How service steps down"): a partner
    click in the last 24 h unlocks one full answer, if that answer still fits under the
    cutoff."""
    from tokens import affiliates

    catalog = turn.catalog
    if catalog.affiliates.mode != "click_to_unlock":
        return False
    if exposure + ceiling[levels.NORMAL] >= catalog.levels.payment_required_musd:
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


def _known_language(turn: Turn) -> str | None:
    """The person's language after this message (None while not known: the skill reads the
    message's own)."""
    assert turn.contact is not None
    state = turn.language_state or LanguageState.of(turn.contact)
    return state.language


def _pay_url(turn: Turn, code: str | None = None, purpose: str = "pack") -> str:
    link = payments.issue_pay_link(
        turn.session, turn.account_id, code or turn.catalog.default_pack,
        ttl_seconds=turn.catalog.pay_link_ttl_seconds, purpose=purpose, now=turn.now,
    )
    return turn.settings.pay_url(link.token)


def _insufficient(turn: Turn, available: int) -> str:
    assert turn.intent is not None
    return replies.insufficient_text(turn.catalog, turn.intent, available, _pay_url(turn),
                                     turn.now, turn.language)

