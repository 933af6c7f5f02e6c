"""Structured logs (structlog over the standard `logging` module) with request and job ids, and
no phone numbers (docs/messaging.md, "Privacy").

Every module logs through `logging.getLogger(__name__)` with `extra={...}` fields; the
`ProcessorFormatter` installed here turns each record into one line: JSON in production
(`LOG_FORMAT=json`), `key=value` otherwise. Each line carries:

- `request_id` (web: the `X-Request-Id` header when a proxy set one, else a new id, echoed in
  the response) or `job_id` (RQ worker), bound with `structlog.contextvars`;
- the record's `extra` fields;
- phone numbers masked wherever they appear (`redact_phones`): a safety net behind the rule
  that code logs `mask_address(...)`, never a number. Message bodies are never logged: no call
  passes one.

No bearer secret either: the routes in `BEARER_ROUTES` carry one in their path (a pay link's
token, an affiliate link's token, a sandbox checkout's id, an account link's token: whoever
has the URL can use it).
`mask_bearer_paths(app)` masks it (`/pay/***`, query string `?***`) in gunicorn's access log
(the WSGI environ it reads), werkzeug's (`flask run`) and gunicorn's error log (a logging
filter), and this module's lines (`redact_bearer_paths`), all from the one `BEARER_PATH`.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote, unquote

import structlog
from flask import Flask, Response, request

from bot.contacts import mask_address

# E.164 numbers (optionally "whatsapp:"-prefixed) and WhatsApp ids ("wa:<digits>").
PHONE = re.compile(r"(?:whatsapp:)?\+\d{7,15}|wa:\d{5,20}")
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HANDLER_NAME = "structlog"

# The routes whose path segment after the prefix is a bearer secret: `/pay/<token>` (and
# `/pay/<token>/done`), `/r/<token>` (affiliate links), `/sandbox/checkout/<session_id>` (and its
# `/pay`), `/account/link/<token>` (a person's account page, ACCOUNT). Their query strings are
# masked too. The one list every mask below is built from;
# tests/app/test_bearer_logs.py fails when a new route with a path variable is not classified.
BEARER_ROUTES = ("/pay", "/r", "/sandbox/checkout", "/account/link")
MASK = "***"
_ROUTES = "|".join("/+".join(map(re.escape, route.strip("/").split("/")))
                   for route in BEARER_ROUTES)  # "pay|r|sandbox/+checkout"
_END = r"/?#\s\"'<>"  # characters that end a path segment in a request line, URL or text
# A bearer route where a path starts (the start of the text; after a space, quote, bracket,
# "=" or ","; after a URL's "//host[:port]"), then its secret: any segment but the mask.
BEARER_PATH = re.compile(
    rf"(?P<lead>^|[\s\"'(\[<=,;|]|//[^{_END}]+)(?P<route>/+(?:{_ROUTES}))"
    rf"/+(?!{re.escape(MASK)}(?:[{_END}]|$))(?P<secret>[^{_END}]+)"
    r"(?P<rest>[^?#\s\"'<>]*)(?P<query>\?[^#\s\"'<>]*)?"
)
# WSGI environ keys that hold the request's URI as received (gunicorn: RAW_URI).
_URI_KEYS = ("RAW_URI", "REQUEST_URI")


def redact_phones(_logger: Any, _method: str, event: MutableMapping[str, Any]
                  ) -> MutableMapping[str, Any]:
    """structlog processor: mask every phone number or WhatsApp id in string values."""
    for key, value in event.items():
        if isinstance(value, str) and PHONE.search(value):
            event[key] = PHONE.sub(lambda m: mask_address(m.group(0).removeprefix("whatsapp:")),
                                   value)
    return event


def _masked(match: re.Match[str]) -> str:
    query = match.group("query")
    return (match.group("lead") + match.group("route") + "/" + MASK + match.group("rest")
            + ("" if query is None else "?" if query == "?" else "?" + MASK))


def mask_bearer(text: str) -> str:
    """`text` with the secret of every bearer route (`BEARER_ROUTES`) replaced by `MASK`, and
    the query string of such a path too: "GET /pay/abc?x=1 HTTP/1.1" becomes
    "GET /pay/***?*** HTTP/1.1", "https://host/r/abc" becomes "https://host/r/***". Paths
    hidden by percent-encoding ("/pay%2Fabc") are masked in their decoded form. Idempotent;
    other text is unchanged.

    Args:
        text: a request line, URL, path or any log text.

    Returns:
        The masked text (the same object when nothing matched).
    """
    if "/" not in text and "%" not in text:
        return text
    masked = BEARER_PATH.sub(_masked, text)
    if "%" in masked:
        decoded = unquote(masked, errors="replace")
        if decoded != masked and BEARER_PATH.search(decoded):
            masked = BEARER_PATH.sub(_masked, decoded)
    return masked


def redact_bearer_paths(_logger: Any, _method: str, event: MutableMapping[str, Any]
                        ) -> MutableMapping[str, Any]:
    """structlog processor: mask the bearer secrets of pay, affiliate and sandbox checkout
    paths (`mask_bearer`) in every string value."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = mask_bearer(value)
    return event


