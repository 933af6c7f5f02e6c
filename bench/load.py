"""Benchmark (not a test): the inbound webhook under HTTP load, as a share of a bare endpoint.

One command starts, on loopback: a throwaway PostgreSQL server (migrated; fsync on unless
`--no-fsync`), a real redis-server, a stand-in for Twilio's Messages REST API (its own
process, recording when each send arrives), gunicorn serving the app as a queued deployment
(APP_ENV=production, Redis, REST sends; the threads of gunicorn.conf.py) with M RQ workers
(`flask --app wsgi worker`), and gunicorn serving `bench.bare`
(a static TwiML) with the same settings. Then, for each offered rate (messages/s), an
open-loop generator posts signed, realistic inbound SMS for `--seconds` to each server:

- the form is the recorded Twilio SMS fixture with a unique MessageSid, a sender drawn from a
  pool of `--people` numbers (each writes once in the unmeasured warm-up, so the rows measure
  people who wrote before, the steady state; `--new-senders` skips that, and the share of
  messages that are a sender's first, which open an account and grant the month's tokens, is
  reported as "new senders") and a body drawn from weighted realistic intents (meal plans,
  recipes, calories, grocery lists, tips, small talk, BALANCE, HELP); signed with the tests'
  auth token over PUBLIC_BASE_URL + path, like Twilio signs;
- requests are sent on schedule whatever the answers (asyncio, one connection per request);
  a request not answered within 15 s (Twilio's webhook timeout) counts as an error.

Measured per app and rate:

- send rate achieved by the generator (messages/s) and its lag behind the schedule (ms): the
  generator must keep up, or the row measures the generator;
- throughput (messages/s): 200 answers / (last answer - first send); other statuses and
  connection errors are counted apart;
- webhook latency p50/p95/p99 (ms): from opening the connection to the end of the answer;
- reply time p50/p95/p99 (ms), real app only: when the stand-in received the REST send of the
  reply minus when the inbound was posted. Replies are matched exactly, not by order: after
  the queue drained, the database maps each outbound row's Twilio sid (what the stand-in
  returned) to its inbound row's MessageSid (`in_reply_to_id`); the first send per inbound
  counts. With Redis every reply goes by REST (a reply given in the TwiML, when Redis is
  down, counts as an inline reply whose reply time is the webhook latency). "replied" is the
  share of the 200s whose reply was sent by the end of the send phase + `--grace` s;
  "answered/s" is the replies sent over the span from the first post to the last reply;
- CPU (% of one core) of each component during the load window, read from /proc: web
  (gunicorn), rq, postgres, redis, stand-in, generator, and "other" (processes this run did not
  start: the machine is shared, so every number is noisy).

Then each app gets a closed-loop row: `--concurrency` clients (default 2 x workers), each
posting its next message as soon as its answer came back, for `--seconds`. Its throughput is
the app's capacity (msg/s), and capacity webhook / bare is the headline ratio (the goal of
issue #14: >= 0.3). The open-loop ladder doubles, so its best row can sit anywhere between half
the capacity and all of it; it is reported too (peak open-loop throughput), with the sustained
rate = the highest offered rate with every answer a 200, throughput >= 95% of offered and
p99 <= `--slo-ms`. Rates rise until an app saturates (throughput < 80% of offered, or > 1%
errors); the next rates are skipped for that app (`--all-rates` runs them anyway).

Skills are offline by default (no LLM; the worker runs the offline skill, then sends through
the REST stand-in); `--llm` adds the OpenAI stand-in, answering each call after a log-normal
delay (median `--llm-median` 1.5 s, p95 `--llm-p95` 4 s). The Twilio stand-in posts each
accepted send's signed `sent` and `delivered` status callbacks back to the app, as Twilio does,
so they count as web load (`--no-callbacks` turns them off). End to end, an offered rate is
sustained when every reply was sent and the reply p95 stays within the LLM's p95 + 1 s.

    .venv/bin/python -m bench.load [--rates 25,50,...,3200] [--seconds 6] [--workers 3]
        [--rq-workers 2] [--concurrency 6] [--grace 30] [--llm] [--json F] [--markdown F]

Results go to bench/results/load-offline.{json,md}, or load-llm.{json,md} with --llm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import runpy
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from testing.twilio_standin import TwilioStandIn

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
INBOUND_PATH = "/webhooks/twilio/messages"
TWILIO_WEBHOOK_TIMEOUT_S = 15.0
SATURATED_SHARE = 0.8
SUSTAINED_SHARE = 0.95

# Inbound bodies by weight: priced intents (answered by a job and a REST send) and free commands
# (answered inline in the TwiML). `{n}`, `{kcal}`, `{food}`, `{dish}` are filled at random, so
# the texts vary like people's (and the LLM cache, with --llm, mostly misses).
BODIES: list[tuple[int, tuple[str, ...]]] = [
    (20, ("meal plan for {n} days", "meal plan {kcal} calories vegetarian",
          "Can you make me a meal plan for next week? high protein please",
          "{n} day meal plan for weight loss", "plan my meals for the week, no pork")),
    (12, ("grocery list for the week", "shopping list for {n} people, vegetarian",
          "grocery list for my meal plan", "what should I buy at the store for {dish}?")),
    (20, ("recipe with {food}", "quick dinner ideas with {food}", "how do I make {dish}?",
          "recipe for {dish} without dairy", "What can I cook with {food} and rice?")),
    (18, ("calories in {n} eggs", "how much protein in {food}?", "calories in a bowl of {food}",
          "macros of 100g {food}", "nutrition facts for {food}")),
    (12, ("tips for a gluten free diet", "is it ok to eat late at night?",
          "how can I lose weight in a healthy way", "is keto healthy?",
          "advice for eating more fiber")),
    (8, ("hi", "thanks!", "what can you do?", "hello there", "ok cool")),
    (6, ("BALANCE", "balance", "tokens")),
    (2, ("HELP",)),
    (2, ("MORE",)),
]
# All known to the offline skills (bot/content/foods.yaml), so nutrition answers succeed.
FOODS = ("chicken", "salmon", "tofu", "lentils", "chickpeas", "oats", "broccoli", "beef",
         "eggs", "quinoa", "sweet potato", "greek yogurt", "avocado", "spinach", "tuna")
DISHES = ("lasagna", "pad thai", "chili", "banana bread", "overnight oats", "chicken curry",
          "minestrone", "burrito bowls", "shakshuka", "poke", "veggie stir fry", "pancakes")


# --- the messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One inbound message: its MessageSid, the whole HTTP request (bytes), and whether it is
    the first message of its sender (new people open an account and get the monthly grant)."""

    sid: str
    request: bytes
    new_sender: bool


