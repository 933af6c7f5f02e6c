"""`GET /metrics`: the pipeline's Prometheus metrics (prometheus-client).

What is counted, and where:

- `bot_webhook_acks_total{result}` and `bot_webhook_ack_seconds`: every inbound webhook and
  how long its answer took ("queued", "inline", "refused" for a bad signature, "invalid");
- `bot_answers_in_flight`: answer jobs running now, summed over the worker processes;
- `bot_answers_total{outcome}` and `bot_reply_seconds`: messages a worker answered, and the
  time from the webhook's acknowledgement to the replies handed to Twilio;
- `bot_llm_seconds` and `bot_llm_errors_total{reason}`: LLM calls (cache hits excluded);
- `bot_ledger_entries_total{kind}` and `bot_ledger_holds_placed_total`: ledger operations
  (entries by kind, a capture being a `debit`; holds placed). Voids write no entry, so
  they are not counted;
- `bot_cogs_musd_total{channel,kind}`: cost of goods recorded, in µUSD, by channel;
- `bot_queue_depth` (RQ jobs waiting) and `bot_inbox_backlog` (messages acknowledged, not yet
  routed), read at each scrape.

Ledger and cost figures are counted when their rows are written (`tokens.signals`), so a
transaction rolled back afterwards was still counted; the ledger itself is the authority.

Several processes (gunicorn's workers, `flask worker`s) share the counts when
`PROMETHEUS_MULTIPROC_DIR` names a directory they all write to (prometheus-client's
multiprocess mode; empty it before they start). Without it each process reports its own.
In production the endpoint needs `Authorization: Bearer $METRICS_TOKEN` (404 while unset).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from app.bearer import bearer_refused
from bot.llm import ChatReply, ChatRequest, LlmError, OpenAIChat

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)

# Latency buckets (s): the acknowledgement should sit in the first few; replies and LLM calls
# in the seconds.
_FAST = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)
_SLOW = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0)

ACKS = Counter("bot_webhook_acks", "Inbound webhooks answered, by result", ["result"])
ACK_SECONDS = Histogram("bot_webhook_ack_seconds", "Time to answer Twilio's inbound webhook",
                        buckets=_FAST)
IN_FLIGHT = Gauge("bot_answers_in_flight", "Answer jobs running now",
                  multiprocess_mode="livesum")
ANSWERS = Counter("bot_answers", "Messages answered by a worker, by outcome", ["outcome"])
REPLY_SECONDS = Histogram("bot_reply_seconds",
                          "From the acknowledgement to the replies handed to Twilio",
                          buckets=_SLOW)
LLM_SECONDS = Histogram("bot_llm_seconds", "LLM call latency (cache hits excluded)",
                        buckets=_SLOW)
LLM_ERRORS = Counter("bot_llm_errors", "LLM calls that failed, by reason", ["reason"])
LEDGER_ENTRIES = Counter("bot_ledger_entries", "Ledger entries written, by kind", ["kind"])
LEDGER_HOLDS = Counter("bot_ledger_holds_placed", "Holds placed")
COGS = Counter("bot_cogs_musd", "Cost of goods recorded, µUSD", ["channel", "kind"])


class MeteredOpenAIChat(OpenAIChat):
    """`bot.llm.OpenAIChat` with each call timed and each failure counted by reason."""

    def complete(self, request: ChatRequest) -> ChatReply:
        """As `OpenAIChat.complete`; an `LlmError` is counted and re-raised."""
        started = time.perf_counter()
        try:
            return super().complete(request)
        except LlmError as exc:
            LLM_ERRORS.labels(str(exc).split(":")[0][:40]).inc()
            raise
        finally:
            LLM_SECONDS.observe(time.perf_counter() - started)


def answered(outcome: str, seconds: float) -> None:
    """A worker answered a message (`outcome`) `seconds` after its acknowledgement."""
    ANSWERS.labels(outcome).inc()
    REPLY_SECONDS.observe(max(seconds, 0.0))


def acknowledged(result: str, seconds: float) -> None:
    """The inbound webhook answered (`result`) after `seconds`."""
    ACKS.labels(result).inc()
    ACK_SECONDS.observe(seconds)


def watch_rows() -> None:
    """Count ledger entries, holds and cost entries as they are written (`tokens.signals`;
    idempotent)."""
    from tokens import signals

    signals.hold_placed.connect(_hold_placed)  # blinker keeps one connection per receiver
    signals.entries_posted.connect(_entries_posted)
    signals.costs_recorded.connect(_costs_recorded)


def _costs_recorded(_sender: Any, *, entries: list[tuple[str | None, str, int]]) -> None:
    for channel, kind, amount in entries:
        COGS.labels(channel or "none", kind).inc(max(amount, 0))


def _entries_posted(_sender: Any, *, kinds: list[str]) -> None:
    for kind in kinds:
        LEDGER_ENTRIES.labels(kind).inc()


def _hold_placed(_sender: Any, *, tokens: int) -> None:
    LEDGER_HOLDS.inc()


class _Backlog:
    """Queue depth and inbox backlog, read when scraped."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from app.extensions import db
        from app.queue import answers_queue
        from bot.models import InboxMessage

        depth = GaugeMetricFamily("bot_queue_depth", "RQ answer jobs waiting")
        backlog = GaugeMetricFamily("bot_inbox_backlog",
                                    "Messages acknowledged and not yet routed")
        queue = answers_queue(self.app)
        if queue is not None:
            try:
                depth.add_metric([], float(queue.count))
            except redis.RedisError as exc:  # the gauge is left out, the page still answers
                log.warning("queue depth unreadable", extra={"error": type(exc).__name__})
        backlog.add_metric([], float(db.session.scalar(
            select(func.count()).select_from(InboxMessage)) or 0))
        db.session.commit()
        yield depth
        yield backlog


@bp.get("/metrics")
def metrics() -> Response:
    """The metrics in Prometheus's text format.

    Returns:
        200 text/plain (version 0.0.4); 404 in production without `METRICS_TOKEN`, 401 with
        a missing or wrong bearer token.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    token = app.config.get("METRICS_TOKEN")
    if app.config["APP_ENV"] == "production" or token:
        if not token:
            return Response("metrics are off: set METRICS_TOKEN\n", status=404,
                            content_type="text/plain; charset=utf-8")
        refused = bearer_refused(token, "metrics")
        if refused is not None:
            return refused
    registry: Any = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    output = generate_latest(registry)
    backlog = CollectorRegistry()
    backlog.register(_Backlog(app))  # type: ignore[arg-type]
    output += generate_latest(backlog)
    return Response(output, content_type=CONTENT_TYPE_LATEST)
