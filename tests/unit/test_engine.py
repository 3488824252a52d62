"""IntentusRuntime: ids and hashes, input forms, rejected input, duplicates, middleware."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import (
    AgentRegistry,
    AgentResponse,
    IntentEnvelope,
    Middleware,
    Observer,
    RequestContext,
)
from runtime.canonical import execution_id_for, rejection_id_for
from runtime.replay import replay

from .conftest import Calls, body, envelope, event_types, fail, ok, stored


def one_agent(calls: Calls, name: str = "a") -> AgentRegistry:
    reg = AgentRegistry()
    reg.register(name, ok(calls, name), intents=["ProcessIntent"])
    return reg


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class TestIdsAndHashes:
    def test_execution_id_and_envelope_hash_as_design(self, make_runtime, calls) -> None:
        """executionId = exec-+sha256(requestId)[:24]; envelopeHash over the canonical envelope."""
        rt = make_runtime(one_agent(calls))
        out = rt.process(body(envelope(request_id="req-a1b2c3d4")))
        rt.commit_sync(out)
        expected = "exec-" + hashlib.sha256(b"req-a1b2c3d4").hexdigest()[:24]
        assert out.execution_id == expected
        record = stored(rt, expected)
        assert record["header"]["executionId"] == expected
        assert (
            record["header"]["envelopeHash"]
            == "sha256:" + hashlib.sha256(canonical(record["envelope"])).hexdigest()
        )
        assert record["envelope"]["metadata"]["requestId"] == "req-a1b2c3d4"
        assert record["envelope"]["metadata"]["traceId"] is not None

    def test_response_metadata_keys(self, make_runtime, calls) -> None:
        """The response carries exactly the documented metadata keys, in wire order."""
        rt = make_runtime(one_agent(calls))
        out = rt.process(body(envelope()))
        rt.commit_sync(out)
        assert list(json.loads(out.body)) == ["version", "status", "payload", "error", "metadata"]
        assert list(out.response["metadata"]) == [
            "execution_id",
            "request_id",
            "trace_id",
            "agent",
            "strategy",
            "attempts",
            "latency_ms",
            "replayable",
        ]
        assert out.response["metadata"]["replayable"] is True
        assert out.kind == "executed"

    def test_record_layout(self, make_runtime, calls, clock) -> None:
        """The record has header, envelope, policy, events, routerDecision, finalResponse, trace."""
        rt = make_runtime(one_agent(calls), worker_id="w-7")
        out = rt.process(body(envelope()), correlation_id="corr-1")
        rt.commit_sync(out)
        record = stored(rt, out.execution_id)
        assert list(record) == [
            "header",
            "envelope",
            "policy",
            "events",
            "routerDecision",
            "finalResponse",
            "trace",
        ]
        header = record["header"]
        assert header["correlationId"] == "corr-1"
        assert header["createdAt"] == "2024-01-15T10:30:00.000Z"
        assert header["workerId"] == "w-7"
        assert header["replayable"] is True
        assert record["finalResponse"] == out.response
        assert record["trace"]["agent"] == "a" and record["trace"]["status"] == "success"
        assert all(e["t_ms"] == 0.0 for e in record["events"])


class TestInputForms:
    @pytest.mark.parametrize("form", ["model", "dict", "bytes", "str"])
    def test_every_form_routes_the_same(self, make_runtime, calls, form: str) -> None:
        """route_intent takes a model, a dict, JSON bytes or a JSON string."""
        data = envelope(request_id=f"form-{form}")
        request: Any = {
            "model": IntentEnvelope.model_validate(data),
            "dict": data,
            "bytes": body(data),
            "str": json.dumps(data),
        }[form]
        response = make_runtime(one_agent(calls)).route_intent(request)
        assert isinstance(response, AgentResponse)
        assert response.ok and response.payload == {"by": "a"}

    def test_bad_dict_is_an_error_response(self, make_runtime, calls) -> None:
        """A dict that is not JSON-serialisable comes back as an error response, not a raise."""
        response = make_runtime(one_agent(calls)).route_intent({"version": object()})  # type: ignore[dict-item]
        assert response.error is not None and response.error.code == "PROTOCOL_ERROR"

    def test_deep_dict_is_an_error_response(self, make_runtime, calls) -> None:
        """A dict nested beyond recursion limits is a VALIDATION_ERROR, not a RecursionError."""
        deep: Any = {}
        for _ in range(5000):
            deep = {"d": deep}
        data = envelope(payload=deep)
        response = make_runtime(one_agent(calls)).route_intent(data)
        assert response.error is not None
        assert response.error.code in ("VALIDATION_ERROR", "PROTOCOL_ERROR")

    def test_unrecordable_dict_values_are_rejected(self, make_runtime, calls) -> None:
        """A payload with non-string keys or infinities is rejected instead of crashing."""
        rt = make_runtime(one_agent(calls))
        r1 = rt.route_intent(envelope(request_id="k", payload={"a": {1: "x", "b": 2}}))
        r2 = rt.route_intent(envelope(request_id="f", payload={"a": float("inf")}))
        assert r1.ok  # JSON turns the int key into a string, as on the wire
        assert r2.error is not None and r2.error.code == "PROTOCOL_ERROR"

    def test_unsupported_content_type(self, make_runtime, calls) -> None:
        """A content type other than application/json is a PROTOCOL_ERROR."""
        out = make_runtime(one_agent(calls)).process(body(envelope()), content_type="text/plain")
        assert out.error_code == "PROTOCOL_ERROR"
        assert calls.names == []

    def test_too_large(self, make_runtime, calls) -> None:
        """A body above max_message_bytes is PAYLOAD_TOO_LARGE."""
        rt = make_runtime(one_agent(calls), max_message_bytes=100)
        out = rt.process(body(envelope(payload={"x": "y" * 200})))
        assert out.error_code == "PAYLOAD_TOO_LARGE"


class TestRejected:
    def test_invalid_envelope_record(self, make_runtime, calls) -> None:
        """Invalid input: error response, record with envelope null, raw body and its hash."""
        rt = make_runtime(one_agent(calls))
        raw = body(envelope(request_id="bad-1", colour="red"))
        out = rt.process(raw)
        rt.commit_sync(out)
        assert out.kind == "rejected"
        assert out.error_code == "VALIDATION_ERROR"
        # Under its body's rejection id: the requestId stays free for a fixed re-send.
        assert out.execution_id == rejection_id_for(raw)
        assert out.request_id == "bad-1"
        assert "colour" in (out.reject_reason or "")
        record = stored(rt, out.execution_id)
        assert record["envelope"] is None
        assert record["rawBodySha256"] == hashlib.sha256(raw).hexdigest()
        assert record["rawBody"] == raw.decode()
        assert record["rawBodyEncoding"] == "utf-8"
        assert record["routerDecision"]["reason"] == "invalid_request"
        assert event_types(record) == ["INTENT_RECEIVED", "ROUTER_DECISION", "FINAL_RESPONSE"]
        assert calls.names == []

    def test_binary_body_is_base64_and_id_from_properties(self, make_runtime, calls) -> None:
        """A non-UTF-8 body is kept as base64; its requestId comes from message_id."""
        rt = make_runtime(one_agent(calls))
        raw = b"\xff\xfe\x00garbage"
        out = rt.process(raw, RequestContext(message_id="m-1"))
        rt.commit_sync(out)
        assert out.error_code == "PROTOCOL_ERROR"
        assert out.request_id == "m-1"
        record = stored(rt, out.execution_id)
        assert record["rawBodyEncoding"] == "base64"
        assert base64.b64decode(record["rawBody"]) == raw

    def test_id_from_body_hash_and_first_64k(self, make_runtime, calls) -> None:
        """Without ids: req-+sha256(body)[:24]; only the first 64 KiB are kept."""
        rt = make_runtime(one_agent(calls))
        raw = b"x" * (100 * 1024)
        out = rt.process(raw)
        rt.commit_sync(out)
        assert out.request_id == "req-" + hashlib.sha256(raw).hexdigest()[:24]
        record = stored(rt, out.execution_id)
        assert record["rawBody"] == "x" * 65536
        assert record["rawBodyTruncated"] is True
        assert record["rawBodyBytes"] == len(raw)

    def test_no_record_if_one_exists(self, make_runtime, calls) -> None:
        """A bad message never touches its requestId's record; its own rejection is recorded
        once (a redelivery of the same body writes none)."""
        rt = make_runtime(one_agent(calls))
        rt.route_intent(body(envelope(request_id="dup")))
        before = rt.store.get(execution_id_for("dup"))
        out = rt.process(b"{not json", RequestContext(message_id="dup"))
        assert out.execution_id == rejection_id_for(b"{not json")
        assert out.record is not None
        rt.commit_sync(out)
        assert rt.store.get(execution_id_for("dup")) == before
        again = rt.process(b"{not json", RequestContext(message_id="dup", redelivered=True))
        assert again.kind == "rejected"
        assert again.record is None
        assert again.error_code == out.error_code


class TestDuplicates:
    def test_replay_is_byte_identical_and_runs_no_agent(self, make_runtime, calls) -> None:
        """A repeated requestId is answered from the record, byte for byte, agent not run."""
        rt = make_runtime(one_agent(calls))
        first = rt.process(body(envelope(request_id="same")))
        rt.commit_sync(first)
        second = rt.process(body(envelope(request_id="same")), RequestContext(redelivered=True))
        rt.commit_sync(second)
        assert calls.names == ["a"]
        assert second.kind == "replayed"
        assert second.body == first.body
        assert second.record is None
        assert list(rt.store.ids()) == [first.execution_id]

    def test_different_fingerprint_is_a_conflict(self, make_runtime, calls) -> None:
        """The same requestId with another payload: IDEMPOTENCY_CONFLICT, record untouched."""
        rt = make_runtime(one_agent(calls))
        rt.route_intent(body(envelope(request_id="same", payload={"v": 1})))
        before = rt.store.get(execution_id_for("same"))
        out = rt.process(body(envelope(request_id="same", payload={"v": 2})))
        rt.commit_sync(out)
        assert out.kind == "conflict"
        assert out.error_code == "IDEMPOTENCY_CONFLICT"
        assert calls.names == ["a"]
        assert rt.store.get(execution_id_for("same")) == before

    def test_concurrent_duplicate_waits_for_the_first(self, make_runtime, release) -> None:
        """A duplicate arriving while the first runs is parked, then replays its record."""
        runs: list[int] = []
        started = threading.Event()

        def slow(env: Any) -> dict[str, Any]:
            runs.append(1)
            started.set()
            release.wait(5)
            return {"n": len(runs)}

        reg = AgentRegistry()
        reg.register("a", slow, intents=["ProcessIntent"])
        rt = make_runtime(reg)
        results: dict[str, Any] = {}

        def first() -> None:
            results["first"] = rt.route_intent(body(envelope(request_id="c")))

        t = threading.Thread(target=first)
        t.start()
        assert started.wait(5)
        parked = rt.process(body(envelope(request_id="c")))
        assert parked.kind == "parked"
        assert not rt.settled(parked)
        release.set()
        t.join(5)
        assert rt.settled(parked)
        out = rt.process(body(envelope(request_id="c")))
        assert runs == [1]
        assert out.kind == "replayed"
        assert json.loads(out.body) == results["first"].model_dump(mode="json")

    def test_route_intent_waits_for_a_running_duplicate(self, make_runtime, release) -> None:
        """route_intent of a request running on another thread returns that run's answer."""
        runs: list[int] = []
        started = threading.Event()

        def slow(env: Any) -> dict[str, Any]:
            runs.append(1)
            started.set()
            release.wait(5)
            return {"n": len(runs)}

        reg = AgentRegistry()
        reg.register("a", slow, intents=["ProcessIntent"])
        rt = make_runtime(reg)
        answers: list[Any] = []
        threads = [
            threading.Thread(
                target=lambda: answers.append(rt.route_intent(body(envelope(request_id="w"))))
            )
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        assert started.wait(5)
        time.sleep(0.1)
        release.set()
        for t in threads:
            t.join(5)
        assert runs == [1]
        assert len(answers) == 3
        assert {a.model_dump_json() for a in answers} == {answers[0].model_dump_json()}


DEAD_WORKER = textwrap.dedent(
    """
    import sys, time
    from runtime import AgentRegistry, IntentusRuntime
    reg = AgentRegistry()
    @reg.agent("a", intents=["ProcessIntent"])
    def hang(env):
        print("STARTED", flush=True)
        time.sleep(600)
        return {}
    rt = IntentusRuntime(reg, sys.argv[1], worker_id="doomed")
    rt.route_intent({"version": "1.0", "intent": {"name": "ProcessIntent"},
                     "payload": {"document_id": "doc-123"},
                     "metadata": {"requestId": "crashy"}})
    """
)


class TestInDoubt:
    def test_started_but_unrecorded_is_in_doubt(self, tmp_path: Path, make_runtime, calls) -> None:
        """A worker killed mid-agent leaves the request in doubt: recorded once, never re-run."""
        with subprocess.Popen(
            [sys.executable, "-c", DEAD_WORKER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "STARTED"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        eid = execution_id_for("crashy")
        rt = make_runtime(one_agent(calls), tmp_path, worker_id="survivor")
        data = envelope(request_id="crashy")
        out = rt.process(body(data), RequestContext(redelivered=True))
        rt.commit_sync(out)
        assert calls.names == []
        assert out.kind == "in_doubt"
        assert out.error_code == "EXECUTION_IN_DOUBT"
        record = stored(rt, eid)
        assert "DUPLICATE_DELIVERY" in event_types(record)
        assert record["header"]["kind"] == "in_doubt"
        again = rt.process(body(data))
        rt.commit_sync(again)
        assert again.kind == "replayed"
        assert again.body == out.body
        assert calls.names == []
        # The claim has served its purpose once the in-doubt answer is recorded.
        assert not (tmp_path / ".claims" / eid).exists()

    def test_unrelated_requests_still_run(self, tmp_path: Path, make_runtime, calls) -> None:
        """A dead owner's claim makes only its own request in doubt."""
        claims = tmp_path / ".claims"
        claims.mkdir(parents=True)
        ghost = {"owner": "ghost.1.abc", "userId": "", "fingerprint": None}
        (claims / execution_id_for("x")).write_text(json.dumps(ghost))
        rt = make_runtime(one_agent(calls), tmp_path)
        assert rt.route_intent(body(envelope(request_id="y"))).ok
        assert rt.route_intent(body(envelope(request_id="x"))).error is not None
        assert calls.names == ["a"]

    def test_owner_lock_is_removed_on_clean_close(self, tmp_path: Path, calls) -> None:
        """A cleanly closed runtime leaves no claim and no owner lock behind."""
        from runtime import IntentusRuntime

        rt = IntentusRuntime(one_agent(calls), tmp_path, worker_id="tidy")
        rt.route_intent(body(envelope()))
        assert [p.name for p in (tmp_path / ".owners").iterdir()] == [f"{rt.store.owner}.lock"]
        rt.close()
        assert list((tmp_path / ".owners").iterdir()) == []
        assert list((tmp_path / ".claims").iterdir()) == []


class Recording(Middleware):
    def __init__(self, name: str, log: list[str], fail_before: bool = False) -> None:
        self.name, self.log, self.fail_before = name, log, fail_before

    def before_route(self, envelope: Any) -> None:
        self.log.append(f"before:{self.name}")
        if self.fail_before:
            raise RuntimeError("before broke")

    def after_route(self, envelope: Any, response: Any) -> None:
        self.log.append(f"after:{self.name}")
        raise RuntimeError("after broke")


class CountingObserver(Observer):
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.routed_calls: list[tuple[str, str, str]] = []

    def middleware_error(self, middleware: str, hook: str) -> None:
        self.errors.append((middleware, hook))

    def routed(self, intent, strategy, *, status, error_code, seconds) -> None:  # type: ignore[no-untyped-def]
        self.routed_calls.append((intent, strategy, status))


class TestMiddleware:
    def test_order_and_failures_never_lose_the_request(self, make_runtime, calls) -> None:
        """before_route in order, after_route reversed; exceptions are counted, record kept."""
        log: list[str] = []
        observer = CountingObserver()
        chain = [Recording("one", log, fail_before=True), Recording("two", log)]
        rt = make_runtime(one_agent(calls), middleware=chain, observer=observer)
        out = rt.process(body(envelope()))
        rt.commit_sync(out)
        assert log == ["before:one", "before:two", "after:two", "after:one"]
        assert out.status == "success"
        assert rt.store.exists(out.execution_id)
        assert observer.errors == [
            ("Recording", "before_route"),
            ("Recording", "after_route"),
            ("Recording", "after_route"),
        ]
        assert observer.routed_calls == [("ProcessIntent", "DIRECT", "success")]

    def test_before_route_changes_are_recorded(self, make_runtime, calls) -> None:
        """What a before_route hook changes is what is routed and recorded."""

        class Tagger(Middleware):
            def before_route(self, envelope: Any) -> None:
                envelope.context.tags.append("seen")

        rt = make_runtime(one_agent(calls), middleware=[Tagger()])
        out = rt.process(body(envelope()))
        rt.commit_sync(out)
        record = stored(rt, out.execution_id)
        assert record["envelope"]["context"]["tags"] == ["seen"]
        assert replay(record) == out.body


class TestFailingAgentObserved:
    def test_observer_sees_error(self, make_runtime, calls) -> None:
        """A failing agent is reported to the observer with its status."""
        observer = CountingObserver()
        reg = AgentRegistry()
        reg.register("a", fail(calls, "a"), intents=["ProcessIntent"])
        make_runtime(reg, observer=observer).route_intent(body(envelope()))
        assert observer.routed_calls == [("ProcessIntent", "DIRECT", "error")]


DETERMINISM = textwrap.dedent(
    """
    import json
    from runtime import AgentError, AgentRegistry, IntentusRuntime
    names = {"delta", "alpha", "charlie", "bravo", "echo", "foxtrot"}
    reg = AgentRegistry()
    for name in names:  # set order depends on PYTHONHASHSEED
        def handler(env, name=name):
            if name in ("alpha", "delta"):
                raise AgentError("AGENT_UNAVAILABLE", name + " is down")
            return {"by": name, "doc": env.payload.get("d")}
        reg.register(name, handler, intents=["Work"], node_priority=len(name) % 3,
                     node_id=None if name != "bravo" else "remote")
    rt = IntentusRuntime(reg, policy={"rules": [{"id": "no-echo", "action": "deny",
                                                  "agents": ["e*"]}]}, worker_id="w")
    out = []
    for i, strategy in enumerate(["DIRECT", "FALLBACK", "BROADCAST"] * 2):
        env = {"version": "1.0", "intent": {"name": "Work"}, "payload": {"d": i},
               "context": {"timestamp": "2024-01-01T00:00:00Z"},
               "metadata": {"requestId": f"r{i}", "createdAt": "2024-01-01T00:00:00Z"},
               "routing": {"strategy": strategy}}
        o = rt.process(json.dumps(env).encode())
        rt.commit_sync(o)
        out.append(json.loads(rt.store.get(o.execution_id)))
    print(json.dumps(out))
    """
)

_VOLATILE = {"t_ms", "latency_ms", "latencyMs", "createdAt"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


class TestDeterminism:
    def test_two_processes_with_different_hash_seeds(self) -> None:
        """Different PYTHONHASHSEED, same records apart from timestamps and latencies."""
        outputs = []
        for seed in ("1", "2"):
            env = dict(os.environ, PYTHONHASHSEED=seed)
            done = subprocess.run(
                [sys.executable, "-c", DETERMINISM],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=True,
            )
            outputs.append(json.loads(done.stdout))
        a, b = (_strip(o) for o in outputs)
        assert a == b
        orders = [r["routerDecision"]["tryOrder"] for r in outputs[0]]
        assert orders[1] == ["charlie", "foxtrot", "alpha", "delta", "bravo"]
        assert outputs[0][1]["routerDecision"]["agent"] == "charlie"
        assert outputs[0][0]["header"]["envelopeHash"] == outputs[1][0]["header"]["envelopeHash"]


class TestUnrecordable:
    def test_lost_record_is_in_doubt_not_rerun(self, calls: Calls) -> None:
        """An agent ran but its record could not be written: the next delivery is in doubt."""
        from runtime import IntentusRuntime, MemoryRecordStore, RecordStoreError

        class FailingOnce(MemoryRecordStore):
            failed = False

            def put(self, execution_id: str, data: bytes) -> None:
                if not self.failed:
                    self.failed = True
                    raise RecordStoreError("disk full")
                super().put(execution_id, data)

        rt = IntentusRuntime(one_agent(calls), store=FailingOnce())
        with pytest.raises(RecordStoreError):
            rt.route_intent(envelope(request_id="lost-1"))
        again = rt.route_intent(envelope(request_id="lost-1"))
        assert again.error is not None and again.error.code == "EXECUTION_IN_DOUBT"
        assert calls.names == ["a"]
        third = rt.route_intent(envelope(request_id="lost-1"))
        assert third.model_dump() == again.model_dump()
        assert calls.names == ["a"]


class TestRejectedRequestId:
    def test_wrong_content_type_still_reads_request_id(self, calls: Calls) -> None:
        """A readable body refused for its content type keeps its own requestId."""
        from runtime import IntentusRuntime

        rt = IntentusRuntime(one_agent(calls))
        out = rt.process(
            body(envelope(request_id="from-body")),
            RequestContext(message_id="from-props"),
            content_type="text/plain",
        )
        assert out.kind == "rejected" and out.error_code == "PROTOCOL_ERROR"
        assert out.request_id == "from-body"
        assert calls.names == []
