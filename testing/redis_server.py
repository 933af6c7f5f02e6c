"""A throwaway Redis server on a free loopback port, for the tests and the benchmarks.

Runs the real `redis-server` binary in the foreground (no persistence, a temporary `--dir`),
waits until it answers PING and terminates it afterwards. Redis is happy to run as root.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PORT_ATTEMPTS = 3


class RedisServerError(RuntimeError):
    """`redis-server` is missing, or it did not start answering PING in time."""


@dataclass(frozen=True)
class RedisServer:
    """Where a running throwaway Redis server listens."""

    host: str
    port: int
    url: str
    """The `redis://` URL of database 0, for `redis.Redis.from_url` and RQ."""


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it: bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerError(
            "redis-server not found on PATH; install it (e.g. `apt-get install redis-server`)"
        )
    return binary


def _output(process: subprocess.Popen[bytes], logfile: Path) -> str:
    """What the server said so far (its log file), for error messages."""
    try:
        text = logfile.read_text(errors="replace")
    except OSError:
        text = ""
    status = process.poll()
    state = f"exit code {status}" if status is not None else "still running"
    return f"redis-server ({state}) output:\n{text.strip() or '(nothing)'}"


class _ExitedEarly(RedisServerError):
    """`redis-server` exited before answering PING."""

    def __init__(self, output: str) -> None:
        super().__init__(f"redis-server exited early.\n{output}")
        self.port_taken = "Address already in use" in output


def _wait_until_ready(process: subprocess.Popen[bytes], server: RedisServer, logfile: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    client = redis.Redis(
        host=server.host,
        port=server.port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.exceptions.RedisError:
                pass
            if process.poll() is not None:
                raise _ExitedEarly(_output(process, logfile))
            if time.monotonic() > deadline:
                raise RedisServerError(
                    f"redis-server did not answer PING on {server.url} within "
                    f"{STARTUP_TIMEOUT:.0f} s.\n{_output(process, logfile)}"
                )
            time.sleep(0.02)
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start `redis-server` on a free loopback port; stop it and delete its folder after.

    Yields:
        A `RedisServer` with `host`, `port` and `url`.

    Raises:
        RedisServerError: if the binary is missing or the server does not answer PING in time.
    """
    binary = _redis_binary()
    workdir = Path(tempfile.mkdtemp(prefix="bot-redis-"))
    logfile = workdir / "redis-server.log"
    try:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_port()
            server = RedisServer(host=HOST, port=port, url=f"redis://{HOST}:{port}/0")
            command = [
                binary,
                "--bind", server.host,
                "--port", str(server.port),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(workdir),
                "--protected-mode", "no",
            ]  # fmt: skip
            with logfile.open("wb") as log:
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            try:
                _wait_until_ready(process, server, logfile)
            except _ExitedEarly as error:
                _stop(process)
                if error.port_taken and attempt < PORT_ATTEMPTS:
                    continue  # someone took the free port in the meantime: pick another
                raise
            except BaseException:
                _stop(process)
                raise
            try:
                yield server
            finally:
                _stop(process)
            return
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