class MessageFactory:
    """Signed inbound SMS requests, as Twilio posts them, for one server port."""

    def __init__(self, people: int, seed: int) -> None:
        from testing.deployment import ACCOUNT_SID, SMS_FROM
        from testing.payloads import sms

        self.rng = random.Random(seed)
        # The recorded SMS fixture's field set, addressed to our number and account.
        self.template = sms("x", sid="SMx") | {"To": SMS_FROM, "AccountSid": ACCOUNT_SID}
        self.senders = [f"+1650555{i:04d}" for i in range(people)]
        self.weights = [weight for weight, _ in BODIES]
        self.seen: set[str] = set()

    def body(self) -> str:
        rng = self.rng
        (texts,) = rng.choices([texts for _, texts in BODIES], weights=self.weights)
        return rng.choice(texts).format(
            n=rng.randint(2, 7), kcal=rng.choice(range(1200, 3001, 100)),
            food=rng.choice(FOODS), dish=rng.choice(DISHES))

    def plan(self, n: int, port: int, senders: list[str] | None = None) -> list[Planned]:
        """`n` messages, each with a fresh MessageSid ("SM" + 32 hex digits like Twilio's),
        from senders drawn at random from the pool (or from `senders`, in order)."""
        from testing.deployment import PUBLIC_BASE_URL, sign

        url = PUBLIC_BASE_URL + INBOUND_PATH
        planned = []
        for i in range(n):
            sid = "SM" + uuid.uuid4().hex
            sender = senders[i] if senders is not None else self.rng.choice(self.senders)
            new_sender = sender not in self.seen
            self.seen.add(sender)
            fields = self.template | {"Body": self.body(), "MessageSid": sid,
                                      "SmsMessageSid": sid, "SmsSid": sid, "From": sender}
            form = urlencode(fields).encode()
            head = (
                f"POST {INBOUND_PATH} HTTP/1.1\r\n"
                f"Host: {HOST}:{port}\r\n"
                "User-Agent: TwilioProxy/1.1\r\n"
                "Accept: */*\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(form)}\r\n"
                f"X-Twilio-Signature: {sign(url, fields)}\r\n"
                f"I-Twilio-Idempotency-Token: {uuid.uuid4()}\r\n"
                "Connection: close\r\n\r\n"
            )
            planned.append(Planned(sid, head.encode() + form, new_sender))
        return planned


# --- the open-loop generator --------------------------------------------------------------


@dataclass
class Result:
    """One request: times are the event loop's clock (s) except `wall` (epoch s)."""

    sid: str
    scheduled: float
    new_sender: bool = False
    started: float = 0.0
    done: float = 0.0
    wall: float = 0.0
    status: int = 0
    error: str | None = None
    inline_reply: bool = False


async def _post(planned: Planned, result: Result, port: int) -> None:
    loop = asyncio.get_running_loop()
    result.started = loop.time()
    result.wall = time.time()
    writer = None
    try:
        async with asyncio.timeout(TWILIO_WEBHOOK_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(planned.request)
            answer = await reader.read()  # to EOF: the server closes after the answer
        result.done = loop.time()
        if not answer.startswith(b"HTTP/1."):
            result.error = "bad answer"
            return
        result.status = int(answer[9:12])
        _, _, body = answer.partition(b"\r\n\r\n")
        result.inline_reply = b"<Message" in body
    except TimeoutError:
        result.error = "timeout (15 s)"
    except OSError as exc:
        result.error = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()


async def _load(messages: list[Planned], rate: float, port: int) -> list[Result]:
    """Post `messages` at `rate` messages/s on a fixed schedule (open loop); wait for all."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    results = [Result(m.sid, start + i / rate, m.new_sender) for i, m in enumerate(messages)]
    tasks = []
    for message, result in zip(messages, results, strict=True):
        delay = result.scheduled - loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)
        tasks.append(loop.create_task(_post(message, result, port)))
    await asyncio.gather(*tasks)
    return results


def run_load(messages: list[Planned], rate: float, port: int) -> list[Result]:
    return asyncio.run(_load(messages, rate, port))


async def _closed(messages: list[Planned], concurrency: int, seconds: float,
                  port: int) -> list[Result]:
    """`concurrency` clients, each posting its next message when its answer came back, for
    `seconds` (or until `messages` run out)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    pending = iter(messages)
    results: list[Result] = []

    async def client() -> None:
        while loop.time() < deadline:
            message = next(pending, None)
            if message is None:
                return
            result = Result(message.sid, loop.time(), message.new_sender)
            results.append(result)
            await _post(message, result, port)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


def run_closed(messages: list[Planned], concurrency: int, seconds: float,
               port: int) -> list[Result]:
    return asyncio.run(_closed(messages, concurrency, seconds, port))


# --- CPU accounting from /proc ------------------------------------------------------------


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU ticks used: user + system) of every process now running."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot; steal counts as busy (another
    guest had the CPU), guest time is already within user time."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def find_pids(*words: str) -> list[int]:
    """Processes whose command line contains every one of `words`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                line = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(word in line for word in words):
            found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU used per component since `start()`: `read()` gives (window s, {component: CPU s}).

    `roots` maps a process id to a component; a process counts for the component of its
    nearest root ancestor; everything else the machine did is "other" ("machine" is the
    total). Processes that ended within the window are not counted.
    """

    def __init__(self) -> None:
        self.roots: dict[int, str] = {os.getpid(): "generator"}
        self._before: tuple[float, dict[int, tuple[int, int]], tuple[int, int]] | None = None

    def start(self) -> None:
        self._before = (time.monotonic(), _processes(), _machine_ticks())

    def _component(self, pid: int, table: dict[int, tuple[int, int]]) -> str | None:
        for _ in range(64):
            if pid in self.roots:
                return self.roots[pid]
            if pid not in table or pid <= 1:
                return None
            pid = table[pid][0]
        return None

    def read(self) -> tuple[float, dict[str, float]]:
        assert self._before is not None
        started, before, (busy0, _) = self._before
        seconds = time.monotonic() - started
        after = _processes()
        busy1, _ = _machine_ticks()
        tick = 1.0 / os.sysconf("SC_CLK_TCK")
        used: Counter[str] = Counter()
        for pid, (_, ticks) in after.items():
            component = self._component(pid, after)
            if component is not None:
                used[component] += ticks - before.get(pid, (0, 0))[1]
        cpu = {name: ticks * tick for name, ticks in sorted(used.items())}
        cpu["other"] = max(busy1 - busy0 - sum(used.values()), 0) * tick
        cpu["machine"] = (busy1 - busy0) * tick
        return seconds, cpu


