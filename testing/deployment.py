"""A deployment of the app for tests and benchmarks: its configuration (no `.env`, a known
Twilio auth token and public URL), its schema, its queued environment (Redis, the Twilio REST
API and OpenAI, all stand-ins on loopback), the real worker in burst mode, and Twilio's
signature on a webhook post.

Shared by tests/ (through tests/conftest.py's fixtures) and bench/.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade
from twilio.request_validator import RequestValidator

from app import create_app
from app.config import Config
from app.extensions import bot_settings, db
from testing.openai_standin import OpenAIStandIn
from testing.stripe_standin import StripeStandIn
from testing.twilio_standin import TwilioStandIn

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
SMS_FROM = "+15005550006"
WHATSAPP_FROM = "+14155238886"
PUBLIC_BASE_URL = "https://bot.example.com"
INBOUND_PATH = "/webhooks/twilio/messages"


def config_for(database_url: str, **overrides: str) -> type[Config]:
    """A `Config` subclass for tests: no `.env`, a known auth token and public URL."""
    environ = {
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "SECRET_KEY": "test-secret",
        # Many tests send dozens of messages from one number within a second; the rate limit
        # tests (tests/app/test_rate_limits.py) pass "" for the product's default.
        "SENDER_RATE_LIMIT": "1000 per minute",
        # `flask worker` run in the test process must not lower the whole suite's priority.
        "WORKER_NICE": "0",
        **overrides,
    }

    class TestConfig(Config):
        load_dotenv_file = False

        def __init__(self) -> None:
            super().__init__(environ=environ)

    return TestConfig


def migrate(database_url: str) -> None:
    """Build the schema with the project's Alembic migrations (`flask db upgrade`)."""
    app = create_app(config_for(database_url))
    with app.app_context():
        upgrade()
        db.engine.dispose()


@contextlib.contextmanager
def running_app(database_url: str, **env: str) -> Iterator[Flask]:
    """The app on `database_url` with `env` on top of the test settings (`config_for`),
    inside its app context for the `with` block; then its session is removed and its engine
    disposed. An error of `create_app` (a `ConfigError`) propagates before the block."""
    application = create_app(config_for(database_url, **env))
    with application.app_context():
        try:
            yield application
        finally:
            db.session.remove()
            db.engine.dispose()


# The Stripe stand-in's secret key and the webhook signing secret of the test deployment.
STRIPE_API_KEY = "stand-in-stripe-key"
STRIPE_WEBHOOK_SECRET = "whsec_test_0123456789"


def stripe_environment(stripe: StripeStandIn, twilio: TwilioStandIn) -> dict[str, str]:
    """The environment of a deployment with Stripe (the stand-in at `stripe`) and Twilio REST
    sending (the stand-in at `twilio`), no Redis: notices are sent right after the event's
    commit."""
    return {
        "STRIPE_SECRET_KEY": STRIPE_API_KEY, "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        "STRIPE_API_BASE": stripe.base_url, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_SMS_FROM": SMS_FROM, "TWILIO_API_BASE": twilio.base_url,
        "TWILIO_RETRY_BACKOFF_SECONDS": "0",
    }


def queued_environment(
    redis_url: str, twilio: TwilioStandIn, openai_api: OpenAIStandIn | None
) -> dict[str, str]:
    """The environment of a deployment with Redis, Twilio REST and (optionally) OpenAI."""
    env = {
        "REDIS_URL": redis_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_SMS_FROM": SMS_FROM,
        "TWILIO_WHATSAPP_FROM": WHATSAPP_FROM,
        "TWILIO_API_BASE": twilio.base_url,
        "TWILIO_TIMEOUT_SECONDS": "2",
        "TWILIO_RETRY_BACKOFF_SECONDS": "0",
    }
    if openai_api is not None:
        env.update(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=openai_api.base_url,
                   OPENAI_TIMEOUT_SECONDS="2")
    return env


def run_worker(application: Flask, concurrency: int = 4, cpu_slots: int | None = None) -> int:
    """Run the real worker (`app.worker.ThreadedWorker`, burst mode, in this process) until
    the queue is empty and no job is in flight; returns the number of jobs it finished.
    `cpu_slots`: its CPU gate (`bot.waits`), the worker's default when None."""
    from app.extensions import db
    from app.queue import answers_queue, redis_connection
    from app.worker import ThreadedWorker

    db.session.commit()  # the test's own transaction must not hold SQLite's write lock
    queue = answers_queue(application)
    assert queue is not None
    finished = queue.finished_job_registry.count
    gate = {} if cpu_slots is None else {"cpu_slots": cpu_slots}
    ThreadedWorker([queue], connection=redis_connection(application), app=application,
                   concurrency=concurrency, **gate).work(burst=True)
    return int(queue.finished_job_registry.count - finished)


def sign(url: str, fields: dict[str, str], token: str = AUTH_TOKEN) -> str:
    """`X-Twilio-Signature` as Twilio computes it (the library's own algorithm)."""
    return str(RequestValidator(token).compute_signature(url, fields))


def post_signed(
    client: FlaskClient,
    fields: dict[str, str],
    *,
    query: str = "",
    signed_url: str | None = None,
    token: str = AUTH_TOKEN,
    path: str = INBOUND_PATH,
) -> Any:
    """POST `fields` to a Twilio webhook the way Twilio does, signed over the public URL."""
    target = path + (f"?{query}" if query else "")
    url = signed_url if signed_url is not None else PUBLIC_BASE_URL + target
    return client.post(
        target,
        data=fields,
        headers={"X-Twilio-Signature": sign(url, fields, token)},
    )


def routed_not_answered(app: Flask, session: Any, fields: dict[str, str]) -> None:
    """A message the webhook stored and a worker routed (stored, held), which then died
    before answering it: its job is gone, its message waits "queued"."""
    from sqlalchemy import select

    from app.queue import redis_connection
    from bot.messages import from_payload
    from bot.models import InboxMessage
    from bot.router import handle_inbound

    post_signed(app.test_client(), fields)
    connection = redis_connection(app)
    assert connection is not None
    connection.flushdb()
    row = session.scalar(select(InboxMessage).where(
        InboxMessage.message_sid == fields["MessageSid"]))
    outcome = handle_inbound(session, from_payload(row.payload), bot_settings(app),
                             defer=True, transport="rest")
    assert outcome.kind == "queued"
    session.delete(row)
    session.commit()
