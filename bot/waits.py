"""Waits on a remote service mark themselves, so that a process running many jobs on threads
lets the others use the CPU meanwhile.

A worker that keeps many answers in flight on threads (`app.worker.ThreadedWorker`) lets only
a few of them run at once: its *CPU gate*, a semaphore of a few slots. A hundred runnable
threads contending for one interpreter lock cost more CPU per answer than a few do (each
hand-over of the lock is a futex wake-up and a cold cache; docs/pipeline.md, "The CPU gate"),
and they gain nothing, since the machine has two cores. A job's thread holds a slot while it
routes, charges and records; around a call that waits on the network for a long time (the
LLM, Twilio's REST API) it gives the slot up (`waiting_on`), so another job runs meanwhile.
Outside such a worker (the web process, `flask chat`, the tests) no gate is set and
`waiting_on` does nothing.

The rule that keeps this free of deadlocks: `waiting_on` is entered with no database
transaction open (the orchestrator, `bot.router.pipeline`, commits before the skill and each
send). A thread that holds a slot may then wait only on a lock held by another slot holder,
which makes progress. As a second guard, a thread that cannot get a slot back within
`GATE_PATIENCE_SECONDS` goes on without one (and logs it) rather than wait for ever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# How long a thread back from a remote call waits for a slot of the CPU gate before it goes
# on without one (seconds): far above the few milliseconds a job runs between waits.
GATE_PATIENCE_SECONDS = 30.0

_local = threading.local()


class CpuGate:
    """At most `slots` threads of this process run between remote waits at once.

    Args:
        slots: how many (>= 1).

    Raises:
        ValueError: `slots` is below 1.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a CPU gate needs at least one slot")
        self.slots = slots
        self._semaphore = threading.Semaphore(slots)

    def _take(self) -> bool:
        if self._semaphore.acquire(timeout=GATE_PATIENCE_SECONDS):
            return True
        log.warning("CPU gate: no slot within the patience, going on without one",
                    extra={"seconds": GATE_PATIENCE_SECONDS})
        return False

    @contextmanager
    def held(self) -> Iterator[None]:
        """Run the block holding a slot (waiting for one); `waiting_on` inside it gives the
        slot up around a remote call. Not reentrant: one `held` per thread at a time."""
        _local.gate = self
        _local.holding = self._take()
        try:
            yield
        finally:
            if _local.holding:
                self._semaphore.release()
            _local.gate = None
            _local.holding = False


@contextmanager
def waiting_on(service: str) -> Iterator[None]:
    """Mark a call that waits on a remote `service` ("llm", "twilio"): the thread's slot of
    the CPU gate, if it holds one, is free for another job until the call returns. Enter it
    with no database transaction open (see the module's docstring)."""
    gate: CpuGate | None = getattr(_local, "gate", None)
    if gate is None or not getattr(_local, "holding", False):
        yield
        return
    gate._semaphore.release()
    _local.holding = False
    try:
        yield
    finally:
        _local.holding = gate._take()
