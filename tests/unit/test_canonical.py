"""The JSON encoders and the record joined from parts encoded once, against the stdlib."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from runtime import AgentRegistry, FixedClock, IntentusRuntime
from runtime.canonical import (
    canonical_json,
    canonical_text,
    compact_text,
    dumps,
    encode_envelope,
    envelope_hash,
    float_text,
    names_text,
    optional_text,
    value_text,
)
from runtime.envelope import Arrival, RequestContext
from runtime.errors import ErrorCode
from runtime.recorder import (
    ExecutionRecorder,
    attempt_end_json,
    attempt_start_json,
    build_record,
    decision_json,
    encode_record,
    final_event,
    final_event_json,
    header_json,
    intent_received_json,
    policy_json,
    record_header,
    trace_json,
    trace_of,
)
from runtime.response import (
    error_dict,
    metadata_json,
    response_body,
    response_dict,
    response_json,
)

from .conftest import body, envelope

CORPUS: list[Any] = [
    {},
    [],
    "plain",
    'ünïcödé \u2028 "quoted" \\ \n\t',
    0,
    -(2**70),
    1.5,
    1e16,
    -0.0,
    1e-7,
    True,
    None,
    {"b": 1, "a": [1, {"d": None, "c": "é"}], "": {}},
    {1: "int key", "x": [True, False, None]},
    [[[[{"deep": [1.25, "x"]}]]]],
]


def stdlib(value: Any, *, sort_keys: bool = False) -> bytes:
    return json.dumps(
        value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def raised(fn: Any, value: Any) -> tuple[type[BaseException], str]:
    with pytest.raises(Exception) as info:
        fn(value)
    return info.type, str(info.value)


def outcome(fn: Any, value: Any) -> Any:
    """The bytes, or the exception's type and message."""
    try:
        return fn(value)
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)


class TestEncoders:
    @pytest.mark.parametrize("value", CORPUS)
    def test_same_bytes_as_stdlib(self, value: Any) -> None:
        """dumps and canonical_json give the stdlib's bytes (or error) for the same settings."""
        assert dumps(value) == stdlib(value)
        assert compact_text(value).encode("utf-8") == stdlib(value)
        canonical = outcome(canonical_json, value)
        assert canonical == outcome(lambda v: stdlib(v, sort_keys=True), value)
        shared = outcome(lambda v: canonical_text(v).encode("utf-8"), value)
        assert shared == canonical

    def test_same_errors_as_stdlib(self) -> None:
        """NaN, a non-JSON object, a tuple key and a cycle fail as with the stdlib encoder."""
        cycle: list[Any] = []
        cycle.append(cycle)
        for bad in (float("nan"), {"a": object()}, {(1, 2): 3}, cycle):
            expected = raised(stdlib, bad)
            assert raised(dumps, bad) == expected
            assert raised(canonical_json, bad) == expected

    def test_failed_encoding_leaves_nothing_behind(self) -> None:
        """An object that failed to encode encodes once fixed (no stale cycle marker)."""
        value: dict[str, Any] = {"a": {"b": object()}}
        with pytest.raises(TypeError):
            dumps(value)
        value["a"]["b"] = 1
        assert dumps(value) == b'{"a":{"b":1}}'

    def test_envelope_hashes(self) -> None:
        """Both hashes are sha256 of the canonical whole and of intent, payload and routing."""
        env = {
            "version": "1.0",
            "intent": {"name": "I", "version": "1.0"},
            "payload": {"z": [1, 2.5], "a": "ü"},
            "context": {"tags": []},
            "metadata": {"requestId": "r"},
            "routing": {"strategy": "DIRECT", "targetAgent": None},
        }
        encoded, whole, fp = encode_envelope(env)
        assert encoded == stdlib(env, sort_keys=True)  # the record embeds these bytes
        part = {k: env[k] for k in ("intent", "payload", "routing")}
        assert whole == envelope_hash(env)
        assert whole == "sha256:" + hashlib.sha256(stdlib(env, sort_keys=True)).hexdigest()
        assert fp == "sha256:" + hashlib.sha256(stdlib(part, sort_keys=True)).hexdigest()


TEXTS = ["", "plain", 'ünïcödé \u2028 "quoted" \\ \n\t\x00\x1f\x7f', "日本😀"]
FLOATS = [0.0, -0.0, 0.1, 1.5, 1e16, 1e-7, 123456.789, 2.5e-308]


