"""The CPU gate (bot.waits): few jobs run at once, and a job waiting on a remote service lets
another run meanwhile."""

from __future__ import annotations

import threading
import time

import pytest

from bot import waits
from bot.waits import CpuGate, waiting_on


def test_without_a_gate_waiting_on_does_nothing():
    with waiting_on("llm"):
        pass  # no gate set on this thread: nothing to give up or take back


def test_a_gate_needs_a_slot():
    with pytest.raises(ValueError, match="at least one slot"):
        CpuGate(0)


def _run_two(gate: CpuGate, first_waits: bool) -> list[str]:
    """Thread A takes the gate's only slot, then (if `first_waits`) waits on "the LLM" until
    thread B has run; returns the order of what happened."""
    events: list[str] = []
    b_ran = threading.Event()

    def a() -> None:
        with gate.held():
            events.append("a starts")
            if first_waits:
                with waiting_on("llm"):
                    b_ran.wait(5)
            else:
                b_ran.wait(0.3)
            events.append("a ends")

    def b() -> None:
        with gate.held():
            events.append("b runs")
            b_ran.set()

    ta = threading.Thread(target=a)
    ta.start()
    while "a starts" not in events:
        time.sleep(0.001)
    tb = threading.Thread(target=b)
    tb.start()
    ta.join(10)
    tb.join(10)
    return events


def test_one_slot_runs_one_job_at_a_time():
    assert _run_two(CpuGate(1), first_waits=False) == ["a starts", "a ends", "b runs"]


def test_a_job_waiting_on_a_remote_call_lets_another_run():
    assert _run_two(CpuGate(1), first_waits=True) == ["a starts", "b runs", "a ends"]


def test_a_thread_that_cannot_get_a_slot_back_goes_on_without_one(monkeypatch):
    """The second guard against a deadlock: back from its wait, a job whose slot stays taken
    goes on after the patience, and does not give back a slot it did not take."""
    monkeypatch.setattr(waits, "GATE_PATIENCE_SECONDS", 0.05)
    gate = CpuGate(1)
    taken = threading.Event()
    release = threading.Event()

    def squatter() -> None:
        with gate.held():
            taken.set()
            release.wait(5)

    with gate.held(), waiting_on("twilio"):
        thread = threading.Thread(target=squatter)
        thread.start()
        taken.wait(5)
    # back without a slot (the squatter still held the only one), then out of `held`
    release.set()
    thread.join(5)
    # the gate has exactly its one slot: one holder at a time still
    assert gate._semaphore.acquire(timeout=0.5)
    assert not gate._semaphore.acquire(timeout=0.05)
