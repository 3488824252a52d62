"""Async agents in-process: every strategy mixed with sync agents, deadlines that cancel,
PARALLEL stragglers cancelled, agents that raise or block the loop, `route_intent_async`."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from runtime import AgentError, AgentRegistry, IntentusRuntime, Observer
from runtime.engine import Outcome

from .conftest import Calls, body, envelope, fail, ok, stored


def aok(calls: Calls, name: str, delay: float = 0.0) -> Callable[[Any], Any]:
    async def handler(env: Any) -> dict[str, Any]:
        calls.add(name)
        if delay:
            await asyncio.sleep(delay)
        return {"by": name}

    return handler


def registry_of(*agents: tuple[str, Any], **opts: dict[str, Any]) -> AgentRegistry:
    reg = AgentRegistry()
    for name, handler in agents:
        reg.register(name, handler, intents=["ProcessIntent"], **opts.get(name, {}))
    return reg


def ends(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["payload"] for e in record["events"] if e["type"] == "AGENT_ATTEMPT_END"]


class TestRegistry:
    def test_coroutine_functions_register_as_async(self) -> None:
        reg = AgentRegistry()

        @reg.agent("a", intents=["X"])
        async def a(env: Any) -> dict[str, Any]:
            return {}

        @reg.agent("s", intents=["X"])
        def s(env: Any) -> dict[str, Any]:
            return {}

        a_def, s_def = reg.get("a"), reg.get("s")
        assert a_def is not None and s_def is not None
        assert a_def.is_async and not s_def.is_async
        assert a_def.describe()["async"] is True

    def test_objects_with_an_async_call_are_async(self, make_runtime) -> None:
        class Base:
            async def __call__(self, env: Any) -> dict[str, Any]:
                await asyncio.sleep(0)
                return {"object": True}

        class Agent(Base):
            pass

        reg = registry_of(("o", Agent()))
        definition = reg.get("o")
        assert definition is not None and definition.is_async
        assert make_runtime(reg).route_intent(envelope()).payload == {"object": True}


class TestStrategies:
    def test_direct(self, make_runtime, calls: Calls) -> None:
        rt = make_runtime(registry_of(("a", aok(calls, "a"))))
        resp = rt.route_intent(envelope())
        assert resp.status == "success" and resp.payload == {"by": "a"}
        assert calls.names == ["a"]

    def test_fallback_from_async_to_sync_and_back(self, make_runtime, calls: Calls) -> None:
        async def afail(env: Any) -> dict[str, Any]:
            calls.add("a")
            raise AgentError("AGENT_UNAVAILABLE", "down")

        rt = make_runtime(
            registry_of(
                ("a", afail),
                ("b", fail(calls, "b")),
                ("c", aok(calls, "c")),
                a={"node_priority": 1},
                b={"node_priority": 2},
                c={"node_priority": 3},
            )
        )
        resp = rt.route_intent(envelope(strategy="FALLBACK"))
        assert resp.payload == {"by": "c"}
        assert calls.names == ["a", "b", "c"]
        record = stored(rt, resp.metadata.execution_id)
        assert [e["error_code"] for e in ends(record)[:2]] == ["AGENT_UNAVAILABLE"] * 2
        types = [e["type"] for e in record["events"]]
        assert types.count("FALLBACK_TRIGGERED") == 2

    def test_broadcast_mixed(self, make_runtime, calls: Calls) -> None:
        rt = make_runtime(
            registry_of(
                ("a", ok(calls, "a")),
                ("b", aok(calls, "b", delay=0.01)),
                ("c", ok(calls, "c")),
                ("d", aok(calls, "d")),
            )
        )
        resp = rt.route_intent(envelope(strategy="BROADCAST"))
        assert calls.names == ["a", "b", "c", "d"]
        assert resp.payload == {"by": "d"} and resp.metadata.attempts == 4

    def test_parallel_cancels_async_stragglers(self, make_runtime, calls: Calls) -> None:
        cleaned = threading.Event()

        async def slow(env: Any) -> dict[str, Any]:
            calls.add("slow")
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cleaned.set()
                raise
            return {"by": "slow"}

        rt = make_runtime(registry_of(("fast", aok(calls, "fast", delay=0.1)), ("slow", slow)))
        resp = rt.route_intent(envelope(strategy="PARALLEL"))
        assert resp.payload == {"by": "fast"}
        assert cleaned.wait(5), "the straggler was not cancelled"
        record = stored(rt, resp.metadata.execution_id)
        abandoned = [
            e["payload"] for e in record["events"] if e["type"] == "AGENT_ATTEMPT_ABANDONED"
        ]
        assert abandoned == [
            {"agent": "slow", "attempt": 2, "reason": "first_success_elsewhere", "cancelled": True}
        ]

    def test_parallel_mixed_sync_and_async(self, make_runtime, calls: Calls) -> None:
        async def afail(env: Any) -> dict[str, Any]:
            calls.add("a")
            raise AgentError("AGENT_ERROR", "no")

        def slow_ok(env: Any) -> dict[str, Any]:
            time.sleep(0.2)  # a has failed by then: both attempts end in the record
            calls.add("b")
            return {"by": "b"}

        rt = make_runtime(registry_of(("a", afail), ("b", slow_ok)))
        resp = rt.route_intent(envelope(strategy="PARALLEL"))
        assert resp.payload == {"by": "b"}
        assert sorted(calls.names) == ["a", "b"]
        record = stored(rt, resp.metadata.execution_id)
        assert [(e["agent"], e["status"]) for e in ends(record)] == [
            ("a", "error"),
            ("b", "success"),
        ]


class TestDeadlines:
    def test_deadline_cancels_and_fallback_goes_on(self, make_runtime, calls: Calls) -> None:
        seen: list[str] = []

        async def hung(env: Any) -> dict[str, Any]:
            calls.add("hung")
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                seen.append("cancelled")
                await asyncio.sleep(0)  # cleanup may await
                seen.append("cleaned up")
                raise
            return {}

        rt = make_runtime(
            registry_of(
                ("hung", hung), ("b", ok(calls, "b")), hung={"timeout_s": 0.2, "node_priority": 1}
            )
        )
        resp = rt.route_intent(envelope(strategy="FALLBACK"))
        assert resp.payload == {"by": "b"}
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == ["cancelled", "cleaned up"]
        first = ends(stored(rt, resp.metadata.execution_id))[0]
        assert first["error_code"] == "AGENT_TIMEOUT"
        assert first["cancelled"] is True and "abandoned" not in first
        assert rt.invoker.abandoned() == 0

    def test_timeout_alone(self, make_runtime) -> None:
        async def hung(env: Any) -> dict[str, Any]:
            await asyncio.sleep(30)
            return {}

        rt = make_runtime(registry_of(("a", hung), a={"timeout_s": 0.1}))
        resp = rt.route_intent(envelope())
        assert resp.error is not None and resp.error.code == "AGENT_TIMEOUT"


class TestFailures:
    def test_exception_is_internal_agent_error(self, make_runtime) -> None:
        async def broken(env: Any) -> dict[str, Any]:
            raise ValueError("boom")

        rt = make_runtime(registry_of(("a", broken)))
        resp = rt.route_intent(envelope())
        assert resp.error is not None
        assert (resp.error.code, resp.error.message) == ("INTERNAL_AGENT_ERROR", "boom")

    @pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit])
    def test_base_exceptions_do_not_stop_the_loop(self, make_runtime, calls: Calls, exc) -> None:
        async def fatal(env: Any) -> dict[str, Any]:
            raise exc()

        rt = make_runtime(registry_of(("a", fatal), ("b", aok(calls, "b"))))
        resp = rt.route_intent(envelope(target="a", request_id="r1"))
        assert resp.error is not None and resp.error.code == "INTERNAL_AGENT_ERROR"
        again = rt.route_intent(envelope(target="b", request_id="r2"))
        assert again.payload == {"by": "b"}

    def test_non_dict_result(self, make_runtime) -> None:
        async def wrong(env: Any) -> Any:
            return [1]

        rt = make_runtime(registry_of(("a", wrong)))
        resp = rt.route_intent(envelope())
        assert resp.error is not None and resp.error.code == "INTERNAL_AGENT_ERROR"


class Stalls(Observer):
    def __init__(self) -> None:
        self.stalls: list[float] = []
        self.cancelled: list[str] = []

    def loop_stalled(self, seconds: float) -> None:
        self.stalls.append(seconds)

    def attempt_cancelled(self, agent: str) -> None:
        self.cancelled.append(agent)


class TestLoop:
    def test_routing_thread_is_released_while_the_agent_waits(self, make_runtime) -> None:
        """process_inline hands the request to the loop and returns; the outcome is delivered
        later, from another thread, once the agent finished."""
        go = threading.Event()

        async def waits(env: Any) -> dict[str, Any]:
            while not go.is_set():
                await asyncio.sleep(0.01)
            return {"ok": True}

        rt = make_runtime(registry_of(("a", waits)))
        delivered: list[tuple[Outcome, str]] = []
        done = threading.Event()

        def deliver(outcome: Outcome) -> None:
            delivered.append((outcome, threading.current_thread().name))
            done.set()

        rt.process_inline(body(envelope()), deliver=deliver)
        assert delivered == []  # returned while the agent still waits
        go.set()
        assert done.wait(5)
        outcome, thread = delivered[0]
        assert outcome.response["payload"] == {"ok": True}
        assert thread != threading.current_thread().name

    def test_blocking_agent_is_reported_and_the_loop_survives(
        self, make_runtime, calls: Calls, caplog: pytest.LogCaptureFixture
    ) -> None:
        observer = Stalls()

        async def blocks(env: Any) -> dict[str, Any]:
            time.sleep(1.2)  # a mistake: blocks the event loop
            return {"blocked": True}

        rt = make_runtime(
            registry_of(("blocker", blocks), ("b", aok(calls, "b"))), observer=observer
        )
        with caplog.at_level(logging.WARNING, logger="intentus.runtime.aio"):
            resp = rt.route_intent(envelope(target="blocker", request_id="r1"))
        assert resp.payload == {"blocked": True}
        assert observer.stalls and max(observer.stalls) >= 0.5
        warning = [r for r in caplog.records if "blocked" in r.getMessage()]
        assert warning and "blocker" in warning[0].getMessage()
        assert rt.route_intent(envelope(target="b", request_id="r2")).payload == {"by": "b"}

    def test_cancellations_are_observed(self, make_runtime) -> None:
        observer = Stalls()

        async def hung(env: Any) -> dict[str, Any]:
            await asyncio.sleep(30)
            return {}

        rt = make_runtime(registry_of(("a", hung), a={"timeout_s": 0.1}), observer=observer)
        rt.route_intent(envelope())
        assert observer.cancelled == ["a"]


class TestRouteIntentAsync:
    def test_from_a_users_loop(self, make_runtime) -> None:
        """Many requests in flight on the caller's own loop; async agents run on it (they use
        a primitive bound to it), and sync steps never block it."""
        state = {"now": 0, "max": 0}
        gates: list[asyncio.Event] = []

        async def agent(env: Any) -> dict[str, Any]:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            await gates[0].wait()  # an asyncio.Event of the caller's loop
            state["now"] -= 1
            return {"n": env.payload["n"]}

        def sync(env: Any) -> dict[str, Any]:
            return {"sync": True}

        rt: IntentusRuntime = make_runtime(
            registry_of(("a", agent), ("s", sync), a={"node_priority": 1})
        )

        async def main() -> list[Any]:
            gates.append(asyncio.Event())
            tasks = [
                asyncio.create_task(
                    rt.route_intent_async(
                        envelope(payload={"n": i}, request_id=f"r{i}", target="a")
                    )
                )
                for i in range(40)
            ]
            while state["max"] < 40:
                await asyncio.sleep(0.01)  # the loop keeps running meanwhile
            gates[0].set()
            answers = await asyncio.gather(*tasks)
            answers.append(await rt.route_intent_async(envelope(target="s", request_id="rs")))
            return answers

        answers = asyncio.run(asyncio.wait_for(main(), 20))
        assert [a.payload for a in answers[:40]] == [{"n": i} for i in range(40)]
        assert answers[40].payload == {"sync": True}
        assert state["max"] == 40

    def test_duplicate_of_an_inflight_request_is_answered_from_its_record(
        self, make_runtime, calls: Calls
    ) -> None:
        async def slow(env: Any) -> dict[str, Any]:
            calls.add("a")
            await asyncio.sleep(0.3)
            return {"once": True}

        rt = make_runtime(registry_of(("a", slow)))

        async def main() -> list[Any]:
            return list(
                await asyncio.gather(
                    rt.route_intent_async(envelope(request_id="same")),
                    rt.route_intent_async(envelope(request_id="same")),
                )
            )

        first, second = asyncio.run(asyncio.wait_for(main(), 20))
        assert calls.names == ["a"]
        assert first.model_dump() == second.model_dump()
        assert json.loads(rt.store.get(first.metadata.execution_id) or b"{}")["finalResponse"][
            "payload"
        ] == {"once": True}

    def test_a_caller_that_stops_waiting_still_gets_the_request_recorded(
        self, make_runtime, calls: Calls
    ) -> None:
        """The caller cancels its await while the agent runs: the request still ends in a
        durable record (and its claim is released), so a retry is answered from it."""
        finished = threading.Event()

        async def slow(env: Any) -> dict[str, Any]:
            calls.add("a")
            await asyncio.sleep(0.3)
            finished.set()
            return {"done": True}

        rt = make_runtime(registry_of(("a", slow)))

        async def give_up() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(rt.route_intent_async(envelope(request_id="gone")), 0.05)
            await asyncio.sleep(0.6)  # the loop runs on; the agent finishes meanwhile

        asyncio.run(give_up())
        assert finished.wait(5)
        again = rt.route_intent(envelope(request_id="gone"))
        assert again.payload == {"done": True}
        assert calls.names == ["a"]


class TestShutdown:
    def test_a_caller_waiting_on_a_cancelled_agent_is_answered(self, make_runtime) -> None:
        """`route_intent` waiting on an async agent that shutdown cancelled gets AGENT_TIMEOUT
        (by its deadline plus the forcing margin), instead of waiting forever."""

        async def hung(env: Any) -> dict[str, Any]:
            await asyncio.sleep(30)
            return {}

        rt = make_runtime(registry_of(("a", hung), a={"timeout_s": 1.0}))
        answers: list[Any] = []
        caller = threading.Thread(target=lambda: answers.append(rt.route_intent(envelope())))
        caller.start()
        deadline = time.monotonic() + 5
        while rt.aio.inflight() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rt.aio.shutdown(wait_s=1.0) == 1
        caller.join(10)
        assert not caller.is_alive()
        assert answers[0].error.code == "AGENT_TIMEOUT"


class TestParallelWithoutAThread:
    def test_all_async_parallel_releases_the_routing_thread(self, make_runtime) -> None:
        """PARALLEL over async agents only: process_inline returns while they wait; the first
        success is delivered from another thread, the straggler cancelled and recorded so."""
        go = threading.Event()
        cleaned = threading.Event()

        async def winner(env: Any) -> dict[str, Any]:
            while not go.is_set():
                await asyncio.sleep(0.01)
            return {"by": "winner"}

        async def loser(env: Any) -> dict[str, Any]:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cleaned.set()
                raise
            return {}

        async def failer(env: Any) -> dict[str, Any]:
            raise AgentError("AGENT_ERROR", "no")

        rt = make_runtime(
            registry_of(
                ("a-fail", failer),
                ("b-win", winner),
                ("c-lose", loser),
            )
        )
        delivered: list[Outcome] = []
        done = threading.Event()

        def deliver(outcome: Outcome) -> None:
            delivered.append(outcome)
            done.set()

        rt.process_inline(body(envelope(strategy="PARALLEL")), deliver=deliver)
        assert delivered == []  # returned while the agents wait
        go.set()
        assert done.wait(5)
        outcome = delivered[0]
        assert outcome.response["payload"] == {"by": "winner"}
        assert outcome.response["metadata"]["attempts"] == 3
        assert cleaned.wait(5)
        record = json.loads(outcome.record or b"{}")
        types = [e["type"] for e in record["events"]]
        assert types.count("AGENT_ATTEMPT_START") == 3
        assert [(e["agent"], e["status"]) for e in ends(record)] == [
            ("a-fail", "error"),
            ("b-win", "success"),
        ]
        abandoned = [
            e["payload"] for e in record["events"] if e["type"] == "AGENT_ATTEMPT_ABANDONED"
        ]
        assert abandoned == [
            {
                "agent": "c-lose",
                "attempt": 3,
                "reason": "first_success_elsewhere",
                "cancelled": True,
            }
        ]
        assert record["routerDecision"]["reason"] == "parallel_first_success"

    def test_all_async_parallel_all_failing(self, make_runtime) -> None:
        async def failer(env: Any) -> dict[str, Any]:
            raise AgentError("AGENT_ERROR", f"{env.metadata.requestId} no")

        async def hung(env: Any) -> dict[str, Any]:
            await asyncio.sleep(30)
            return {}

        rt = make_runtime(registry_of(("a", failer), ("b", hung), b={"timeout_s": 0.2}))
        done: list[Outcome] = []
        finished = threading.Event()
        rt.process_inline(
            body(envelope(strategy="PARALLEL")),
            deliver=lambda o: (done.append(o), finished.set()),
        )
        assert finished.wait(5)
        response = done[0].response
        assert response["error"]["code"] == "AGENT_TIMEOUT"  # the last in try order
        record = json.loads(done[0].record or b"{}")
        assert record["routerDecision"]["reason"] == "all_failed"
        assert [e.get("cancelled") for e in ends(record)] == [None, True]
