"""What the HTTP stand-ins share: a threaded WSGI server on a free loopback port.

A stand-in subclasses `LoopbackServer`, sets `thread_name` (and `base_path` if its API lives
under a prefix) and implements `_handle(request) -> Response`. It gets `start()` / `stop()`,
context-manager use, `port`, `base_url`, a thread-safe `delay_seconds` with `_pause()` (woken
early by `stop()`), and `_lock` for its own state. `FailureQueue` holds the errors queued by a
stand-in's `fail_next()`; `json_response()` builds a JSON answer.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

HOST = "127.0.0.1"

T = TypeVar("T")


class QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler without the one-line access log per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass
class _Queued(Generic[T]):
    failure: T
    remaining: int


class FailureQueue(Generic[T]):
    """Queued failures, each answering a given number of consecutive requests. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: deque[_Queued[T]] = deque()

    def push(self, failure: T, times: int = 1) -> None:
        """Queue `failure` for the next `times` requests (after those already queued)."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._entries.append(_Queued(failure, times))

    def take(self) -> T | None:
        """The failure that answers this request, or None if none is queued."""
        with self._lock:
            if not self._entries:
                return None
            entry = self._entries[0]
            entry.remaining -= 1
            if entry.remaining <= 0:
                self._entries.popleft()
            return entry.failure

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def json_response(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    """A JSON response with `status`, `payload` as its body and the extra `headers`."""
    response = Response(json.dumps(payload), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class Superseded(Exception):
    """Raised in a request that was sleeping in `_pause` when the test reset the stand-in."""


class LoopbackServer:
    """A threaded loopback HTTP server; subclasses answer requests in `_handle`.

    Use as a context manager (or call `start()` / `stop()`); `base_url` is valid once started.
    """

    thread_name = "loopback-server"
    base_path = ""

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._closing = threading.Event()
        # Set to wake requests sleeping in `_pause`; replaced by `_supersede_delayed`.
        self._wake = threading.Event()
        self._delay_seconds = delay_seconds
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind a free loopback port and serve on a daemon thread."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        self._closing.clear()
        with self._lock:
            self._wake = threading.Event()
        self._server = make_server(
            HOST, 0, self._wsgi_app, threaded=True, request_handler=QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Wake delayed requests, stop serving and close the socket."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._closing.set()
        with self._lock:
            self._wake.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The loopback port the server listens on."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running; use it as a context manager")
        port: int = self._server.server_address[1]
        return port

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT` followed by `base_path`."""
        return f"http://{HOST}:{self.port}{self.base_path}"

    # -- delay -----------------------------------------------------------------------------

    @property
    def delay_seconds(self) -> float:
        """Sleep this long before answering any request (to provoke client timeouts)."""
        with self._lock:
            return self._delay_seconds

    @delay_seconds.setter
    def delay_seconds(self, value: float) -> None:
        with self._lock:
            self._delay_seconds = value

    def _pause(self) -> None:
        """Wait `delay_seconds`, or until `stop()` is called.

        Raises:
            Superseded: the test reset the stand-in meanwhile (`_supersede_delayed`). The
                request then ends with a 503 and must not touch state: a late request from
                an earlier test would otherwise consume the next test's queued failures.
        """
        delay = self.delay_seconds
        if delay <= 0:
            return
        with self._lock:
            wake = self._wake
        wake.wait(delay)
        with self._lock:
            superseded = wake is not self._wake
        if superseded:
            raise Superseded

    def _supersede_delayed(self) -> None:
        """End every request sleeping in `_pause` with a 503 that changes nothing.

        Subclasses call this from `reset()`, before clearing their state.
        """
        with self._lock:
            old, self._wake = self._wake, threading.Event()
        old.set()

    # -- the server ------------------------------------------------------------------------

    def _wsgi_app(self, environ: dict[str, Any], start_response: Any) -> Any:
        try:
            response = self._handle(Request(environ))
        except Superseded:
            response = json_response(503, {"error": "superseded by a reset of the stand-in"})
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        raise NotImplementedError
