"""A worker whose internal thread dies stops (not ready, exit 1) instead of running half-alive."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from runtime import AgentRegistry
from tests.unit.worker.conftest import Running, request
from worker.errors import EXIT_ERROR

Start = Callable[..., Running]

STARTED = threading.Event()
RELEASE = threading.Event()


@pytest.fixture
def registry() -> AgentRegistry:
    STARTED.clear()
    RELEASE.clear()
    reg = AgentRegistry()

    @reg.agent("gated", intents=["ProcessIntent"])
    def gated(env: Any) -> dict[str, Any]:
        STARTED.set()
        RELEASE.wait(20)
        return {"done": True}

    return reg


def _boom(*_args: Any) -> Any:
    raise RuntimeError("injected into the thread's loop")


def test_dead_parking_thread_stops_the_worker(start: Start) -> None:
    """The parking lot's loop meets an unexpected error: the worker reports it in readiness
    and exits 1."""
    running = start(concurrency=2, shutdown_grace_s=2.0)
    running.worker.runtime.settled_many = _boom  # type: ignore[method-assign]
    t = running.transport
    body = request("dead-parking")
    t.publish(body, reply_to="rq")
    assert STARTED.wait(20)
    t.publish(body, reply_to="rq")  # parked: the lot asks the store, and its loop dies
    _assert_stops(running, "intentus-parking")


def test_dead_watchdog_stops_the_worker(start: Start) -> None:
    """The agent watchdog's loop dies when it starts: the worker exits 1, not ready."""
    running = start(concurrency=2, shutdown_grace_s=2.0)
    running.worker.runtime.invoker.watchdog._loop = _boom  # type: ignore[method-assign]
    running.transport.publish(request("dead-watchdog"), reply_to="rq")
    assert STARTED.wait(20)
    _assert_stops(running, "watchdog")


def _assert_stops(running: Running, thread: str) -> None:
    worker = running.worker
    assert running.transport.wait_for(
        lambda: any(thread in reason for reason in worker.readiness()[1]) or worker.wait(timeout=0)
    ), worker.readiness()
    RELEASE.set()
    # The worker stops by itself: `wait()` returns without anyone calling `stop()`.
    assert worker.wait(timeout=30)
    assert running.stop() == EXIT_ERROR
    ready, reasons = worker.readiness()
    assert not ready
    assert any(thread in reason and "died" in reason for reason in reasons), reasons
