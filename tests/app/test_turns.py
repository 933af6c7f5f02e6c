"""A person's turn (app.turns) on a real Redis: one holder, and no knock forgotten."""

from __future__ import annotations

import threading

import pytest
import redis

from app.turns import PersonTurn, TurnLost, turn_key
from testing.redis_server import RedisServer

PHONE = "+16505558893"


@pytest.fixture
def connection(redis_srv: RedisServer) -> redis.Redis:
    client = redis.Redis.from_url(redis_srv.url)
    client.flushdb()
    return client


def test_the_first_knock_takes_the_turn_and_a_second_is_left_to_the_holder(connection):
    holder, other = PersonTurn(connection, PHONE), PersonTurn(connection, PHONE)
    assert holder.knock("SM1")
    assert not other.knock("SM2")  # someone holds it: SM2 is left to them
    assert holder.take_waiting() == ["SM1"]  # what the knock itself read
    assert not holder.leave()  # SM2 knocked meanwhile: go round
    assert holder.take_waiting() == ["SM2"]
    assert holder.take_waiting() == []
    assert holder.leave()
    assert connection.keys("bot:turn:*") == []


def test_a_knock_while_the_holder_works_sends_it_round_again(connection):
    holder = PersonTurn(connection, PHONE)
    assert holder.knock("SM1")
    holder.take_waiting()
    assert not PersonTurn(connection, PHONE).knock("SM2")  # lands mid-drain
    assert not holder.leave()  # refused: go round
    assert holder.take_waiting() == ["SM2"]
    assert holder.leave()
    assert PersonTurn(connection, PHONE).knock("SM3")  # free again


def test_a_refresh_soon_after_the_last_sends_nothing(connection):
    holder = PersonTurn(connection, PHONE, ttl_seconds=60)
    assert holder.knock("SM1")
    connection.pexpire(turn_key(PHONE), 5000)
    assert holder.refresh()  # within REFRESH_EVERY_SECONDS of taking it
    assert connection.pttl(turn_key(PHONE)) <= 5000  # nothing was sent
    eager = PersonTurn(connection, "+16505550002", ttl_seconds=60, refresh_every_seconds=0)
    assert eager.knock("SM2")
    connection.pexpire(turn_key("+16505550002"), 5000)
    assert eager.refresh()
    assert connection.pttl(turn_key("+16505550002")) > 50_000


def test_different_people_have_different_turns(connection):
    assert PersonTurn(connection, PHONE).knock("SM1")
    assert PersonTurn(connection, "+16505550001").knock("SM2")


def test_the_key_holds_no_phone_number(connection):
    PersonTurn(connection, PHONE).knock("SM1")
    keys = [key.decode() for key in connection.keys("*")]
    assert keys and not any("6505558893" in key for key in keys)
    assert turn_key(PHONE) in keys


def test_a_lapsed_turn_is_lost_and_give_up_puts_the_waiting_back(connection):
    holder = PersonTurn(connection, PHONE, ttl_seconds=60, refresh_every_seconds=0)
    assert holder.knock("SM1")
    taken = holder.take_waiting()
    connection.delete(turn_key(PHONE))  # it expired (a stalled worker)
    with pytest.raises(TurnLost):
        holder.leave()
    assert not holder.refresh()
    successor = PersonTurn(connection, PHONE)
    assert successor.knock("SM2")
    holder.give_up(taken)  # not its turn any more: changes nothing
    assert successor.refresh()
    successor.give_up(["SM1"])  # a failing job hands what it took back
    assert connection.get(turn_key(PHONE)) is None
    next_job = PersonTurn(connection, PHONE)
    assert next_job.knock("SM3")
    # SM1 (handed back) and SM2 (knocked while the successor held it) are not forgotten.
    assert sorted(next_job.take_waiting()) == ["SM1", "SM2", "SM3"]


def test_under_contention_every_knock_is_answered_by_exactly_one_holder(connection, redis_srv):
    """Many jobs of one person knock at once, over and over: at most one holds the turn at any
    moment, and every MessageSid is taken by a holder exactly once."""
    # One client shared by every thread, as a worker's threads share the app's (a blocking
    # pool, as app.queue.redis_connection builds it).
    shared = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
        redis_srv.url, max_connections=64, timeout=10))
    sids = [f"SM{i:04d}" for i in range(400)]
    taken: list[str] = []
    holders = 0
    most = 0
    lock = threading.Lock()

    def job(sid: str) -> None:
        nonlocal holders, most
        turn = PersonTurn(shared, PHONE)
        if not turn.knock(sid):
            return
        with lock:
            holders += 1
            most = max(most, holders)
        while True:
            got = turn.take_waiting()
            with lock:
                taken.extend(got)
            with lock:
                holders -= 1
            if turn.leave():
                return
            with lock:
                holders += 1
                most = max(most, holders)

    threads = [threading.Thread(target=job, args=(sid,)) for sid in sids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert most == 1
    assert sorted(taken) == sids
