"""The Twilio channel (SMS and WhatsApp): signature check, inbound normalisation, TwiML replies.

Sources: Twilio "Webhooks security" (X-Twilio-Signature over the exact public URL plus every
POST parameter), Twilio "Messaging webhook request" (field names), docs/messaging.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import phonenumbers
import requests
import urllib3
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse

from bot.channels import register
from bot.errors import InvalidInbound, InvalidSender
from bot.messages import InboundMessage, Location, Media
from bot.outbound import SendError, Sent, StatusUpdate
from bot.waits import waiting_on

WHATSAPP_PREFIX = "whatsapp:"
# Twilio allows at most 10 media items on MMS; WhatsApp sends one. More is not a real payload.
MAX_MEDIA = 10
# Longest text we keep: WhatsApp's 4,096-character limit (SMS bodies are at most 1,600).
MAX_TEXT = 4096
MAX_SID = 64


@dataclass(frozen=True)
class TwilioAdapter:
    """Input and output halves of the Twilio Messaging channel."""

    name: str = "twilio"

    def signature_is_valid(
        self,
        auth_token: str,
        url: str,
        params: Mapping[str, str],
        signature: str | None,
        settings_header: str | None = None,
    ) -> bool:
        """Check `X-Twilio-Signature` with Twilio's own `RequestValidator`.

        Args:
            auth_token: the account's Auth Token (or the SharedKey secret when Twilio sends
                `X-Twilio-Webhooks-Signature-Settings`).
            url: the exact URL Twilio requested: the configured public base URL, the path and
                the raw query string, as received (never Flask's decoded `request.url`).
            params: every POST parameter, blank ones included (a werkzeug MultiDict works).
            signature: the header's value; None or "" is invalid.
            settings_header: `X-Twilio-Webhooks-Signature-Settings`, which names the HMAC.

        Returns:
            True when the signature matches (with or without the default port in `url`).
        """
        if not signature:
            return False
        algorithm = get_signature_algorithm(settings_header)
        return bool(RequestValidator(auth_token).validate(url, params, signature, algorithm))

    def parse_inbound(
        self, form: Mapping[str, str], headers: Mapping[str, str] | None = None
    ) -> InboundMessage:
        """Normalise a "message comes in" webhook into an `InboundMessage`.

        Args:
            form: the POST parameters (`application/x-www-form-urlencoded`).
            headers: request headers, for `I-Twilio-Idempotency-Token`.

        Returns:
            The frozen `InboundMessage`; channel "whatsapp" when `From` has the `whatsapp:`
            prefix, else "sms".

        Raises:
            InvalidInbound: `MessageSid` or `From` is missing, or `NumMedia` is not a count.
            InvalidSender: `From` is not a phone number (and not a WhatsApp user id).
        """
        sid = _clean(form.get("MessageSid") or form.get("SmsMessageSid") or "").strip()
        if not sid or len(sid) > MAX_SID:
            raise InvalidInbound("MessageSid is missing or longer than 64 characters")
        raw_from = _clean(form.get("From") or "").strip()
        if not raw_from:
            raise InvalidInbound("From is missing")
        channel = "whatsapp" if raw_from.lower().startswith(WHATSAPP_PREFIX) else "sms"
        wa_id = _clean(form.get("WaId") or "").strip() or None
        sender = normalise_sender(raw_from, channel, wa_id)

        body = _clean(form.get("Body") or "")
        button_text = _clean(form.get("ButtonText") or "") or None
        button_payload = _clean(form.get("ButtonPayload") or "") or None
        text = body if body.strip() else (button_text or button_payload or "")

        headers = headers or {}
        opt_out = (form.get("OptOutType") or "").strip().upper() or None
        return InboundMessage(
            channel=channel,
            sender=sender,
            text=text.strip()[:MAX_TEXT],
            message_sid=sid,
            to=_clean(form.get("To") or "")[:MAX_SID],
            account_sid=_clean(form.get("AccountSid") or "") or None,
            media=_media(form),
            location=_location(form),
            wa_id=wa_id,
            button_payload=button_payload,
            opt_out_type=opt_out,
            idempotency_token=headers.get("I-Twilio-Idempotency-Token"),
        )

    def parse_status(self, form: Mapping[str, str]) -> StatusUpdate:
        """Normalise a delivery status callback (`MessageSid`, `MessageStatus`, `ErrorCode`).

        Raises:
            InvalidInbound: `MessageSid` or `MessageStatus` is missing, or `ErrorCode` is not
                a number.
        """
        sid = _clean(form.get("MessageSid") or form.get("SmsSid") or "").strip()
        if not sid or len(sid) > MAX_SID:
            raise InvalidInbound("MessageSid is missing or longer than 64 characters")
        status = _clean(form.get("MessageStatus") or form.get("SmsStatus") or "").strip().lower()
        if not status or len(status) > 32:
            raise InvalidInbound("MessageStatus is missing or too long")
        raw_code = (form.get("ErrorCode") or "").strip()
        if raw_code and not re.fullmatch(r"[0-9]{1,9}", raw_code):  # Twilio's are 5 digits
            raise InvalidInbound("ErrorCode is not a number of at most 9 digits")
        to = _clean(form.get("To") or "").strip() or None
        return StatusUpdate(message_sid=sid, status=status,
                            error_code=int(raw_code) if raw_code else None, to=to)

    def render_reply(self, texts: list[str]) -> str:
        """TwiML for the reply: one `<Message>` per text, or an empty `<Response/>`.

        Built with `MessagingResponse` only, so `&`, `<` and `>` in a text are escaped (LLM and
        recipe text contains them).
        """
        response = MessagingResponse()
        for text in texts:
            response.message(text)
        return str(response)


def normalise_sender(raw_from: str, channel: str, wa_id: str | None = None) -> str:
    """The identity of a sender: E.164 for a phone number, "wa:<id>" for a WhatsApp user id.

    Args:
        raw_from: Twilio's `From`, e.g. "+16505558893" or "whatsapp:+31612345678".
        channel: "sms" or "whatsapp".
        wa_id: Twilio's `WaId`, when present.

    Raises:
        InvalidSender: an SMS `From` that is not a possible phone number, or a WhatsApp `From`
            that is neither a phone number nor accompanied by a `WaId`.
    """
    address = raw_from[len(WHATSAPP_PREFIX):] if channel == "whatsapp" else raw_from
    e164 = to_e164(address)
    if e164 is not None:
        return e164
    if channel == "whatsapp" and (wa_id or address):
        ident = wa_id or address
        if ident.isprintable() and len(ident) <= 60:
            return f"wa:{ident}"
    raise InvalidSender("From is not a phone number in international (E.164) form")


def to_e164(value: str) -> str | None:
    """`value` as E.164 ("+15551234567") if it is a possible international number, else None."""
    if not value.startswith("+"):
        return None
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _clean(value: str) -> str:
    # PostgreSQL text cannot hold NUL; nothing a person writes needs it.
    return value.replace("\x00", "")


def _media(form: Mapping[str, str]) -> tuple[Media, ...]:
    raw = (form.get("NumMedia") or "0").strip()
    if not re.fullmatch(r"[0-9]{1,4}", raw):  # ASCII digits: str.isdigit accepts "²"
        raise InvalidInbound("NumMedia is not a whole number below 10000")
    count = min(int(raw), MAX_MEDIA)
    items = []
    for i in range(count):
        url = _clean(form.get(f"MediaUrl{i}") or "")
        if url:
            content_type = _clean(form.get(f"MediaContentType{i}") or "")
            items.append(Media(url=url, content_type=content_type))
    return tuple(items)


def _location(form: Mapping[str, str]) -> Location | None:
    lat = (form.get("Latitude") or "").strip()
    lon = (form.get("Longitude") or "").strip()
    if not lat or not lon:
        return None
    return Location(
        latitude=lat[:32],
        longitude=lon[:32],
        address=_clean(form.get("Address") or "") or None,
        label=_clean(form.get("Label") or "") or None,
    )


TWILIO = register(TwilioAdapter())


class BaseUrlHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """Twilio's HTTP client, sending every `*.twilio.com` request to `base_url` instead
    (`TWILIO_API_BASE`: a stand-in in tests, a proxy in some deployments)."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = urlsplit(base_url)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        if parts.hostname and parts.hostname.endswith("twilio.com"):
            url = urlunsplit(parts._replace(scheme=self.base.scheme, netloc=self.base.netloc))
        return super().request(method, url, *args, **kwargs)


class TwilioRestSender:
    """Sends messages through Twilio's Messages resource (`bot.outbound.Sender`).

    Args:
        account_sid, auth_token: the Twilio credentials.
        sms_from: the SMS sender number (E.164), or None with a Messaging Service.
        whatsapp_from: the WhatsApp sender number (E.164, without the prefix), or None.
        messaging_service_sid: `TWILIO_MESSAGING_SERVICE_SID`; used when no sender number is
            set for the channel.
        api_base: `TWILIO_API_BASE`, or None for Twilio's own hosts.
        timeout_seconds: the HTTP timeout (the library's default is none).
        pool_size: kept-alive connections to the API at most, about the sends in flight at
            once (a worker's `WORKER_CONCURRENCY`). requests keeps 10 by default: with more
            sends in flight, each connection beyond those is closed after its send (urllib3
            logs "Connection pool is full, discarding connection"), and the next send pays
            a TCP and TLS handshake again.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        sms_from: str | None = None,
        whatsapp_from: str | None = None,
        messaging_service_sid: str | None = None,
        api_base: str | None = None,
        timeout_seconds: float = 10.0,
        pool_size: int = 10,
    ) -> None:
        # The proxy (HTTPS_PROXY, NO_PROXY) and CA bundle (REQUESTS_CA_BUNDLE) settings of the
        # environment, read once: with requests' `trust_env` every send would read them again,
        # and ~/.netrc, which cost a quarter of a send's CPU.
        proxy = requests.utils.get_environ_proxies(api_base or "https://api.twilio.com")
        http_client: TwilioHttpClient
        if api_base:
            http_client = BaseUrlHttpClient(api_base, timeout=timeout_seconds, proxy=proxy)
        else:
            http_client = TwilioHttpClient(timeout=timeout_seconds, proxy=proxy)
        if http_client.session is not None:
            http_client.session.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                                          or os.environ.get("CURL_CA_BUNDLE") or True)
            http_client.session.trust_env = False
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=pool_size)
            for prefix in ("https://", "http://"):
                http_client.session.mount(prefix, adapter)
        self.client = Client(account_sid, auth_token, http_client=http_client)
        self.sms_from = sms_from
        self.whatsapp_from = whatsapp_from
        self.messaging_service_sid = messaging_service_sid

    def send(
        self,
        *,
        channel: str,
        to: str,
        body: str | None = None,
        content_sid: str | None = None,
        content_variables: str | None = None,
        status_callback: str | None = None,
    ) -> Sent:
        """Create one message. Raises `SendError` with Twilio's code and HTTP status."""
        params: dict[str, Any] = {"to": to}
        sender = self.sms_from if channel == "sms" else self.whatsapp_from
        if channel == "whatsapp":
            params["to"] = WHATSAPP_PREFIX + to
        if sender:
            sender = sender.removeprefix(WHATSAPP_PREFIX)  # either form is accepted
            params["from_"] = WHATSAPP_PREFIX + sender if channel == "whatsapp" else sender
        elif self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        else:
            raise SendError(f"no sender configured for {channel}")
        if content_sid:
            params["content_sid"] = content_sid
            if content_variables:
                params["content_variables"] = content_variables
        else:
            params["body"] = body or ""
        if status_callback:
            params["status_callback"] = status_callback
        try:
            with waiting_on("twilio"):
                message = self.client.messages.create(**params)
        except TwilioRestException as exc:
            raise SendError(f"Twilio error {exc.code}", code=exc.code,
                            http_status=exc.status) from None
        except requests.exceptions.ConnectTimeout:
            raise SendError("connect timeout", connect_failed=True) from None
        except requests.exceptions.Timeout:
            raise SendError("timeout after sending", timed_out=True) from None
        except requests.exceptions.ConnectionError as exc:
            if _never_connected(exc):
                raise SendError("connection failed", connect_failed=True) from None
            # Dropped after the request went out: Twilio may have the message.
            raise SendError("connection lost after sending", timed_out=True) from None
        return Sent(sid=str(message.sid), status=str(message.status or "queued"))


def _never_connected(exc: requests.exceptions.ConnectionError) -> bool:
    """True when the connection was refused or the name did not resolve: nothing was sent."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)
