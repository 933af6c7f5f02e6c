"""The router, message by message, as a person would live it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from app.extensions import bot_settings
from bot.intents import SkillAnswer, offline
from bot.messages import InboundMessage
from bot.models import Contact, Message, OutcomeKind
from bot.router import Outcome, handle_inbound
from tokens import ledger
from tokens.ledger import Hold, LedgerEntry
from tokens.payments import PayLink

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DEC = datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)
ANA = "+15551234567"


@pytest.fixture
def say(app, session):
    """`say(text, ...)` routes one message as Ana and commits, like the webhook does."""

    def _say(
        text: str,
        *,
        sender: str = ANA,
        channel: str = "sms",
        now: datetime = NOV,
        sid: str | None = None,
        opt_out_type: str | None = None,
    ) -> Outcome:
        message = InboundMessage(
            channel=channel,
            sender=sender,
            text=text,
            message_sid=sid or f"SM{uuid.uuid4().hex}",
            opt_out_type=opt_out_type,
        )
        outcome = handle_inbound(session, message, bot_settings(app), now=now)
        session.commit()
        return outcome

    return _say


def available(session, sender: str = ANA, now: datetime = NOV) -> int:
    contact = session.scalars(select(Contact).where(Contact.address == sender)).one()
    return ledger.balance(session, contact.account_id, now).available


def test_ana_gets_100_free_tokens_and_a_meal_plan_costs_5(say, session):
    outcome = say("meal plan")
    assert outcome.kind == "answered"
    assert outcome.intent == "meal_plan"
    assert outcome.tokens_charged == 5
    assert available(session) == 95
    balance = say("balance")
    assert balance.kind == "balance" and balance.tokens_charged == 0
    assert "95 tokens" in balance.replies[0]


def test_free_commands_match_whole_message_any_case_and_spacing(say, session):
    for text in ("BALANCE", " balance ", "Saldo", "bal!"):
        assert say(text).kind == "balance"
    for text in ("buy tokens", "BUY", "  Buy   Tokens ", "comprar"):
        outcome = say(text)
        assert outcome.kind == "buy"
        assert "https://bot.example.com/pay/" in outcome.replies[0]
    assert say("más").kind == "more"
    assert available(session) == 100
    # "what is my balance today" is a sentence, not the BALANCE command.
    assert say("what is my balance today").kind == "answered"


def test_buy_reuses_one_stored_opaque_pay_link(say, session):
    first = say("BUY").replies[0]
    second = say("buy tokens").replies[0]
    assert first == second
    link = session.scalars(select(PayLink)).one()
    assert first.endswith(f"/pay/{link.token}")
    assert len(link.token) >= 43  # 256 random bits, URL-safe
    assert ANA.lstrip("+") not in first
    assert link.pack_code == "starter"


def test_below_the_price_gets_a_pay_link_and_cheaper_options_and_no_charge(say, session):
    for _ in range(19):
        assert say("meal plan").tokens_charged == 5
    assert available(session) == 5
    say("calories in an apple")  # 3 tokens
    assert available(session) == 2

    outcome = say("vegetarian meal plan")
    assert outcome.kind == "insufficient"
    assert outcome.tokens_charged == 0
    text = outcome.replies[0]
    assert "costs 5 tokens and you have 2" in text
    assert "grocery list 2" in text and "recipe 2" in text and "chat 1" in text
    assert "meal plan 5" not in text and "nutrition analysis 3" not in text
    assert "https://bot.example.com/pay/" in text
    assert "Nothing was charged" in text
    assert available(session) == 2


def test_stop_silences_everything_until_start(say, session):
    say("hello")
    stop = say("STOP")
    assert stop.kind == "opt_out" and stop.replies == ()  # Twilio confirms STOP on SMS
    contact = session.scalars(select(Contact)).one()
    assert contact.opted_out_at("sms") == NOV
    assert contact.opt_out_source == "keyword:sms"
    before = available(session)
    for text in ("meal plan", "BALANCE", "HELP", "buy"):
        outcome = say(text)
        assert outcome.kind == "opted_out"
        assert outcome.replies == ()
        assert outcome.tokens_charged == 0
    assert available(session) == before
    assert say("start").kind == "opt_in"
    assert say("meal plan").tokens_charged == 5


@pytest.mark.parametrize(
    "word",
    ["stop", "STOPALL", "Unsubscribe", "cancel", "END", "quit", "revoke", "opt out", "stop."],
)
def test_every_opt_out_keyword_opts_out(say, session, word):
    assert say(word).kind == "opt_out"
    assert session.scalars(select(Contact)).one().opted_out_at("sms") is not None


def test_whatsapp_stop_gets_one_confirmation_from_the_app(say):
    first = say("STOP", channel="whatsapp")
    assert first.kind == "opt_out" and "unsubscribed" in first.replies[0]
    again = say("STOP", channel="whatsapp")
    assert again.replies == ()
    back = say("START", channel="whatsapp")
    assert "Welcome back" in back.replies[0]


def test_opt_out_type_from_twilio_is_authoritative(say, session):
    # Advanced Opt-Out with a custom keyword the app does not know.
    outcome = say("arret", opt_out_type="STOP")
    assert outcome.kind == "opt_out"
    contact = session.scalars(select(Contact)).one()
    assert contact.opt_out_source == "twilio_opt_out_type:sms"
    assert say("meal plan").kind == "opted_out"


def test_help_is_free_and_explains_prices_commands_and_stop(say, session):
    outcome = say("help")
    assert outcome.kind == "help" and outcome.tokens_charged == 0
    text = outcome.replies[0]
    for part in ("meal plan 5", "chat 1", "100 free tokens", "BALANCE", "BUY", "STOP", "$5.00"):
        assert part in text
    assert session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "debit")).all() == []
    assert "You have 100 tokens" in say("BALANCE").replies[0]


def test_free_allowance_is_granted_once_a_month_and_expires_at_month_end(say, session):
    say("meal plan")
    say("hi")
    grants = session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "grant")).all()
    assert len(grants) == 1
    assert grants[0].expires_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert available(session) == 94

    say("hi", now=DEC)
    assert "You have 99 tokens" in say("BALANCE", now=DEC).replies[0]
    entries = session.scalars(select(LedgerEntry).order_by(LedgerEntry.id)).all()
    expiry = [e for e in entries if e.kind == "expiry"]
    assert [(e.amount, e.bucket) for e in expiry] == [(-94, "free")]
    assert [e.idempotency_key for e in entries if e.kind == "grant"] == [
        f"grant:free:{entries[0].account_id}:2026-11",
        f"grant:free:{entries[0].account_id}:2026-12",
    ]
    assert available(session, now=DEC) == 99  # 100 new, minus the 1-token chat


def test_one_person_one_account_across_channels(say, session):
    say("meal plan", channel="sms")
    outcome = say("balance", channel="whatsapp")
    assert "95 tokens" in outcome.replies[0]
    assert session.scalar(select(func.count()).select_from(Contact)) == 1


def test_a_failing_skill_charges_nothing_and_keeps_the_message(say, session, monkeypatch):
    def broken(self, request):
        raise RuntimeError("content store unavailable")

    monkeypatch.setattr(offline.MealPlanSkill, "answer", broken)
    outcome = say("meal plan", sid="SMbroken")
    assert outcome.kind == "failed"
    assert outcome.tokens_charged == 0
    assert "Nothing was charged" in outcome.replies[0]
    assert available(session) == 100
    stored = session.scalars(select(Message).where(Message.message_sid == "SMbroken")).one()
    assert stored.outcome == "failed" and stored.tokens_charged == 0


def test_an_unknown_food_is_not_charged(say, session):
    outcome = say("calories in a zorblax")
    assert outcome.kind == "failed"
    assert "zorblax" in outcome.replies[0]
    assert "Nothing was charged" in outcome.replies[0]
    assert available(session) == 100


def test_messages_and_replies_are_recorded(say, session, monkeypatch):
    monkeypatch.setattr(offline.ChatSkill, "answer", lambda self, r: SkillAnswer("hello Ana"))
    say("hi", sid="SMrecorded")
    inbound = session.scalars(select(Message).where(Message.message_sid == "SMrecorded")).one()
    assert (inbound.intent, inbound.outcome, inbound.tokens_charged) == ("chat", "answered", 1)
    reply = session.scalars(select(Message).where(Message.in_reply_to_id == inbound.id)).one()
    assert (reply.direction, reply.body, reply.message_sid) == ("out", "hello Ana", None)


def test_a_repeat_sid_changes_nothing(say, session):
    first = say("meal plan", sid="SMrepeat")
    again = say("meal plan", sid="SMrepeat")
    assert first.tokens_charged == 5
    assert again == Outcome(kind=OutcomeKind.DUPLICATE)
    assert available(session) == 95
    assert session.scalar(select(func.count()).select_from(Message)) == 2


def test_opt_out_is_per_channel_as_twilio_enforces_it(say, session):
    """STOP by SMS blocks SMS until START by SMS; WhatsApp still works, and a START on
    WhatsApp does not lift the SMS block (Twilio would refuse the SMS with 21610)."""
    assert say("STOP", channel="sms").kind == "opt_out"
    assert say("meal plan", channel="whatsapp").tokens_charged == 5
    # not opted out on WhatsApp: START there is ordinary text, and lifts nothing
    assert say("START", channel="whatsapp").kind not in ("opt_in", "opted_out")
    sms = say("meal plan", channel="sms")
    assert (sms.kind, sms.tokens_charged, sms.replies) == ("opted_out", 0, ())
    assert say("START", channel="sms").kind == "opt_in"
    assert say("meal plan", channel="sms").tokens_charged == 5


def test_an_offline_answer_is_debited_directly_while_the_account_stays_locked(
        say, session, monkeypatch):
    """An answer settled in the turn's own transaction needs no hold: the account's row is
    locked from the check to the charge, so the price is debited once, after the skill."""
    seen = []

    def answer(self, request):
        holds = session.scalars(select(Hold)).all()
        seen.append([(h.amount, h.status, h.idempotency_key) for h in holds])
        contact = session.scalars(select(Contact)).one()
        seen.append(ledger.balance(session, contact.account_id, NOV).available)
        return SkillAnswer("a plan")

    monkeypatch.setattr(offline.MealPlanSkill, "answer", answer)
    assert say("meal plan", sid="SMheld").tokens_charged == 5
    assert seen == [[], 100]  # nothing reserved or spent while the skill runs
    assert session.scalars(select(Hold)).all() == []
    debit = session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "debit")).one()
    assert (debit.idempotency_key, debit.hold_id, debit.amount) == ("debit:SMheld", None, -5)
    assert available(session) == 95


def test_a_lot_due_to_expire_makes_the_answer_hold_its_price_first(say, session, monkeypatch):
    """A lot past its expiry still counts in the posted balance; the turn then takes the hold,
    which expires the lot before it reserves, and the capture charges the answer."""
    say("hello there")  # Ana's account and this month's allowance
    before = available(session)
    contact = session.scalars(select(Contact)).one()
    ledger.grant(session, contact.account_id, 7, key="grant:promo", bucket="bonus",
                 expires_at=datetime(2026, 11, 20, tzinfo=UTC),
                 now=datetime(2026, 11, 1, tzinfo=UTC))
    session.commit()
    seen = []

    def answer(self, request):
        seen.append([(h.amount, h.status) for h in session.scalars(select(Hold))])
        return SkillAnswer("a plan")

    monkeypatch.setattr(offline.MealPlanSkill, "answer", answer)
    assert say("meal plan", sid="SMdue").tokens_charged == 5
    assert seen == [[(5, "pending")]]
    held = session.scalars(select(Hold)).one()
    assert (held.status, held.captured) == ("captured", 5)
    expiry = session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "expiry")).one()
    assert expiry.amount == -7
    assert available(session) == before - 5


def test_a_failed_skill_charges_nothing(say, session, monkeypatch):
    def broken(self, request):
        raise RuntimeError("boom")

    monkeypatch.setattr(offline.MealPlanSkill, "answer", broken)
    outcome = say("meal plan", sid="SMvoid")
    assert (outcome.kind, outcome.tokens_charged) == ("failed", 0)
    assert session.scalars(select(Hold)).all() == []
    assert session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "debit")).all() == []
    assert available(session) == 100


def test_balance_reads_at_the_message_time(say):
    """October's free tokens have expired by a message routed in November."""
    october = datetime(2026, 10, 15, 12, 0, tzinfo=UTC)
    say("meal plan", now=october)
    assert "You have 95 tokens" in say("BALANCE", now=october).replies[0]
    assert "You have 100 tokens" in say("BALANCE", now=NOV).replies[0]


