"""Per-sender rate limits (docs/messaging.md, "Per-person order and limits"): 10 a minute and 100 an
hour by default; a throttled message gets no skill, no charge, at most one notice; STOP and HELP
are never throttled; counters in Redis when configured, else in-process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.extensions import bot_settings, db
from bot.messages import InboundMessage
from bot.models import Contact, Message, OutcomeKind
from bot.ratelimit import SenderLimits
from bot.router import handle_inbound
from testing.deployment import post_signed
from testing.payloads import sms, whatsapp
from tests.app.test_twilio_webhook import messages_of
from tokens import ledger

T0 = datetime(2026, 11, 10, 9, 0, 5, tzinfo=UTC)


@pytest.fixture
def limited(make_app):
    """The app with the product's default limits (10 a minute, 100 an hour), in memory."""
    return make_app(SENDER_RATE_LIMIT="")


def inbound(body: str, n: int, sender: str = "+15550001111", channel: str = "sms"
            ) -> InboundMessage:
    return InboundMessage(channel=channel, sender=sender, text=body,
                          message_sid=f"SM{n:032d}", to="+15550000000")


def route(app, body: str, n: int, now: datetime, **kwargs):
    settings = bot_settings(app)
    outcome = handle_inbound(db.session, inbound(body, n, **kwargs), settings, now)
    db.session.commit()
    return outcome


def test_the_eleventh_message_in_a_minute_is_throttled_once_with_one_notice(limited):
    kinds = [route(limited, "calories in 2 eggs", i, T0 + timedelta(seconds=i)).kind
             for i in range(13)]
    assert kinds[:10] == ["answered"] * 10
    assert kinds[10:] == ["throttled"] * 3
    account_id = db.session.scalars(select(Contact.account_id)).one()
    charged = db.session.scalar(select(func.sum(Message.tokens_charged))) or 0
    balance = ledger.balance(db.session, account_id, T0)
    assert balance.held == 0 and balance.available == 100 - charged
    assert charged == 10 * bot_settings(limited).catalog.intent(
        "nutrition_analysis").price
    throttled = db.session.scalars(select(Message).where(
        Message.outcome == OutcomeKind.THROTTLED)).all()
    assert len(throttled) == 3 and all(m.tokens_charged == 0 for m in throttled)
    replies = db.session.scalars(select(Message.body).where(
        Message.direction == "out", Message.in_reply_to_id.in_([m.id for m in throttled]))).all()
    assert len(replies) == 1 and "too fast" not in replies[0] and "faster" in replies[0]
    # The next minute the person is answered again.
    assert route(limited, "calories in 2 eggs", 99, T0 + timedelta(minutes=1)).kind == "answered"


def test_stop_and_help_are_never_throttled(limited):
    for i in range(10):
        route(limited, "BALANCE", i, T0)
    assert route(limited, "BALANCE", 10, T0).kind == "throttled"
    assert route(limited, "HELP", 11, T0).kind == "help"
    assert route(limited, "STOP", 12, T0).kind == "opt_out"
    assert route(limited, "START", 13, T0).kind == "opt_in"


def test_the_hourly_limit_and_one_notice_an_hour(limited):
    kinds = []
    for i in range(130):  # 10 a minute for 13 minutes: within the minute limit
        kinds.append(route(limited, "BALANCE", i, T0 + timedelta(seconds=6 * i)).kind)
    assert kinds.count("throttled") == 30 and kinds[100] == "throttled"
    notices = db.session.scalar(select(func.count()).select_from(Message).where(
        Message.direction == "out", Message.in_reply_to_id.in_(
            select(Message.id).where(Message.outcome == OutcomeKind.THROTTLED))))
    assert notices == 1


def test_sms_and_whatsapp_of_one_person_share_the_limit_and_the_allowance(limited):
    for i in range(5):
        route(limited, "BALANCE", i, T0)
        route(limited, "BALANCE", 100 + i, T0, channel="whatsapp")
    assert route(limited, "BALANCE", 50, T0).kind == "throttled"
    account_ids = set(db.session.scalars(select(Contact.account_id)))
    assert len(account_ids) == 1
    grants = db.session.scalar(select(func.count()).select_from(ledger.LedgerEntry).where(
        ledger.LedgerEntry.kind == "grant"))
    assert grants == 1  # the free allowance once per person, not per channel identity


def test_the_webhook_answers_a_throttled_message_with_at_most_one_notice(limited):
    client = limited.test_client()
    answers = [messages_of(post_signed(client, sms("BALANCE", sid=f"SM{i:032d}")))
               for i in range(12)]
    assert all(answers[i] for i in range(10))
    assert answers[10] and "faster" in answers[10][0]
    assert answers[11] == []
    assert messages_of(post_signed(client, whatsapp("HELP", sid="SM" + "9" * 32)))


def test_counters_are_shared_through_redis(database_url, redis_srv):
    """Two app processes (two apps here) share one person's count through Redis."""
    import redis

    redis.Redis.from_url(redis_srv.url).flushdb()
    limits = SenderLimits.from_settings("3 per minute", redis_srv.url)
    other = SenderLimits.from_settings("3 per minute", redis_srv.url)
    verdicts = [(limits if i % 2 else other).check("account:7", T0) for i in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert [v.notify for v in verdicts[3:]] == [True, False]


def test_a_failing_store_lets_messages_through():
    limits = SenderLimits.from_settings("1 per minute", "redis://127.0.0.1:9/0")
    assert all(limits.check("account:1", T0).allowed for _ in range(3))


def test_a_bad_limit_setting_stops_the_app(make_app):
    from app.config import ConfigError

    with pytest.raises(ConfigError, match="SENDER_RATE_LIMIT"):
        make_app(SENDER_RATE_LIMIT="lots")
