"""Handlers called inline on the routing thread, with deadlines kept by the watchdog."""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

from runtime import AgentRegistry, IntentusRuntime
from runtime.engine import Outcome
from runtime.invoker import Abandoned

from .conftest import Calls, envelope, ok


def registry_of(*agents: tuple[str, Any], **opts: dict[str, Any]) -> AgentRegistry:
    reg = AgentRegistry()
    for name, handler in agents:
        reg.register(name, handler, intents=["ProcessIntent"], **opts.get(name, {}))
    return reg


def body(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


class Routing:
    """Runs `process_inline` on its own thread and keeps what happened to it."""

    def __init__(self, rt: IntentusRuntime, request: bytes) -> None:
        self.delivered: queue.SimpleQueue[tuple[Outcome, str]] = queue.SimpleQueue()
        self.abandoned = threading.Event()
        self.returned = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(rt, request), name="routing")
        self.thread.start()

    def _run(self, rt: IntentusRuntime, request: bytes) -> None:
        def deliver(outcome: Outcome) -> None:
            self.delivered.put((outcome, threading.current_thread().name))

        try:
            rt.process_inline(request, deliver=deliver)
        except Abandoned:
            self.abandoned.set()
        else:
            self.returned.set()


class TestInline:
    def test_handler_runs_on_the_routing_thread(self, make_runtime, calls: Calls) -> None:
        """DIRECT calls the handler on the thread that routes, and delivers there."""
        seen: list[str] = []

        def handler(env: Any) -> dict[str, Any]:
            seen.append(threading.current_thread().name)
            return {"ok": True}

        rt = make_runtime(registry_of(("a", handler)))
        routing = Routing(rt, body(envelope()))
        outcome, thread = routing.delivered.get(timeout=5)
        routing.thread.join(5)
        assert seen == ["routing"]
        assert thread == "routing"
        assert outcome.response["payload"] == {"ok": True}
        assert routing.returned.is_set() and not routing.abandoned.is_set()
        assert rt.invoker.threads() == 0  # no agent pool thread was needed

    def test_timeout_carries_the_request_on_elsewhere(
        self, make_runtime, calls: Calls, release: threading.Event
    ) -> None:
        """At the deadline FALLBACK goes on at once on another thread; the stuck thread is
        told it was abandoned when its handler returns, and its result is discarded."""

        def stuck(env: Any) -> dict[str, Any]:
            calls.add("a")
            release.wait(10)
            return {"late": True}

        rt = make_runtime(registry_of(("a", stuck), ("b", ok(calls, "b")), a={"timeout_s": 0.2}))
        start = time.monotonic()
        routing = Routing(rt, body(envelope(strategy="FALLBACK")))
        outcome, thread = routing.delivered.get(timeout=5)
        assert time.monotonic() - start < 2.0
        assert thread != "routing"
        assert outcome.response["payload"] == {"by": "b"}
        record = json.loads(outcome.record or b"{}")
        end_a = record["events"][2]["payload"]
        assert (end_a["error_code"], end_a["abandoned"]) == ("AGENT_TIMEOUT", True)
        assert rt.invoker.abandoned() == 1
        assert not routing.abandoned.is_set()  # still inside the handler
        release.set()
        assert routing.abandoned.wait(5)
        assert not routing.returned.is_set()
        assert rt.invoker.abandoned() == 0
        assert routing.delivered.empty()  # delivered exactly once

    def test_every_attempt_ends_once_at_the_deadline(self, make_runtime) -> None:
        """Handlers that return right at their deadline: each request is delivered exactly
        once, as a success on the routing thread or as a timeout elsewhere, never both."""

        def borderline(env: Any) -> dict[str, Any]:
            time.sleep(0.002)
            return {"ok": True}

        rt = make_runtime(registry_of(("a", borderline), a={"timeout_s": 0.002}))
        kinds = {"success": 0, "timeout": 0}
        for i in range(150):
            routing = Routing(rt, body(envelope(request_id=f"edge-{i}")))
            outcome, thread = routing.delivered.get(timeout=5)
            routing.thread.join(5)
            assert not routing.thread.is_alive()
            if outcome.status == "success":
                assert thread == "routing" and routing.returned.is_set()
                kinds["success"] += 1
            else:
                assert outcome.error_code == "AGENT_TIMEOUT"
                assert thread != "routing" and routing.abandoned.is_set()
                kinds["timeout"] += 1
            time.sleep(0.001)
            assert routing.delivered.empty()
        assert sum(kinds.values()) == 150
        assert rt.invoker.abandoned() == 0

    def test_parallel_still_uses_the_pool(self, make_runtime, calls: Calls) -> None:
        """PARALLEL agents run concurrently on pool threads, never inline."""
        names: list[str] = []

        def handler(env: Any) -> dict[str, Any]:
            names.append(threading.current_thread().name)
            return {}

        rt = make_runtime(registry_of(("a", handler), ("b", handler)))
        routing = Routing(rt, body(envelope(strategy="PARALLEL")))
        outcome, thread = routing.delivered.get(timeout=5)
        assert thread == "routing"
        assert outcome.status == "success"
        assert names and "routing" not in names
