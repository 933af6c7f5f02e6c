"""Twilio webhooks: `POST /webhooks/twilio/messages` (SMS and WhatsApp inbound) and
`POST /webhooks/twilio/status` (delivery status callbacks).

The controllers stay thin: check the signature, let the channel adapter normalise the form,
hand it to the domain (`router.answer_message`, `bot.inbox.store_in_inbox`,
`outbound.apply_status`), commit, answer. With Redis configured, every message is answered by
an RQ job enqueued after the commit, and the webhook answers an empty `<Response/>` at once.
"""

from __future__ import annotations

import logging
import time

import redis
from flask import Blueprint, Flask, Response, current_app, request

from app.billing import deliver_notices
from app.extensions import bot_settings, db, outbound_settings
from app.jobs import answer_inline
from app.metrics import acknowledged
from app.queue import answers_queue, enqueue_answer
from bot.channels import get_adapter
from bot.channels.twilio import TwilioAdapter
from bot.errors import InvalidInbound
from bot.inbox import store_in_inbox
from bot.outbound import apply_status

bp = Blueprint("twilio", __name__)
log = logging.getLogger(__name__)


def public_url() -> str:
    """The URL Twilio signed: `PUBLIC_BASE_URL` + path + the raw query string, undecoded.

    Flask's `request.url` decodes `%27` to `'` and breaks validation (the signature test
    vectors in testing/fixtures/twilio).
    """
    url = current_app.config["PUBLIC_BASE_URL"] + request.path
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    return url


EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


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

    With Redis configured the webhook only acknowledges: it stores the message in the inbox
    (one `INSERT ... ON CONFLICT DO NOTHING`; a repeat delivery changes nothing), enqueues the
    answer job and answers an empty `<Response/>`; the worker routes, answers and sends by
    REST. Without Redis the whole answer runs here (`router.answer_message`) as TwiML.

    Returns:
        200 TwiML with the reply, or an empty `<Response/>` (queued, or a repeat delivery);
        403 when `X-Twilio-Signature` is missing or wrong (nothing stored); 400 with the
        reason when the form is unusable.
    """
    started = time.perf_counter()
    response, result = _acknowledge()
    acknowledged(result, time.perf_counter() - started)
    return response


def _acknowledge() -> tuple[Response, str]:
    """The inbound webhook's work: (the response, what it did for `bot_webhook_acks_total`:
    "queued", "inline", "refused" or "invalid")."""
    refused = _signature_refused()
    if refused is not None:
        return refused, "refused"
    adapter = _adapter()
    try:
        message = adapter.parse_inbound(request.form, request.headers)
    except InvalidInbound as exc:
        return Response(f"{exc}\n", status=400,
                        content_type="text/plain; charset=utf-8"), "invalid"

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if answers_queue(app) is None:
        # No queue (the embedded default): the whole answer, as TwiML, in this request.
        outcome = answer_inline(app, message)
        return twiml(adapter.render_reply(list(outcome.replies))), "inline"
    # With a queue the webhook only acknowledges: store, enqueue, an empty <Response/>.
    inbox_id = store_in_inbox(db.session, message)
    db.session.commit()
    if _enqueue(app, message.message_sid):
        return twiml(EMPTY_TWIML), "queued"
    # Redis cannot be reached: answer here, as TwiML, taking the row from the inbox.
    outcome = answer_inline(app, message, inbox_id)
    return twiml(adapter.render_reply(list(outcome.replies))), "inline"


def _enqueue(app: Flask, message_sid: str) -> bool:
    """Enqueue the answer job; False when Redis cannot be reached (answer inline instead)."""
    try:
        return enqueue_answer(app, message_sid)
    except redis.RedisError as exc:
        log.error("enqueue failed, answering inline", extra={"error": type(exc).__name__})
        return False


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
    settings = bot_settings()
    resends: list[int] = []
    apply_status(db.session, update, catalog=settings.catalog,
                 settings=outbound_settings(), resends=resends)
    db.session.commit()
    # 63016 on a WhatsApp answer: it goes out again as the approved template (a job with
    # Redis, else now).
    deliver_notices(current_app._get_current_object(), resends)  # type: ignore[attr-defined]
    return Response(status=204)
