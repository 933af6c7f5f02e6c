"""Waiting for a web server the suite started as a subprocess."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from testing.redis_server import HOST


def wait_until_serving(port: int, processes: Sequence[subprocess.Popen[bytes]], log: Path,
                       timeout_seconds: float = 60) -> None:
    """Return once `GET /healthz` on `port` answers.

    Raises:
        AssertionError: one of `processes` exited, or `timeout_seconds` passed; the message
            is the server's log so far.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            assert all(p.poll() is None for p in processes), log.read_text()
            time.sleep(0.2)
