"""Redis and the RQ queue of answers (docs/architecture.md, "Real components").

With `REDIS_URL` set, a priced message's skill runs in an RQ job on the "answers" queue; the
job id is derived from the MessageSid, and the enqueue is `unique`, so a repeated enqueue is a
no-op. Without Redis nothing here connects anywhere and answers stay inline (TwiML).
"""

from __future__ import annotations

import re
from contextlib import suppress

import redis
from flask import Flask
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

QUEUE_NAME = "answers"
# Seconds a job may run: the LLM timeout and send retries fit well within it.
JOB_TIMEOUT_SECONDS = 180
# RQ retries a job that raised (the person's turn expired while held, the database was down):
# the job is idempotent, so a retry resumes where it stopped.
RETRY = Retry(max=3, interval=[5, 30, 120])
# Redis answers in microseconds; a Redis that accepts connections but stalls must not hold a
# webhook past Twilio's 15 s (each request makes at most four Redis calls). RQ's worker raises
# the read timeout of its own connection for its blocking dequeue.
REDIS_TIMEOUT_SECONDS = 1.0
# Connections one process keeps to Redis at most (at least twice a worker's threads).
REDIS_MAX_CONNECTIONS = 256
# States of a job that will not run again by itself: a message still waiting needs a new one.
_DONE = frozenset({JobStatus.FAILED, JobStatus.FINISHED, JobStatus.STOPPED, JobStatus.CANCELED})
_JOB_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def redis_connection(app: Flask) -> redis.Redis | None:
    """The app's Redis client (created once, connects lazily), or None without `REDIS_URL`."""
    url = app.config.get("REDIS_URL")
    if not url:
        return None
    connection = app.extensions.get("redis")
    if connection is None:
        # A worker's threads share this client (app.worker): a blocking pool waits (up to the
        # timeout) for a free connection instead of failing with "Too many connections".
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max(REDIS_MAX_CONNECTIONS,
                                     2 * int(app.config.get("WORKER_CONCURRENCY") or 0)),
            timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS, health_check_interval=30)
        connection = redis.Redis(connection_pool=pool)
        app.extensions["redis"] = connection
    return connection


def answers_queue(app: Flask) -> Queue | None:
    """The RQ queue jobs are enqueued on, or None without Redis."""
    connection = redis_connection(app)
    if connection is None:
        return None
    return Queue(QUEUE_NAME, connection=connection, default_timeout=JOB_TIMEOUT_SECONDS)


def job_id_for(message_sid: str) -> str:
    """The job id of a message's answer: "answer-<MessageSid>" (RQ allows [A-Za-z0-9_-])."""
    return "answer-" + _JOB_ID_UNSAFE.sub("_", message_sid)


def enqueue_answer(app: Flask, message_sid: str) -> bool:
    """Enqueue the job that answers `message_sid`; True when it is (or already was) queued.

    Call it after the commit that stored the message and its hold, so the job finds them. A
    job of that id still waiting or running makes this a no-op; one that failed for good (its
    retries spent, e.g. while the database was down) or finished is replaced, so the sweep and
    Twilio's repeat delivery can get a waiting message answered.

    Raises:
        redis.RedisError: Redis cannot be reached (the caller answers inline instead).
    """
    queue = answers_queue(app)
    if queue is None:
        return False
    job_id = job_id_for(message_sid)

    def enqueue() -> None:
        queue.enqueue(
            "app.jobs.answer_job", message_sid,
            job_id=job_id, unique=True, retry=RETRY,
            job_timeout=JOB_TIMEOUT_SECONDS, result_ttl=3600, failure_ttl=7 * 24 * 3600,
        )

    try:
        enqueue()
    except DuplicateJobError:
        try:
            job = Job.fetch(job_id, connection=queue.connection)
        except NoSuchJobError:  # it ended and expired meanwhile
            job = None
        status = job.get_status(refresh=True) if job is not None else None
        if job is not None and status not in _DONE:
            return True  # waiting, scheduled or running: nothing to do
        if job is not None and status == JobStatus.FAILED:
            # RQ moves it back to the queue in one step; a concurrent caller that got there
            # first leaves it no longer failed, which is just as good.
            with suppress(InvalidJobOperation, NoSuchJobError):
                queue.failed_job_registry.requeue(job)
            return True
        if job is not None:
            job.delete()
        with suppress(DuplicateJobError):  # another process re-enqueued it first
            enqueue()
    return True


def enqueue_delivery(app: Flask, message_ids: list[int]) -> bool:
    """Enqueue a job that sends stored messages (notices); False without Redis.

    Raises:
        redis.RedisError: Redis cannot be reached.
    """
    queue = answers_queue(app)
    if queue is None:
        return False
    queue.enqueue("app.jobs.deliver_messages", list(message_ids), retry=RETRY,
                  job_timeout=JOB_TIMEOUT_SECONDS, result_ttl=3600, failure_ttl=7 * 24 * 3600)
    return True