def cpu_percent(window: tuple[float, dict[str, float]]) -> dict[str, float]:
    """CPU seconds over a window as % of one core."""
    seconds, cpu = window
    return {name: round(100.0 * used / seconds, 1) for name, used in cpu.items()}


# --- the Twilio stand-in, in its own process ----------------------------------------------


class TimedTwilioStandIn(TwilioStandIn):
    """The Twilio REST stand-in, also noting when (epoch s) each accepted send arrived, and
    posting each accepted send's status callbacks ("sent", then "delivered") to the app,
    signed with the auth token over the `StatusCallback` URL, as Twilio does."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        super().__init__(account_sid=account_sid, auth_token=auth_token)
        self.arrivals: list[tuple[str, str, float]] = []
        self.refused = 0
        self.callbacks_ok = 0
        self.callbacks_failed = 0
        self.callback_port: int | None = None
        self._auth_token = auth_token
        self._callbacks: Any = None

    def start_callbacks(self, port: int) -> None:
        """From now on, post status callbacks to the app on loopback `port`."""
        from concurrent.futures import ThreadPoolExecutor

        self.callback_port = port
        self._callbacks = ThreadPoolExecutor(max_workers=16, thread_name_prefix="callback")

    def _create(self, account_sid: str, request: Any) -> Any:
        arrived = time.time()
        callback_url = request.form.get("StatusCallback")
        response = super()._create(account_sid, request)
        with self._lock:
            if response.status_code == 201:
                resource = json.loads(response.get_data())
                self.arrivals.append((resource["sid"], resource["to"], arrived))
            else:
                self.refused += 1
        if response.status_code == 201 and callback_url and self._callbacks is not None:
            self._callbacks.submit(self._post_callbacks, callback_url, resource)
        return response

    def _post_callbacks(self, url: str, resource: dict[str, Any]) -> None:
        from twilio.request_validator import RequestValidator

        path = "/" + url.split("/", 3)[3]
        for status in ("sent", "delivered"):
            fields = {"SmsSid": resource["sid"], "SmsStatus": status, "MessageStatus": status,
                      "To": resource["to"], "MessageSid": resource["sid"],
                      "AccountSid": resource["account_sid"], "From": resource["from"] or "",
                      "ApiVersion": "2010-04-01"}
            signature = RequestValidator(self._auth_token).compute_signature(url, fields)
            request = urllib.request.Request(
                f"http://{HOST}:{self.callback_port}{path}", data=urlencode(fields).encode(),
                headers={"X-Twilio-Signature": signature})
            try:
                with urllib.request.urlopen(request, timeout=15) as answer:
                    ok = answer.status == 204
            except (urllib.error.URLError, OSError):
                ok = False
            with self._lock:
                if ok:
                    self.callbacks_ok += 1
                else:
                    self.callbacks_failed += 1

    def take(self) -> tuple[list[tuple[str, str, float]], int]:
        """The arrivals (sid, to, epoch s) since the last call, and sends refused so far."""
        with self._lock:
            taken, self.arrivals = self.arrivals, []
            return taken, self.refused

    def callback_counts(self) -> tuple[int, int]:
        """Status callbacks answered 204, and the others, so far."""
        with self._lock:
            return self.callbacks_ok, self.callbacks_failed


def llm_standin(median_s: float, p95_s: float) -> Any:
    """The OpenAI stand-in answering each request after a log-normal delay with this median
    and 95th percentile (s); 0 for both: at once."""
    import math

    from testing.openai_standin import OpenAIStandIn

    class LatentOpenAIStandIn(OpenAIStandIn):
        """Each request waits its own draw (`delay_seconds` is read once per request)."""

        @property  # type: ignore[override]
        def delay_seconds(self) -> float:
            if median_s <= 0:
                return 0.0
            sigma = max(math.log(max(p95_s, median_s) / median_s) / 1.6449, 1e-9)
            return random.lognormvariate(math.log(median_s), sigma)

    return LatentOpenAIStandIn()


def _standins(conn: Connection, llm: bool, llm_median: float, llm_p95: float) -> None:
    """Child process: serve the Twilio (and OpenAI) stand-ins until told to stop."""
    from testing.deployment import ACCOUNT_SID, AUTH_TOKEN

    with ExitStack() as stack:
        twilio = stack.enter_context(TimedTwilioStandIn(ACCOUNT_SID, AUTH_TOKEN))
        openai_url = (stack.enter_context(llm_standin(llm_median, llm_p95)).base_url
                      if llm else None)
        conn.send((twilio.base_url, openai_url))
        while True:
            try:
                command = conn.recv()
            except EOFError:
                return
            if command == "stop":
                return
            if isinstance(command, tuple) and command[0] == "callbacks":
                twilio.start_callbacks(command[1])
                conn.send(True)
                continue
            if command == "callback_counts":
                conn.send(twilio.callback_counts())
                continue
            conn.send(twilio.take())


class StandIns:
    """The stand-ins' process: `twilio_url`, `openai_url` (or None), `take()` the arrivals."""

    def __init__(self, llm: bool, llm_median: float = 0.0, llm_p95: float = 0.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=_standins,
                                       args=(child, llm, llm_median, llm_p95), daemon=True,
                                       name="bench-standins")
        self.process.start()
        if not self._conn.poll(30):
            self.stop()
            raise RuntimeError("the stand-ins did not start within 30 s")
        self.twilio_url, self.openai_url = self._conn.recv()

    def take(self) -> tuple[list[tuple[str, str, float]], int]:
        self._conn.send("take")
        arrivals, refused = self._conn.recv()
        return arrivals, refused

    def start_callbacks(self, port: int) -> None:
        """The Twilio stand-in posts status callbacks to the app on `port` from now on."""
        self._conn.send(("callbacks", port))
        self._conn.recv()

    def callback_counts(self) -> tuple[int, int]:
        self._conn.send("callback_counts")
        ok, failed = self._conn.recv()
        return ok, failed

    def stop(self) -> None:
        with suppress(OSError):
            self._conn.send("stop")
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# --- servers as subprocesses --------------------------------------------------------------