def test_the_pay_link_fits_in_the_first_sms_of_a_refusal(say, session):
    """Replies are cut after 2 SMS segments (the rest via MORE): the pay link comes early."""
    for _ in range(19):
        say("meal plan")
    say("calories in an apple")
    outcome = say("vegetarian meal plan")
    [first] = outcome.replies
    assert "https://bot.example.com/pay/" in first


def test_start_words_mean_start_only_for_someone_opted_out(say, session):
    """ "yes" or "start" from someone never opted out is ordinary text and gets its answer;
    after STOP the same words opt back in. Every opt-out and opt-in is appended to the
    consent log, never overwritten."""
    from bot.models import ConsentEvent

    for word in ("yes", "start"):
        outcome = say(word, channel="sms")
        assert outcome.kind not in ("opt_in", "opted_out") and outcome.replies, word
    assert session.scalar(select(func.count()).select_from(ConsentEvent)) == 0
    assert say("STOP", channel="sms").kind == "opt_out"
    assert say("stop", channel="sms").kind == "opt_out"  # asked again: logged again
    assert say("yes", channel="sms").kind == "opt_in"
    assert say("unsubscribe", channel="whatsapp").kind == "opt_out"
    log = session.execute(select(ConsentEvent.channel, ConsentEvent.action,
                                 ConsentEvent.keyword, ConsentEvent.source)
                          .order_by(ConsentEvent.id)).all()
    assert log == [("sms", "opt_out", "STOP", "keyword"), ("sms", "opt_out", "STOP", "keyword"),
                   ("sms", "opt_in", "YES", "keyword"),
                   ("whatsapp", "opt_out", "UNSUBSCRIBE", "keyword")]
    times = session.scalars(select(ConsentEvent.at)).all()
    assert all(t is not None for t in times)


def test_a_grocery_list_for_my_meal_plan_lists_the_plan_just_sent(say, session):
    """Offline too, the grocery list reads the conversation (its skill sets `uses_history`),
    so "my meal plan" is the plan the bot has just sent, not a new one."""
    plan = say("vegetarian meal plan for 2 days, no peanuts")
    assert plan.kind == "answered"
    meals = [line.split(":", 1)[1] for line in " ".join(plan.replies).split("Day ")[1:]]
    listed = say("grocery list for my meal plan")
    assert listed.kind == "answered" and listed.intent == "grocery_list"
    text = " ".join(listed.replies).lower()
    assert meals and "peanut" not in text
    assert text.startswith("grocery list for your meal plan")
