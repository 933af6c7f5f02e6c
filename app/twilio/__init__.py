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
from flask import Blueprint, Response, current_app, request

from app.extensions import db
from app.jobs import answer_job
from app.queue import answers_queue, enqueue_answer
from bot.channels import get_adapter
from bot.channels.twilio import TwilioAdapter
from bot.errors import InvalidInbound
from bot.outbound import apply_status
from bot.router import BotSettings, handle_inbound

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
    defer = answers_queue(app) is not None
    outcome = handle_inbound(db.session, message, settings, defer=defer)
    db.session.commit()
    if outcome.kind == "queued":
        try:
            enqueue_answer(app, message.message_sid)
        except redis.RedisError as exc:
            # The hold is committed; answer now rather than leave the person waiting.
            log.error("enqueue failed, answering inline", extra={"error": type(exc).__name__})
            answer_job(message.message_sid, lock=False)
    return twiml(adapter.render_reply(list(outcome.replies)))


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
    apply_status(db.session, update)
    db.session.commit()
    return Response(status=204)