class Subprocesses:
    """Every server process this run starts; `stop_all()` ends them (terminate, then kill).

    Each runs in its own session (process group), so a Ctrl-C reaches only this harness,
    which then stops them in order; a process that ignores SIGTERM has its group killed.
    """

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.logdir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.running.append((name, process))
        return process

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                # The group leader is not reaped yet, so its group id is still ours.
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.running = [(n, p) for n, p in self.running if p is not process]

    def stop_all(self) -> None:
        for _, process in reversed(list(self.running)):
            self.stop(process)


def wait_healthy(port: int, process: subprocess.Popen[bytes], name: str,
                 processes: Subprocesses, timeout: float = 60.0) -> None:
    """Wait for `GET /healthz` to answer 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited ({process.returncode}):\n{processes.log_tail(name)}")
        with suppress(urllib.error.URLError, OSError), \
                urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer /healthz in {timeout:.0f} s:\n"
                       f"{processes.log_tail(name)}")


def gunicorn_command(target: str, port: int, workers: int, worker_class: str) -> list[str]:
    """The same server settings for both apps: only the WSGI target differs."""
    return [str(BIN / "gunicorn"), "--workers", str(workers), "--worker-class", worker_class,
            "--bind", f"{HOST}:{port}", "--log-level", "warning", target]


def gunicorn_threads() -> int:
    """The threads of each gunicorn worker that `gunicorn_command` starts: `threads` of the
    project's gunicorn.conf.py, which gunicorn reads from its working directory, else 1.

    Raises:
        Exception: whatever running a broken gunicorn.conf.py raises (gunicorn would not
            start either), or ValueError when its `threads` is not a number.
    """
    conf = ROOT / "gunicorn.conf.py"
    return int(runpy.run_path(str(conf)).get("threads", 1)) if conf.exists() else 1


def worker_kind(worker_class: str, threads: int) -> str:
    """The worker class gunicorn runs: its sync worker becomes gthread with threads > 1."""
    return "gthread" if worker_class == "sync" and threads > 1 else worker_class


def app_environment(database_url: str, redis_url: str, standins: StandIns) -> dict[str, str]:
    """A queued production deployment: PostgreSQL, Redis + RQ, the REST API (stand-in)."""
    from testing.deployment import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_BASE_URL, SMS_FROM, WHATSAPP_FROM

    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TZ", "TMPDIR")
           if name in os.environ}
    env.update(
        APP_ENV="production",
        SECRET_KEY="bench-" + uuid.uuid4().hex,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        PUBLIC_BASE_URL=PUBLIC_BASE_URL,  # what the generator signs against
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,  # the tests' token, so the signatures validate
        TWILIO_SMS_FROM=SMS_FROM,
        TWILIO_WHATSAPP_FROM=WHATSAPP_FROM,
        TWILIO_API_BASE=standins.twilio_url,
    )
    if standins.openai_url:
        env.update(OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=standins.openai_url)
    return env


# --- the queue, drained -------------------------------------------------------------------


class Answers:
    """The RQ answers queue, seen from the harness: is it drained, how many jobs failed."""

    def __init__(self, redis_url: str) -> None:
        import redis
        from rq import Queue

        self.connection = redis.Redis.from_url(redis_url)
        self.queue = Queue("answers", connection=self.connection)

    def waiting(self) -> int:
        """Jobs queued, running or scheduled for a retry."""
        q = self.queue
        return (q.count + q.started_job_registry.count + q.scheduled_job_registry.count
                + q.deferred_job_registry.count)

    def failed(self) -> int:
        return int(self.queue.failed_job_registry.count)

    def wait_drained(self, deadline: float) -> bool:
        """Poll until nothing waits (twice in a row, 0.1 s apart) or `deadline` (monotonic)."""
        empty_polls = 0
        while time.monotonic() < deadline:
            empty_polls = empty_polls + 1 if self.waiting() == 0 else 0
            if empty_polls >= 2:
                return True
            time.sleep(0.1)
        return False


def reply_sids(database_url: str) -> dict[str, str]:
    """Twilio sid of each sent reply -> the MessageSid of the inbound it answers."""
    from sqlalchemy import create_engine, text

    from app.config import database_url as sqlalchemy_url

    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT o.message_sid, i.message_sid FROM messages o "
                "JOIN messages i ON i.id = o.in_reply_to_id "
                "WHERE o.direction = 'out' AND o.message_sid IS NOT NULL"
            )).all()
    finally:
        engine.dispose()
    return {out_sid: in_sid for out_sid, in_sid in rows}


# --- one row of the table -----------------------------------------------------------------


def _q(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p95, p99 of `values` (s) in ms, or Nones when there are none."""
    if not values:
        return None, None, None
    if len(values) == 1:
        return (round(values[0] * 1000, 1),) * 3  # type: ignore[return-value]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[49] * 1000, 1), round(cuts[94] * 1000, 1), round(cuts[98] * 1000, 1)


@dataclass
class Row:
    """One app under one load (an offered rate, or the closed loop).

    Rates in messages/s, times in ms; `cpu_pct`: % of one core per component during the load;
    `cpu_ms_per_message`: CPU ms per 200 answer (for the webhook counted until the queue
    drained, so "rq" is the jobs' cost per inbound message).
    """

    app: str
    mode: str
    offered_per_s: float | None
    messages: int
    new_sender_pct: float
    send_rate_per_s: float
    send_lag_p99_ms: float
    ok: int
    errors: dict[str, int]
    throughput_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    inline_replies: int | None = None
    rest_expected: int | None = None
    rest_replied: int | None = None
    replied_pct: float | None = None
    reply_p50_ms: float | None = None
    reply_p95_ms: float | None = None
    reply_p99_ms: float | None = None
    answered_per_s: float | None = None
    cpu_ms_per_answered: float | None = None
    callbacks: int | None = None
    drain_s: float | None = None
    cpu_pct: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_message: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def saturated(self) -> bool:
        """Open loop: the app answered < 80% of the offered rate, or > 1% were errors."""
        return self.offered_per_s is not None and (
            self.throughput_per_s < SATURATED_SHARE * self.offered_per_s
            or sum(self.errors.values()) > 0.01 * self.messages)

    def sustained(self, slo_ms: float) -> bool:
        """Open loop: all 200, >= 95% of the offered rate, p99 within `slo_ms` (ms)."""
        return (self.offered_per_s is not None and not self.errors
                and self.ok == self.messages
                and self.throughput_per_s >= SUSTAINED_SHARE * self.offered_per_s
                and self.p99_ms is not None and self.p99_ms <= slo_ms)


