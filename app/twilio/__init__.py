"""Twilio webhooks: `POST /webhooks/twilio/messages` (SMS and WhatsApp inbound).

The controller stays thin: check the signature, let the channel adapter normalise the form,
hand the message to `router.handle_inbound`, commit, and answer TwiML.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, request

from app.extensions import db
from bot.channels import get_adapter
from bot.channels.twilio import TwilioAdapter
from bot.errors import InvalidInbound
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


@bp.post("/webhooks/twilio/messages")
def inbound_message() -> Response:
    """Inbound SMS or WhatsApp message ("A message comes in").

    Returns:
        200 TwiML with the reply (or an empty `<Response/>`); 403 when `X-Twilio-Signature`
        is missing or wrong (nothing stored); 400 with the reason when the form is unusable.
    """
    adapter = _adapter()
    if not adapter.signature_is_valid(
        current_app.config["TWILIO_AUTH_TOKEN"],
        public_url(),
        request.form,
        request.headers.get("X-Twilio-Signature"),
        request.headers.get("X-Twilio-Webhooks-Signature-Settings"),
    ):
        # An operator can alert on this line; it carries no phone number or body.
        log.warning(
            "twilio webhook rejected: bad or missing X-Twilio-Signature",
            extra={"path": request.path, "remote_addr": request.remote_addr},
        )
        return Response("invalid or missing X-Twilio-Signature\n", status=403,
                        content_type="text/plain; charset=utf-8")
    try:
        message = adapter.parse_inbound(request.form, request.headers)
    except InvalidInbound as exc:
        return Response(f"{exc}\n", status=400, content_type="text/plain; charset=utf-8")

    settings: BotSettings = current_app.extensions["bot_settings"]
    outcome = handle_inbound(db.session, message, settings)
    db.session.commit()
    return twiml(adapter.render_reply(list(outcome.replies)))
