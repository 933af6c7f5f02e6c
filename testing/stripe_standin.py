"""A local stand-in for the parts of the Stripe API the app uses, on a free loopback port.

The real `stripe` client talks to it unchanged::

    with StripeStandIn() as standin:
        client = stripe.StripeClient(
            "sk_test_x", base_addresses={"api": standin.base_url}, max_network_retries=2
        )
        session = client.v1.checkout.sessions.create(params={...})

`base_url` is `http://127.0.0.1:PORT`, with no trailing slash: stripe-python builds the request
URL as `base_addresses["api"] + "/v1/..."` by plain concatenation (its own defaults, like
`https://api.stripe.com`, never end in "/"), so a trailing slash sends the path `//v1/...`.
This stand-in answers that 404 with a hint (Python's `http.server` would quietly collapse it
to `/v1/...`, so it reads the raw request line).

It serves, like `https://api.stripe.com` (form-encoded bodies in Stripe's bracket notation,
`Authorization: Bearer <secret key>` or Basic with the key as user name):

* `POST /v1/checkout/sessions`: a Checkout Session object (see `checkout_session`), with
  Stripe's checks on line items and mode, and Stripe's idempotency (below);
* `GET /v1/checkout/sessions/<id>`: a session created here (tests may edit `sessions[id]`);
* `POST /v1/billing_portal/sessions`: a `billing_portal.session` object;
* `GET /v1/subscriptions/<id>`, `GET /v1/charges/<id>`: the dicts a test put in
  `subscriptions[id]` / `charges[id]`, else 404 `resource_missing`;
* `GET /v1/invoices/<id>`: the dict a test put in `invoices[id]`, whose `payments` (an
  `invoice_payment` list) is left out unless the request expands it (`expand[]=payments`),
  as Stripe includes it only when expanded; else 404 `resource_missing`;
* `POST /v1/customers`, `GET /v1/customers/<id>`: customers;
* saved cards: a checkout session created with `payment_intent_data[setup_future_usage]`
  keeps it (and `customer_creation`); `complete_session(id, card=...)` pays it as the
  person would: a customer (created when none), a succeeded payment intent carrying the
  session's `payment_intent_data` metadata and `setup_future_usage`, and its payment method,
  attached to the customer when the card is saved (`payment_methods[id]`);
* `POST /v1/payment_intents`, `GET /v1/payment_intents/<id>`: a payment intent; with
  `confirm=true` (and `off_session=true`) its saved card is charged at once, answering as
  Stripe does by the card's behaviour (`TEST_CARDS`: "pm_card_visa" succeeds,
  "pm_card_chargeDeclined" 402 `card_declined`, "pm_card_chargeDeclinedInsufficientFunds"
  402 `card_declined` / `insufficient_funds`, "pm_card_authenticationRequired" 402
  `authentication_required`); a 402 names the payment intent (status
  `requires_payment_method`) in `error.payment_intent`. `event_for(obj, type)` builds the
  webhook event of an object (e.g. `payment_intent.succeeded`).

Idempotency: every POST's `Idempotency-Key` (stripe-python sends one on each POST, reusing it
for its retries) is remembered with the endpoint, the parameters and the answer (a success,
or a card error of a payment intent that was created: Stripe keeps the result of any request
whose execution began, so retrying a declined payment with its key answers the same decline
and charges nothing). The same key
again with the same parameters replays the answer (same object, header `Idempotent-Replayed:
true`) and creates nothing; with other parameters or on another endpoint it gets 400
`idempotency_error`. As on Stripe, keys are scoped to the API key and requests that fail
validation are not remembered; neither are failures queued by `fail_next()`, which stand for
errors raised before the endpoint ran, so a client retry with the same key goes through.

Errors have Stripe's body `{"error": {"type", "message", "code"?, "param"?, ...}}`, which
stripe-python maps by status: 400/404 `InvalidRequestError` (or `IdempotencyError` for type
`idempotency_error`), 401 `AuthenticationError`, 402 `CardError`, 403 `PermissionError`,
429 `RateLimitError`, other statuses `APIError`. It retries 409 and 5xx answers
(`max_network_retries` times, sleeping 0.5 s or more between tries) unless the answer carries
`Stripe-Should-Retry: false`.

Every request is recorded in `requests`. Everything is thread-safe: each request has its own
thread, and the routes run one at a time under `_lock`.

`sign_event()` computes a webhook's `Stripe-Signature` header; `stripe_event_bytes()` reads the
webhook bodies under `testing/fixtures/stripe/`.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request, Response

from testing.loopback import HOST as HOST
from testing.loopback import FailureQueue, LoopbackServer, QuietHandler, json_response
from testing.payloads import FIXTURES

API_PREFIX = "/v1"
CHECKOUT_SESSIONS = f"{API_PREFIX}/checkout/sessions"
BILLING_PORTAL_SESSIONS = f"{API_PREFIX}/billing_portal/sessions"
SUBSCRIPTIONS = f"{API_PREFIX}/subscriptions"
CHARGES = f"{API_PREFIX}/charges"
INVOICES = f"{API_PREFIX}/invoices"
CUSTOMERS = f"{API_PREFIX}/customers"
PAYMENT_INTENTS = f"{API_PREFIX}/payment_intents"
# Stripe's test payment methods and what an off-session charge of each does: None succeeds,
# else (error code, decline code) of the 402 card error.
TEST_CARDS: dict[str, tuple[str, str] | None] = {
    "pm_card_visa": None,
    "pm_card_chargeDeclined": ("card_declined", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": ("card_declined", "insufficient_funds"),
    "pm_card_authenticationRequired": ("authentication_required", "authentication_required"),
}
# Answered in `Stripe-Version` when the request names none (stripe-python always does).
DEFAULT_API_VERSION = "2025-08-27.basil"
SESSION_LIFETIME_SECONDS = 24 * 60 * 60
SIGNATURE_TOLERANCE_SECONDS = 300
STRIPE_FIXTURES = FIXTURES / "stripe"

_ID_ALPHABET = string.ascii_letters + string.digits
_SESSION = re.compile(rf"{CHECKOUT_SESSIONS}/(?P<id>[^/]+)")
_SUBSCRIPTION = re.compile(rf"{SUBSCRIPTIONS}/(?P<id>[^/]+)")
_CHARGE = re.compile(rf"{CHARGES}/(?P<id>[^/]+)")
_INVOICE = re.compile(rf"{INVOICES}/(?P<id>[^/]+)")
_CUSTOMER = re.compile(rf"{CUSTOMERS}/(?P<id>[^/]+)")
_PAYMENT_INTENT = re.compile(rf"{PAYMENT_INTENTS}/(?P<id>[^/]+)")
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_MODES = ("payment", "setup", "subscription")
REQUEST_LINE = "stripe_standin.request_line"

# Default messages of the errors queued by `fail_next()`, by HTTP status.
DEFAULT_MESSAGES: dict[int, str] = {
    400: "Invalid request.",
    401: "Invalid API Key provided: sk_test_****",
    402: "Your card was declined.",
    403: "The provided key does not have the required permissions for this endpoint.",
    404: "Unrecognized request URL.",
    409: "There is currently another in-progress request using this Idempotent Key (that "
    "probably means you submitted twice, and the other request is still going through).",
    429: "Request rate limit exceeded. Learn more about rate limits here "
    "https://stripe.com/docs/rate-limits.",
    500: "An unknown error occurred",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

NO_API_KEY_MESSAGE = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)


# -- helpers tests can use directly ----------------------------------------------------------


def new_id(prefix: str, length: int = 24) -> str:
    """A Stripe-style object id: `prefix` and `length` random letters and digits."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def error_body(
    error_type: str,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    decline_code: str | None = None,
) -> dict[str, Any]:
    """Stripe's error body: `{"error": {"type", "message", "code"?, "param"?, ...}}`."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if code is not None:
        error["code"] = code
        error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param is not None:
        error["param"] = param
    if decline_code is not None:
        error["decline_code"] = decline_code
    return {"error": error}


def unflatten(fields: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Nest form fields in Stripe's bracket notation: `a[b][0][c]=v` -> `{"a": {"b": [{"c": v}]}}`.

    Objects whose keys are all indexes (`[0]`, `[1]`, or `[]`) become lists in index order,
    except `metadata` (whose keys are the caller's). A repeated field keeps its last value.
    """
    root: dict[str, Any] = {}
    for name, value in fields:
        head, _, tail = name.partition("[")
        keys = [head, *_BRACKETS.findall("[" + tail)] if tail else [head]
        node = root
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        last = keys[-1] if keys[-1] != "" else str(len(node))
        node[last] = value
    return _listify(root)


