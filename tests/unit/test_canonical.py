"""The JSON encoders and the record joined from parts encoded once, against the stdlib."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from runtime import AgentRegistry, FixedClock, IntentusRuntime
from runtime.canonical import (
    canonical_json,
    dumps,
    encode_envelope,
    envelope_hash,
)
from runtime.recorder import build_record, encode_record

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
        canonical = outcome(canonical_json, value)
        assert canonical == outcome(lambda v: stdlib(v, sort_keys=True), value)

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


class TestRecordEncoding:
    def test_joined_record_equals_encoded_record(self) -> None:
        """encode_record joins pre-encoded parts into exactly dumps(build_record(...))."""
        parts: dict[str, Any] = {
            "header": {"executionId": "exec-1", "createdAt": "2024-01-15T10:30:00.000Z"},
            "policy": {"allowed": ["a"], "filtered": [], "reasons": {}},
            "events": [{"seq": 1, "type": "INTENT_RECEIVED", "payload": {"é": 1.5}, "t_ms": 0.0}],
            "decision": {"agent": "a", "tryOrder": ["a"]},
            "trace": {"traceId": "t", "latencyMs": 1.25},
        }
        env = {"version": "1.0", "payload": {"x": "ü", "n": None}}
        response = {"status": "success", "payload": {"k": [1, 2]}, "error": None}
        joined = encode_record(envelope_json=dumps(env), response_body=dumps(response), **parts)
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
