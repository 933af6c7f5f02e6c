"""The router: one inbound message in, the replies out, the ledger moved exactly once.

The pipeline is an ordered list of small named steps over one `Turn` (shared/design/
architecture.md, "The main flow"); a step that has the final answer raises `ReplyNow`.

    dedupe -> contact -> store -> compliance keywords -> opted-out silence -> monthly allowance
    -> no text -> free commands -> intent -> hold -> skill -> capture (or void)

Compliance keywords come first and are free; after STOP nothing is charged or sent. Free
commands (BALANCE, BUY, MORE) never reach pricing. The price is held before the skill runs
(`hold:<MessageSid>`) and captured (`debit:<MessageSid>`) only when the skill answered; a skill
that fails voids the hold, so a repeat delivery or a failed skill charges nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot import replies
from bot.contacts import mask_address, resolve_contact
from bot.errors import SkillFailed
from bot.intents import SkillRequest, skill_for
from bot.intents.classifier import classify
from bot.messages import InboundMessage
from bot.models import Contact, Message
from tokens import ledger, payments
from tokens.base import utcnow
from tokens.catalog import Catalog, IntentSpec, normalise_command
from tokens.errors import InsufficientTokens

log = logging.getLogger(__name__)

# Compliance keyword families (Twilio's default opt-out keywords, messaging.md), plus Spanish forms.
OPT_OUT = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT",
     "PARAR", "BAJA", "CANCELAR"}
)
OPT_IN = frozenset({"START", "UNSTOP", "YES", "ALTA", "INICIAR"})
HELP = frozenset({"HELP", "INFO", "AYUDA"})


@dataclass(frozen=True)
class BotSettings:
    """What the router needs from configuration.

    Attributes:
        catalog: the economy catalog.
        public_base_url: where people reach the app, for pay links (no trailing slash needed).
        app_confirms_opt_out: channels on which the app, not Twilio, answers STOP and START.
            Twilio answers them itself on SMS (default opt-out handling); on WhatsApp it does
            not, so the app sends the one confirmation.
    """

    catalog: Catalog
    public_base_url: str
    app_confirms_opt_out: frozenset[str] = frozenset({"whatsapp"})

    def pay_url(self, token: str) -> str:
        """The public URL of a pay link token."""
        return f"{self.public_base_url.rstrip('/')}/pay/{token}"


@dataclass(frozen=True)
class Outcome:
    """What the router did with one inbound message.

    Attributes:
        kind: "duplicate", "opted_out", "opt_out", "opt_in", "help", "no_text", "balance",
            "buy", "more", "insufficient", "failed" or "answered".
        replies: texts to send back, in order (empty: answer with an empty `<Response/>`).
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
    contact: Contact | None = None
    message: Message | None = None
    intent: IntentSpec | None = None
    hold_id: int | None = None
    charged: int = 0

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


def store_inbound(turn: Turn) -> None:
    """Store the message before acting; `UNIQUE(message_sid)` settles concurrent repeats."""
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


def monthly_allowance(turn: Turn) -> None:
    """The free monthly allowance, granted lazily on the first message of the month."""
    ledger.grant_monthly_allowance(
        turn.session, turn.account_id, turn.catalog.free_monthly_allowance, turn.now
    )


def no_text(turn: Turn) -> None:
    """A photo or a location without words cannot be priced or answered yet: say so, free."""
    if not turn.msg.text.strip():
        raise ReplyNow("no_text", replies.NO_TEXT)


def free_commands(turn: Turn) -> None:
    """BALANCE, BUY and MORE (and their Spanish forms): whole-message matches, free."""
    command = normalise_command(turn.msg.text)
    commands = turn.catalog.commands
    if command in commands["balance"]:
        available = ledger.balance(turn.session, turn.account_id, turn.now).available
        raise ReplyNow("balance", replies.balance_text(turn.catalog, available, turn.now))
    if command in commands["buy"]:
        raise ReplyNow("buy", replies.buy_text(turn.catalog.pack(), _pay_url(turn)))
    if command in commands["more"]:
        raise ReplyNow("more", replies.NOTHING_MORE)


def classify_intent(turn: Turn) -> None:
    """The intent, and so the price, from the catalog's patterns."""
    turn.intent = classify(turn.msg.text, turn.catalog)


