"""Twilio webhooks: `POST /webhooks/twilio/messages` (SMS and WhatsApp inbound) and
`POST /webhooks/twilio/status` (delivery status callbacks).

The controllers stay thin: check the signature, let the channel adapter normalise the form,
hand it to the domain (`router.handle_inbound`, `outbound.apply_status`), commit, answer.
With Redis configured, a priced message is answered by an RQ job enqueued after the commit,
and the webhook answers an empty `<Response/>` at once.
"""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, Flask, Response, current_app, request
from sqlalchemy import select

from app.extensions import db
from app.jobs import answer_inline
from app.queue import answers_queue, enqueue_answer
from bot.channels import get_adapter
from bot.channels.twilio import TwilioAdapter
from bot.errors import InvalidInbound
from bot.models import Message
from bot.outbound import apply_status
from bot.router import BotSettings, Outcome, handle_inbound

bp = Blueprint("twilio", __name__)
log = logging.getLogger(__name__)


def public_url() -> str:
    """The URL Twilio signed: `PUBLIC_BASE_URL` + path + the raw query string, undecoded.

    Flask's `request.url` decodes `%27` to `'` and breaks validation (shared/fixtures/README.md).
    """
    url = current_app.config["PUBLIC_BASE_URL"] + request.path
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    return url


def twiml(body: str, status: int = 200) -> Response:
    """A TwiML response (`Content-Type: text/xml`)."""
    return Response(body, status=status, content_type="text/xml; charset=utf-8")


def _adapter() -> TwilioAdapter:
    adapter = get_adapter("twilio")
    assert isinstance(adapter, TwilioAdapter)
    return adapter


def _signature_refused() -> Response | None:
    """403 when `X-Twilio-Signature` is missing or wrong (nothing is stored), else None."""
    if _adapter().signature_is_valid(
        current_app.config["TWILIO_AUTH_TOKEN"],
        public_url(),
        request.form,
        request.headers.get("X-Twilio-Signature"),
        request.headers.get("X-Twilio-Webhooks-Signature-Settings"),
    ):
        return None
    # An operator can alert on this line; it carries no phone number or body.
    log.warning(
        "twilio webhook rejected: bad or missing X-Twilio-Signature",
        extra={"path": request.path, "remote_addr": request.remote_addr},
    )
    return Response("invalid or missing X-Twilio-Signature\n", status=403,
                    content_type="text/plain; charset=utf-8")


@bp.post("/webhooks/twilio/messages")
def inbound_message() -> Response:
    """Inbound SMS or WhatsApp message ("A message comes in").

    Returns:
        200 TwiML with the reply, or an empty `<Response/>` (a repeat delivery, or a priced
        message whose answer a job sends); 403 when `X-Twilio-Signature` is missing or wrong
        (nothing stored); 400 with the reason when the form is unusable.
    """
    refused = _signature_refused()
    if refused is not None:
        return refused
    adapter = _adapter()
    try:
        message = adapter.parse_inbound(request.form, request.headers)
    except InvalidInbound as exc:
        return Response(f"{exc}\n", status=400, content_type="text/plain; charset=utf-8")

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings: BotSettings = app.extensions["bot_settings"]
    queued = answers_queue(app) is not None
    # An LLM answer never runs inside this transaction: with a queue a job gives it, without
    # one this process does after the commit.
    outcome = handle_inbound(db.session, message, settings,
                             defer=queued or settings.chat is not None)
    db.session.commit()
    if outcome.kind == "queued":
        if not (queued and _enqueue(app, message.message_sid)):
            outcome = answer_inline(app, message.message_sid)
    elif outcome.kind == "duplicate" and queued:
        _enqueue_if_waiting(app, message.message_sid)
    elif outcome.kind == "duplicate" and settings.chat is not None:
        outcome = _answer_if_abandoned(app, message.message_sid)
    return twiml(adapter.render_reply(list(outcome.replies)))


def _enqueue(app: Flask, message_sid: str) -> bool:
    """Enqueue the answer job; False when Redis cannot be reached (answer inline instead)."""
    try:
        return enqueue_answer(app, message_sid)
    except redis.RedisError as exc:
        log.error("enqueue failed, answering inline", extra={"error": type(exc).__name__})
        return False


def _answer_if_abandoned(app: Flask, message_sid: str) -> Outcome:
    """Inline LLM answers, no queue: a repeat delivery of a message still "queued" means the
    first attempt died between its two commits (say the database dropped and it answered
    503): answer it now. Twilio repeats a delivery only after an error or its 15 s timeout,
    and the first attempt's LLM call ends within `OPENAI_TIMEOUT_SECONDS` (10 s), so the two
    rarely overlap; if they do, `settle` re-checks the mark under the account lock, so the
    person is charged once (the LLM may be paid twice)."""
    waiting = db.session.scalar(
        select(Message.id).where(Message.message_sid == message_sid,
                                 Message.outcome == "queued"))
    db.session.commit()
    if waiting is None:
        return Outcome(kind="duplicate")
    return answer_inline(app, message_sid)


def _enqueue_if_waiting(app: Flask, message_sid: str) -> None:
    """A repeat delivery of a message still waiting for its answer (say the process died
    between the commit and the enqueue): enqueue again; a no-op if the job exists."""
    waiting = db.session.scalar(
        select(Message.id).where(Message.message_sid == message_sid,
                                 Message.outcome == "queued")
    )
    db.session.commit()
    if waiting is not None:
        _enqueue(app, message_sid)


@bp.post("/webhooks/twilio/status")
def status_callback() -> Response:
    """Delivery status of an outbound message (the `StatusCallback` of each send).

    Returns:
        204 when taken (a repeat, an out-of-order status and an unknown sid included: Twilio
        must not retry those); 403 on a bad signature; 400 with the reason on an unusable form.
    """
    refused = _signature_refused()
    if refused is not None:
        return refused
    try:
        update = _adapter().parse_status(request.form)
    except InvalidInbound as exc:
        return Response(f"{exc}\n", status=400, content_type="text/plain; charset=utf-8")
    settings: BotSettings = current_app.extensions["bot_settings"]
    apply_status(db.session, update, catalog=settings.catalog)
    db.session.commit()
    return Response(status=204)
