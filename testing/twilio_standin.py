"""A local stand-in for the Twilio REST API's Messages resource, on a free loopback port.

It serves, like `https://api.twilio.com`:

* `POST /2010-04-01/Accounts/<AccountSid>/Messages.json` (form-encoded, HTTP Basic auth):
  records the request in `sent` and answers 201 with a Message resource as Twilio returns it;
* `GET /2010-04-01/Accounts/<AccountSid>/Messages/<MessageSid>.json`: the stored resource.

Errors use Twilio's body `{"code", "message", "more_info", "status"}`, which the `twilio`
library turns into `TwilioRestException(status=..., code=...)`. Tests steer it through
`fail_next()` and `delay_seconds`. Everything is thread-safe: each request has its own thread.

Pointing the real client at it: `twilio.rest.Client` builds absolute `https://api.twilio.com/...`
URLs and hands them to its `http_client.request(method, url, ...)`, so give the client a
`twilio.http.http_client.TwilioHttpClient` subclass whose `request()` swaps the scheme and host
of `*.twilio.com` URLs for `base_url` (tests/testing/test_standins.py has one). Setting
`client.api.base_url = base_url` also works, but only for `client.api` and only while no
edge/region (TWILIO_EDGE / TWILIO_REGION) is configured.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from werkzeug.wrappers import Request, Response

from testing.loopback import HOST as HOST
from testing.loopback import FailureQueue, LoopbackServer, json_response

API_VERSION = "2010-04-01"
MAX_BODY_CHARS = 1600
_MESSAGES = re.compile(rf"/{API_VERSION}/Accounts/(?P<account>[^/]+)/Messages\.json")
_MESSAGE = re.compile(rf"/{API_VERSION}/Accounts/(?P<account>[^/]+)/Messages/(?P<sid>[^/]+)\.json")

# Default messages of the error codes tests are likely to provoke.
ERROR_MESSAGES: dict[int, str] = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    20503: "Service unavailable",
    21211: "The 'To' number is not a valid phone number.",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the "
    "'To' number",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    30007: "Message filtered",
    63016: "Failed to send freeform message because you are outside the allowed window. "
    "If you are using WhatsApp, please use a Message Template.",
}

# GSM 03.38: the basic set costs one septet, the extension set two (escape + character).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")


def error_body(status: int, code: int, message: str | None = None) -> dict[str, Any]:
    """Twilio's error body: `{"code", "message", "more_info", "status"}`."""
    return {
        "code": code,
        "message": message if message is not None else ERROR_MESSAGES.get(code, f"Error {code}"),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def num_segments(body: str, to: str = "") -> int:
    """How many SMS segments `body` takes: GSM-7 160/153 septets, else UCS-2 70/67 units.

    WhatsApp messages (`to` starting with "whatsapp:") are always one segment.
    """
    if to.startswith("whatsapp:") or not body:
        return 1
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENDED for char in body):
        units = sum(2 if char in _GSM7_EXTENDED else 1 for char in body)
        single, part = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, part = 70, 67
    return 1 if units <= single else math.ceil(units / part)


