"""The worker: RQ's own worker loop, with many jobs in flight in one process.

RQ runs one job at a time per worker process (`Worker` forks a horse per job, `SimpleWorker`
runs it inline), so with an LLM that takes seconds a process would answer under one message a
second. RQ ships no threaded worker, and the LLM and Twilio waits are I/O, so threads serve
them well. `ThreadedWorker` is the smallest change to RQ that runs jobs concurrently: it is
RQ's `SimpleWorker` (RQ's dequeue, registries, retries, heartbeats, failure handling and the
admin queue page all stay as they are) whose `execute_job` hands each job to a thread pool,
taking a slot before it dequeues the next job, so at most `concurrency` jobs are taken from
Redis at once and the rest stay queued for other workers. What RQ keeps per running job on
the worker (`execution`) is kept per thread, and job timeouts use RQ's `TimerDeathPenalty`
(the default, SIGALRM, works only in the main thread).

Only `cpu_slots` of the jobs run at once between their LLM and Twilio waits (the CPU gate,
`bot.waits`): the other threads sleep instead of contending for the interpreter lock.

Each job runs in its own Flask app context, so it gets its own database session; a session
holds a pooled connection only inside a transaction, and no transaction stays open while an
LLM or Twilio answers (`bot.router.pipeline`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flask import Flask
from rq import SimpleWorker
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import TimerDeathPenalty
from rq.utils import now
from rq.worker import WorkerStatus

from app.metrics import IN_FLIGHT
from bot.waits import CpuGate

log = logging.getLogger(__name__)

# Jobs one worker process keeps in flight at most (`WORKER_CONCURRENCY`): an answer waits on
# the LLM or Twilio most of its time. How many are in flight at once is also bounded by the
# CPU each one needs before its LLM call (routing, under the GIL): about the LLM's latency
# divided by that CPU time (docs/pipeline.md, "Many answers in flight").
DEFAULT_CONCURRENCY = 128
# Jobs that run at once between their remote waits (`WORKER_CPU_SLOTS`, `bot.waits.CpuGate`):
# enough to keep two cores busy while some wait on PostgreSQL or Redis, few enough that the
# threads do not fight over the interpreter lock (docs/pipeline.md, "The CPU gate").
DEFAULT_CPU_SLOTS = 2
# RQ refreshes the worker's own key (a heartbeat: HSET + EXPIRE of a key that lives 240 s or
# more) and looks for `rq suspend` around every dequeue, each a Redis round trip of its own:
# with many jobs a second that is several round trips per job. The worker does each at most
# once this often (seconds); the heartbeats RQ sends inside its own pipelines, with a job's
# start and end, are left as they are.
HOUSEKEEPING_EVERY_SECONDS = 1.0


def lower_priority(nice: int) -> None:
    """Run this process `nice` steps below normal CPU priority (the web's acknowledgements
    come first). Linux's autogroup scheduling shares the CPU between sessions before it looks
    at nice values, so a worker that leads its own session (a service manager, `setsid`)
    lowers its session's group too (`/proc/self/autogroup`); a worker that shares a session
    with other processes leaves the group alone.

    Raises:
        OSError: the process may not change its priority.
    """
    os.nice(nice)
    autogroup = Path("/proc/self/autogroup")
    if os.getsid(0) == os.getpid() and autogroup.exists():
        try:
            autogroup.write_text(str(nice))
        except OSError as exc:  # a kernel or container that refuses: os.nice still applies
            log.warning("autogroup priority unchanged", extra={"error": str(exc)})


class ThreadedWorker(SimpleWorker):
    """An RQ worker that runs up to `concurrency` jobs at once, each on its own thread.

    Args:
        queues, connection, ...: as RQ's `SimpleWorker`.
        app: the Flask app; each job runs inside its own app context.
        concurrency: jobs in flight at most (>= 1).
        cpu_slots: jobs running at once between their LLM and Twilio waits (>= 1; the CPU
            gate, `bot.waits`).

    Raises:
        ValueError: `concurrency` or `cpu_slots` is below 1.
    """

    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args: Any, app: Flask, concurrency: int = DEFAULT_CONCURRENCY,
                 cpu_slots: int = DEFAULT_CPU_SLOTS, **kwargs: Any) -> None:
        if concurrency < 1:
            raise ValueError("a worker needs at least one slot")
        self._gate = CpuGate(cpu_slots)
        self._local = threading.local()
        self._running = 0
        self._suspension_checked = 0.0
        super().__init__(*args, **kwargs)
        self._app = app
        self._slots = threading.BoundedSemaphore(concurrency)
        self._idle = threading.Condition()
        self._finished_count = 0
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="job")

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat of the worker's key; a lone one (no pipeline, the default TTL) is
        skipped within `HOUSEKEEPING_EVERY_SECONDS` of the last."""
        last = self.last_heartbeat
        if (pipeline is None and timeout is None and last is not None
                and (now() - last).total_seconds() < HOUSEKEEPING_EVERY_SECONDS):
            return
        super().heartbeat(timeout, pipeline)

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's check for `rq suspend`, at most once every `HOUSEKEEPING_EVERY_SECONDS`."""
        checked = time.monotonic()
        if checked - self._suspension_checked < HOUSEKEEPING_EVERY_SECONDS:
            return
        self._suspension_checked = checked
        super().check_for_suspension(burst)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """RQ's worker state; "idle" is not written while other jobs of this worker run (RQ
        sets it before every dequeue, which for this worker is not idleness)."""
        if state == WorkerStatus.IDLE and pipeline is None and self._running > 0:
            return
        super().set_state(state, pipeline)

    # RQ keeps the running job's Execution on the worker; with many jobs at once, each thread
    # keeps its own.
    @property  # type: ignore[override]
    def execution(self) -> Any:
        return getattr(self._local, "execution", None)

    @execution.setter
    def execution(self, value: Any) -> None:
        self._local.execution = value

    def dequeue_job_and_maintain_ttl(self, timeout: int | None,
                                     max_idle_time: int | None = None) -> Any:
        """RQ's dequeue, after taking a free slot (waiting for one). In burst mode (`timeout`
        None) an empty queue ends the work only once the jobs in flight are done and
        queued nothing new."""
        while True:
            self._slots.acquire()
            finished_before = self._finished_count
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            if result is not None:
                return result  # the slot goes with the job
            self._slots.release()
            if timeout is not None:
                return None
            # Burst: a job in flight, or one that ended since the dequeue, may have queued
            # more (its retry, a hand-over): look again once it is done.
            if not self._wait_until_idle() and self._finished_count == finished_before:
                return None

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run `job` on a pool thread; returns at once (the slot was taken at dequeue)."""
        with self._idle:
            self._running += 1
        try:
            self._pool.submit(self._run, job, queue)
        except RuntimeError:  # the pool is shut down: leave the job to RQ's clean-up
            self._finished()
            raise

    def teardown(self) -> None:
        """Wait for the jobs in flight (a warm shutdown finishes them), then RQ's teardown."""
        self._pool.shutdown(wait=True)
        super().teardown()

    def _run(self, job: Job, queue: Queue) -> None:
        IN_FLIGHT.inc()
        try:
            with self._gate.held(), self._app.app_context():
                self.prepare_execution(job)
                self.perform_job(job, queue)
        except BaseException:  # perform_job handles job errors; this is RQ's own failing
            log.exception("worker failed around a job", extra={"job_id": job.id})
        finally:
            IN_FLIGHT.dec()
            self._finished()

    def _finished(self) -> None:
        with self._idle:
            self._running -= 1
            self._finished_count += 1
            self._idle.notify_all()
        self._slots.release()

    def _wait_until_idle(self) -> bool:
        """Wait for every job in flight; True when there were some (look at the queue again)."""
        with self._idle:
            if self._running == 0:
                return False
            self._idle.wait_for(lambda: self._running == 0)
            return True