def _listify(node: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            value = _listify(value)
            if key != "metadata" and value and all(k.isdigit() for k in value):
                value = [value[k] for k in sorted(value, key=int)]
        result[key] = value
    return result


def sign_event(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe would send with webhook body `payload`.

    `t=<unix time>,v1=<hex HMAC-SHA256(key=secret, msg=f"{t}.{payload}")>`, with `t` = now
    unless `timestamp` is given (pass one over 300 s old to get a stale signature).
    """
    body = payload.encode("utf-8") if isinstance(payload, str) else payload
    t = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode("utf-8"), f"{t}.".encode() + body, hashlib.sha256)
    return f"t={t},v1={digest.hexdigest()}"


def stripe_event_bytes(relative_path: str) -> bytes:
    """The raw bytes of `testing/fixtures/stripe/<relative_path>`.

    E.g. `stripe_event_bytes("pay_rails/charge.refunded.json")`: sign and post these bytes as
    they are (`testing.payloads.load_fixture` gives a fixture parsed).
    """
    return (STRIPE_FIXTURES / relative_path).read_bytes()


# -- the stand-in ----------------------------------------------------------------------------


@dataclass
class _Failure:
    status: int
    error_type: str
    message: str | None
    code: str | None
    decline_code: str | None
    should_retry: bool | None


@dataclass
class _Remembered:
    """What Stripe keeps for an idempotency key: the endpoint, the parameters, the answer."""

    endpoint: str
    fingerprint: tuple[tuple[str, str], ...]
    status: int
    body: dict[str, Any]
    request_id: str


class _RequestLineHandler(QuietHandler):
    """`QuietHandler` that also passes the raw request line on, in `environ[REQUEST_LINE]`.

    Python's `http.server` turns a request target `//v1/x` into `/v1/x` before werkzeug sees
    it; the request line still has it as sent.
    """

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ[REQUEST_LINE] = self.requestline
        return environ


class _StripeError(Exception):
    """Raised by a route to answer with a Stripe error; `remember`: the request had begun
    (a payment intent was created), so its idempotency key keeps this answer."""

    def __init__(self, status: int, body: dict[str, Any], *, remember: bool = False) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body
        self.remember = remember


class StripeStandIn(LoopbackServer):
    """A threaded loopback server answering a few Stripe API endpoints like Stripe does.

    Use as a context manager (or call `start()` / `stop()`); `base_url` is valid once started
    and is what `stripe.StripeClient(..., base_addresses={"api": base_url})` needs.

    Args:
        api_key: if given, requests must authenticate with exactly this key; otherwise any
            non-empty key is accepted. A missing or wrong key gets 401.
        delay_seconds: sleep this long before answering any request (to provoke timeouts).

    Test-controlled state (plain dicts, read by the server; edit them from the test):
        subscriptions: `id -> subscription dict` served by `GET /v1/subscriptions/<id>`.
        charges: `id -> charge dict` served by `GET /v1/charges/<id>`.
        invoices: `id -> invoice dict` served by `GET /v1/invoices/<id>` (its `payments`
            only when expanded; `invoice_payment()` builds one entry).
        prices: `id -> price dict` (`unit_amount`, `currency`, optional `recurring`) for
            Checkout line items that name a `price` instead of `price_data`; an unknown
            price id gets 400 `resource_missing`, as on Stripe.
        sessions: `id -> checkout.session dict` created here, served by
            `GET /v1/checkout/sessions/<id>` (edit one to e.g. mark it paid;
            `complete_session` pays it).
        portal_sessions: `id -> billing_portal.session dict` created here.
        customers: `id -> customer dict` created here (or put by a test).
        payment_methods: `id -> payment_method dict` (its `customer` when attached, and
            `standin_card`: the `TEST_CARDS` behaviour of its charges).
        payment_intents: `id -> payment_intent dict` created here.
    """

    # base_url is `http://127.0.0.1:PORT` (no trailing slash): what replaces
    # `https://api.stripe.com`.
    thread_name = "stripe-standin"

    def __init__(self, api_key: str | None = None, delay_seconds: float = 0.0) -> None:
        super().__init__(delay_seconds)
        self.api_key = api_key
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.prices: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.portal_sessions: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, dict[str, Any]] = {}
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self._failures: FailureQueue[_Failure] = FailureQueue()
        self._requests: list[dict[str, Any]] = []
        self._idempotency: dict[tuple[str, str], _Remembered] = {}

    def start(self) -> Self:
        """Bind a free loopback port and serve on a daemon thread (see `LoopbackServer`)."""
        super().start()
        # Before any request can arrive: see the request line, to catch `//v1/...` paths.
        assert self._server is not None
        self._server.RequestHandlerClass = _RequestLineHandler
        return self

    # -- controls --------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        error_type: str = "api_error",
        message: str | None = None,
        times: int = 1,
        *,
        code: str | None = None,
        decline_code: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        """Answer the next `times` authenticated requests (any route) with a Stripe error.

        E.g. `fail_next(500)`, `fail_next(402, "card_error", code="card_declined",
        decline_code="insufficient_funds")`, `fail_next(429, "invalid_request_error",
        code="rate_limit")`. `message` defaults to a Stripe-like text for `status` (see
        `DEFAULT_MESSAGES`). `should_retry` sets the `Stripe-Should-Retry` header, which
        overrides stripe-python's own retry decision. These failures are not remembered
        under the request's idempotency key.
        """
        self._failures.push(
            _Failure(status, error_type, message, code, decline_code, should_retry), times
        )

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of every request received, oldest first.

        Each is a dict with `method`, `path`, `form` (the body's fields as sent: bracket keys
        kept, e.g. `"line_items[0][price_data][unit_amount]": "500"`; a repeated field is a
        list), `query` (the same for the query string), `params` (`form` or `query` nested by
        `unflatten`), `idempotency_key` and `stripe_version` (the headers, or None),
        `headers` (all request headers), `status` (the HTTP status answered), `replayed`
        (True if answered from the idempotency store) and `object_id` (the id of the object
        answered, else None).
        """
        with self._lock:
            return [dict(entry) for entry in self._requests]

    def requests_to(self, path: str, method: str = "POST") -> list[dict[str, Any]]:
        """The entries of `requests` for `method` and `path`, e.g. `CHECKOUT_SESSIONS`."""
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def reset(self) -> None:
        """Forget requests, created and registered objects, idempotency keys, pending failures;
        no delay. The dicts are cleared in place, so references to them stay valid."""
        self._supersede_delayed()
        self._failures.clear()
        with self._lock:
            self._delay_seconds = 0.0
            self._requests.clear()
            self._idempotency.clear()
            for store in (
                self.subscriptions,
                self.charges,
                self.invoices,
                self.prices,
                self.sessions,
                self.portal_sessions,
                self.customers,
                self.payment_methods,
                self.payment_intents,
            ):
                store.clear()

    def complete_session(self, session_id: str, card: str = "pm_card_visa") -> dict[str, Any]:
        """Pay the payment-mode session `session_id` as the person would on Stripe's page,
        with the test card `card` (a `TEST_CARDS` name): a customer (the session's, else a new
        one when `customer_creation` is "always" or the card is saved), a new payment method
        behaving as `card`, attached to the customer when the session saves the card
        (`setup_future_usage`), and a succeeded payment intent with the session's
        `payment_intent_data` metadata. The session becomes complete and paid.

        Returns:
            The payment intent (a copy); `event_for(session, "checkout.session.completed")`
            and `event_for(intent, "payment_intent.succeeded")` are its webhooks.
        """
        if card not in TEST_CARDS:
            raise ValueError(f"unknown test card {card!r}: one of {sorted(TEST_CARDS)}")
        with self._lock:
            session = self.sessions[session_id]
            saves = session.get("standin_setup_future_usage")
            customer = session.get("customer")
            if customer is None and (saves or session.get("customer_creation") == "always"):
                customer = self._new_customer({})["id"]
            method = self._new_payment_method(card, customer if saves else None)
            intent = self._new_intent({
                "amount": session["amount_total"], "currency": session["currency"],
                "customer": customer, "payment_method": method["id"],
                "metadata": session.get("standin_intent_metadata") or {},
                "setup_future_usage": saves,
            }, status="succeeded")
            session.update(status="complete", payment_status="paid", customer=customer,
                           payment_intent=intent["id"])
            return copy.deepcopy(intent)

    def saved_card(self, customer: str | None = None, card: str = "pm_card_visa") -> str:
        """A payment method behaving as test card `card`, attached to `customer` (a new
        customer when None): as a completed checkout that saved the card leaves it. Returns
        the payment method's id; its `customer` is in `payment_methods[id]`."""
        if card not in TEST_CARDS:
            raise ValueError(f"unknown test card {card!r}: one of {sorted(TEST_CARDS)}")
        with self._lock:
            customer = customer or self._new_customer({})["id"]
            return str(self._new_payment_method(card, customer)["id"])

    # -- the server ------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        self._pause()
        request_id = new_id("req_", 14)
        form = request.form if request.method == "POST" else MultiDict()
        entry: dict[str, Any] = {
            "method": request.method,
            "path": _raw_path(request),
            "form": _fields(form),
            "query": _fields(request.args),
            "params": unflatten((form or request.args).items(multi=True)),
            "idempotency_key": request.headers.get("Idempotency-Key"),
            "stripe_version": request.headers.get("Stripe-Version"),
            "headers": dict(request.headers.items()),
            "status": None,
            "replayed": False,
            "object_id": None,
        }
        headers = {
            "Request-Id": request_id,
            "Stripe-Version": entry["stripe_version"] or DEFAULT_API_VERSION,
        }
        if request.method == "POST" and entry["idempotency_key"]:
            headers["Idempotency-Key"] = entry["idempotency_key"]

        status, body = self._answer(request, entry, headers, request_id)
        entry["status"] = status
        if status < 300:
            entry["object_id"] = body.get("id")
        with self._lock:
            self._requests.append(entry)
        return json_response(status, body, headers)

    def _answer(
        self,
        request: Request,
        entry: dict[str, Any],
        headers: dict[str, str],
        request_id: str,
    ) -> tuple[int, dict[str, Any]]:
        """The status and body for `request`; adds response headers to `headers`."""
        key = _api_key(request)
        if not key:
            headers["WWW-Authenticate"] = 'Basic realm="Stripe"'
            return 401, error_body("invalid_request_error", NO_API_KEY_MESSAGE)
        if self.api_key is not None and key != self.api_key:
            headers["WWW-Authenticate"] = 'Basic realm="Stripe"'
            message = f"Invalid API Key provided: {_redact(key)}"
            return 401, error_body("invalid_request_error", message, code="api_key_invalid")

        path: str = entry["path"]
        route = self._route(request.method, path)
        if route is None:
            message = (
                f"Unrecognized request URL ({request.method}: {path}). Please see "
                "https://stripe.com/docs or we can help at https://support.stripe.com/."
            )
            if path.startswith("//"):
                message += " (Hint: base_addresses['api'] must not end with '/'.)"
            return 404, error_body("invalid_request_error", message)

        failure = self._failures.take()
        if failure is not None:
            if failure.should_retry is not None:
                headers["Stripe-Should-Retry"] = "true" if failure.should_retry else "false"
            code, decline_code = failure.code, failure.decline_code
            if failure.error_type == "card_error" and code is None:
                code, decline_code = "card_declined", decline_code or "generic_decline"
            message = failure.message or DEFAULT_MESSAGES.get(failure.status, "An error occurred")
            return failure.status, error_body(
                failure.error_type, message, code=code, decline_code=decline_code
            )

        params: dict[str, Any] = entry["params"]
        idempotency_key: str | None = entry["idempotency_key"]
        with self._lock:
            if request.method != "POST" or not idempotency_key:
                return self._run(route, params)
            endpoint = f"{request.method} {path}"
            fingerprint = tuple(sorted(request.form.items(multi=True)))
            store_key = (key, idempotency_key)
            remembered = self._idempotency.get(store_key)
            if remembered is None:
                status, body, begun = self._run3(route, params)
                if status < 300 or begun:
                    # A copy: a replay answers what was first answered, as Stripe does, even
                    # if the test has since edited `sessions[id]`.
                    self._idempotency[store_key] = _Remembered(
                        endpoint, fingerprint, status, copy.deepcopy(body), request_id
                    )
                return status, body
        if remembered.endpoint != endpoint:
            message = (
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{remembered.endpoint}' vs '{endpoint}'). Try using a key "
                f"other than '{idempotency_key}' if you meant to execute a different request."
            )
            return 400, error_body("idempotency_error", message)
        if remembered.fingerprint != fingerprint:
            message = (
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{idempotency_key}' if you "
                "meant to execute a different request."
            )
            return 400, error_body("idempotency_error", message)
        entry["replayed"] = True
        headers["Idempotent-Replayed"] = "true"
        headers["Original-Request"] = remembered.request_id
        return remembered.status, remembered.body

    def _route(
        self, method: str, path: str
    ) -> Callable[[dict[str, Any]], tuple[int, dict[str, Any]]] | None:
        """The handler for `method path`, taking the nested params, or None if unknown."""
        if method == "POST" and path == CHECKOUT_SESSIONS:
            return self._create_checkout_session
        if method == "POST" and path == BILLING_PORTAL_SESSIONS:
            return self._create_portal_session
        if method == "POST" and path == CUSTOMERS:
            return lambda params: (200, self._new_customer(params))
        if method == "POST" and path == PAYMENT_INTENTS:
            return self._create_payment_intent
        if method != "GET":
            return None
        invoice = _INVOICE.fullmatch(path)
        if invoice:
            invoice_id = invoice["id"]
            return lambda params: self._retrieve_invoice(invoice_id, params)
        for pattern, store, noun in (
            (_SESSION, self.sessions, "checkout.session"),
            (_SUBSCRIPTION, self.subscriptions, "subscription"),
            (_CHARGE, self.charges, "charge"),
            (_CUSTOMER, self.customers, "customer"),
            (_PAYMENT_INTENT, self.payment_intents, "payment_intent"),
        ):
            match = pattern.fullmatch(path)
            if match:
                object_id = match["id"]
                return lambda _params: _retrieve(store, object_id, noun)
        return None

    @classmethod
    def _run(
        cls, route: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]],
        params: dict[str, Any],
    ) -> tuple[int, dict[str, Any]]:
        status, body, _begun = cls._run3(route, params)
        return status, body

    @staticmethod
    def _run3(
        route: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any], bool]:
        """(status, body, whether a failure is kept under the idempotency key)."""
        try:
            status, body = route(params)
            return status, body, False
        except _StripeError as error:
            return error.status, error.body, error.remember

    # -- routes (called under _lock) -------------------------------------------------------

    def _create_checkout_session(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        session = checkout_session(params, self.prices)
        intent_data = params.get("payment_intent_data")
        intent_data = intent_data if isinstance(intent_data, dict) else {}
        usage = intent_data.get("setup_future_usage")
        if usage is not None and usage not in ("off_session", "on_session"):
            message = "Invalid setup_future_usage: must be one of off_session, on_session"
            raise _StripeError(400, error_body(
                "invalid_request_error", message,
                param="payment_intent_data[setup_future_usage]"))
        if params.get("customer_creation") is not None:
            if session["mode"] != "payment" or params["customer_creation"] not in (
                    "always", "if_required"):
                message = "`customer_creation` can only be used in `payment` mode."
                raise _StripeError(400, error_body("invalid_request_error", message,
                                                   param="customer_creation"))
            session["customer_creation"] = params["customer_creation"]
        metadata = intent_data.get("metadata")
        # Kept for `complete_session` (Stripe does not show them on the session object).
        session["standin_setup_future_usage"] = usage
        session["standin_intent_metadata"] = dict(metadata) if isinstance(metadata, dict) else {}
        self.sessions[session["id"]] = session
        return 200, _public(session)

    def _new_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        metadata = params.get("metadata")
        customer = {"id": new_id("cus_", 14), "object": "customer", "created": int(time.time()),
                    "email": params.get("email"), "livemode": False,
                    "metadata": dict(metadata) if isinstance(metadata, dict) else {}}
        self.customers[customer["id"]] = customer
        return customer

    def _new_payment_method(self, card: str, customer: str | None) -> dict[str, Any]:
        last4 = {"pm_card_visa": "4242", "pm_card_chargeDeclined": "0002",
                 "pm_card_chargeDeclinedInsufficientFunds": "9995",
                 "pm_card_authenticationRequired": "3184"}[card]
        method = {"id": new_id("pm_"), "object": "payment_method", "type": "card",
                  "created": int(time.time()), "customer": customer, "livemode": False,
                  "card": {"brand": "visa", "last4": last4, "exp_month": 12, "exp_year": 2034},
                  "standin_card": card}
        self.payment_methods[method["id"]] = method
        return method

    def _new_intent(self, fields: dict[str, Any], status: str) -> dict[str, Any]:
        intent_id = new_id("pi_")
        charge_id = new_id("ch_") if status == "succeeded" else None
        amount = int(fields["amount"])
        intent = {
            "id": intent_id, "object": "payment_intent", "amount": amount,
            "amount_received": amount if status == "succeeded" else 0,
            "capture_method": "automatic", "confirmation_method": "automatic",
            "created": int(time.time()), "currency": str(fields["currency"]).lower(),
            "customer": fields.get("customer"), "description": fields.get("description"),
            "last_payment_error": None, "latest_charge": charge_id, "livemode": False,
            "metadata": dict(fields.get("metadata") or {}),
            "payment_method": fields.get("payment_method"),
            "payment_method_types": ["card"], "setup_future_usage": fields.get(
                "setup_future_usage"), "status": status,
        }
        self.payment_intents[intent_id] = intent
        if charge_id is not None:
            self.charges[charge_id] = {
                "object": "charge", "amount": amount, "amount_refunded": 0,
                "currency": intent["currency"], "customer": intent["customer"],
                "paid": True, "payment_intent": intent_id, "refunded": False,
                "status": "succeeded"}
        return intent

    def _create_payment_intent(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """`POST /v1/payment_intents`: checked as Stripe checks it; with `confirm=true` the
        card is charged at once (`TEST_CARDS`), a failure answered 402 with the payment
        intent in the error (and kept under the idempotency key)."""
        if params.get("amount") is None:
            raise _missing("amount")
        amount = _integer(params["amount"], "amount")
        if amount < 50:
            raise _StripeError(400, error_body(
                "invalid_request_error", "Amount must be at least $0.50 usd",
                code="amount_too_small", param="amount"))
        if not params.get("currency"):
            raise _missing("currency")
        confirm = params.get("confirm") == "true"
        off_session = params.get("off_session") == "true"
        if off_session and not confirm:
            message = "You may only specify `off_session` when `confirm` is true."
            raise _StripeError(400, error_body("invalid_request_error", message,
                                               param="off_session"))
        method_id, customer = params.get("payment_method"), params.get("customer")
        method = self.payment_methods.get(method_id) if method_id else None
        if method_id and method is None:
            raise _StripeError(400, error_body(
                "invalid_request_error", f"No such PaymentMethod: '{method_id}'",
                code="resource_missing", param="payment_method"))
        if customer and customer not in self.customers:
            raise _StripeError(400, error_body(
                "invalid_request_error", f"No such customer: '{customer}'",
                code="resource_missing", param="customer"))
        if method is not None and method.get("customer") != customer:
            message = ("The provided PaymentMethod was previously used with a PaymentIntent "
                       "without Customer attachment, shared with a connected account without "
                       "Customer attachment, or was detached from a Customer. It may not be "
                       "used again. To use a PaymentMethod multiple times, you must attach "
                       "it to a Customer first.")
            raise _StripeError(400, error_body("invalid_request_error", message,
                                               param="payment_method"))
        if confirm and method is None:
            message = ("You cannot confirm this PaymentIntent because it's missing a payment "
                       "method.")
            raise _StripeError(400, error_body(
                "invalid_request_error", message, code="payment_intent_unexpected_state"))
        fields = {"amount": amount, "currency": params["currency"], "customer": customer,
                  "payment_method": method_id, "metadata": params.get("metadata"),
                  "description": params.get("description"),
                  "setup_future_usage": params.get("setup_future_usage")}
        if not confirm:
            return 200, copy.deepcopy(self._new_intent(fields, "requires_confirmation"))
        assert method is not None
        failure = TEST_CARDS[method["standin_card"]]
        if failure is None:
            return 200, copy.deepcopy(self._new_intent(fields, "succeeded"))
        code, decline_code = failure
        intent = self._new_intent(fields, "requires_payment_method")
        message = ("Your card was declined." if code == "card_declined" else
                   "Your card was declined. This transaction requires authentication.")
        body = error_body("card_error", message, code=code, decline_code=decline_code)
        body["error"]["payment_method"] = {"id": method_id, "object": "payment_method"}
        intent["last_payment_error"] = copy.deepcopy(body["error"])
        body["error"]["payment_intent"] = copy.deepcopy(intent)
        raise _StripeError(402, body, remember=True)

    def _retrieve_invoice(self, invoice_id: str, params: dict[str, Any]
                          ) -> tuple[int, dict[str, Any]]:
        status, body = _retrieve(self.invoices, invoice_id, "invoice")
        expand = params.get("expand") or []
        if status == 200 and "payments" not in (expand if isinstance(expand, list) else [expand]):
            body = {key: value for key, value in body.items() if key != "payments"}
        return status, copy.deepcopy(body)

    def _create_portal_session(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        customer = params.get("customer")
        if not customer:
            raise _missing("customer")
        portal_session = {
            "id": new_id("bps_"),
            "object": "billing_portal.session",
            "configuration": params.get("configuration") or new_id("bpc_"),
            "created": int(time.time()),
            "customer": customer,
            "flow": None,
            "livemode": False,
            "locale": params.get("locale"),
            "on_behalf_of": params.get("on_behalf_of"),
            "return_url": params.get("return_url"),
            "url": f"https://billing.stripe.com/p/session/test_{new_id('', 40)}",
        }
        self.portal_sessions[portal_session["id"]] = portal_session
        return 200, portal_session


def checkout_session(params: dict[str, Any], prices: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A new `checkout.session` object for the nested create `params`, as Stripe answers it.

    Checks what Stripe checks about `mode` and `line_items` (raising `_StripeError`).
    `amount_subtotal` / `amount_total` are the sum of unit_amount x quantity over the line
    items (no tax, discounts or shipping); `currency` is the items' (or the `currency` param).
    """
    mode = params.get("mode") or "payment"
    if mode not in _MODES:
        message = f"Invalid mode: must be one of {', '.join(_MODES)}"
        raise _StripeError(400, error_body("invalid_request_error", message, param="mode"))
    items = params.get("line_items") or []
    if not isinstance(items, list):
        raise _StripeError(
            400, error_body("invalid_request_error", "Invalid array", param="line_items")
        )
    if mode in ("payment", "subscription") and not items:
        message = f"`line_items` is required in `{mode}` mode."
        raise _StripeError(400, error_body("invalid_request_error", message, param="line_items"))

    total = 0
    currency: str | None = params.get("currency")
    any_recurring = False
    for index, item in enumerate(items):
        item_amount, item_currency, recurring = _line_item(index, item, prices)
        total += item_amount
        currency = currency or item_currency
        if recurring and mode == "payment":
            message = (
                "You specified `payment` mode but passed a recurring price. Either switch to "
                "`subscription` mode or use only one-time prices."
            )
            param = f"line_items[{index}]"
            raise _StripeError(400, error_body("invalid_request_error", message, param=param))
        any_recurring = any_recurring or recurring
    if mode == "subscription" and not any_recurring:
        message = (
            "You must provide at least one recurring price in `subscription` mode when using "
            "prices."
        )
        raise _StripeError(400, error_body("invalid_request_error", message, param="line_items"))

    now = int(time.time())
    session_id = new_id("cs_test_", 58)
    metadata = params.get("metadata")
    amount = total if mode != "setup" else None
    return {
        "id": session_id,
        "object": "checkout.session",
        "after_expiration": None,
        "allow_promotion_codes": None,
        "amount_subtotal": amount,
        "amount_total": amount,
        "automatic_tax": {"enabled": False, "liability": None, "status": None},
        "billing_address_collection": None,
        "cancel_url": params.get("cancel_url"),
        "client_reference_id": params.get("client_reference_id"),
        "client_secret": None,
        "consent": None,
        "consent_collection": None,
        "created": now,
        "currency": currency.lower() if currency else None,
        "custom_fields": [],
        "custom_text": {"shipping_address": None, "submit": None},
        "customer": params.get("customer"),
        "customer_creation": (
            "if_required" if mode == "payment" and not params.get("customer") else None
        ),
        "customer_details": None,
        "customer_email": params.get("customer_email"),
        "expires_at": int(params.get("expires_at") or now + SESSION_LIFETIME_SECONDS),
        "invoice": None,
        "livemode": False,
        "locale": params.get("locale"),
        "metadata": dict(metadata) if isinstance(metadata, dict) else {},
        "mode": mode,
        "payment_intent": None,
        "payment_link": None,
        "payment_method_collection": "always" if mode == "subscription" else None,
        "payment_method_types": list(params.get("payment_method_types") or ["card"]),
        "payment_status": "no_payment_required" if mode == "setup" else "unpaid",
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": "open",
        "submit_type": params.get("submit_type"),
        "subscription": None,
        "success_url": params.get("success_url"),
        "total_details": (
            {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
            if amount is not None
            else None
        ),
        "ui_mode": params.get("ui_mode") or "hosted",
        "url": f"https://checkout.stripe.com/c/pay/{session_id}",
    }


def _line_item(
    index: int, item: Any, prices: dict[str, dict[str, Any]]
) -> tuple[int, str | None, bool]:
    """`(unit_amount x quantity, currency, recurring?)` of line item `index`, checked."""
    where = f"line_items[{index}]"
    if not isinstance(item, dict):
        raise _StripeError(400, error_body("invalid_request_error", "Invalid object", param=where))
    quantity_text = item.get("quantity")
    if quantity_text is None:
        message = f"Quantity is required. Add `quantity` to `{where}`"
        raise _StripeError(
            400, error_body("invalid_request_error", message, param=f"{where}[quantity]")
        )
    quantity = _integer(quantity_text, f"{where}[quantity]")

    price_id = item.get("price")
    price_data = item.get("price_data")
    if price_id:
        price = prices.get(price_id)
        if price is None:
            raise _StripeError(
                400,
                error_body(
                    "invalid_request_error",
                    f"No such price: '{price_id}'",
                    code="resource_missing",
                    param=f"{where}[price]",
                ),
            )
        unit_amount = int(price.get("unit_amount") or 0)
        return unit_amount * quantity, price.get("currency"), bool(price.get("recurring"))
    if not isinstance(price_data, dict):
        message = f"You must specify either `price` or `price_data` in `{where}`."
        raise _StripeError(400, error_body("invalid_request_error", message, param=where))

    data = f"{where}[price_data]"
    if not price_data.get("currency"):
        raise _missing(f"{data}[currency]")
    if not price_data.get("product") and not price_data.get("product_data"):
        message = f"You must specify either `product` or `product_data` in `{data}`."
        raise _StripeError(400, error_body("invalid_request_error", message, param=data))
    if price_data.get("unit_amount") is not None:
        unit_amount = _integer(price_data["unit_amount"], f"{data}[unit_amount]")
    elif price_data.get("unit_amount_decimal") is not None:
        unit_amount = round(float(price_data["unit_amount_decimal"]))
    else:
        raise _missing(f"{data}[unit_amount]")
    return unit_amount * quantity, price_data["currency"], bool(price_data.get("recurring"))


def _public(session: dict[str, Any]) -> dict[str, Any]:
    """A session as Stripe answers it: without the stand-in's own `standin_*` notes."""
    return {key: value for key, value in session.items() if not key.startswith("standin_")}


def event_for(obj: dict[str, Any], event_type: str) -> dict[str, Any]:
    """The webhook event Stripe sends about `obj` (a copy), e.g. `event_for(intent,
    "payment_intent.succeeded")`; the stand-in's own `standin_*` notes are left out."""
    return {"id": new_id("evt_"), "object": "event", "type": event_type,
            "api_version": DEFAULT_API_VERSION, "created": int(time.time()), "livemode": False,
            "pending_webhooks": 1, "data": {"object": _public(copy.deepcopy(obj))}}


def invoice_payment(invoice_id: str, amount_paid: int, *, payment_intent: str | None = None,
                    charge: str | None = None, status: str = "paid") -> dict[str, Any]:
    """An `invoice_payment` object as Stripe lists it in an expanded `invoice.payments`: the
    payment intent that paid the invoice, or the charge when it has no payment intent."""
    kind = "payment_intent" if payment_intent else "charge"
    return {
        "id": new_id("inpay_"), "object": "invoice_payment", "amount_paid": amount_paid,
        "amount_requested": amount_paid, "created": int(time.time()), "currency": "usd",
        "invoice": invoice_id, "is_default": True, "livemode": False,
        "payment": {"type": kind, kind: payment_intent or charge}, "status": status,
        "status_transitions": {"canceled_at": None, "paid_at": int(time.time())},
    }


def _retrieve(
    store: dict[str, dict[str, Any]], object_id: str, noun: str
) -> tuple[int, dict[str, Any]]:
    """`store[object_id]` with its `id` and `object`, or Stripe's 404 `resource_missing`."""
    found = store.get(object_id)
    if found is None:
        message = f"No such {noun}: '{object_id}'"
        body = error_body("invalid_request_error", message, code="resource_missing", param="id")
        return 404, body
    return 200, _public({"id": object_id, "object": noun, **found})


def _integer(value: Any, param: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _StripeError(
            400, error_body("invalid_request_error", f"Invalid integer: {value}", param=param)
        ) from None


def _missing(param: str) -> _StripeError:
    message = f"Missing required param: {param}."
    return _StripeError(
        400,
        error_body("invalid_request_error", message, code="parameter_missing", param=param),
    )


def _fields(values: MultiDict[str, str]) -> dict[str, Any]:
    """Form or query fields as a dict; a repeated field becomes a list of its values."""
    result: dict[str, Any] = {}
    for name in values:
        found = values.getlist(name)
        result[name] = found[0] if len(found) == 1 else found
    return result


def _raw_path(request: Request) -> str:
    """The request's path, keeping a leading `//` as sent (which `request.path` loses), so
    that a base address ending in "/" is answered 404 instead of quietly working."""
    parts = str(request.environ.get(REQUEST_LINE) or "").split()
    raw = parts[1].partition("?")[0] if len(parts) >= 2 else ""
    return raw if raw.startswith("//") else request.path


def _api_key(request: Request) -> str | None:
    """The secret key from `Authorization: Bearer <key>` or Basic `<key>:`, else None."""
    auth = request.authorization
    if auth is None:
        return None
    if auth.type == "bearer":
        return auth.token or None
    if auth.type == "basic":
        return auth.username or None
    return None


def _redact(key: str) -> str:
    """A key as Stripe shows it in errors: its prefix, asterisks and the last four characters."""
    prefix, _, _rest = key.rpartition("_")
    return f"{prefix}_****{key[-4:]}" if prefix else f"****{key[-4:]}"
