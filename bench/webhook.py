"""Benchmark (not a test): how fast the inbound webhook answers, and how fast a worker drains.

Issue #4 asks that, with Redis and a worker, a signed "meal plan" gets `<Response/>` within a
fraction of a second. This measures, on a throwaway PostgreSQL server and a real redis-server,
with the local OpenAI and Twilio stand-ins of the test suite:

- inline:  no Redis; the webhook runs the offline skill and answers TwiML (the embedded shape);
- queued:  Redis; the webhook only acknowledges: it stores the message in the inbox, commits,
  enqueues and answers `<Response/>`;
- worker:  the worker (`app.worker.ThreadedWorker`, 4 threads) routing, answering and
  sending the queued messages, with offline skills, then with the LLM stand-in;
- status:  a signed "delivered" callback for every reply sent.

Each message comes from its own sender, signed as Twilio signs it, through Flask's test client
(no HTTP server: this is the app's own time). One process, so the numbers are per core.

    .venv/bin/python -m bench.webhook [--messages 200] [--json F] [--no-statements]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
from flask import Flask

from bench.ledger import database


@dataclass(frozen=True)
class Row:
    """One measured mode: latency per message (ms) or, for the worker, jobs per second."""

    mode: str
    messages: int
    seconds: float
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms: float = 0.0  # this process's CPU time per message (steadier than wall time)
    statements: float = 0.0  # SQL statements per message


def _row(mode: str, latencies: list[float], seconds: float, cpu: float = 0.0,
         statements: int = 0) -> Row:
    ordered = sorted(latencies)
    q = statistics.quantiles(ordered, n=100) if len(ordered) > 1 else ordered * 99
    n = len(latencies)
    return Row(mode, n, round(seconds, 3), round(n / seconds, 1),
               round(q[49] * 1000, 2), round(q[94] * 1000, 2), round(q[98] * 1000, 2),
               round(cpu * 1000 / n, 2), round(statements / n, 1))


class Meter:
    """CPU time of this process and SQL statements sent, over a `with` block.

    The statement counter is a `before_cursor_execute` listener, and with one listening
    `tokens.base.execute_compiled` sends every statement through SQLAlchemy's execution
    instead of the driver's connection: about 50 µs more CPU a statement on PostgreSQL.
    `COUNTING = False` (`--no-statements`) measures the CPU without it (statements 0).
    """

    COUNTING = True

    def __enter__(self) -> Meter:
        from sqlalchemy import event

        from app.extensions import db

        self.statements = 0
        self._engine = db.engine
        if self.COUNTING:
            event.listen(self._engine, "before_cursor_execute", self._count)
        self._cpu = time.process_time()
        return self

    def _count(self, *_args: object) -> None:
        self.statements += 1

    def __exit__(self, *_exc: object) -> None:
        from sqlalchemy import event

        self.cpu = time.process_time() - self._cpu
        if self.COUNTING:
            event.remove(self._engine, "before_cursor_execute", self._count)


def post_all(app: Flask, n: int, prefix: str) -> tuple[list[float], float]:
    """POST `n` signed meal plan messages, each from a new sender; (latencies s, total s)."""
    from testing.deployment import post_signed
    from testing.payloads import sms

    client = app.test_client()
    latencies = []
    started = time.perf_counter()
    for i in range(n):
        # Distinct texts, so that the worker calls the LLM for each (no cache hits).
        fields = sms(f"meal plan {1200 + i} kcal", sid=f"SM{prefix}{i:08d}",
                     sender=f"+1650555{i:04d}")
        t0 = time.perf_counter()
        response = post_signed(client, fields)
        latencies.append(time.perf_counter() - t0)
        assert response.status_code == 200, response.get_data(as_text=True)
    return latencies, time.perf_counter() - started


def post_callbacks(app: Flask, sends: list[dict[str, str]]) -> tuple[list[float], float]:
    """POST a signed "delivered" status callback for each accepted send."""
    from testing.deployment import post_signed

    client = app.test_client()
    latencies = []
    started = time.perf_counter()
    for send in sends:
        fields = {"MessageSid": send["sid"], "MessageStatus": "delivered", "To": send["To"],
                  "AccountSid": send["account_sid"]}
        t0 = time.perf_counter()
        response = post_signed(client, fields, path="/webhooks/twilio/status")
        latencies.append(time.perf_counter() - t0)
        assert response.status_code == 204, response.get_data(as_text=True)
    return latencies, time.perf_counter() - started


def queued_rows(app: Flask, messages: int, prefix: str, skills: str,
                twilio: object) -> list[Row]:
    """The webhook's acknowledgement, then the worker, then the status callbacks."""
    from testing.deployment import run_worker

    rows = []
    with Meter() as meter:
        latencies, seconds = post_all(app, messages, prefix)
    rows.append(_row(f"queued (<Response/>), {skills}", latencies, seconds, meter.cpu,
                     meter.statements))
    started = time.perf_counter()
    with Meter() as meter:
        done = run_worker(app)
    seconds = time.perf_counter() - started
    accepted = twilio.accepted  # type: ignore[attr-defined]
    assert done == messages and len(accepted) == messages, (done, len(accepted))
    rows.append(_row(f"worker ({skills} + REST send)", [seconds / messages] * messages,
                     seconds, meter.cpu, meter.statements))
    with Meter() as meter:
        latencies, seconds = post_callbacks(app, accepted)
    rows.append(_row("status callback (delivered)", latencies, seconds, meter.cpu,
                     meter.statements))
    twilio.reset()  # type: ignore[attr-defined]
    return rows


def run(messages: int) -> list[Row]:
    from testing.deployment import queued_environment, running_app
    from testing.openai_standin import OpenAIStandIn
    from testing.redis_server import redis_server
    from testing.twilio_standin import TwilioStandIn

    rows = []
    with database(None) as url, redis_server() as server, TwilioStandIn() as twilio, \
            OpenAIStandIn() as llm:
        with running_app(url) as inline:
            with Meter() as meter:
                latencies, seconds = post_all(inline, messages, "inline")
            rows.append(_row("inline (offline skill, TwiML)", latencies, seconds, meter.cpu,
                             meter.statements))

        for skills, openai in (("offline", None), ("LLM", llm)):
            redis.Redis.from_url(server.url).flushdb()
            with running_app(url, **queued_environment(server.url, twilio, openai)) as queued:
                rows += queued_rows(queued, messages, f"q{skills}", skills, twilio)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--no-statements", action="store_true",
                        help="do not count SQL statements: the CPU of the driver path "
                             "(Meter)")
    args = parser.parse_args()
    Meter.COUNTING = not args.no_statements
    rows = run(args.messages)
    print(f"{'mode':<32} {'msgs':>5} {'msg/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'CPU ms':>7} {'SQL':>5}")
    for row in rows:
        print(f"{row.mode:<32} {row.messages:>5} {row.per_second:>7} {row.p50_ms:>8} "
              f"{row.p95_ms:>8} {row.p99_ms:>8} {row.cpu_ms:>7} {row.statements:>5}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