def load_row(app: str, mode: str, rate: float | None, results: list[Result],
             cpu: dict[str, float]) -> Row:
    """The generator's and the webhook's side of a run."""
    n = len(results)
    starts = sorted(r.started for r in results)
    lags = [max(r.started - r.scheduled, 0.0) for r in results]
    ok = [r for r in results if r.status == 200]
    errors = Counter(r.error or f"HTTP {r.status}" for r in results if r.status != 200)
    span = (max(r.done for r in ok) - starts[0]) if ok else 0.0
    p50, p95, p99 = _q([r.done - r.started for r in ok])
    row = Row(
        app=app, mode=mode, offered_per_s=rate, messages=n,
        new_sender_pct=round(100.0 * sum(r.new_sender for r in results) / n, 1),
        send_rate_per_s=round((n - 1) / (starts[-1] - starts[0]), 1) if n > 1 else 0.0,
        send_lag_p99_ms=_q(lags)[2] or 0.0,
        ok=len(ok), errors=dict(errors),
        throughput_per_s=round(len(ok) / span, 1) if span > 0 else 0.0,
        p50_ms=p50, p95_ms=p95, p99_ms=p99, cpu_pct=cpu,
    )
    if rate is not None and (row.send_rate_per_s < SUSTAINED_SHARE * rate
                             or row.send_lag_p99_ms > 50):
        row.notes.append("generator fell behind its schedule")
    return row


def add_replies(row: Row, results: list[Result], arrivals: dict[str, float],
                replies: dict[str, str], deadline: float) -> None:
    """The reply side: inline TwiML replies, and REST sends matched to their inbound."""
    first_send: dict[str, float] = {}
    for out_sid, arrived in arrivals.items():
        in_sid = replies.get(out_sid)
        if in_sid is not None and arrived < first_send.get(in_sid, float("inf")):
            first_send[in_sid] = arrived
    ok = [r for r in results if r.status == 200]
    rest = [r for r in ok if not r.inline_reply]
    matched = [r for r in rest if r.sid in first_send and first_send[r.sid] <= deadline]
    times = [first_send[r.sid] - r.wall for r in matched]
    if matched:
        span = max(first_send[r.sid] for r in matched) - min(r.wall for r in results)
        row.answered_per_s = round((len(matched) + len(ok) - len(rest)) / span, 1)
    row.inline_replies = len(ok) - len(rest)
    row.rest_expected = len(rest)
    row.rest_replied = len(times)
    row.replied_pct = round(100.0 * len(times) / len(rest), 1) if rest else None
    row.reply_p50_ms, row.reply_p95_ms, row.reply_p99_ms = _q(times)


# --- the run ------------------------------------------------------------------------------


@dataclass
class Settings:
    rates: list[float]
    seconds: float
    workers: int
    worker_class: str
    rq_workers: int
    grace: float
    drain_limit: float
    people: int
    llm: bool
    llm_median: float
    llm_p95: float
    callbacks: bool
    concurrency: int
    slo_ms: float
    all_rates: bool
    seed: int
    keep_logs: bool
    new_senders: bool
    durable: bool = True


@contextmanager
def servers(settings: Settings, logdir: Path) -> Iterator[dict[str, Any]]:
    """Everything up and healthy; yields ports, URLs, the queue and the CPU meter."""
    from bench.ledger import database
    from testing.redis_server import free_port, redis_server

    processes = Subprocesses(logdir)
    meter = CpuMeter()
    with database(None, durable=settings.durable) as url, redis_server() as redis_srv:
        standins = StandIns(settings.llm, settings.llm_median, settings.llm_p95)
        try:
            meter.roots[standins.process.pid or 0] = "stand-in"
            port = url.rsplit(":", 1)[1].split("/")[0]
            for pid in find_pids("postgres", f"-p {port} "):
                meter.roots[pid] = "postgres"
            for pid in find_pids("redis-server", f"{HOST}:{redis_srv.port}"):
                meter.roots[pid] = "redis"
            env = app_environment(url, redis_srv.url, standins)
            real_port, bare_port = free_port(), free_port()
            web = processes.start("gunicorn-app", gunicorn_command(
                "wsgi:app", real_port, settings.workers, settings.worker_class), env)
            meter.roots[web.pid] = "web"
            for i in range(settings.rq_workers):
                worker = processes.start(f"rq-worker-{i}",
                                         [str(BIN / "flask"), "--app", "wsgi", "worker"], env)
                meter.roots[worker.pid] = "rq"
            bare = processes.start("gunicorn-bare", gunicorn_command(
                "bench.bare:app", bare_port, settings.workers, settings.worker_class),
                {k: v for k, v in env.items() if k in ("PATH", "HOME", "LANG")})
            meter.roots[bare.pid] = "web"
            wait_healthy(real_port, web, "gunicorn-app", processes)
            wait_healthy(bare_port, bare, "gunicorn-bare", processes)
            if settings.callbacks:
                standins.start_callbacks(real_port)
            time.sleep(1.0)  # the RQ workers register and block on the queue
            for name, process in processes.running:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{processes.log_tail(name)}")
            yield {"url": url, "redis_url": redis_srv.url, "real_port": real_port,
                   "bare_port": bare_port, "standins": standins, "meter": meter,
                   "answers": Answers(redis_srv.url), "processes": processes}
        finally:
            # Before PostgreSQL and Redis stop, or the workers would log connection errors.
            processes.stop_all()
            standins.stop()


