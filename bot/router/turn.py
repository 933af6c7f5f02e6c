"""The turn: what the router's steps share while one message is routed, and what it did.

`BotSettings` (configuration), `Outcome` (what happened to one inbound message: its
`bot.models.OutcomeKind`), `ReplyNow` (a step's final answer) and `Turn` (the shared context);
the compliance keyword families and the outcome kinds whose replies are capped.
docs/pipeline.md explains the whole flow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from bot.allergies import COMMANDS as ALLERGY_COMMANDS
from bot.contacts import LanguageState
from bot.llm import ChatClient
from bot.messages import InboundMessage
from bot.models import Contact, Message, OutcomeKind
from bot.ratelimit import SenderLimits
from tokens import ledger, levels
from tokens.catalog import Catalog, IntentSpec, normalise_command

if TYPE_CHECKING:
    from bot.intents.llm_classify import LlmClassification
    from bot.router.answer import PendingAnswer
    from tokens.auto_topup import TopUpDue
    from tokens.providers import PaymentProvider

# Compliance keyword families (Twilio's default opt-out keywords), plus Spanish forms.
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
# (`tokens.levels.reply_ceiling_musd`). Only answers and their continuations replace a pending
# MORE.
CONTENT_OUTCOMES = frozenset({OutcomeKind.ANSWERED, OutcomeKind.FAILED, OutcomeKind.MORE,
                              OutcomeKind.REFUSED, OutcomeKind.OFFERS, OutcomeKind.INSUFFICIENT})
ANSWER_OUTCOMES = frozenset({OutcomeKind.ANSWERED, OutcomeKind.FAILED, OutcomeKind.MORE})


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
        erased_key: the HMAC key of forgotten numbers (`bot.contacts.erasure_key`), so a
            forgotten number that writes again gets its old account back; None: not looked up.
        payments: the payment provider auto top-ups go through (`tokens.auto_topup`); None:
            no auto top-up.
        top_up: charges an auto top-up after its commit and tells the person (the app's
            `app.billing.run_top_up`); None: recorded attempts wait for the next chance.
    """

    catalog: Catalog
    public_base_url: str
    app_confirms_opt_out: frozenset[str] = frozenset({"whatsapp"})
    chat: ChatClient | None = None
    sender_limits: SenderLimits | None = None
    erased_key: bytes | None = None
    payments: PaymentProvider | None = None
    top_up: Callable[[Session, TopUpDue], None] | None = None

    def pay_url(self, token: str) -> str:
        """The public URL of a pay link token."""
        return f"{self.public_base_url.rstrip('/')}/pay/{token}"

    def account_url(self, token: str) -> str:
        """The public URL of an account link token (ACCOUNT, `tokens.account_links`)."""
        return f"{self.public_base_url.rstrip('/')}/account/link/{token}"


@dataclass(frozen=True)
class Outcome:
    """What the router did with one inbound message.

    Attributes:
        kind: an `OutcomeKind` (bot.models): "duplicate", "flooded" (inbound past
            `inbound_flood_per_day` today), "opted_out",
            "suspended", "throttled", "opt_out", "opt_in", "help",
            "no_text", "balance", "buy", "premium", "auto_topup" (AUTO ON / AUTO OFF),
            "account" (ACCOUNT: the account page's link), "more",
            "language" (LANGUAGE / IDIOMA),
            "small_talk" (thanks, ok, an emoji, "stop sending me messages", "cancel my
            subscription": free), "insufficient", "refused" (PAYMENT_REQUIRED), "offers"
            (AFFILIATE), "queued" (the skill runs in a job), "failed" or "answered".
        replies: the messages to send back, in order, as sent (an SMS answer cut with
            "Reply MORE", a long WhatsApp answer split); empty: an empty `<Response/>`.
        intent: the classified intent, when the message got that far.
        tokens_charged: tokens debited for this message (0 unless kind is "answered").
        message_id: the inbound `Message` row; None for a repeat delivery that stored none.
        pending: for kind "queued", what the deferred answer needs, built by the turn that
            placed the hold (`steps.defer_or_answer`), so the caller runs the skill without
            reading it back (`bot.router.answer.pending_answer` does, for a resumed answer).
            Not part of the outcome's equality.
    """

    kind: OutcomeKind
    replies: tuple[str, ...] = ()
    intent: str | None = None
    tokens_charged: int = 0
    message_id: int | None = None
    pending: PendingAnswer | None = field(default=None, compare=False, repr=False)


class ReplyNow(Exception):  # noqa: N818  (control flow, not an error)
    """Raised by a step that has the final answer; carries the outcome kind and reply texts."""

    def __init__(self, kind: OutcomeKind, *texts: str) -> None:
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
    # The inbox row the message came from (the worker) while it is still to be deleted in the
    # turn's transaction; None once the message's INSERT took it (PostgreSQL).
    inbox_id: int | None = None
    contact: Contact | None = None
    message: Message | None = None
    intent: IntentSpec | None = None
    hold_id: int | None = None
    placed: ledger.HoldResult | None = None  # the hold as placed in this transaction
    pending: PendingAnswer | None = None  # a deferred answer's inputs (`defer_or_answer`)
    # The price is charged by a direct debit when the answer is given (no hold): set by
    # `reserve` for an answer settled in this transaction while the account's row is locked.
    direct: bool = False
    lots_due: bool = False  # a lot is past its expiry and not yet expired (read under the lock)
    # µUSD on its way and not yet costed: queued answers' ceilings and replies not yet accepted
    # by the provider (read under the lock, `steps.serialise`).
    on_the_way_musd: int = 0
    charged: int = 0
    level: str = levels.NORMAL
    suspended: bool = False  # an operator suspended the person (read under the lock)
    premium: bool = False  # a subscription gives premium now (read under the lock)
    flooded: bool = False  # inbound past `inbound_flood_per_day` today: silenced
    # The LLM's classification asked before the turn (`pipeline.classify_before_turn`).
    classified: LlmClassification | None = None
    purchased: int = 0  # tokens left in purchased and premium lots (read under the lock)
    # The available balance (tokens) as posted, read under the lock, kept up to date by the
    # allowance grant and the hold (the balance watch after the capture, `tokens.alerts`).
    available: int = 0
    override: str | None = None  # an operator's level in force (read under the lock)
    allowance_granted: bool = False  # this month's free allowance (read under the lock)
    estimate_musd: int | None = None  # the level's cost ceiling, µUSD, once decided
    language: str = "en"  # the language of the replies ("en", "es"), once the contact is known
    # The person's language after this message, written to the contact at the end of the turn.
    language_state: LanguageState | None = None
    small_talk: str | None = None  # the small-talk kind of the text, once read (`read_small_talk`)
    # What this message made the bot remember (`bot.allergies`), said before the answer.
    allergy_note: str | None = None

    @property
    def catalog(self) -> Catalog:
        return self.settings.catalog

    @functools.cached_property
    def command(self) -> str:
        """The message as commands are compared (`tokens.catalog.normalise_command`), once."""
        return normalise_command(self.msg.text)

    @property
    def account_id(self) -> int:
        assert self.contact is not None, "the contact step runs first"
        return self.contact.account_id


def is_free_command(command: str, catalog: Catalog) -> bool:
    """Whether `command` (normalised) is a whole-message command answered free: one of the
    catalog's (`Catalog.command_words`) or the bot's own (ALLERGIES, FORGET ALLERGIES:
    `bot.allergies.COMMANDS`)."""
    return command in catalog.command_words or command in ALLERGY_COMMANDS


Step = Callable[[Turn], None]
