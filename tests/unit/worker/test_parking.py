"""The parking lot against shutdown and a lost channel: a delivery is finished with once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from runtime import AgentRegistry
from tests.unit.worker.conftest import Running, request
from worker.errors import EXIT_OK

Start = Callable[..., Running]

STARTED = threading.Event()
RELEASE = threading.Event()


@pytest.fixture
def registry() -> AgentRegistry:
    """One agent that runs until the test lets it finish."""
    STARTED.clear()
    RELEASE.clear()
    reg = AgentRegistry()

    @reg.agent("gated", intents=["ProcessIntent"])
    def gated(env: Any) -> dict[str, Any]:
        STARTED.set()
        RELEASE.wait(20)
        return {"done": True}

    return reg


class HeldCheck:
    """The worker's real runtime, whose parked-request check is held on its way back once it
    has found a request settled: the window in which shutdown or a lost channel takes the
    parked delivery out while the parking thread is about to hand it back."""

    def __init__(self, running: Running) -> None:
        self.runtime = running.worker.runtime
        self.real = self.runtime.settled_many
        self.found = threading.Event()
        self.go_on = threading.Event()
        self.runtime.settled_many = self._settled_many  # type: ignore[method-assign,assignment]

    def _settled_many(self, outcomes: list[Any]) -> list[bool]:
        settled = self.real(outcomes)
        if any(settled) and not self.found.is_set():
            self.found.set()
            self.go_on.wait(20)
        return settled


def _parked_behind_a_running_twin(start: Start) -> tuple[Running, HeldCheck]:
    running = start(concurrency=2)
    held = HeldCheck(running)
    t = running.transport
    body = request("park-race")
    t.publish(body, reply_to="rq")
    assert STARTED.wait(20)
    t.publish(body, reply_to="rq")
    assert t.wait_for(lambda: len(running.worker.parking) == 1)
    RELEASE.set()
    assert held.found.wait(20), "the owner never recorded"
    assert t.wait_for(lambda: 1 in t.acked)
    return running, held


@pytest.mark.parametrize("taken_by", ["shutdown", "lost channel"])
def test_a_delivery_taken_out_is_not_unparked_too(start: Start, taken_by: str) -> None:
    """The owner recorded; before the parking thread hands its twin back, shutdown (or a lost
    channel) takes the twin out. It is finished with once: in-flight never goes below zero,
    and the twin is handed back (or dropped) once."""
    running, held = _parked_behind_a_running_twin(start)
    t = running.transport
    worker = running.worker
    stopper = None
    if taken_by == "shutdown":
        stopper = threading.Thread(target=running.stop, daemon=True)
        stopper.start()
        assert t.wait_for(lambda: (2 in t.nacked) and worker._inflight == 0)
    else:
        t.lose_connection()
        assert t.wait_for(lambda: t.generation == 1 and len(worker.parking) == 0)
    held.go_on.set()
    if stopper is not None:
        stopper.join(20)
        assert running.exit_code == EXIT_OK, (running.exit_code, worker._inflight, t.events)
        assert t.nacked == [2]
    else:
        # the redelivered twin is answered from the record on the new channel
        assert t.wait_for(lambda: len(t.acked) == 2)
        assert t.wait_for(lambda: worker._inflight == 0)
    t.wait_for(lambda: worker._inflight < 0, timeout=0.5)
    assert worker._inflight == 0
