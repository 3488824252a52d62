"""The worker's middleware chain: hook order, failing middlewares, the runtime's reports, and
the Worker as a library object (start, stop, `with`), over the in-memory transport."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from runtime import AgentRegistry, IntentusRuntime
from tests.unit.worker.conftest import request, unit_config
from worker import Config, Worker, WorkerMiddleware
from worker.errors import EXIT_GRACE_EXPIRED, EXIT_OK, ConfigError
from worker.testing import MemoryTransport

DELIVERY_HOOKS = ("received", "handling", "handled", "decided", "recording", "recorded")
REPLY_HOOKS = ("replying", "replied", "settled")


class Log(WorkerMiddleware):
    """Writes each hook it sees, with its own name, to a shared list."""

    def __init__(self, name: str, events: list[tuple[str, str]]) -> None:
        self.name = name
        self.events = events

    def _log(self, hook: str) -> None:
        self.events.append((hook, self.name))

    def started(self, worker: Any) -> None:
        self._log("started")

    def stopping(self, worker: Any) -> None:
        self._log("stopping")

    def stopped(self, worker: Any, exit_code: int) -> None:
        self._log("stopped")

    def received(self, delivery: Any) -> None:
        self._log("received")

    def handling(self, delivery: Any) -> None:
        self._log("handling")

    def handled(self, delivery: Any, error: BaseException | None) -> None:
        self._log("handled")

    def decided(self, delivery: Any, decision: Any) -> None:
        self._log("decided")

    def recording(self, delivery: Any, decision: Any) -> None:
        self._log("recording")

    def recorded(self, delivery: Any, decision: Any, error: Any, seconds: float) -> None:
        self._log("recorded")

    def replying(self, delivery: Any, decision: Any) -> None:
        self._log("replying")

    def replied(self, delivery: Any, decision: Any, result: str) -> None:
        self._log("replied")

    def settled(self, delivery: Any, how: str) -> None:
        self._log("settled")

    def attempt_started(self, agent: str, attempt: int) -> None:
        self._log("attempt_started")

    def routed(self, intent: str, strategy: str, **kwargs: Any) -> None:
        self._log("routed")


def _fails(hook: str) -> Any:
    def fail(self: object, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"broken {hook}")

    return fail


# A middleware whose every hook raises.
Broken = type(
    "Broken",
    (WorkerMiddleware,),
    {hook: _fails(hook) for hook in dir(WorkerMiddleware) if not hook.startswith("_")},
)


def registry() -> AgentRegistry:
    reg = AgentRegistry()
    reg.register("alpha", lambda env: {"by": "alpha"}, intents=["ProcessIntent"])
    return reg


def config(tmp_path: Path, **overrides: Any) -> Config:
    return unit_config(tmp_path / "records", **{"concurrency": 1, **overrides})


def order(events: list[tuple[str, str]], hook: str) -> list[str]:
    return [name for h, name in events if h == hook]


class TestChain:
    def test_hooks_in_order_and_after_hooks_in_reverse(self, tmp_path: Path) -> None:
        """Before-hooks run first to last, the hooks after an event last to first."""
        events: list[tuple[str, str]] = []
        transport = MemoryTransport()
        chain = [Log("a", events), Log("b", events)]
        with Worker(config(tmp_path), registry(), middleware=chain, transport=transport):
            transport.publish(request("mw-1"), reply_to="rq", correlation_id="c1")
            assert transport.wait_for(lambda: transport.acked == [1])
            assert transport.wait_for(lambda: len(order(events, "settled")) == 2)
        for hook in ("started", "received", "handling", "decided", "recording", "replying"):
            assert order(events, hook) == ["a", "b"], hook
        for hook in ("handled", "recorded", "replied", "settled", "stopping", "stopped"):
            assert order(events, hook) == ["b", "a"], hook
        assert order(events, "attempt_started") == ["a", "b"]
        assert order(events, "routed") == ["a", "b"]
        seen = [h for h, name in events if name == "a"]
        sequence = ["started", "received", "handling", "decided", "recording", "recorded"]
        sequence += ["replying", "replied", "settled", "stopping", "stopped"]
        assert [h for h in seen if h in sequence] == sequence

    def test_a_failing_middleware_loses_no_message(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Every hook of one middleware raises: the request is answered and acked all the
        same, each failure is logged and counted by hook, and the worker stops cleanly."""
        events: list[tuple[str, str]] = []
        transport = MemoryTransport()
        worker = Worker(
            config(tmp_path),
            registry(),
            middleware=[Broken(), Log("after", events)],
            transport=transport,
        )
        worker.start()
        try:
            transport.publish(request("mw-2"), reply_to="rq", correlation_id="c2")
            assert transport.wait_for(lambda: transport.acked == [1])
            assert b'"status":"success"' in transport.replies[0].body.replace(b" ", b"")
            assert order(events, "replied") == ["after"]
        finally:
            assert worker.stop() == EXIT_OK
        errors = worker.metrics.middleware_errors
        for hook in ("before_route", "after_route", "received", "decided", "replied", "settled"):
            assert errors.labels(hook)._value.get() >= 1, hook
        assert order(events, "stopped") == ["after"]
        failed = {r.getMessage() for r in caplog.records if r.levelno == logging.ERROR}
        assert "middleware Broken.decided failed; the message goes on" in failed