def reserve(turn: Turn) -> None:
    """Hold the price before the skill runs; below the price: a pay link and the cheaper
    options, nothing charged (economy.md, Ledger: the check and the hold are one step)."""
    assert turn.intent is not None
    try:
        placed = ledger.hold(
            turn.session, turn.account_id, turn.intent.price,
            key=f"hold:{turn.msg.message_sid}", ttl_seconds=turn.catalog.hold_ttl_seconds,
            memo=turn.intent.name, now=turn.now,
        )
    except InsufficientTokens as refused:
        raise ReplyNow("insufficient", _insufficient(turn, refused.available)) from None
    turn.hold_id = placed.hold_id


def answer_and_capture(turn: Turn) -> None:
    """Run the intent's skill; capture the hold when it answered, void it when it did not."""
    assert turn.intent is not None and turn.hold_id is not None
    spec = turn.intent
    request = SkillRequest(intent=spec.name, text=turn.msg.text, channel=turn.msg.channel)
    try:
        answer = skill_for(spec.name).answer(request)
    except SkillFailed as exc:
        log.warning("skill failed", extra={"intent": spec.name, "reason": str(exc)})
        ledger.void(turn.session, turn.hold_id, now=turn.now)
        raise ReplyNow("failed", exc.reply or replies.SKILL_FAILED) from None
    except Exception:
        # A bug in one skill must not cost the person tokens or lose their message.
        log.exception("skill raised", extra={"intent": spec.name})
        ledger.void(turn.session, turn.hold_id, now=turn.now)
        raise ReplyNow("failed", replies.SKILL_FAILED) from None
    captured = ledger.capture(
        turn.session, turn.hold_id, key=f"debit:{turn.msg.message_sid}", now=turn.now
    )
    turn.charged = captured.posted.amount
    raise ReplyNow("answered", answer.text)


STEPS: tuple[Step, ...] = (
    dedupe,
    find_contact,
    store_inbound,
    compliance_keywords,
    silence_opted_out,
    monthly_allowance,
    no_text,
    free_commands,
    classify_intent,
    reserve,
    answer_and_capture,
)


def handle_inbound(
    session: Session,
    msg: InboundMessage,
    settings: BotSettings,
    now: datetime | None = None,
) -> Outcome:
    """Route one inbound message through `STEPS` and record what happened.

    Args:
        session: the caller's session; this function flushes, never commits. The caller
            commits after it returns (and rolls back if it raises).
        msg: the normalised inbound message.
        settings: catalog and public URL.
        now: the current time (UTC); tests freeze it.

    Returns:
        The `Outcome`: what to reply, the intent, and the tokens charged.
    """
    turn = Turn(session=session, msg=msg, settings=settings, now=now or utcnow())
    try:
        for step in STEPS:
            step(turn)
        raise AssertionError("the last step always replies")  # pragma: no cover
    except ReplyNow as done:
        outcome = Outcome(
            kind=done.kind,
            replies=done.texts,
            intent=turn.intent.name if turn.intent else None,
            tokens_charged=turn.charged,
        )
    _record(turn, outcome)
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


def _record(turn: Turn, outcome: Outcome) -> None:
    """Note the outcome on the inbound row and store the replies as outbound rows."""
    if turn.message is None or turn.contact is None:
        return  # a duplicate: nothing of ours changes
    turn.message.intent = outcome.intent
    turn.message.outcome = outcome.kind
    turn.message.tokens_charged = outcome.tokens_charged
    for text in outcome.replies:
        turn.session.add(
            Message(
                contact_id=turn.contact.id,
                direction="out",
                channel=turn.msg.channel,
                body=text,
                in_reply_to_id=turn.message.id,
                created_at=turn.now,
            )
        )
    turn.session.flush()


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


def _pay_url(turn: Turn) -> str:
    link = payments.issue_pay_link(
        turn.session, turn.account_id, turn.catalog.default_pack,
        ttl_seconds=turn.catalog.pay_link_ttl_seconds, now=turn.now,
    )
    return turn.settings.pay_url(link.token)


def _insufficient(turn: Turn, available: int) -> str:
    assert turn.intent is not None
    return replies.insufficient_text(turn.catalog, turn.intent, available, _pay_url(turn), turn.now)
