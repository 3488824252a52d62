"""One process, the same requestId twice at once: one execution, never in doubt.

Winning a claim and registering it as this process's running work are one step: a second
delivery of the same request in the same process sees it *running* (and waits for its
record), never *orphaned*. Run on every store, through the runtime's embedding API, from two
threads released together for each requestId.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import AgentRegistry, IntentusRuntime
from runtime.canonical import execution_id_for
from runtime.engine import Outcome
from runtime.errors import RecordExists
from runtime.response import AgentResponse
from tests.store.test_conformance import BACKENDS, Backend, _backend, envelope

PAIRS = 300


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, tmp_path)


def counting_registry(counts: dict[str, int], lock: threading.Lock) -> AgentRegistry:
    reg = AgentRegistry()

    @reg.agent("a", intents=["ProcessIntent"])
    def handle(env: Any) -> dict[str, Any]:
        with lock:
            rid = env.metadata.requestId
            counts[rid] = counts.get(rid, 0) + 1
        return {"rid": env.metadata.requestId}

    return reg


def inline(rt: IntentusRuntime, body: bytes) -> AgentResponse:
    """What a worker's routing thread does: handlers on this thread, a parked request
    processed again once settled, the record committed before the answer."""
    while True:
        delivered: list[Outcome] = []
        rt.process_inline(body, deliver=delivered.append)
        (outcome,) = delivered
        if not outcome.parked:
            break
        while not rt.settled(outcome):
            time.sleep(0.005)
    return AgentResponse.model_validate(rt.commit_sync(outcome).response)


@pytest.mark.parametrize("path", ["route_intent", "inline"])
def test_same_request_from_two_threads_runs_once(backend: Backend, path: str) -> None:
    """300 pairs at once: one execution each, no EXECUTION_IN_DOUBT, one record, same answer;
    through the agent pool (route_intent) and inline (as the worker routes)."""
    route = (lambda body: rt.route_intent(body)) if path == "route_intent" else None
    counts: dict[str, int] = {}
    lock = threading.Lock()
    store = backend.open()
    rt = IntentusRuntime(counting_registry(counts, lock), store=store)
    answers: dict[str, list[AgentResponse]] = {}
    rids = [f"twin-{uuid.uuid4().hex[:12]}" for _ in range(PAIRS)]
    errors: list[BaseException] = []
    try:
        for rid in rids:
            body = envelope(rid)
            start = threading.Barrier(2)
            got: list[AgentResponse] = []

            def send(
                body: bytes = body,
                start: threading.Barrier = start,
                got: list[AgentResponse] = got,
            ) -> None:
                try:
                    start.wait(5)
                    response = route(body) if route is not None else inline(rt, body)
                    with lock:
                        got.append(response)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=send) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            answers[rid] = got
        assert errors == []
        in_doubt = [
            rid
            for rid, got in answers.items()
            if any(r.error is not None and r.error.code == "EXECUTION_IN_DOUBT" for r in got)
        ]
        assert in_doubt == []
        assert {rid: n for rid, n in counts.items() if n != 1} == {}
        assert sorted(counts) == sorted(rids)
        for rid in rids:
            got = answers[rid]
            assert len(got) == 2, rid
            raw = store.get(execution_id_for(rid))
            assert raw is not None, f"no record for {rid}"
            record = json.loads(raw)
            assert record["header"]["kind"] == "execution"
            # Both callers were answered with the durable record's response.
            assert got[0].status == "success"
            for response in got:
                assert response == AgentResponse.model_validate(record["finalResponse"])
        # Every claim ended: nothing is still held by this process.
        states = store.probe([execution_id_for(rid) for rid in rids])
        assert {s.value for s in states.values()} == {"recorded"}
    finally:
        rt.close()


class Results:
    """The callbacks of `expected` writes, by write number."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.by_write: dict[int, BaseException | None] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()

    def callback(self, n: int) -> Callable[[BaseException | None], None]:
        def written(exc: BaseException | None) -> None:
            with self.lock:
                self.by_write[n] = exc
                if len(self.by_write) == self.expected:
                    self.done.set()

        return written


def test_writes_of_one_id_by_one_owner_store_one_and_say_so(backend: Backend) -> None:
    """Several writes of one claimed id by the same owner at once (a result and an in-doubt
    answer, say): exactly one is told it was stored, and it is the one stored; every other
    hears RecordExists (so it answers from the stored record, never with its own)."""
    store = backend.open()
    writes = 20
    for round_ in range(5):
        eid = execution_id_for(f"one-owner-{round_}")
        assert store.claim(eid, user_id="", fingerprint="f").won
        results = Results(writes)
        for n in range(writes):
            store.put_async(eid, json.dumps({"header": {"n": n}}).encode(), results.callback(n))
        assert results.done.wait(30)
        stored = [n for n, exc in results.by_write.items() if exc is None]
        assert len(stored) == 1, results.by_write
        others = [exc for exc in results.by_write.values() if exc is not None]
        assert all(isinstance(exc, RecordExists) for exc in others)
        raw = store.get(eid)
        assert raw is not None and json.loads(raw)["header"]["n"] == stored[0]
