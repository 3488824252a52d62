"""What a handler (or middleware) raises beyond `Exception`, and failures after an agent ran.

A handler's SystemExit, KeyboardInterrupt, GeneratorExit or any BaseException is its failure
(INTERNAL_AGENT_ERROR), recorded and answered once, on the routing thread (inline) and on the
agent pool (PARALLEL); no thread of either is lost, no deadline fires for it afterwards. Once an
agent may have started, a claim ends only in a durable record: a failure building the outcome
is answered EXECUTION_IN_DOUBT with its record, and the request is never run again.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import pytest

import runtime.executed
from runtime import AgentRegistry, IntentusRuntime, SystemClock
from runtime.canonical import execution_id_for
from runtime.engine import Outcome

from .conftest import Calls, envelope

RAISED: list[type[BaseException]] = [
    SystemExit,
    KeyboardInterrupt,
    GeneratorExit,
    type("Custom", (BaseException,), {}),
]


def raising_registry(calls: Calls, raised: type[BaseException]) -> AgentRegistry:
    reg = AgentRegistry()

    def handler(env: Any) -> dict[str, Any]:
        calls.add(env.metadata.requestId)
        raise raised("from the agent")

    reg.register("a", handler, intents=["ProcessIntent"], timeout_s=0.3)
    return reg


def body(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def inline(rt: IntentusRuntime, request: bytes) -> tuple[list[Outcome], BaseException | None]:
    """process_inline on a thread of its own; what it delivered (over a while) and raised."""
    delivered: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            rt.process_inline(request, deliver=delivered.put)
        except BaseException as exc:
            raised.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert not t.is_alive()
    out = [delivered.get(timeout=5)]
    # Past the agent's deadline: nothing may deliver a second answer.
    time.sleep(0.6)
    while not delivered.empty():
        out.append(delivered.get())
    return out, (raised[0] if raised else None)


@pytest.mark.parametrize("raised", RAISED, ids=lambda r: r.__name__)
def test_inline_handler_base_exception_is_an_agent_failure(
    make_runtime: Any, calls: Calls, raised: type[BaseException]
) -> None:
    rt = make_runtime(raising_registry(calls, raised), clock=SystemClock())
    request = body(envelope(request_id="r-inline"))
    outs, error = inline(rt, request)
    assert error is None
    assert len(outs) == 1
    (out,) = outs
    assert out.error_code == "INTERNAL_AGENT_ERROR"
    assert raised.__name__ in json.dumps(out.response["error"])
    assert rt.invoker.watchdog.stuck() == 0
    rt.commit_sync(out)
    again, error = inline(rt, request)
    assert error is None
    assert [o.kind for o in again] == ["replayed"]
    assert again[0].body == out.body
    assert calls.names == ["r-inline"]


@pytest.mark.parametrize("raised", RAISED, ids=lambda r: r.__name__)
def test_pool_handler_base_exception_keeps_the_pool(
    make_runtime: Any, calls: Calls, raised: type[BaseException]
) -> None:
    """PARALLEL and route_intent use the agent pool: its threads survive the handler."""
    rt = make_runtime(raising_registry(calls, raised), clock=SystemClock())
    first = rt.route_intent(body(envelope(request_id="r-pool-0", strategy="PARALLEL")))
    assert first.error is not None and first.error.code == "INTERNAL_AGENT_ERROR"
    threads = rt.invoker.threads()
    before = set(threading.enumerate())
    for i in range(1, 6):
        response = rt.route_intent(body(envelope(request_id=f"r-pool-{i}", strategy="PARALLEL")))
        assert response.error is not None and response.error.code == "INTERNAL_AGENT_ERROR"
    assert rt.invoker.threads() == threads
    # No thread was started to replace one the handler killed (threads other tests left behind
    # may end meanwhile: only new ones count).
    assert not set(threading.enumerate()) - before
    again = rt.route_intent(body(envelope(request_id="r-pool-0", strategy="PARALLEL")))
    assert again == first
    assert calls.names == [f"r-pool-{i}" for i in range(6)]


def test_middleware_base_exception_does_not_escape(make_runtime: Any, calls: Calls) -> None:
    """Middleware is user code too: what it raises never unwinds the routing thread."""

    class Exiting:
        def before_route(self, envelope: Any) -> None:
            raise SystemExit("before")

        def after_route(self, envelope: Any, response: Any) -> None:
            raise KeyboardInterrupt("after")

    reg = AgentRegistry()
    reg.register("a", lambda env: {"ok": True}, intents=["ProcessIntent"])
    rt = make_runtime(reg, middleware=[Exiting()])
    outs, error = inline(rt, body(envelope(request_id="r-mw")))
    assert error is None
    assert [o.status for o in outs] == ["success"]


@pytest.mark.parametrize("path", ["inline", "pool"])
def test_failure_after_the_agent_ran_is_in_doubt_never_rerun(
    make_runtime: Any, calls: Calls, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Encoding the record fails after the agent ran: the claim is not released (a re-send
    would run the agent again); the request is answered and recorded EXECUTION_IN_DOUBT."""
    reg = AgentRegistry()

    def handler(env: Any) -> dict[str, Any]:
        calls.add(env.metadata.requestId)
        return {"ok": True}

    reg.register("a", handler, intents=["ProcessIntent"])
    rt = make_runtime(reg)
    encode = runtime.executed.encode_record
    failures = [ValueError("cannot encode")]

    def failing_encode(**kwargs: Any) -> bytes:
        if failures:
            raise failures.pop()
        return encode(**kwargs)

    monkeypatch.setattr(runtime.executed, "encode_record", failing_encode)
    strategy = "DIRECT" if path == "inline" else "PARALLEL"
    request = body(envelope(request_id="r-enc", strategy=strategy))
    outs, error = inline(rt, request)
    assert error is None
    assert [o.error_code for o in outs] == ["EXECUTION_IN_DOUBT"]
    rt.commit_sync(outs[0])
    record = json.loads(rt.store.get(execution_id_for("r-enc")) or b"{}")
    assert record["finalResponse"]["error"]["code"] == "EXECUTION_IN_DOUBT"
    again, error = inline(rt, request)
    assert error is None
    assert [o.kind for o in again] == ["replayed"]
    assert again[0].body == outs[0].body
    assert calls.names == ["r-enc"]


def test_base_exception_after_the_agent_ran_keeps_the_claim(
    make_runtime: Any, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something beyond Exception raised on the embedder's thread after the agent ran (a
    Ctrl-C): it propagates, and the claim stays held, so a re-send is in doubt, not re-run."""
    reg = AgentRegistry()

    def handler(env: Any) -> dict[str, Any]:
        calls.add(env.metadata.requestId)
        return {"ok": True}

    reg.register("a", handler, intents=["ProcessIntent"])
    rt = make_runtime(reg)
    encode = runtime.executed.encode_record
    failures: list[BaseException] = [KeyboardInterrupt()]

    def failing_encode(**kwargs: Any) -> bytes:
        if failures:
            raise failures.pop()
        return encode(**kwargs)

    monkeypatch.setattr(runtime.executed, "encode_record", failing_encode)
    request = body(envelope(request_id="r-kbd"))
    with pytest.raises(KeyboardInterrupt):
        rt.route_intent(request)
    again = rt.route_intent(request)
    assert again.error is not None and again.error.code == "EXECUTION_IN_DOUBT"
    assert calls.names == ["r-kbd"]
