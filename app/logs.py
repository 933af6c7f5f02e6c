"""Structured logs (structlog over the standard `logging` module) with request and job ids, and
no phone numbers (messaging.md, "Privacy").

Every module logs through `logging.getLogger(__name__)` with `extra={...}` fields; the
`ProcessorFormatter` installed here turns each record into one line: JSON in production
(`LOG_FORMAT=json`), `key=value` otherwise. Each line carries:

- `request_id` (web: the `X-Request-Id` header when a proxy set one, else a new id, echoed in
  the response) or `job_id` (RQ worker), bound with `structlog.contextvars`;
- the record's `extra` fields;
- phone numbers masked wherever they appear (`redact_phones`): a safety net behind the rule
  that code logs `mask_address(...)`, never a number. Message bodies are never logged: no call
  passes one.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from flask import Flask, Response, request

from bot.contacts import mask_address

# E.164 numbers (optionally "whatsapp:"-prefixed) and WhatsApp ids ("wa:<digits>").
PHONE = re.compile(r"(?:whatsapp:)?\+\d{7,15}|wa:\d{5,20}")
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HANDLER_NAME = "structlog"


def redact_phones(_logger: Any, _method: str, event: MutableMapping[str, Any]
                  ) -> MutableMapping[str, Any]:
    """structlog processor: mask every phone number or WhatsApp id in string values."""
    for key, value in event.items():
        if isinstance(value, str) and PHONE.search(value):
            event[key] = PHONE.sub(lambda m: mask_address(m.group(0).removeprefix("whatsapp:")),
                                   value)
    return event


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


def mask_bearer_paths(app: Flask) -> None:
    """Mask the bearer tokens that some routes carry in their path (pay links, affiliate
    links, sandbox checkouts) in every access log line (issue: no bearer token in any log).

    Placeholder: filled in by the log-masking change.
    """
