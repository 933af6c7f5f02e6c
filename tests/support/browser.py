"""What the browser tests share: the app served live on a loopback port, and Debian's chromium.

`LiveServer` serves a Flask app with Werkzeug's threaded server on a daemon thread (a free
port on 127.0.0.1); use it as a context manager, `base_url` is valid once started. Requests
are handled on the server's threads, each in its own app context, so a test commits whatever
the pages should show before it starts the server.

Playwright drives the chromium that Debian packages (`apt-get install chromium`, done by
`.ci/test`), never a browser downloaded by `playwright install`: `chromium_executable()`
finds it (`$CHROMIUM` overrides the default `/usr/bin/chromium`) and `CHROMIUM_ARGS` are the
flags it runs with (no sandbox as root in a container, and no background traffic to Google's
services, which a machine without internet would otherwise keep retrying).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from testing.loopback import HOST, QuietHandler

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_executable() -> str | None:
    """The chromium to drive: `$CHROMIUM` (a path, or a name looked up on PATH) if set, else
    `/usr/bin/chromium`; None if that is not an executable file."""
    wanted = os.environ.get("CHROMIUM") or DEFAULT_CHROMIUM
    found = wanted if os.sep in wanted else shutil.which(wanted)
    if found and Path(found).is_file() and os.access(found, os.X_OK):
        return found
    return None


IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
# How long a page may take to load or an element to appear, in milliseconds.
TIMEOUT_MS = 15_000
REPO = Path(__file__).resolve().parents[2]

# A browser test runs where chromium is; without it, it is skipped, except under CI=true where
# it fails instead (CI must run it).
needs_chromium = pytest.mark.skipif(
    chromium_executable() is None and not IN_CI,
    reason="chromium is not installed (apt-get install chromium, or set $CHROMIUM); "
           "under CI=true this test fails instead",
)


def artifacts_dir() -> Path:
    """Where screenshots go: `$TEST_ARTIFACTS_DIR`, else `<repo>/artifacts/screenshots`."""
    configured = os.environ.get("TEST_ARTIFACTS_DIR")
    folder = Path(configured) if configured else REPO / "artifacts" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class LiveServer:
    """A Flask app served over real HTTP on a free loopback port, on a daemon thread."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Bind a free loopback port and serve the app on a daemon thread."""
        if self._server is not None:
            raise RuntimeError("LiveServer is already running")
        self._server = make_server(HOST, 0, self.app, threaded=True,
                                   request_handler=QuietHandler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="live-app-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and wait (briefly) for the thread to end."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

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
        if self._server is None:
            raise RuntimeError("LiveServer is not running; use it as a context manager")
        port: int = self._server.server_address[1]
        return port

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, without a trailing slash."""
        return f"http://{HOST}:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of `path` (which starts with "/") on this server."""
        return self.base_url + path
