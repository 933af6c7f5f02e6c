"""gunicorn's settings for `gunicorn --workers 3 wsgi:app` started from the project's root
(gunicorn reads `./gunicorn.conf.py` by itself; `-c FILE` names another).

- `threads = 4`: each worker process serves up to 4 requests at once (gunicorn's `gthread`
  worker). The inbound webhook's acknowledgement ends with a durable commit, and PostgreSQL
  makes it wait for the WAL to reach the disk; a sync worker serves nothing else meanwhile.
  With threads, other requests run during that wait and their commits share one flush. On
  this project's 2-core machine, with fsync on, this took the acknowledgement p99 at
  200 messages/s offered from 208-1,061 ms to 51-117 ms (`bench/load.py`; README,
  "Performance"). The app keeps no per-request state outside Flask's contexts; the worker
  already runs the same code on 128 threads.
- `child_exit`: with `PROMETHEUS_MULTIPROC_DIR` set, a worker process that ended is marked
  dead so its live gauges leave the sums (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
from typing import Any

threads = 4


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's hook after a worker process exited: drop its live gauges from `/metrics`."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
