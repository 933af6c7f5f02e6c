"""Structured logs: one JSON object per line, request ids, no phone numbers, no bodies."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from app.logs import bind_job_id, configure, redact_phones
from testing.deployment import post_signed, sign
from testing.payloads import sms


@pytest.fixture
def json_logs(capsys):
    """Route records through the production formatter (JSON) into captured stderr. Configured
    in the test body (`json_logs.start()`), after the database fixtures, whose migrations
    replace the root logger's handlers (alembic's `fileConfig`)."""

    packages = [logging.getLogger(name) for name in ("app", "bot", "tokens")]
    levels = [logger.level for logger in packages]

    class Logs:
        @staticmethod
        def start() -> None:
            configure("json", "INFO")
            for logger in packages:  # `flask chat` (tested elsewhere) quiets "bot"
                logger.setLevel(logging.NOTSET)

        @staticmethod
        def records() -> list[dict]:
            err = capsys.readouterr().err
            return [json.loads(line) for line in err.splitlines() if line.startswith("{")]

    yield Logs
    for logger, level in zip(packages, levels, strict=True):
        logger.setLevel(level)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == "structlog":
            root.removeHandler(handler)


def test_requests_log_json_with_ids_and_without_numbers_or_bodies(client, json_logs):
    json_logs.start()
    post_signed(client, sms("STOP", sid="SM" + "1" * 32))
    post_signed(client, sms("meal plan please", sid="SM" + "2" * 32))
    bad = sms("my secret body", sid="SM" + "3" * 32)
    client.post("/webhooks/twilio/messages", data=bad,
                headers={"X-Twilio-Signature": sign("https://wrong.example/", bad)})
    records = json_logs.records()
    assert records, "nothing was logged"
    text = json.dumps(records)
    assert "6505558893" not in text and "+1********93" in text
    assert "meal plan please" not in text and "my secret body" not in text
    by_event = {r["event"]: r for r in records}
    rejected = by_event["twilio webhook rejected: bad or missing X-Twilio-Signature"]
    assert len(rejected["request_id"]) == 16 and rejected["level"] == "warning"
    assert rejected["endpoint"] == "twilio.inbound_message"


def test_phone_numbers_are_masked_in_any_field():
    event = {"event": "x +15551234567 and whatsapp:+447700900123", "who": "wa:1234567890",
             "n": 15551234567}
    masked = redact_phones(None, "info", dict(event))
    assert masked["event"] == "x +1********67 and +4*********23"
    assert masked["who"] == "wa:********90" and masked["n"] == 15551234567


def test_job_lines_carry_the_job_id(json_logs):
    json_logs.start()
    bind_job_id("answer-SM1")
    logging.getLogger("app.jobs").info("answer settled", extra={"outcome": "answered"})
    structlog.contextvars.clear_contextvars()
    (record,) = [r for r in json_logs.records() if r["event"] == "answer settled"]
    assert record["job_id"] == "answer-SM1" and record["outcome"] == "answered"


def test_tracebacks_are_masked_too(json_logs):
    json_logs.start()
    try:
        raise ValueError("could not store whatsapp:+15551234567")
    except ValueError:
        logging.getLogger("app.jobs").exception("job failed")
    (record,) = [r for r in json_logs.records() if r["event"] == "job failed"]
    assert "ValueError" in record["exception"] and "15551234567" not in record["exception"]