def new_sid(prefix: str) -> str:
    """A Twilio-style SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


@dataclass
class _Failure:
    status: int
    code: int
    message: str | None


class TwilioStandIn(LoopbackServer):
    """A threaded loopback server answering the Messages resource like Twilio does.

    Use as a context manager (or call `start()` / `stop()`); `base_url` is valid once started.

    Args:
        account_sid, auth_token: if given, the Basic credentials must match them (else any
            non-empty credentials are accepted); wrong or missing ones get 401 / code 20003.
        delay_seconds: sleep this long before answering any request (to provoke read timeouts).
    """

    # base_url is `http://127.0.0.1:PORT`: what replaces `https://api.twilio.com`.
    thread_name = "twilio-standin"

    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        delay_seconds: float = 0.0,
    ) -> None:
        super().__init__(delay_seconds)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self._failures: FailureQueue[_Failure] = FailureQueue()
        self._sent: list[dict[str, Any]] = []
        self._messages: dict[str, dict[str, Any]] = {}

    # -- controls --------------------------------------------------------------------------

    def fail_next(self, status: int, code: int, message: str | None = None, times: int = 1) -> None:
        """Answer the next `times` authenticated message creations with a Twilio error.

        E.g. `(429, 20429)`, `(400, 21610)` unsubscribed recipient, `(400, 63016)` WhatsApp
        freeform outside the 24-hour window, `(500, 20500)`. `message` defaults to Twilio's
        text for `code` (see `ERROR_MESSAGES`).
        """
        self._failures.push(_Failure(status, code, message), times)

    @property
    def sent(self) -> list[dict[str, Any]]:
        """A snapshot of every authenticated `Messages.json` POST, oldest first.

        Each is `{"account_sid": ..., <form fields: "To", "From", "Body", ...>, "sid": the new
        Message SID or None if the request was answered with an error, "response_status": int}`.
        Repeated fields (`MediaUrl`) are lists; every other field is a string.
        """
        with self._lock:
            return [dict(entry) for entry in self._sent]

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """The entries of `sent` that created a message (answered 201)."""
        return [entry for entry in self.sent if entry["sid"] is not None]

    @property
    def messages(self) -> dict[str, dict[str, Any]]:
        """A snapshot of the Message resources created, by SID."""
        with self._lock:
            return {sid: dict(resource) for sid, resource in self._messages.items()}

    def reset(self) -> None:
        """Forget sent messages and pending failures; no delay."""
        self._supersede_delayed()
        self._failures.clear()
        with self._lock:
            self._delay_seconds = 0.0
            self._sent.clear()
            self._messages.clear()

    # -- the server ------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        self._pause()

        create = _MESSAGES.fullmatch(request.path)
        fetch = _MESSAGE.fullmatch(request.path)
        if request.method == "POST" and create:
            route = "create"
            account_sid = create["account"]
        elif request.method == "GET" and fetch:
            route = "fetch"
            account_sid = fetch["account"]
        else:
            message = f"The requested resource {request.path} was not found"
            return _json(404, error_body(404, 20404, message))

        auth = request.authorization
        if (
            auth is None
            or auth.type != "basic"
            or not auth.username
            or not auth.password
            or (self.account_sid is not None and auth.username != self.account_sid)
            or (self.auth_token is not None and auth.password != self.auth_token)
        ):
            body = error_body(401, 20003)
            body["detail"] = "Your AccountSid or AuthToken was incorrect."
            response = _json(401, body)
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return response

        if route == "fetch":
            assert fetch is not None
            with self._lock:
                resource = self._messages.get(fetch["sid"])
            if resource is None or resource["account_sid"] != account_sid:
                message = f"The requested resource {request.path} was not found"
                return _json(404, error_body(404, 20404, message))
            return _json(200, resource)
        return self._create(account_sid, request)

    def _create(self, account_sid: str, request: Request) -> Response:
        fields: dict[str, Any] = {}
        for name in request.form:
            values = request.form.getlist(name)
            fields[name] = values if name == "MediaUrl" else values[0]
        entry: dict[str, Any] = {"account_sid": account_sid, **fields}

        failure = self._failures.take()
        error: dict[str, Any] | None
        if failure is not None:
            error = error_body(failure.status, failure.code, failure.message)
        else:
            error = _validate(fields)
        if error is not None:
            entry.update(sid=None, response_status=error["status"])
            with self._lock:
                self._sent.append(entry)
            return _json(error["status"], error)

        resource = _message_resource(account_sid, fields)
        entry.update(sid=resource["sid"], response_status=201)
        with self._lock:
            self._sent.append(entry)
            self._messages[resource["sid"]] = resource
        return _json(201, resource)


def _validate(fields: dict[str, Any]) -> dict[str, Any] | None:
    """Twilio's checks on a new message, as an error body, or None if it is acceptable."""
    if not fields.get("To"):
        return error_body(400, 21604)
    if not fields.get("From") and not fields.get("MessagingServiceSid"):
        return error_body(400, 21603)
    if not fields.get("Body") and not fields.get("MediaUrl") and not fields.get("ContentSid"):
        return error_body(400, 21602)
    if len(fields.get("Body", "")) > MAX_BODY_CHARS:
        return error_body(400, 21617)
    return None


def _message_resource(account_sid: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A new outbound Message resource as Twilio's create call returns it."""
    sid = new_sid("SM")
    now = format_datetime(datetime.now(UTC).replace(microsecond=0))
    body: str = fields.get("Body", "")
    to: str = fields["To"]
    sender: str | None = fields.get("From") or None
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}"
    return {
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": body,
        "date_created": now,
        "date_sent": None,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": sender,
        "messaging_service_sid": fields.get("MessagingServiceSid") or None,
        "num_media": str(len(fields.get("MediaUrl", []))),
        "num_segments": str(num_segments(body, to)),
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        # Twilio answers "accepted" when a Messaging Service still has to pick the sender.
        "status": "queued" if sender else "accepted",
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": to,
        "uri": f"{uri}.json",
    }


def _json(status: int, payload: dict[str, Any]) -> Response:
    """`json_response` with Twilio's request-id header."""
    return json_response(status, payload, {"Twilio-Request-Id": new_sid("RQ")})