def text(value: Any) -> str:
    return stdlib(value).decode("utf-8")


class TestRecordParts:
    """Each part of a record or reply written as JSON text is exactly `dumps` of its dict."""

    def test_values(self) -> None:
        for value in [*TEXTS, None, 0, -(2**70), True, [1, "a"], {"k": [None]}]:
            assert value_text(value) == text(value)
            assert optional_text(value) == text(value)
        for number in FLOATS:
            assert float_text(number) == text(number)
        for bad in (float("nan"), float("inf"), -float("inf")):
            assert raised(float_text, bad) == raised(stdlib, bad)
        for names in ([], ["a"], TEXTS):
            assert names_text(names) == text(names)

    def test_events(self) -> None:
        for s in TEXTS:
            assert intent_received_json(intent=s, version=s, request_id=s, strategy=s) == text(
                {"intent": s, "version": s, "requestId": s, "strategy": s}
            )
            assert attempt_start_json(s, 3) == text({"agent": s, "attempt": 3})
        assert intent_received_json(
            intent=None, version=None, request_id="r", strategy=None
        ) == text({"intent": None, "version": None, "requestId": "r", "strategy": None})
        for code in (None, "AGENT_TIMEOUT", "é"):
            for ending in ("returned", "abandoned", "cancelled"):
                for seconds in FLOATS:
                    expected: dict[str, Any] = {
                        "agent": "a",
                        "attempt": 2,
                        "status": "error" if code else "success",
                        "latency_ms": round(seconds * 1000.0, 3),
                    }
                    if code is not None:
                        expected["error_code"] = code
                    if ending != "returned":
                        expected[ending] = True
                    got = attempt_end_json(
                        "a",
                        2,
                        status=expected["status"],
                        seconds=seconds,
                        error_code=code,
                        ending=ending,
                    )
                    assert got == text(expected)
        for error in (None, error_dict(ErrorCode.AGENT_TIMEOUT, "late", {"x": 1})):
            response = response_dict(
                payload=None if error else {},
                error=error,
                execution_id="e",
                request_id="r",
                trace_id=None,
                agent=None,
                strategy=None,
                attempts=0,
                latency_ms=0.0,
                replayable=False,
            )
            code = None if error is None else error["code"]
            assert final_event_json(response["status"], code) == text(final_event(response))

    def test_decision_policy_trace_header(self) -> None:
        for s in [*TEXTS, None]:
            for order in ([], ["a", "b"]):
                decision = {
                    "agent": s,
                    "intent": s,
                    "strategy": s,
                    "tryOrder": order,
                    "reason": "all_failed",
                }
                assert decision_json(
                    agent=s, intent=s, strategy=s, try_order=order, reason="all_failed"
                ) == text(decision)
        for policy in (
            {"allowed": [], "filtered": [], "reasons": {}},
            {"allowed": ["a"], "filtered": ["b", "ü"], "reasons": {"b": "x", "ü": "é"}},
        ):
            assert policy_json(policy) == text(policy)  # type: ignore[arg-type]
        for error in (None, error_dict(ErrorCode.INTERNAL_AGENT_ERROR, "ü \n", {})):
            for s in [*TEXTS, None]:
                response = {"status": "error" if error else "success", "error": error}
                for latency in FLOATS:
                    expected = trace_of(
                        trace_id=s, agent=s, intent=s, response=response, latency_ms=latency
                    )
                    got = trace_json(
                        trace_id=s,
                        agent=s,
                        intent=s,
                        status=response["status"],  # type: ignore[arg-type]
                        latency_ms=latency,
                        error=error,
                    )
                    assert got == text(expected)
        for s in TEXTS:
            for context in (RequestContext(), RequestContext(correlation_id=s, user_id=s)):
                arrival = Arrival(
                    context=context,
                    received=datetime(2024, 1, 15, 10, 30, 0, 123456, tzinfo=UTC),
                    started=0.0,
                    correlation_id=None if context.user_id is None else "c",
                )
                for kind in ("execution", "rejected"):
                    fields: dict[str, Any] = {
                        "execution_id": "exec-1",
                        "request_id": s,
                        "arrival": arrival,
                        "envelope_hash": None if kind == "rejected" else "sha256:1",
                        "fingerprint": None if kind == "rejected" else "sha256:2",
                        "kind": kind,
                        "replayable": kind == "execution",
                        "worker_id": s or "w",
                    }
                    assert header_json(**fields) == text(record_header(**fields))

    def test_reply(self) -> None:
        for error in (None, error_dict(ErrorCode.AGENT_TIMEOUT, "é", {"t": [1.5]})):
            for payload in (None, {}, {"b": 1, "a": ["ü", None, 0.1]}):
                for s in [*TEXTS, None]:
                    for latency in FLOATS:
                        fields: dict[str, Any] = {
                            "execution_id": "exec-1",
                            "request_id": s,
                            "trace_id": s,
                            "agent": s,
                            "strategy": s,
                            "attempts": 3,
                            "replayable": error is None,
                        }
                        response = response_dict(
                            payload=payload, error=error, latency_ms=latency, **fields
                        )
                        metadata = metadata_json(
                            latency_ms=response["metadata"]["latency_ms"], **fields
                        )
                        got = response_json(
                            payload=response["payload"], error=error, metadata=metadata
                        )
                        assert got == response_body(response) == stdlib(response)

    def test_recorder_events(self) -> None:
        """Events written as text decode to what they say, and encode as `dumps` would."""
        clock = FixedClock(step_s=0.0012345)
        rec = ExecutionRecorder(clock.monotonic, clock.monotonic())
        rec.event("DUPLICATE_DELIVERY", {"kind": "in_doubt", "é": [1.5, None]})
        rec.event_json("AGENT_ATTEMPT_START", attempt_start_json("a", 1))
        events = rec.events
        assert [e["seq"] for e in events] == [1, 2]
        assert events[0]["payload"] == {"kind": "in_doubt", "é": [1.5, None]}
        assert rec.events_json() == text(events)