class TestLibraryWorker:
    def test_start_and_stop_touch_no_signal_handler(self, tmp_path: Path) -> None:
        """An embedded worker leaves the process's signals to the application."""
        before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
        transport = MemoryTransport()
        worker = Worker(config(tmp_path), registry(), transport=transport)
        worker.start()
        try:
            assert transport.wait_for(lambda: transport.consuming)
            assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
            transport.publish(request("lib-1"), reply_to="rq", correlation_id="c3")
            assert transport.wait_for(lambda: transport.acked == [1])
        finally:
            assert worker.stop(grace=5) == EXIT_OK
        assert worker.stop() == EXIT_OK  # once stopped, stop() answers the same code
        assert not transport.consuming

    def test_stop_takes_its_own_grace(self, tmp_path: Path) -> None:
        """`stop(grace)` waits that long, not the configured grace, and says work was left."""
        entered, release = threading.Event(), threading.Event()
        reg = AgentRegistry()

        def held(env: Any) -> dict[str, Any]:
            entered.set()
            release.wait(30)
            return {}

        reg.register("held", held, intents=["ProcessIntent"])
        transport = MemoryTransport()
        worker = Worker(config(tmp_path, shutdown_grace_s=60), reg, transport=transport)
        worker.start()
        try:
            transport.publish(request("grace-1"), reply_to="rq", correlation_id="c4")
            assert entered.wait(20)
            assert worker.stop(grace=0.2) == EXIT_GRACE_EXPIRED
        finally:
            release.set()

    def test_stopped_before_starting_it_closes_and_cannot_start(self, tmp_path: Path) -> None:
        """A worker made and stopped unstarted releases its port and store, and stays stopped."""
        worker = Worker(config(tmp_path), registry(), transport=MemoryTransport())
        assert worker.stop() == EXIT_OK
        assert worker.wait(timeout=0)
        assert worker.http.httpd.socket.fileno() == -1  # the metrics port is free again
        with pytest.raises(RuntimeError):
            worker.start()

    def test_a_worker_that_cannot_be_made_leaves_nothing_running(self, tmp_path: Path) -> None:
        """Its metrics port is taken: the constructor raises and closes the store it opened
        (no committer thread left, no temp folder), so an application can try again."""
        before = set(threading.enumerate())
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(ConfigError):
                Worker(
                    config(tmp_path, metrics_addr=f"127.0.0.1:{port}"),
                    registry(),
                    transport=MemoryTransport(),
                )
        assert set(threading.enumerate()) - before == set()
        assert list((tmp_path / "records" / ".tmp").iterdir()) == []

    def test_stop_from_another_thread_while_the_application_waits(self, tmp_path: Path) -> None:
        """`wait()` blocks until the worker stopped, whoever stopped it."""
        transport = MemoryTransport()
        worker = Worker(config(tmp_path), registry(), transport=transport)
        worker.start()
        assert not worker.wait(timeout=0.05)
        stopper = threading.Thread(target=worker.stop)
        stopper.start()
        assert worker.wait(timeout=20)
        stopper.join(timeout=20)
        assert worker.stop() == EXIT_OK


def test_the_runtime_receives_the_shells_hooks_at_construction(tmp_path: Path) -> None:
    """What the worker needs from the runtime is given to its constructor, not patched in."""
    carried: list[object] = []
    resumed: list[object] = []
    rt = IntentusRuntime(registry(), carry_on=carried.append, resume=resumed.append)
    try:
        assert rt.invoker.carry_on == carried.append
        assert rt.aio.resume == resumed.append
    finally:
        rt.close()
