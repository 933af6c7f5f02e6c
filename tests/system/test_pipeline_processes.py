"""The deployed shape, end to end: 2 web processes (gunicorn) and 2 worker processes
(`flask --app wsgi worker`) on one PostgreSQL and one Redis.

200 signed messages from 20 people (priced intents, BUY, BALANCE, STOP and START
interleaved) are posted over HTTP, each person's in order, the people at once. Then: every
message is routed once, each person's replies went out in the order of their messages, nothing
was sent between a STOP and the next START, and every ledger is consistent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from app.config import PROJECT_ROOT
from app.extensions import db
from bot.models import Contact, InboxMessage, Message, OutcomeKind
from testing.deployment import AUTH_TOKEN, PUBLIC_BASE_URL, queued_environment, sign
from testing.openai_standin import OpenAIStandIn
from testing.payloads import sms
from testing.processes import wait_until_serving
from testing.redis_server import HOST, RedisServer, free_port
from testing.twilio_standin import TwilioStandIn
from tests.tokens.ledger_checks import assert_consistent

pytestmark = pytest.mark.backends("postgresql")

PEOPLE = 20
SCRIPT = ("meal plan", "BUY", "recipe for soup", "calories in 2 eggs", "STOP", "meal plan",
          "START", "BALANCE", "grocery list for the week", "tips for a gluten free diet")


def _environment(database_url: str, redis_url: str, twilio: TwilioStandIn,
                 openai_api: OpenAIStandIn) -> dict[str, str]:
    inherited = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR",
                                                      "PYTHONPATH", "VIRTUAL_ENV")
                 if name in os.environ}
    return {**inherited, "APP_ENV": "test", "DATABASE_URL": database_url,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "SECRET_KEY": "test-secret-" + "x" * 32, "SENDER_RATE_LIMIT": "1000 per minute",
            **queued_environment(redis_url, twilio, openai_api)}


@pytest.fixture
def deployment(database_url: str, redis_srv: RedisServer, twilio_api: TwilioStandIn,
               openai_api: OpenAIStandIn, tmp_path: Path) -> Iterator[int]:
    """gunicorn (2 workers) and 2 `flask worker` processes; yields the web port."""
    redis.Redis.from_url(redis_srv.url).flushdb()
    env = _environment(database_url, redis_srv.url, twilio_api, openai_api)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # /metrics sums all four processes
    port = free_port()
    commands = {
        "web": [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind",
                f"{HOST}:{port}", "--log-level", "warning", "wsgi:app"],
        "worker-1": [sys.executable, "-m", "flask", "--app", "wsgi", "worker"],
        "worker-2": [sys.executable, "-m", "flask", "--app", "wsgi", "worker"],
    }
    processes = []
    for name, command in commands.items():
        with (tmp_path / f"{name}.log").open("wb") as log:
            processes.append(subprocess.Popen(command, cwd=PROJECT_ROOT, env=env,
                                              stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT))
    try:
        wait_until_serving(port, processes, tmp_path / "web.log")
        yield port
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _post(port: int, fields: dict[str, str]) -> int:
    path = "/webhooks/twilio/messages"
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}", data=urlencode(fields).encode(),
        headers={"X-Twilio-Signature": sign(PUBLIC_BASE_URL + path, fields)})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return int(answer.status)


def test_two_web_and_two_worker_processes_answer_everyone_once_in_order(
        deployment, make_app, twilio_api, openai_api):
    openai_api.delay_seconds = 0.05
    people = [f"+1650555{i:04d}" for i in range(PEOPLE)]
    sent_order: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def person(phone: str, n: int) -> None:
        sids = []
        try:
            for i, body in enumerate(SCRIPT):
                sid = f"SM{n:02d}{i:02d}" + "0" * 28
                assert _post(deployment, sms(body, sid=sid, sender=phone)) == 200
                sids.append(sid)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        sent_order[phone] = sids

    threads = [threading.Thread(target=person, args=(phone, n))
               for n, phone in enumerate(people)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors


    application = make_app()
    with application.app_context():
        session = db.session
        deadline = time.monotonic() + 90
        while True:
            routed = session.scalar(select(db.func.count()).select_from(Message)
                                    .where(Message.direction == "in"))
            waiting = session.scalar(select(db.func.count()).select_from(InboxMessage))
            sending = session.scalar(select(db.func.count()).select_from(Message).where(
                Message.status.in_(("pending", "submitting"))))
            answering = session.scalar(select(db.func.count()).select_from(Message).where(
                Message.outcome == OutcomeKind.QUEUED))
            session.commit()
            if (routed == PEOPLE * len(SCRIPT) and not waiting and not sending
                    and not answering):
                break
            assert time.monotonic() < deadline, (routed, waiting, sending, answering)
            time.sleep(0.2)

        inbound = {m.message_sid: m for m in session.scalars(
            select(Message).where(Message.direction == "in"))}
        assert len(inbound) == PEOPLE * len(SCRIPT)  # each routed exactly once
        by_id = {m.id: m for m in inbound.values()}
        replies = session.scalars(select(Message).where(Message.direction == "out")).all()
        reply_of_twilio_sid = {r.message_sid: by_id[r.in_reply_to_id].message_sid
                               for r in replies if r.message_sid}
        sends: dict[str, list[str]] = defaultdict(list)
        for send in twilio_api.accepted:  # in the order the stand-in received them
            sends[send["To"]].append(reply_of_twilio_sid[send["sid"]])

        for phone in people:
            order = sent_order[phone]
            position = [order.index(sid) for sid in sends[phone]]
            assert position == sorted(position), (phone, position)  # replies in order
            stop, start = SCRIPT.index("STOP"), SCRIPT.index("START")
            # Between STOP and START nothing is sent, and what waited before the STOP may
            # have been silenced too (STOP overtakes), but never charged.
            assert not [p for p in position if stop <= p < start]
            silenced = [inbound[sid] for sid in order[:start] if inbound[sid].outcome
                        == "opted_out"]
            assert all(m.tokens_charged == 0 for m in silenced)
            assert inbound[order[stop]].outcome == "opt_out"
            assert inbound[order[start]].outcome == "opt_in"
            assert inbound[order[-1]].outcome == "answered"  # after START, answered again
            account = session.scalar(select(Contact.account_id)
                                     .where(Contact.address == phone))
            assert_consistent(session, int(account))
        assert len(twilio_api.sent) == len(twilio_api.accepted)  # no send refused or resent
        db.session.remove()
        db.engine.dispose()

    # The metrics of the two web and the two worker processes, summed by one scrape.
    with urllib.request.urlopen(f"http://{HOST}:{deployment}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bot_webhook_acks_total":
                totals["acks:" + sample.labels["result"]] += sample.value
            elif sample.name == "bot_answers_total":
                totals["answers"] += sample.value
    assert totals["acks:queued"] == PEOPLE * len(SCRIPT)
    assert totals["answers"] == PEOPLE * len(SCRIPT)
