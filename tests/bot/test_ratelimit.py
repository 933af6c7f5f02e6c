"""Per-sender limits (`bot.ratelimit`) on in-memory storage: fixed windows keyed by the
caller's clock, the first limit passed decides, one notice per sender per clock hour, UTC-day
counts, and a failing storage lets everything through."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone

import pytest
from limits import parse_many
from limits.storage import MemoryStorage
from redis import RedisError

from bot.ratelimit import DEFAULT_LIMITS, SenderLimits, Verdict

T0 = datetime(2026, 11, 10, 9, 0, 0, tzinfo=UTC)  # the start of a minute and of an hour
ANA, BEN = "account:1", "account:2"


def limits(spec: str = DEFAULT_LIMITS) -> SenderLimits:
    return SenderLimits(parse_many(spec), MemoryStorage())


class FailingStorage(MemoryStorage):
    """A storage whose every count fails, as Redis does when it is down."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        raise self.error


def test_the_eleventh_message_in_a_minute_is_refused_and_only_the_first_refusal_notifies():
    limiter = limits()
    verdicts = [limiter.check(ANA, T0 + timedelta(seconds=i)) for i in range(13)]
    assert verdicts[:10] == [Verdict(True)] * 10
    assert verdicts[10] == Verdict(False, notify=True, limit="10 per 1 minute")
    assert verdicts[11:] == [Verdict(False, notify=False, limit="10 per 1 minute")] * 2
    assert limiter.check(BEN, T0).allowed  # another sender has counters of their own


def test_windows_are_fixed_on_the_clock_not_sliding():
    limiter = limits("10 per minute")
    last_second = T0 + timedelta(seconds=59)
    assert all(limiter.check(ANA, last_second).allowed for _ in range(10))
    assert not limiter.check(ANA, last_second).allowed
    # One second later is a new window: 10 more, although 11 came in the last two seconds.
    next_minute = T0 + timedelta(minutes=1)
    assert all(limiter.check(ANA, next_minute).allowed for _ in range(10))
    assert not limiter.check(ANA, next_minute + timedelta(seconds=59)).allowed


def test_the_hourly_limit_counts_across_minutes_and_notices_are_once_per_clock_hour():
    limiter = limits()
    for i in range(100):  # 10 a minute: never past the minute limit
        assert limiter.check(ANA, T0 + timedelta(seconds=6 * i)).allowed, i
    late = T0 + timedelta(minutes=50)
    assert limiter.check(ANA, late) == Verdict(False, notify=True, limit="100 per 1 hour")
    assert limiter.check(ANA, late + timedelta(minutes=9)) == Verdict(
        False, notify=False, limit="100 per 1 hour")
    next_hour = T0 + timedelta(hours=1)
    assert limiter.check(ANA, next_hour) == Verdict(True)


@pytest.mark.parametrize("spec", ["10 per minute;100 per hour", "100 per hour;10 per minute"])
def test_the_order_of_the_limits_in_the_setting_does_not_matter(spec):
    limiter = limits(spec)
    handled = sum(limiter.check(ANA, T0 + timedelta(seconds=i * 60 / 50)).allowed
                  for i in range(50 * 60))  # 50 a minute for an hour
    # 10 a minute get through until the hour's 100 are used: refused messages use up nothing.
    assert handled == 100


def test_one_notice_an_hour_whichever_limit_refuses():
    limiter = limits("1 per minute")
    assert limiter.check(ANA, T0).allowed
    assert limiter.check(ANA, T0).notify is True
    later = T0 + timedelta(minutes=30)  # a new minute window, the same clock hour
    assert limiter.check(ANA, later).allowed
    assert limiter.check(ANA, later) == Verdict(False, notify=False, limit="1 per 1 minute")
    next_hour = T0 + timedelta(hours=1)
    assert limiter.check(ANA, next_hour).allowed
    assert limiter.check(ANA, next_hour).notify is True


def test_day_counts_per_kind_and_sender_restart_at_midnight_utc():
    limiter = limits()
    before_midnight = datetime(2026, 11, 10, 23, 59, 59, tzinfo=UTC)
    assert [limiter.count_day(ANA, before_midnight) for _ in range(3)] == [1, 2, 3]
    assert limiter.count_day(ANA, before_midnight, kind="classify") == 1
    assert limiter.count_day(BEN, before_midnight) == 1
    # 18:30 in UTC-05:00 is 23:30 UTC: the same UTC day.
    same_day = datetime(2026, 11, 10, 18, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert limiter.count_day(ANA, same_day) == 4
    assert limiter.count_day(ANA, before_midnight + timedelta(seconds=1)) == 1


@pytest.mark.parametrize("error", [RedisError("down"), ConnectionRefusedError("refused")])
def test_a_failing_storage_lets_messages_through_and_skips_the_day_count(error, caplog):
    limiter = SenderLimits(parse_many("1 per minute"), FailingStorage(error))
    with caplog.at_level(logging.ERROR, logger="bot.ratelimit"):
        assert [limiter.check(ANA, T0) for _ in range(3)] == [Verdict(True)] * 3
        assert limiter.count_day(ANA, T0) is None
    assert len(caplog.records) == 4
    assert all(r.error == type(error).__name__ for r in caplog.records)


def test_settings_default_parse_or_raise():
    default = SenderLimits.from_settings(None, None)
    assert [str(item) for item in default.limits] == ["10 per 1 minute", "100 per 1 hour"]
    assert isinstance(default.storage, MemoryStorage)
    assert [str(i) for i in SenderLimits.from_settings("", None).limits] == \
        [str(i) for i in default.limits]
    assert [str(i) for i in SenderLimits.from_settings("3/second", None).limits] == \
        ["3 per 1 second"]
    with pytest.raises(ValueError, match="parse"):
        SenderLimits.from_settings("lots", None)
    with pytest.raises(ValueError, match="not a synchronous storage"):
        SenderLimits.from_settings("1 per minute", "async+memory://")
    with pytest.raises(ValueError, match="at least one"):
        SenderLimits([], MemoryStorage())
