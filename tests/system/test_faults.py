"""Fault injection (issue #8, part 3): Redis, PostgreSQL/SQLite, OpenAI, the Twilio REST API and
Stripe failing, and a worker dying between a hold and its capture.

Every fault is injected at the boundary where it happens in production, never by patching the
code under test:

* Redis: a private `redis-server` of this test, stopped (connections refused), restarted empty
  (its jobs lost), or frozen with SIGSTOP (it accepts connections and never answers).
* The database: PostgreSQL refuses connections to the test's database (`ALLOW_CONNECTIONS
  false`) and ends the open ones, or the server ends the app's own connection in the middle of
  a transaction (`pg_terminate_backend`); SQLite's driver fails to open the file, or fails a
  statement with "disk I/O error" (the DBAPI errors a vanished disk gives).
* OpenAI and Twilio: their local stand-ins answer 5xx or slower than the configured timeout,
  or the app points at a loopback port where nothing listens (connection refused).
* A crash: a real worker process (`flask worker`) is killed with SIGKILL while it waits for the
  LLM, between the hold and the capture.

Time passing (a hold's TTL, the sweep's delays) is simulated by moving the stored timestamps
back, as tests/system/test_async_answers.py does. The retry schedule of answer jobs is compressed
to no delay (`app.queue.RETRY`) where a test needs RQ's retries to run in one worker burst.

The bugs these faults found were fixed with them; each test states the behaviour it keeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from flask import Flask
from rq import Queue, Retry
from sqlalchemy import event, func, select, update
from sqlalchemy.engine import make_url

import app.queue
from app.config import PROJECT_ROOT
from app.extensions import db
from app.jobs import answer_job
from app.queue import QUEUE_NAME, job_id_for, redis_connection
from app.turns import turn_key
from bot import replies
from bot.models import Contact, InboxMessage, Message
from testing.deployment import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    PUBLIC_BASE_URL,
    STRIPE_WEBHOOK_SECRET,
    post_signed,
    queued_environment,
    routed_not_answered,
    run_worker,
    running_app,
)
from testing.openai_standin import OpenAIStandIn
from testing.payloads import sms
from testing.redis_server import HOST, RedisServer, free_port
from testing.stripe_standin import sign_event, stripe_event_bytes
from testing.twilio_standin import TwilioStandIn
from tests.tokens.ledger_checks import assert_consistent
from tokens import costs, ledger
from tokens.base import utcnow
from tokens.ledger import Hold, LedgerEntry
from tokens.payments import Checkout, PaymentEvent

PHONE = "+16505558893"  # the sender of `sms()`
EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response />'
TWILIO_WEBHOOK_SECONDS = 15  # Twilio gives up on a webhook that has not answered by then
STATUS_PATH = "/webhooks/twilio/status"
PI = "pi_3Fault000000000000000"


# --- the app -------------------------------------------------------------------------------


def queued(redis_url: str, twilio: TwilioStandIn, openai_api: OpenAIStandIn | None,
           **overrides: str) -> dict[str, str]:
    """The settings of a deployment with Redis + RQ, Twilio REST and OpenAI."""
    return {**queued_environment(redis_url, twilio, openai_api), **overrides}


@pytest.fixture
def redis_url(redis_srv: RedisServer) -> str:
    """The suite's Redis server, emptied."""
    connection = redis.Redis.from_url(redis_srv.url)
    connection.flushdb()
    connection.close()
    return redis_srv.url


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """RQ retries a failed answer job at once instead of after 5, 30 and 120 s (same count)."""
    monkeypatch.setattr(app.queue, "RETRY", Retry(max=3, interval=0))


def closed_port_url(path: str = "") -> str:
    """A loopback URL where nothing listens: connections are refused."""
    return f"http://{HOST}:{free_port()}{path}"


def said(response: Any) -> list[str]:
    """The `<Message>` texts of a TwiML response."""
    return [m.text or "" for m in ET.fromstring(response.get_data()).iter("Message")]


def account_of(phone: str = PHONE) -> int:
    account = db.session.scalar(select(Contact.account_id).where(Contact.address == phone))
    assert account is not None
    return account


def inbound(sid: str) -> Message:
    row = db.session.scalar(select(Message).where(Message.message_sid == sid)
                            .execution_options(populate_existing=True))
    assert row is not None
    return row


def hold_of(sid: str) -> Hold:
    hold = db.session.scalar(select(Hold).where(Hold.idempotency_key == f"hold:{sid}")
                             .execution_options(populate_existing=True))
    assert hold is not None
    return hold


def balance(account: int) -> ledger.Balance:
    db.session.expire_all()
    result = ledger.balance(db.session, account)
    db.session.commit()
    return result