class Session:
    """The servers of one run and what it measured so far."""

    def __init__(self, servers: dict[str, Any], settings: Settings) -> None:
        self.s = servers
        self.settings = settings
        # One factory per app, with the same seed: both get the same senders and bodies.
        self.factories = {app: MessageFactory(settings.people, settings.seed)
                          for app in ("webhook", "bare")}
        self.arrivals: dict[str, float] = {}
        self.answers: Answers = servers["answers"]
        self.failed_before = self.answers.failed()
        self.callbacks_before = 0
        self.callbacks_failed_before = 0

    def port(self, app: str) -> int:
        return int(self.s["real_port"] if app == "webhook" else self.s["bare_port"])

    def open_loop(self, app: str, rate: float) -> Row:
        """`app` at `rate` messages/s for `--seconds` (open loop)."""
        n = max(int(rate * self.settings.seconds), 1)
        messages = self.factories[app].plan(n, self.port(app))
        return self._measure(app, "open", rate, lambda: run_load(messages, rate, self.port(app)))

    def closed_loop(self, app: str, concurrency: int, expected_per_s: float) -> Row:
        """`app` with `concurrency` clients each posting as soon as its answer came back."""
        n = int(max(expected_per_s * 3, 2000) * self.settings.seconds)
        messages = self.factories[app].plan(n, self.port(app))
        row = self._measure(app, f"closed x{concurrency}", None, lambda: run_closed(
            messages, concurrency, self.settings.seconds, self.port(app)))
        if row.messages >= n:
            row.notes.append(f"ran out of its {n} planned messages before the "
                             f"{self.settings.seconds:g} s: capacity is at least this")
        return row

    def _measure(self, app: str, mode: str, rate: float | None,
                 load: Callable[[], list[Result]]) -> Row:
        meter: CpuMeter = self.s["meter"]
        meter.start()
        results = load()
        row = load_row(app, mode, rate, results, cpu_percent(meter.read()))
        if app == "webhook":
            self._replies(row, results)
        _, used = meter.read()  # the webhook's: until the queue drained
        if row.ok:
            row.cpu_ms_per_message = {
                name: round(1000.0 * used.get(name, 0.0) / row.ok, 2)
                for name in ("web", "rq", "postgres", "redis", "stand-in", "generator")}
            answered = (row.rest_replied or 0) + (row.inline_replies or 0)
            if app == "webhook" and answered:
                row.cpu_ms_per_answered = round(1000.0 * sum(
                    used.get(name, 0.0) for name in ("web", "rq", "postgres", "redis"))
                    / answered, 2)
        print(_line(row), file=sys.stderr, flush=True)
        return row

    def warm_up(self, app: str) -> None:
        """Unmeasured: every web and RQ worker answers messages first (so the rows do not pay
        for first-request imports and connections), and, unless `--new-senders`, every sender
        of the pool writes once, so the rows measure people who wrote before this month
        (steady state), not their first message (account, monthly grant)."""
        settings, factory = self.settings, self.factories[app]
        first = [] if settings.new_senders else factory.plan(
            len(factory.senders), self.port(app), senders=factory.senders)
        more = factory.plan(max(settings.workers * 10 - len(first), 0), self.port(app))
        started = time.monotonic()
        results = run_closed(first + more, settings.workers, 600.0, self.port(app))
        if app == "webhook":
            self.answers.wait_drained(time.monotonic() + settings.drain_limit)
        ok = sum(r.status == 200 for r in results)
        print(f"  {app:<8} warmed up: {ok}/{len(results)} answered 200 in "
              f"{time.monotonic() - started:.0f} s", file=sys.stderr)

    def _replies(self, row: Row, results: list[Result]) -> None:
        """Wait for the queue to drain, then match the REST sends to the inbound messages."""
        settings, answers = self.settings, self.answers
        send_end = max(r.wall for r in results)
        grace_left = max(settings.grace - (time.time() - send_end), 0.0)
        drained = answers.wait_drained(time.monotonic() + grace_left)
        if not drained:
            drained = answers.wait_drained(time.monotonic() + settings.drain_limit)
        row.drain_s = round(time.time() - send_end, 1) if drained else None
        if not drained:
            left = answers.waiting()
            answers.queue.empty()
            row.notes.append(f"queue not drained {settings.drain_limit:.0f} s after the grace: "
                             f"{left} jobs dropped")
        standins: StandIns = self.s["standins"]
        taken, refused = standins.take()
        self.arrivals.update((sid, at) for sid, _, at in taken)
        if settings.callbacks:  # every accepted send's two callbacks, before the CPU is read
            expected = 2 * len(self.arrivals)
            deadline = time.monotonic() + 10
            ok, failed = standins.callback_counts()
            while ok + failed < expected and time.monotonic() < deadline:
                time.sleep(0.1)
                ok, failed = standins.callback_counts()
            row.callbacks = ok + failed - self.callbacks_before
            self.callbacks_before = ok + failed
            if failed > self.callbacks_failed_before:
                row.notes.append(f"{failed - self.callbacks_failed_before} status callbacks "
                                 "were not answered 204")
            self.callbacks_failed_before = failed
        add_replies(row, results, self.arrivals, reply_sids(self.s["url"]),
                    send_end + settings.grace)
        failed = answers.failed()
        if failed > self.failed_before:
            row.notes.append(f"{failed - self.failed_before} RQ jobs failed")
        self.failed_before = failed
        if refused:
            row.notes.append(f"the stand-in refused {refused} sends so far")


def run(settings: Settings) -> list[Row]:
    """The open-loop ladder (both apps at each rate, until each saturates), then the
    closed-loop capacity of each."""
    logdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    rows: list[Row] = []
    stopped: set[str] = set()
    try:
        with servers(settings, logdir) as s:
            session = Session(s, settings)
            for app in ("webhook", "bare"):
                session.warm_up(app)
            for rate in settings.rates:
                for app in ("webhook", "bare"):
                    if app in stopped:
                        continue
                    row = session.open_loop(app, rate)
                    rows.append(row)
                    if row.saturated and not settings.all_rates:
                        stopped.add(app)
                if stopped >= {"webhook", "bare"}:
                    break
            if settings.concurrency:
                for app in ("webhook", "bare"):
                    peak = max((r.throughput_per_s for r in rows if r.app == app),
                               default=100.0)
                    rows.append(session.closed_loop(app, settings.concurrency, peak))
    finally:
        if settings.keep_logs:
            print(f"server logs kept in {logdir}", file=sys.stderr)
        else:
            shutil.rmtree(logdir, ignore_errors=True)
    return rows


# --- output -------------------------------------------------------------------------------


def _load_label(row: Row) -> str:
    return f"open {row.offered_per_s:g}/s" if row.offered_per_s is not None else row.mode