class BearerPathFilter(logging.Filter):
    """A logging filter that masks bearer paths (`mask_bearer`) in a record's arguments (a
    tuple, or gunicorn's mapping of access-log atoms), its formatted message and its
    traceback text; it never drops a record. Installed on the "werkzeug", "gunicorn.access",
    "gunicorn.error" and the Flask app's own loggers by `mask_bearer_paths`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, MutableMapping):
            for key, value in list(args.items()):
                if isinstance(value, str) and (masked := mask_bearer(value)) != value:
                    args[key] = masked
        elif isinstance(args, tuple):
            record.args = tuple(mask_bearer(a) if isinstance(a, str) else a for a in args)
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            return True  # a malformed call: logging reports it when the record is formatted
        if (masked := mask_bearer(message)) != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_bearer(record.exc_text)
        return True


def mask_environ(environ: MutableMapping[str, Any]) -> None:
    """Mask a bearer path in the WSGI environ values an access log reads: `PATH_INFO`,
    `QUERY_STRING` (whole, when the path is a bearer route), `RAW_URI`/`REQUEST_URI` and
    `HTTP_REFERER`. Called once the app has answered (`BearerPathMasker`)."""
    path = environ.get("PATH_INFO")
    if isinstance(path, str) and (masked := mask_bearer(path)) != path:
        environ["PATH_INFO"] = masked
        query = environ.get("QUERY_STRING")
        if query:
            environ["QUERY_STRING"] = MASK
        # Rebuilt from the decoded path: the URI as received may hide the route ("/pay%2Fx").
        uri = (quote(str(environ.get("SCRIPT_NAME") or ""), safe="/")
               + quote(masked, safe="/*") + (f"?{MASK}" if query else ""))
        for key in _URI_KEYS:
            if key in environ:
                environ[key] = uri
    for key in (*_URI_KEYS, "HTTP_REFERER"):
        value = environ.get(key)
        if isinstance(value, str):
            environ[key] = mask_bearer(value)


class BearerPathMasker:
    """WSGI middleware: once the wrapped app has answered (status and headers given, the body
    iterable returned, or an exception raised), mask bearer paths in the environ
    (`mask_environ`). gunicorn writes its access line from that same environ after sending the
    body, so the line shows `/pay/***`. The app itself saw the real path: Flask read it into
    its request before answering. (A streamed body of a bearer route would see the masked
    environ; none streams.)"""

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: MutableMapping[str, Any], start_response: Any
                 ) -> Iterable[bytes]:
        try:
            body: Iterable[bytes] = self.wsgi_app(environ, start_response)
        finally:
            mask_environ(environ)
        return body


def drop_message(_logger: Any, _method: str, event: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
    """structlog processor: drop the `message` copy of the event that another handler's
    formatter may have left on the record (ExtraAdder would add it)."""
    event.pop("message", None)
    return event


def configure(log_format: str, level: str = "INFO") -> None:
    """Route the standard library's records through structlog's formatter (once per process;
    later calls replace the handler).

    Args:
        log_format: "json" (one JSON object per line) or "console" (`key=value` pairs).
        level: the root logger's level name.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        drop_message,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # before redaction: tracebacks are masked too
        redact_phones,
        redact_bearer_paths,
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if log_format == "json"
                     else structlog.processors.LogfmtRenderer(
                         key_order=["timestamp", "level", "logger", "event"], drop_missing=True))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)


def bind_request_ids(app: Flask) -> None:
    """Give every request an id in the logs and in the `X-Request-Id` response header."""

    @app.before_request
    def _bind() -> None:
        given = request.headers.get("X-Request-Id", "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        structlog.contextvars.clear_contextvars()
        # The endpoint, not the path: paths can hold pay-link tokens.
        structlog.contextvars.bind_contextvars(request_id=request_id,
                                               endpoint=request.endpoint)

    @app.after_request
    def _echo(response: Response) -> Response:
        ids: Mapping[str, Any] = structlog.contextvars.get_contextvars()
        if "request_id" in ids:
            response.headers.setdefault("X-Request-Id", str(ids["request_id"]))
        return response

    @app.teardown_request
    def _unbind(_exc: BaseException | None) -> None:
        structlog.contextvars.clear_contextvars()


def bind_job_id(job_id: str | None) -> None:
    """Tag the worker's log lines with the RQ job's id (called at the start of each job)."""
    structlog.contextvars.clear_contextvars()
    if job_id:
        structlog.contextvars.bind_contextvars(job_id=job_id)


# Loggers that write request lines or URIs: werkzeug's dev server (`flask run`), gunicorn's
# access and error logs (whatever the command line or config file), Flask's "Exception on
# /pay/... [GET]".
_URI_LOGGERS = ("werkzeug", "gunicorn.access", "gunicorn.error")


def mask_bearer_paths(app: Flask) -> None:
    """Mask the bearer tokens that some routes carry in their path (pay links, affiliate
    links, sandbox checkouts; `BEARER_ROUTES`) in every access log line: wraps `app.wsgi_app`
    in `BearerPathMasker` (gunicorn's access log) and installs `BearerPathFilter` on the
    loggers in `_URI_LOGGERS` and `app.logger`. Safe to call again: nothing is installed twice.
    """
    if not isinstance(app.wsgi_app, BearerPathMasker):
        app.wsgi_app = BearerPathMasker(app.wsgi_app)  # type: ignore[method-assign]
    for name in (*_URI_LOGGERS, app.logger.name):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, BearerPathFilter) for existing in logger.filters):
            logger.addFilter(BearerPathFilter())