def replies_to(sid: str) -> list[Message]:
    return list(db.session.scalars(
        select(Message).where(Message.in_reply_to_id == inbound(sid).id).order_by(Message.id)
        .execution_options(populate_existing=True)))


def refunded(sid: str) -> int:
    """Tokens given back for the message's charge (its `refund` entries)."""
    return int(db.session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.kind == "reversal", LedgerEntry.operation_key == f"reversal:{sid}")) or 0)


def row_counts() -> dict[str, int]:
    """How many rows each table has, read on a connection of its own."""
    db.session.remove()
    with db.engine.connect() as connection:
        counts = {table.name: int(connection.scalar(select(func.count()).select_from(table)) or 0)
                  for table in db.metadata.sorted_tables}
        connection.rollback()
    return counts


def age(sid: str, **delta: float) -> None:
    """Move a message's `created_at` back, or its inbox row's `received_at` while it waits
    there unrouted (the sweep waits before re-enqueueing)."""
    waiting = db.session.scalar(select(InboxMessage).where(InboxMessage.message_sid == sid))
    if waiting is not None:
        waiting.received_at -= timedelta(**delta)
    else:
        row = inbound(sid)
        row.created_at -= timedelta(**delta)
    db.session.commit()


def lapse_hold(sid: str) -> None:
    """The hold's TTL (catalog `hold_ttl_seconds`, 10 minutes) has passed."""
    db.session.execute(update(Hold).where(Hold.idempotency_key == f"hold:{sid}")
                       .values(expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()


def sweep(application: Flask, *args: str) -> Any:
    return application.test_cli_runner().invoke(args=["messages", "sweep", *args])


# --- faults: Redis -------------------------------------------------------------------------


class _PortTaken(AssertionError):
    """redis-server exited at start: most often, another socket took its port."""


class PrivateRedis:
    """A `redis-server` of one test (no persistence), which the test may stop, start again on
    the same port (empty: every job it held is lost) or freeze (SIGSTOP: it still accepts
    connections, and answers nothing)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.workdir = Path(tempfile.mkdtemp(prefix="bot-fault-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False

    def start(self) -> None:
        """Start on `self.port`; the first start moves to another free port if that one was
        taken meanwhile (the restarts must keep the port the app knows)."""
        for attempt in range(3):
            try:
                self._start_once()
                self._started = True
                return
            except _PortTaken:
                if self._started or attempt == 2:
                    raise
                self.port = free_port()
                self.url = f"redis://{HOST}:{self.port}/0"

    def _start_once(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.process = subprocess.Popen(
            [binary, "--bind", HOST, "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir),
             "--protected-mode", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        probe = redis.Redis(host=HOST, port=self.port, socket_timeout=0.5,
                            socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:
                with contextlib.suppress(redis.RedisError):
                    if probe.ping():
                        return
                if self.process.poll() is not None:
                    raise _PortTaken(f"redis-server exited on port {self.port}")
                assert time.monotonic() < deadline, "redis-server did not answer PING"
                time.sleep(0.02)
        finally:
            probe.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- faults: the database ------------------------------------------------------------------


def _pg_admin(database_url: str, sql: str, *params: Any) -> None:
    """Run `sql` as the superuser on the server's `postgres` database."""
    url = make_url(database_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="postgres",
                         autocommit=True) as connection:
        connection.execute(sql, params)  # type: ignore[arg-type]


class DatabaseOutage:
    """Takes the app's database away and brings it back.

    PostgreSQL: the server refuses new connections to the database and ends the open ones
    (the app's pooled connections die, as in a restart or a failover). SQLite: the pool is
    emptied and opening the file fails ("unable to open database file", what a lost disk or
    mount gives).
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.url = make_url(database_url)
        self.postgres = self.url.get_backend_name() == "postgresql"
        self.is_down = False
        if not self.postgres:
            event.listen(db.engine, "do_connect", self._refuse)

    def _refuse(self, *_args: Any) -> None:
        if self.is_down:
            raise sqlite3.OperationalError("unable to open database file")

    def down(self) -> None:
        db.session.remove()
        self.is_down = True
        if self.postgres:
            name = self.url.database
            _pg_admin(self.database_url, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            _pg_admin(self.database_url, "SELECT pg_terminate_backend(pid, 5000) "
                      "FROM pg_stat_activity WHERE datname = %s", name)
        else:
            db.engine.dispose()

    def up(self) -> None:
        self.is_down = False
        if self.postgres:
            _pg_admin(self.database_url,
                      f'ALTER DATABASE "{self.url.database}" WITH ALLOW_CONNECTIONS true')

    def __enter__(self) -> DatabaseOutage:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.is_down:
            self.up()
        if not self.postgres:
            event.remove(db.engine, "do_connect", self._refuse)


# The last statement of an offline answer's debit, and the capture of a deferred answer: on
# PostgreSQL each is one call of a 0022 function (`tokens.ledger`), on SQLite a statement.
AT_THE_DEBIT = ("UPDATE ledger_lots", str(ledger._DEBIT_IN_SERVER).split("(")[0])
AT_THE_CAPTURE = ("UPDATE ledger_holds", str(ledger._CAPTURE_IN_SERVER).split("(")[0])


@contextlib.contextmanager
def connection_lost_at(database_url: str, statement: str | tuple[str, ...], times: int = 1
                       ) -> Iterator[list[str]]:
    """The database connection is lost when the app sends a statement starting with
    `statement` (e.g. "INSERT INTO ledger_holds", or any of a tuple), the next `times` times.

    PostgreSQL: the server ends that very connection (`pg_terminate_backend`) before the
    statement runs, so the statement fails as on a crash or failover. SQLite: the driver fails
    the statement with "disk I/O error". Yields the list of statements that failed.
    """
    postgres = make_url(database_url).get_backend_name() == "postgresql"
    failed: list[str] = []

    def before(conn: Any, _cursor: Any, sql: str, *_rest: Any) -> None:
        if len(failed) < times and sql.lstrip().startswith(statement):
            failed.append(sql)
            pid = conn.connection.dbapi_connection.info.backend_pid
            _pg_admin(database_url, "SELECT pg_terminate_backend(%s, 5000)", pid)

    def execute(_cursor: Any, sql: str, *_rest: Any) -> None:
        if len(failed) < times and sql.lstrip().startswith(statement):
            failed.append(sql)
            raise sqlite3.OperationalError("disk I/O error")

    engine = db.engine
    target, name, listener = ((engine, "before_cursor_execute", before) if postgres
                              else (engine, "do_execute", execute))
    event.listen(target, name, listener)
    try:
        yield failed
    finally:
        event.remove(target, name, listener)


# --- 1. Redis down -------------------------------------------------------------------------


def test_redis_stopped_then_back_nothing_is_lost_and_each_message_is_answered_once(
        database_url, twilio_api, openai_api):
    """A queued deployment whose Redis stops (no persistence: the queued job is lost), then
    comes back empty.

    While it is down, a new message is accepted (200) and answered inline as TwiML, charged
    once; Twilio's retry of it changes nothing. The message queued before the outage waits;
    a sweep while Redis is still down fails loudly (exit 1) after expiring holds; once Redis
    is back the sweep re-enqueues it and the worker answers it once."""
    with PrivateRedis() as server, running_app(
            database_url, **queued(server.url, twilio_api, openai_api)) as application:
        client = application.test_client()
        assert post_signed(client, sms("meal plan", sid="SMbefore")).get_data(
            as_text=True) == EMPTY
        server.stop()

        during = post_signed(client, sms("recipe for soup", sid="SMduring"))
        assert during.status_code == 200
        assert said(during) == ["Here is your answer about: recipe for soup"]
        retry = post_signed(client, sms("recipe for soup", sid="SMduring"))
        assert (retry.status_code, retry.get_data(as_text=True)) == (200, EMPTY)
        account = account_of()
        assert (inbound("SMduring").outcome, inbound("SMduring").tokens_charged) == ("answered", 2)
        assert balance(account).available == 100 - 2  # SMbefore waits in the inbox, unrouted

        age("SMbefore", minutes=3)
        result = sweep(application)
        assert result.exit_code == 1 and "Redis cannot be reached" in result.output
        assert "1 waiting answers were not re-enqueued" in result.output

        server.start()  # back, empty: the job of SMbefore is gone
        result = sweep(application)
        assert result.exit_code == 0, result.output
        assert "re-enqueued 1 of 1 waiting answers" in result.output
        assert run_worker(application) == 1
        [send] = twilio_api.accepted
        assert send["Body"] == "Here is your answer about: meal plan"
        assert "re-enqueued 0 of 0" in sweep(application).output
        assert run_worker(application) == 0
        assert len(twilio_api.sent) == 1
        assert (inbound("SMbefore").outcome, inbound("SMbefore").tokens_charged) == (
            "answered", 5)
        after = balance(account)
        assert (after.posted, after.held, after.available) == (93, 0, 93)
        assert costs.month(db.session, account).tokens_charged == 7
        assert_consistent(db.session, account)


@pytest.mark.backends("sqlite")  # the delays are Redis's; the database plays no part
def test_a_frozen_redis_does_not_keep_the_webhook_past_twilios_15_seconds(
        database_url, twilio_api, openai_api):
    with PrivateRedis() as server, running_app(
            database_url, **queued(server.url, twilio_api, openai_api)) as application:
        post_signed(application.test_client(), sms("BALANCE"))  # connections are open
        server.freeze()
        answer: dict[str, Any] = {}

        def webhook() -> None:
            with application.app_context():
                started = time.monotonic()
                response = post_signed(application.test_client(), sms("meal plan", sid="SMfrz"))
                answer.update(status=response.status_code, seconds=time.monotonic() - started,
                              replies=said(response))

        thread = threading.Thread(target=webhook, daemon=True)
        thread.start()
        try:
            thread.join(TWILIO_WEBHOOK_SECONDS)
            answered_in_time = not thread.is_alive()
        finally:
            server.thaw()
        thread.join(30)
        assert answer["status"] == 200
        assert answered_in_time, (
            f"no answer within Twilio's {TWILIO_WEBHOOK_SECONDS} s (it came "
            f"{answer['seconds']:.1f} s after the request, once Redis was thawed); charged "
            f"{inbound('SMfrz').tokens_charged} tokens for a reply Twilio dropped")


# --- 2. The database unavailable -----------------------------------------------------------


@pytest.fixture
def outage(app: Flask, database_url: str) -> Iterator[DatabaseOutage]:
    with DatabaseOutage(database_url) as fault:
        yield fault


def test_database_down_the_webhook_answers_503_writes_nothing_and_the_retry_charges_once(
        app, client, database_url, outage):
    """503 with Retry-After since 91e7707 (before it: Flask's HTML 500 page)."""
    post_signed(client, sms("BALANCE"))  # the person exists; the pool has connections
    before = row_counts()
    outage.down()
    response = post_signed(client, sms("meal plan", sid="SMdbdown"))
    # Twilio delivers it again when the webhook's retry policy includes 5xx (`rp=5xx`).
    assert (response.status_code, response.headers.get("Retry-After")) == (503, "30")
    db.session.remove()  # what the request's teardown does in production
    outage.up()
    assert row_counts() == before

    retry = post_signed(client, sms("meal plan", sid="SMdbdown"))
    assert retry.status_code == 200 and "Breakfast" in said(retry)[0]
    assert post_signed(client, sms("meal plan", sid="SMdbdown")).get_data(as_text=True) == EMPTY
    account = account_of()
    assert balance(account).available == 95
    assert costs.month(db.session, account).tokens_charged == 5
    assert_consistent(db.session, account)


def test_connection_lost_mid_transaction_nothing_is_half_written(app, client, database_url):
    """The connection dies when the answer's debit is written (its lot's UPDATE, the last of
    its statements): the contact, the account, the message, the monthly allowance, the debit
    entry and the costs written before it in the same transaction are all rolled back; the
    retry of the same MessageSid is answered and charged once."""
    before = row_counts()
    with connection_lost_at(database_url, AT_THE_DEBIT) as failed:
        response = post_signed(client, sms("meal plan", sid="SMmid"))
    assert failed and response.status_code == 503
    db.session.remove()
    assert row_counts() == before

    retry = post_signed(client, sms("meal plan", sid="SMmid"))
    assert retry.status_code == 200 and "Breakfast" in said(retry)[0]
    account = account_of()
    assert balance(account).available == 95
    assert db.session.scalar(select(func.count()).select_from(Message).where(
        Message.message_sid == "SMmid")) == 1
    assert_consistent(db.session, account)


def _lose_the_connection_at_the_capture(application: Flask, database_url: str) -> None:
    """A job answers "meal plan"; its first attempt loses the connection when it captures."""
    post_signed(application.test_client(), sms("meal plan", sid="SMjobdb"))
    with connection_lost_at(database_url, AT_THE_CAPTURE) as failed:
        run_worker(application)  # the attempt fails; RQ's retry resumes from "queued"
    assert len(failed) == 1


def test_connection_lost_in_a_job_rq_retries_it_and_it_answers_once(
        database_url, redis_url, twilio_api, openai_api, no_retry_delay):
    with running_app(database_url, **queued(redis_url, twilio_api, openai_api)) as application:
        _lose_the_connection_at_the_capture(application, database_url)
        # The retry's answer came from the answer cache, which the first attempt filled.
        assert len(openai_api.requests) == 1
        [send] = twilio_api.accepted
        assert len(twilio_api.sent) == 1
        assert send["Body"] == "Here is your answer about: meal plan"
        account = account_of()
        assert balance(account).available == 95
        assert inbound("SMjobdb").tokens_charged == 5
        assert costs.month(db.session, account).tokens_charged == 5
        assert_consistent(db.session, account)


def test_the_llm_call_of_an_attempt_that_failed_is_still_costed(
        database_url, redis_url, twilio_api, openai_api, no_retry_delay):
    """The LLM cost is recorded with the capture; when that transaction is lost, it is
    recorded alone (`router.record_llm_cost`) before the job fails: a call the provider
    billed stays costed, though the retry is answered from the cache (no usage of its own)."""
    with running_app(database_url, **queued(redis_url, twilio_api, openai_api)) as application:
        _lose_the_connection_at_the_capture(application, database_url)
        assert len(openai_api.requests) == 1
        account = account_of()
        month = costs.month(db.session, account)
        assert month.llm_calls == 1 and month.cost_llm_musd > 0
        assert inbound("SMjobdb").tokens_charged == 5


@pytest.mark.backends("sqlite")  # the same on PostgreSQL; one backend shows it
def test_an_answer_whose_job_failed_for_good_is_given_after_the_database_is_back(
        database_url, redis_url, twilio_api, openai_api, no_retry_delay):
    with running_app(database_url, **queued(redis_url, twilio_api, openai_api)) as application:
        post_signed(application.test_client(), sms("meal plan", sid="SMgone"))
        with DatabaseOutage(database_url) as outage:
            outage.down()
            run_worker(application)  # the job and its 3 retries fail
            outage.up()
        queue = Queue(QUEUE_NAME, connection=redis_connection(application))
        assert job_id_for("SMgone") in queue.failed_job_registry.get_job_ids()
        age("SMgone", minutes=3)
        result = sweep(application)
        assert "re-enqueued 1 of 1 waiting answers" in result.output
        run_worker(application)
        assert inbound("SMgone").outcome != "queued", "nothing answered the message"
        assert len(twilio_api.accepted) == 1
        assert balance(account_of()).available in (95, 100)


def test_inline_llm_connection_lost_before_the_capture_the_retry_is_answered(
        database_url, openai_api):
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": openai_api.base_url}
    with running_app(database_url, **env) as application:
        client = application.test_client()
        with connection_lost_at(database_url, AT_THE_CAPTURE) as failed:
            first = post_signed(client, sms("meal plan", sid="SMinl"))
        db.session.remove()
        assert failed and first.status_code == 503
        assert (inbound("SMinl").outcome, hold_of("SMinl").status) == ("queued", "pending")
        db.session.commit()
        retry = post_signed(client, sms("meal plan", sid="SMinl"))
        assert said(retry) == ["Here is your answer about: meal plan"]


def test_inline_llm_connection_lost_before_the_capture_charges_nothing(database_url, openai_api):
    """The part of the fault above that holds: the hold lapses and nothing is charged."""
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": openai_api.base_url}
    with running_app(database_url, **env) as application:
        client = application.test_client()
        with connection_lost_at(database_url, AT_THE_CAPTURE):
            assert post_signed(client, sms("meal plan", sid="SMinl2")).status_code == 503
        db.session.remove()
        account = account_of()
        assert balance(account).available == 95
        lapse_hold("SMinl2")
        result = application.test_cli_runner().invoke(args=["tokens", "expire-holds"])
        assert "expired 1 hold" in result.output
        after = balance(account)
        assert (after.posted, after.held, after.available) == (100, 0, 100)
        assert_consistent(db.session, account)


# --- 3. OpenAI down or slow ----------------------------------------------------------------

LLM_FAULTS = ["http 500", "connection refused", "slower than the timeout"]


def _break_openai(fault: str, openai_api: OpenAIStandIn) -> dict[str, str]:
    """Settings of an app whose OpenAI fails that way (timeout 0.5 s)."""
    base_url = openai_api.base_url
    if fault == "http 500":
        openai_api.fail_next(500, times=5)
    elif fault == "connection refused":
        base_url = closed_port_url("/v1")
    else:
        openai_api.delay_seconds = 1.5
    return {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": base_url,
            "OPENAI_TIMEOUT_SECONDS": "0.5"}


def _assert_free_offline_answer(text: str, sid: str, fault: str) -> None:
    assert text.startswith(replies.OFFLINE_FREE) and "Breakfast" in text
    account = account_of()
    assert (inbound(sid).outcome, inbound(sid).tokens_charged) == ("failed", 0)
    assert hold_of(sid).status == "voided"
    assert balance(account).available == 100
    month = costs.month(db.session, account)
    assert month.tokens_charged == 0
    # A call that may have reached OpenAI is costed at its ceiling; an error answer is not.
    assert (month.cost_llm_musd > 0) == (fault != "http 500")
    assert_consistent(db.session, account)


@pytest.mark.parametrize("fault", LLM_FAULTS)
def test_openai_fails_inline_the_person_gets_the_offline_answer_free(database_url, openai_api,
                                                                      fault):
    with running_app(database_url, **_break_openai(fault, openai_api)) as application:
        client = application.test_client()
        started = time.monotonic()
        response = post_signed(client, sms("meal plan", sid="SMllm"))
        assert response.status_code == 200
        assert time.monotonic() - started < 5  # well within Twilio's 15 s
        [text] = said(response)
        _assert_free_offline_answer(text, "SMllm", fault)


@pytest.mark.parametrize("fault", LLM_FAULTS)
def test_openai_fails_in_a_job_the_person_gets_the_offline_answer_free(
        database_url, redis_url, twilio_api, openai_api, fault):
    env = queued(redis_url, twilio_api, openai_api, **_break_openai(fault, openai_api))
    with running_app(database_url, **env) as application:
        assert post_signed(application.test_client(), sms("meal plan", sid="SMllmq")
                           ).get_data(as_text=True) == EMPTY
        assert run_worker(application) == 1
        [send] = twilio_api.accepted
        _assert_free_offline_answer(send["Body"], "SMllmq", fault)


# --- 4. The Twilio REST API failing ----------------------------------------------------------


@pytest.fixture
def rest_app(database_url, redis_url, twilio_api, openai_api) -> Iterator[Flask]:
    with running_app(database_url, **queued(redis_url, twilio_api, openai_api)) as application:
        yield application


def test_twilio_5xx_then_success_is_retried_and_sent_once(rest_app, twilio_api):
    twilio_api.fail_next(500, 20500)
    post_signed(rest_app.test_client(), sms("meal plan", sid="SM5xx1"))
    run_worker(rest_app)
    assert [s["response_status"] for s in twilio_api.sent] == [500, 201]
    [reply] = replies_to("SM5xx1")
    assert (reply.status, reply.message_sid) == ("queued", twilio_api.accepted[0]["sid"])
    assert balance(account_of()).available == 95


@pytest.mark.parametrize("fault", ["503 every time", "connection refused"])
def test_twilio_failing_every_attempt_fails_the_reply_and_reverses_its_charge_once(
        database_url, redis_url, twilio_api, openai_api, fault):
    overrides = {}
    if fault == "connection refused":
        overrides["TWILIO_API_BASE"] = closed_port_url()
    else:
        twilio_api.fail_next(503, 20503, times=10)
    env = queued(redis_url, twilio_api, openai_api, **overrides)
    with running_app(database_url, **env) as application:
        post_signed(application.test_client(), sms("meal plan", sid="SMdown"))
        run_worker(application)
        tried = len(twilio_api.sent)
        assert tried == (3 if fault == "503 every time" else 0)
        [reply] = replies_to("SMdown")
        assert reply.status == "failed"
        assert reply.error_code == (20503 if fault == "503 every time" else None)
        assert answer_job("SMdown") == "nothing to do"  # an RQ retry sends nothing more
        assert len(twilio_api.sent) == tried
        account = account_of()
        after = balance(account)
        assert (after.posted, after.held, after.available) == (100, 0, 100)
        assert refunded("SMdown") == 5
        month = costs.month(db.session, account)
        assert month.tokens_charged == 0 and month.messages_out == 0
        assert_consistent(db.session, account)


def test_twilio_timeout_is_unknown_never_resent_and_the_sweep_gives_it_up_and_reverses(
        database_url, redis_url, twilio_api, openai_api):
    env = queued(redis_url, twilio_api, openai_api, TWILIO_TIMEOUT_SECONDS="0.3")
    with running_app(database_url, **env) as application:
        twilio_api.delay_seconds = 1.0
        post_signed(application.test_client(), sms("meal plan", sid="SMslowtw"))
        run_worker(application)
        twilio_api.delay_seconds = 0
        deadline = time.monotonic() + 5
        while not twilio_api.sent and time.monotonic() < deadline:
            time.sleep(0.05)  # the stand-in records the send once its delay is over
        assert [(r.status, r.message_sid) for r in replies_to("SMslowtw")] == [("unknown", None)]
        assert answer_job("SMslowtw") == "nothing to do"
        [reply] = replies_to("SMslowtw")
        account = account_of()
        assert balance(account).available == 95  # charged until we know

        assert "failed 0 unconfirmed" in sweep(application).output  # not yet: 15 minutes
        reply.status_at -= timedelta(minutes=16)
        db.session.commit()
        assert "failed 1 unconfirmed replies" in sweep(application).output
        assert replies_to("SMslowtw")[0].status == "failed"
        assert balance(account).available == 100
        assert refunded("SMslowtw") == 5

        # Twilio had sent it after all: its late callback changes nothing and charges nothing.
        [sent] = twilio_api.sent
        callback = {"MessageSid": sent["sid"], "MessageStatus": "delivered", "To": PHONE,
                    "AccountSid": ACCOUNT_SID}
        assert post_signed(application.test_client(), callback,
                           path=STATUS_PATH).status_code == 204
        [reply] = replies_to("SMslowtw")
        assert (reply.status, reply.message_sid) == ("failed", None)
        assert "failed 0 unconfirmed" in sweep(application).output
        assert balance(account).available == 100 and refunded("SMslowtw") == 5
        assert len(twilio_api.sent) == 1
        assert_consistent(db.session, account)


# --- 5. Stripe: the checkout row and the completed event -----------------------------------


def post_event(client: Any, event_body: dict[str, Any]) -> Any:
    body = json.dumps(event_body).encode()
    return client.post("/webhooks/stripe", data=body, headers={
        "Stripe-Signature": sign_event(body, STRIPE_WEBHOOK_SECRET),
        "Content-Type": "application/json"})


def completed(session_id: str, event_id: str = "evt_fault_completed") -> dict[str, Any]:
    """The real `checkout.session.completed` fixture, for our session and price."""
    event_body: dict[str, Any] = json.loads(
        stripe_event_bytes("stripe_ruby_mock/checkout.session.completed.payment_mode.json"))
    event_body["id"] = event_id
    event_body["data"]["object"].update(id=session_id, amount_total=500, currency="usd",
                                        payment_intent=PI)
    return event_body


def pay_link(client: Any) -> str:
    reply = said(post_signed(client, sms("BUY")))[0]
    match = re.search(re.escape(PUBLIC_BASE_URL) + r"(/pay/[A-Za-z0-9_-]+)", reply)
    assert match, reply
    return match.group(1)


def test_checkout_row_lost_after_stripe_created_the_session_the_payment_credits_once(
        stripe_app, stripe_api, database_url):
    """The realistic race: Stripe creates the session, then the connection dies while the
    checkout row is stored. The person gets an error page and never sees the session's URL,
    so nothing can be paid before the row exists. The next click replays the same idempotency
    key, gets the same session, stores it; its payment is credited once."""
    client = stripe_app.test_client()
    link = pay_link(client)
    with connection_lost_at(database_url, "INSERT INTO checkouts") as failed:
        response = client.get(link)
    db.session.remove()
    assert failed and response.status_code == 503 and "Location" not in response.headers
    assert db.session.scalar(select(func.count()).select_from(Checkout)) == 0
    [created] = stripe_api.requests_to("/v1/checkout/sessions")

    again = client.get(link)
    assert again.status_code == 303
    first, second = stripe_api.requests_to("/v1/checkout/sessions")
    assert second["idempotency_key"] == first["idempotency_key"] and second["replayed"]
    session_id, url = db.session.execute(select(Checkout.external_id, Checkout.url)).one()
    assert session_id == created["object_id"]
    assert again.headers["Location"] == url

    assert post_event(client, completed(session_id)).get_json()["outcome"] == (
        "credited 120 tokens")
    assert post_event(client, completed(session_id)).get_json()["duplicate"] is True
    account = account_of()
    assert balance(account).available == 220
    assert_consistent(db.session, account)


def test_a_completed_event_for_a_session_we_do_not_know_is_kept_as_ignored(stripe_app):
    """Documents the order that cannot happen through the app (the row is committed before
    the person is sent to Stripe; see the test above): were the event to come first, it is
    answered 200 and kept as "ignored", so Stripe would not send it again and a redelivery
    would be a duplicate: the credit would need an operator."""
    client = stripe_app.test_client()
    event_body = completed("cs_test_not_stored_yet", "evt_fault_early")
    first = post_event(client, event_body)
    assert first.status_code == 200
    assert first.get_json()["outcome"] == "ignored: not a checkout of ours"
    assert db.session.scalar(select(PaymentEvent.outcome)) == "ignored: not a checkout of ours"
    assert post_event(client, event_body).get_json() == {"received": True, "duplicate": True}


def test_database_down_when_the_payment_arrives_stripe_retries_and_it_credits_once(
        stripe_app, database_url):
    client = stripe_app.test_client()
    assert client.get(pay_link(client)).status_code == 303
    session_id = db.session.scalar(select(Checkout.external_id))
    account = account_of()
    db.session.commit()
    with DatabaseOutage(database_url) as outage:
        outage.down()
        response = post_event(client, completed(session_id))
        assert response.status_code == 503  # Stripe delivers it again later
        db.session.remove()
        outage.up()
    assert db.session.scalar(select(func.count()).select_from(PaymentEvent)) == 0
    assert balance(account).available == 100

    assert post_event(client, completed(session_id)).get_json()["outcome"] == (
        "credited 120 tokens")
    assert post_event(client, completed(session_id)).get_json()["duplicate"] is True
    assert balance(account).available == 220
    assert_consistent(db.session, account)


# --- 6. A crash between the hold and the capture ---------------------------------------------


def _worker_process(database_url: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`flask --app wsgi worker --burst`, as deployed, in a process of its own."""
    inherited = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR",
                                                      "PYTHONPATH", "VIRTUAL_ENV")
                 if name in os.environ}
    environ = {**inherited, "APP_ENV": "test", "DATABASE_URL": database_url,
               "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
               "SECRET_KEY": "test-secret", "SENDER_RATE_LIMIT": "1000 per minute", **env}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--burst"],
            cwd=PROJECT_ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_worker_killed_between_hold_and_capture_the_hold_expires_and_nothing_is_charged(
        database_url, redis_url, twilio_api, openai_api, no_retry_delay, tmp_path):
    env = queued(redis_url, twilio_api, openai_api)
    with running_app(database_url, **env) as application:
        post_signed(application.test_client(), sms("meal plan", sid="SMkill"))
        db.session.commit()
        openai_api.delay_seconds = 60  # the worker waits for the LLM ...
        # ... longer than this test can be stalled on a loaded machine before the kill.
        patient = {**env, "OPENAI_TIMEOUT_SECONDS": "120"}
        worker = _worker_process(database_url, patient, tmp_path / "worker.log")
        try:
            _wait_for(lambda: bool(openai_api.requests) or worker.poll() is not None, 30,
                      "the worker never asked the LLM")
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        finally:
            worker.kill()  # ... and dies there: SIGKILL, no cleanup of any kind
            worker.wait()
        openai_api.delay_seconds = 0

        account = account_of()
        assert (inbound("SMkill").outcome, hold_of("SMkill").status) == ("queued", "pending")
        assert replies_to("SMkill") == [] and twilio_api.sent == []
        connection = redis_connection(application)
        assert connection.exists(turn_key(PHONE))  # the dead worker's turn expires on its own
        held = balance(account)
        assert (held.posted, held.held, held.available) == (100, 5, 95)

        lapse_hold("SMkill")
        result = application.test_cli_runner().invoke(args=["tokens", "expire-holds"])
        assert "expired 1 hold" in result.output
        after = balance(account)
        assert (after.posted, after.held, after.available) == (100, 0, 100)
        assert_consistent(db.session, account)

        # Later the dead worker's turn lapses and RQ finds the abandoned job and retries it:
        # too late for the hold, so the person is told, free, and no LLM call is made.
        connection.delete(turn_key(PHONE))
        queue = Queue(QUEUE_NAME, connection=connection)
        queue.started_job_registry.cleanup(timestamp=time.time() + 24 * 3600)
        requests_before = len(openai_api.requests)
        assert run_worker(application) == 1
        [send] = twilio_api.accepted
        assert send["Body"] == replies.TOOK_TOO_LONG
        assert len(openai_api.requests) == requests_before
        assert (inbound("SMkill").outcome, inbound("SMkill").tokens_charged) == ("failed", 0)
        assert balance(account).available == 100
        assert costs.month(db.session, account).tokens_charged == 0
        assert_consistent(db.session, account)


def test_a_job_that_never_ran_its_hold_is_released_by_the_persons_next_message(
        rest_app, twilio_api, openai_api):
    client = rest_app.test_client()
    # A worker routed it (the hold is placed) and died; the job is lost, none runs it.
    routed_not_answered(rest_app, db.session, sms("meal plan", sid="SMnever"))
    account = account_of()
    assert balance(account).available == 95
    lapse_hold("SMnever")

    post_signed(client, sms("BALANCE"))  # a free command places no hold
    post_signed(client, sms("recipe for soup", sid="SMnext"))
    assert run_worker(rest_app) == 2
    assert hold_of("SMnever").status == "expired"  # the next hold's sweep released it
    after = balance(account)
    assert (after.posted, after.held, after.available) == (98, 0, 98)
    assert_consistent(db.session, account)

    # The waiting message is then answered by the sweep's job: an apology, free.
    age("SMnever", minutes=3)
    assert "re-enqueued 1 of 1" in sweep(rest_app).output
    assert run_worker(rest_app) == 1
    bodies = [s["Body"] for s in twilio_api.accepted]
    assert bodies[1:] == ["Here is your answer about: recipe for soup", replies.TOOK_TOO_LONG]
    assert (inbound("SMnever").outcome, inbound("SMnever").tokens_charged) == ("failed", 0)
    after = balance(account)
    assert (after.posted, after.held, after.available) == (98, 0, 98)
    assert_consistent(db.session, account)
