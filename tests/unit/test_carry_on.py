"""A carry-on thread that cannot be started (the process is out of threads).

At an inline handler's deadline the watchdog starts a thread to carry the request on. If that
thread cannot start, the request must still end: it goes on, with AGENT_TIMEOUT, on the
handler's own thread once the handler returns; it is answered once and recorded, and its claim
is not left held (a duplicate would otherwise wait until the worker restarts).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from typing import Any

from runtime import AgentRegistry, SystemClock
from runtime.canonical import execution_id_for
from runtime.engine import Outcome
from runtime.invoker import Abandoned

from .conftest import Calls, envelope


def no_threads(fn: Callable[[], None]) -> None:
    raise RuntimeError("can't start new thread")


def test_carry_on_that_cannot_start_goes_on_when_the_handler_returns(
    make_runtime: Any, calls: Calls
) -> None:
    release = threading.Event()

    def stuck(env: Any) -> dict[str, Any]:
        calls.add("stuck")
        release.wait(10)
        return {"late": True}

    def spare(env: Any) -> dict[str, Any]:
        calls.add("spare")
        return {"spare": True}

    reg = AgentRegistry()
    reg.register("stuck", stuck, intents=["ProcessIntent"], timeout_s=0.2, node_priority=1)
    reg.register("spare", spare, intents=["ProcessIntent"], node_priority=2)
    rt = make_runtime(reg, clock=SystemClock())
    rt.invoker.carry_on = no_threads
    delivered: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    raised: list[BaseException] = []
    request = json.dumps(envelope(request_id="r-carry", strategy="FALLBACK")).encode()

    def route() -> None:
        try:
            rt.process_inline(request, deliver=delivered.put)
        except Abandoned as exc:
            raised.append(exc)

    t = threading.Thread(target=route)
    t.start()
    # Well past the deadline; the handler is still stuck.
    t.join(0.8)
    assert t.is_alive()
    release.set()
    t.join(10)
    assert not t.is_alive()
    assert raised == []
    out = delivered.get(timeout=5)
    assert delivered.empty()
    assert out.status == "success"
    assert out.response["metadata"]["agent"] == "spare"
    record = json.loads(out.record or b"{}")
    (first_end,) = [
        e["payload"]
        for e in record["events"]
        if e["type"] == "AGENT_ATTEMPT_END" and e["payload"]["agent"] == "stuck"
    ]
    assert first_end["error_code"] == "AGENT_TIMEOUT"
    assert first_end["abandoned"] is True
    rt.commit_sync(out)
    # The claim ended: a duplicate is answered from the record at once.
    again = rt.process(request)
    assert again.kind == "replayed"
    assert calls.names == ["stuck", "spare"]
    assert rt.store.get(execution_id_for("r-carry")) is not None