class TestRecordEncoding:
    def test_joined_record_equals_encoded_record(self) -> None:
        """encode_record joins parts encoded once into exactly dumps(build_record(...))."""
        parts: dict[str, Any] = {
            "header": {"executionId": "exec-1", "createdAt": "2024-01-15T10:30:00.000Z"},
            "policy": {"allowed": ["a"], "filtered": [], "reasons": {}},
            "events": [{"seq": 1, "type": "INTENT_RECEIVED", "payload": {"é": 1.5}, "t_ms": 0.0}],
            "decision": {"agent": "a", "tryOrder": ["a"]},
            "trace": {"traceId": "t", "latencyMs": 1.25},
        }
        env = {"version": "1.0", "payload": {"x": "ü", "n": None}}
        response = {"status": "success", "payload": {"k": [1, 2]}, "error": None}
        joined = encode_record(
            envelope_json=dumps(env),
            response_body=dumps(response),
            **{k: text(v) for k, v in parts.items()},
        )
        assert joined == dumps(build_record(envelope=env, response=response, **parts))

    def test_routed_record_bytes_are_deterministic(self) -> None:
        """Routed twice on fixed clocks: identical record and reply bytes, reply embedded."""
        registry = AgentRegistry()
        registry.register("a", lambda env: {"by": "a", "f": 0.1, "s": "ü"}, intents=["I"])
        outputs = []
        for _ in range(2):
            rt = IntentusRuntime(registry, clock=FixedClock(step_s=0.001), worker_id="w")
            try:
                out = rt.process(body(envelope("I", {"z": 1, "a": "é"}, strategy="FALLBACK")))
                rt.commit_sync(out)
                assert out.record is not None
                outputs.append((out.record, out.body))
            finally:
                rt.close()
        (record, reply), again = outputs
        assert (record, reply) == again
        parsed = json.loads(record)
        assert dumps(parsed) == record
        assert dumps(parsed["finalResponse"]) == reply
        assert parsed["finalResponse"]["payload"] == {"by": "a", "f": 0.1, "s": "ü"}


class TestAgentResultCopy:
    def test_result_that_is_not_utf8_is_an_agent_error(self) -> None:
        """An agent result with a lone surrogate fails in the agent's attempt, not later."""
        registry = AgentRegistry()
        registry.register("a", lambda env: {"text": "\ud800"}, intents=["I"])
        rt = IntentusRuntime(registry, clock=FixedClock(), worker_id="w")
        try:
            response = rt.route_intent(body(envelope("I")))
        finally:
            rt.close()
        assert response.error is not None
        assert response.error.code == "INTERNAL_AGENT_ERROR"
        assert "not JSON-serialisable" in response.error.message