def _line(row: Row) -> str:
    return (f"  {row.app:<8} {_load_label(row):<14} sent {row.send_rate_per_s:>7}/s  "
            f"ok {row.ok:>5}  errors {sum(row.errors.values()):>4}  "
            f"throughput {row.throughput_per_s:>7}/s  p50/p95/p99 {row.p50_ms}/{row.p95_ms}/"
            f"{row.p99_ms} ms  reply p50/p99 {row.reply_p50_ms}/{row.reply_p99_ms} ms  "
            f"cpu {row.cpu_pct}")


def summarise(rows: list[Row], settings: Settings) -> dict[str, Any]:
    """Per app: capacity (closed loop), peak open-loop throughput, sustained rate (msg/s);
    the ratios webhook / bare."""
    summary: dict[str, Any] = {}
    for app in ("webhook", "bare"):
        mine = [r for r in rows if r.app == app]
        opened = [r for r in mine if r.offered_per_s is not None]
        closed = [r for r in mine if r.offered_per_s is None]
        summary[app] = {
            "capacity_per_s": max((r.throughput_per_s for r in closed), default=None),
            "peak_open_per_s": max((r.throughput_per_s for r in opened), default=0.0),
            "sustained_per_s": max((r.offered_per_s or 0.0 for r in opened
                                    if r.sustained(settings.slo_ms)), default=0.0),
        }
    real, bare = summary["webhook"], summary["bare"]
    for name, key in (("capacity_ratio", "capacity_per_s"), ("peak_open_ratio", "peak_open_per_s"),
                      ("sustained_ratio", "sustained_per_s")):
        summary[name] = round(real[key] / bare[key], 3) if real[key] and bare[key] else None
    summary["goal"] = "acknowledgement capacity >= 0.3 x bare (closed loop)"
    ratio = summary["capacity_ratio"]
    summary["goal_met"] = None if ratio is None else ratio >= 0.3
    # Answered end to end at an offered rate: every reply sent within the grace, and the
    # reply p95 within the skill's own p95 (the LLM stand-in's, or none offline) + 1 s.
    budget_ms = 1000.0 + (1000.0 * settings.llm_p95 if settings.llm else 0.0)
    answered = [r for r in rows if r.app == "webhook" and r.offered_per_s is not None
                and r.replied_pct == 100.0 and r.reply_p95_ms is not None
                and r.reply_p95_ms <= budget_ms]
    real["reply_p95_budget_ms"] = budget_ms
    real["answered_sustained_per_s"] = max((r.offered_per_s or 0.0 for r in answered),
                                           default=0.0)
    real["peak_answered_per_s"] = max((r.answered_per_s or 0.0 for r in rows
                                       if r.app == "webhook"), default=0.0)
    at_200 = [r for r in rows if r.app == "webhook" and r.offered_per_s == 200.0]
    real["ack_p99_ms_at_200"] = at_200[0].p99_ms if at_200 else None
    cpu = [r.cpu_ms_per_answered for r in answered if r.cpu_ms_per_answered]
    real["cpu_ms_per_answered_median"] = round(statistics.median(cpu), 2) if cpu else None
    others = [r.cpu_pct.get("other", 0.0) for r in rows]
    summary["other_cpu_mean_pct"] = round(statistics.fmean(others), 1) if others else None
    return summary


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def markdown(rows: list[Row], summary: dict[str, Any], config: dict[str, Any]) -> str:
    lines = [
        f"Load run of {config['date']} on {config['cpus']} cores: gunicorn {config['gunicorn']}, "
        f"{config['workers']} {worker_kind(config['worker_class'], config['threads'])} "
        f"workers of {config['threads']} thread(s) for both apps; "
        f"{config['rq_workers']} RQ workers; {config['skills']} skills; APP_ENV=production; "
        f"PostgreSQL with fsync {'on' if config['durable'] else 'off'}; "
        f"{config['seconds']:g} s per row; {config['people']} senders"
        f"{'' if config['new_senders'] else ', each of whom wrote once in the warm-up'}. "
        f"Load average before {config['loadavg_before']}, after {config['loadavg_after']}.",
        "",
        "Rates in messages/s, times in ms (latency: connect to end of the answer; reply: inbound "
        "posted to the REST send at the stand-in), CPU in % of one core during the load "
        "(other = processes this run did not start) and in CPU ms per 200 answer (webhook: "
        "until the queue drained, so rq is the job's cost per inbound message).",
        "",
        "| app | load | sent/s | new senders % | ok | errors | throughput/s | p50 | p95 | p99 "
        "| inline replies | REST replied | answered/s | reply p50 | reply p95 | reply p99 "
        "| callbacks | drain s | CPU % web / rq / pg / other | CPU ms/msg web / rq / pg "
        "| CPU ms per answered |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
        "|---:|---|---|---:|",
    ]
    for r in rows:
        replied = (f"{r.rest_replied}/{r.rest_expected} ({r.replied_pct:g}%)"
                   if r.rest_expected and r.replied_pct is not None else "-")
        cpu, per = r.cpu_pct, r.cpu_ms_per_message
        lines.append(
            f"| {r.app} | {_load_label(r)} | {r.send_rate_per_s:g} | {r.new_sender_pct:g} | "
            f"{r.ok} | "
            f"{sum(r.errors.values())} | {r.throughput_per_s:g} | {_cell(r.p50_ms)} | "
            f"{_cell(r.p95_ms)} | {_cell(r.p99_ms)} | {_cell(r.inline_replies)} | {replied} | "
            f"{_cell(r.answered_per_s)} | "
            f"{_cell(r.reply_p50_ms)} | {_cell(r.reply_p95_ms)} | {_cell(r.reply_p99_ms)} | "
            f"{_cell(r.callbacks)} | "
            f"{_cell(r.drain_s)} | {cpu.get('web', 0):g} / {cpu.get('rq', 0):g} / "
            f"{cpu.get('postgres', 0):g} / {cpu.get('other', 0):g} | {per.get('web', 0):g} / "
            f"{per.get('rq', 0):g} / {per.get('postgres', 0):g} | "
            f"{_cell(r.cpu_ms_per_answered)} |")
    real, bare = summary["webhook"], summary["bare"]
    lines += [
        "",
        f"- Capacity (closed loop, {config['concurrency']} clients posting back to back): "
        f"webhook {_cell(real['capacity_per_s'])} msg/s, bare {_cell(bare['capacity_per_s'])} "
        f"msg/s, ratio **{_cell(summary['capacity_ratio'])}** (goal >= 0.3: "
        f"{ {True: 'met', False: 'not met', None: 'not measured'}[summary['goal_met']] }).",
        f"- Peak open-loop throughput: webhook {real['peak_open_per_s']:g}, bare "
        f"{bare['peak_open_per_s']:g} msg/s, ratio {_cell(summary['peak_open_ratio'])}.",
        f"- Sustained (highest offered rate with every answer a 200, throughput >= 95% of "
        f"offered, p99 <= {config['slo_ms']:g} ms): webhook {real['sustained_per_s']:g}, bare "
        f"{bare['sustained_per_s']:g} msg/s, ratio {_cell(summary['sustained_ratio'])}.",
        f"- End to end (REST send accepted at the stand-in): peak "
        f"{_cell(real['peak_answered_per_s'])} answered msg/s (first post to last reply); "
        f"sustained (every reply sent, reply p95 <= {real['reply_p95_budget_ms']:g} ms) "
        f"{_cell(real['answered_sustained_per_s'])} msg/s offered; median CPU "
        f"{_cell(real['cpu_ms_per_answered_median'])} ms per answered message (web + worker "
        f"+ PostgreSQL + Redis, status callbacks included).",
        f"- Acknowledgement p99 at 200 msg/s offered: {_cell(real['ack_p99_ms_at_200'])} ms "
        f"(goal < 50 ms).",
        f"- Other processes used {_cell(summary['other_cpu_mean_pct'])}% of one core on "
        f"average during the rows: the numbers are noisy.",
    ]
    notes = [f"- {r.app} {_load_label(r)}: {'; '.join(r.notes)}" for r in rows if r.notes]
    errors = [f"- {r.app} {_load_label(r)}: {r.errors}" for r in rows if r.errors]
    if notes or errors:
        lines += ["", "Notes:", "", *notes, *errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,50,100,150,200,400,800,1600,3200",
                        help="offered rates, messages/s, comma-separated, rising")
    parser.add_argument("--seconds", type=float, default=6.0, help="per row (s)")
    parser.add_argument("--workers", type=int, default=3,
                        help="gunicorn workers, both apps (default 3, the README's shape)")
    parser.add_argument("--worker-class", default="sync", help="gunicorn worker class")
    parser.add_argument("--rq-workers", type=int, default=2, help="RQ worker processes")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="s after the send phase within which a reply counts as sent")
    parser.add_argument("--drain-limit", type=float, default=120.0,
                        help="s to keep waiting for the queue after the grace, then drop it")
    parser.add_argument("--people", type=int, default=300,
                        help="senders in the pool (drawn uniformly; each writes once in the "
                        "warm-up)")
    parser.add_argument("--new-senders", action="store_true",
                        help="no warm-up message per sender: the rows then include people's "
                        "first messages (account opened, monthly tokens granted)")
    parser.add_argument("--llm", action="store_true", help="answer with the OpenAI stand-in")
    parser.add_argument("--llm-median", type=float, default=1.5,
                        help="with --llm: median LLM latency (s), log-normal")
    parser.add_argument("--llm-p95", type=float, default=4.0,
                        help="with --llm: 95th percentile of the LLM latency (s)")
    parser.add_argument("--no-fsync", action="store_true",
                        help="PostgreSQL with fsync and synchronous commit off: the CPU cost "
                        "without the disk's")
    parser.add_argument("--no-callbacks", action="store_true",
                        help="the Twilio stand-in posts no status callbacks")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="clients of the closed-loop capacity rows (default 2 x workers; "
                        "0 skips them)")
    parser.add_argument("--slo-ms", type=float, default=1000.0,
                        help="p99 webhook latency (ms) a sustained rate must stay under")
    parser.add_argument("--all-rates", action="store_true",
                        help="run every rate, even past saturation")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the servers' logs (a temporary folder; deleted by default)")
    parser.add_argument("--json", type=Path, default=None,
                        help="default bench/results/load-offline.json (load-llm.json with --llm)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="default bench/results/load-offline.md (load-llm.md with --llm)")
    args = parser.parse_args()
    stem = "load-llm" if args.llm else "load-offline"
    args.json = args.json or RESULTS / f"{stem}.json"
    args.markdown = args.markdown or RESULTS / f"{stem}.md"
    settings = Settings(
        rates=[float(r) for r in args.rates.split(",")], seconds=args.seconds,
        workers=args.workers, worker_class=args.worker_class, rq_workers=args.rq_workers,
        grace=args.grace, drain_limit=args.drain_limit, people=args.people, llm=args.llm,
        llm_median=args.llm_median, llm_p95=args.llm_p95, callbacks=not args.no_callbacks,
        concurrency=2 * args.workers if args.concurrency is None else args.concurrency,
        slo_ms=args.slo_ms, all_rates=args.all_rates, seed=args.seed, keep_logs=args.keep_logs,
        new_senders=args.new_senders, durable=not args.no_fsync)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Ctrl-C (even when started in the background, where SIGINT comes ignored) and SIGTERM
    # unwind through the `finally` blocks that stop every server.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupted)
    from importlib.metadata import version

    config = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
        "gunicorn": version("gunicorn"), "python": sys.version.split()[0],
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        **{k: v for k, v in asdict(settings).items() if k != "llm"},
        "skills": (f"LLM (OpenAI stand-in, latency median {settings.llm_median:g} s, p95 "
                   f"{settings.llm_p95:g} s)" if settings.llm else "offline"),
        "gunicorn_conf_py": (ROOT / "gunicorn.conf.py").exists(),
        "threads": gunicorn_threads(),
        "app_env": "production",
        "postgres": f"throwaway, fsync {'on' if settings.durable else 'off'}",
    }
    started = time.monotonic()
    rows = run(settings)
    config["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    config["wall_s"] = round(time.monotonic() - started, 1)
    summary = summarise(rows, settings)
    table = markdown(rows, summary, config)
    print(table)
    for path in (args.json, args.markdown):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(table)
    args.json.write_text(json.dumps(
        {"config": config, "summary": summary, "rows": [asdict(r) for r in rows]},
        indent=2) + "\n")
    print(f"wrote {args.json} and {args.markdown} ({config['wall_s']} s)", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: every server was stopped", file=sys.stderr)
        sys.exit(130)
