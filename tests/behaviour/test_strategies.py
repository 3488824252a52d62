"""Each routing strategy end to end, on both transports: the reply, its headers and the record."""

from __future__ import annotations

import re
import stat
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.behaviour.drivers import Driver, Message
from tests.integration.wire import (
    HEADER_KEYS,
    check_events_well_formed,
    check_reply_shape,
    envelope,
    envelope_hash,
    event_types,
    execution_id,
    load_record,
    record_path,
)

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@pytest.fixture
def driver(start: Callable[..., Driver]) -> Driver:
    return start(agent_timeout_s=5)


def routed(driver: Driver, rid: str, **kw: Any) -> tuple[dict[str, Any], dict[str, Any], Message]:
    """Send one envelope; return (reply JSON, record, raw reply)."""
    env = envelope(request_id=rid, **kw)
    reply = driver.request(env)
    body = reply.json
    check_reply_shape(body)
    record = load_record(driver.records_dir, execution_id(rid))
    check_events_well_formed(record)
    assert record["finalResponse"] == body
    return body, record, reply


class TestDirect:
    def test_first_candidate_answers_with_the_exact_reply_and_record(self, driver: Driver) -> None:
        """DIRECT picks the first of the ordered candidates; reply and record are complete."""
        rid = "req-direct-1"
        eid = execution_id(rid)
        env = envelope(request_id=rid)
        reply = driver.request(env, correlation_id="corr-direct-1")
        body = reply.json
        check_reply_shape(body)
        assert body["status"] == "success"
        assert body["payload"] == {"by": "alpha", "doc": "doc-123"}
        assert body["error"] is None
        meta = body["metadata"]
        assert meta["execution_id"] == eid
        assert meta["request_id"] == rid
        assert isinstance(meta["trace_id"], str) and meta["trace_id"]
        assert meta["agent"] == "alpha"
        assert meta["strategy"] == "DIRECT"
        assert meta["attempts"] == 1
        assert meta["replayable"] is True

        # reply properties
        assert reply.correlation_id == "corr-direct-1"
        assert reply.headers["x-intentus-status"] == "success"
        assert reply.headers["x-intentus-execution-id"] == eid

        # the record file: sharded, named by the id, 0640 in a 0750 folder
        path = record_path(driver.records_dir, eid)
        assert path.name == f"{eid}.json"
        shard = path.parent
        assert shard.parent == driver.records_dir
        assert eid[len("exec-") :].startswith(shard.name) and shard.name
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert stat.S_IMODE(shard.stat().st_mode) == 0o750

        record = load_record(driver.records_dir, eid)
        header = record["header"]
        assert set(header) >= HEADER_KEYS
        assert any("version" in key.lower() for key in header), header
        assert header["executionId"] == eid
        assert header["requestId"] == rid
        assert header["correlationId"] == "corr-direct-1"
        assert ISO_Z.match(header["createdAt"]), header["createdAt"]
        assert header["replayable"] is True
        assert isinstance(header["workerId"], str) and header["workerId"]
        assert header["envelopeHash"] == envelope_hash(record["envelope"])

        recorded = record["envelope"]
        assert recorded["metadata"]["traceId"] == meta["trace_id"]
        assert recorded["payload"] == {"document_id": "doc-123"}  # the agent's change did not leak
        for key in ("version", "intent", "routing"):
            assert recorded[key] == env[key]
        assert recorded["context"]["sourceAgent"] == "it-client"
        assert recorded["context"]["priority"] == "NORMAL"
        assert recorded["context"]["tags"] == []
        assert recorded["metadata"]["requestId"] == rid
        assert recorded["metadata"]["source"] == "it-client"

        assert record["policy"] == {
            "allowed": ["alpha", "beta", "remote-zero"],
            "filtered": [],
            "reasons": {},
        }
        check_events_well_formed(record)
        assert event_types(record) == [
            "INTENT_RECEIVED",
            "AGENT_ATTEMPT_START",
            "AGENT_ATTEMPT_END",
            "ROUTER_DECISION",
            "FINAL_RESPONSE",
        ]
        assert record["events"][1]["payload"]["agent"] == "alpha"
        assert record["events"][2]["payload"]["agent"] == "alpha"
        assert record["routerDecision"] == {
            "agent": "alpha",
            "intent": "ProcessIntent",
            "strategy": "DIRECT",
            "tryOrder": ["alpha"],
            "reason": "deterministic_match",
        }
        assert record["finalResponse"] == body
        assert isinstance(record["trace"], dict)
        assert driver.calls() == [f"alpha {rid}"]

    def test_defaults_are_filled_in_and_recorded(self, driver: Driver) -> None:
        """A minimal envelope is normalised (defaults, uppercase enums, generated traceId)."""
        rid = "req-minimal-1"
        minimal = {
            "version": "1.0",
            "intent": {"name": "ProcessIntent"},
            "metadata": {"requestId": rid},
            "context": {"priority": "high"},
            "routing": {"strategy": "direct"},
        }
        reply = driver.request(minimal)
        body = reply.json
        assert body["status"] == "success"
        assert body["payload"] == {"by": "alpha", "doc": None}
        record = load_record(driver.records_dir, execution_id(rid))
        env = record["envelope"]
        assert env["intent"] == {"name": "ProcessIntent", "version": "1.0"}
        assert env["payload"] == {}
        assert env["context"]["sourceAgent"] == "unknown"
        assert env["context"]["priority"] == "HIGH"
        assert env["context"]["tags"] == []
        assert re.match(
            r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$", env["context"]["timestamp"]
        )
        assert env["metadata"]["source"] == "unknown"
        assert re.match(
            r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$", env["metadata"]["createdAt"]
        )
        assert env["metadata"]["identityChain"] == []
        assert (
            env["metadata"]["traceId"]
            and env["metadata"]["traceId"] == body["metadata"]["trace_id"]
        )
        assert env["routing"] == {"strategy": "DIRECT", "targetAgent": None, "fallbackAgents": []}
        assert record["header"]["envelopeHash"] == envelope_hash(env)

    def test_target_agent(self, driver: Driver) -> None:
        """DIRECT with targetAgent runs that agent only."""
        body, record, _ = routed(driver, "req-target-1", target="beta")
        assert body["status"] == "success"
        assert body["payload"] == {"by": "beta", "doc": "doc-123"}
        assert body["metadata"]["agent"] == "beta"
        assert record["routerDecision"] == {
            "agent": "beta",
            "intent": "ProcessIntent",
            "strategy": "DIRECT",
            "tryOrder": ["beta"],
            "reason": "target_specified",
        }
        assert driver.calls() == ["beta req-target-1"]

    def test_target_that_is_not_a_candidate(self, driver: Driver) -> None:
        """An unknown targetAgent is a ROUTING_ERROR with just three events; no agent runs."""
        body, record, reply = routed(driver, "req-ghost-1", target="ghost")
        assert body["status"] == "error"
        assert body["error"]["code"] == "ROUTING_ERROR"
        assert reply.headers["x-intentus-status"] == "error"
        assert event_types(record) == ["INTENT_RECEIVED", "ROUTER_DECISION", "FINAL_RESPONSE"]
        assert driver.calls() == []

    def test_no_candidates(self, driver: Driver) -> None:
        """No agent for the intent → CAPABILITY_NOT_FOUND, reason no_candidates."""
        body, record, _ = routed(driver, "req-nobody-1", intent="NobodyIntent")
        assert body["error"]["code"] == "CAPABILITY_NOT_FOUND"
        assert body["metadata"]["attempts"] == 0
        assert body["metadata"]["agent"] is None
        assert event_types(record) == ["INTENT_RECEIVED", "ROUTER_DECISION", "FINAL_RESPONSE"]
        assert record["routerDecision"]["reason"] == "no_candidates"
        assert record["routerDecision"]["tryOrder"] == []
        assert driver.calls() == []

    def test_agent_exception_is_internal_agent_error(self, driver: Driver) -> None:
        """Any other exception from an agent becomes INTERNAL_AGENT_ERROR with its message."""
        body, record, _ = routed(driver, "req-broken-1", intent="BrokenIntent")
        assert body["error"]["code"] == "INTERNAL_AGENT_ERROR"
        assert "boom" in body["error"]["message"]
        assert body["metadata"]["agent"] == "broken"
        assert record["events"][2]["type"] == "AGENT_ATTEMPT_END"
        assert record["events"][2]["payload"]["status"] == "error"

    def test_agent_timeout(self, driver: Driver) -> None:
        """An agent past its timeout_s ends with AGENT_TIMEOUT without waiting for it."""
        started = time.monotonic()
        body, record, _ = routed(driver, "req-late-1", intent="LateIntent")
        assert time.monotonic() - started < 1.8
        assert body["error"]["code"] == "AGENT_TIMEOUT"
        assert body["metadata"]["agent"] == "laggard"
        assert event_types(record)[1:3] == ["AGENT_ATTEMPT_START", "AGENT_ATTEMPT_END"]


class TestFallback:
    def test_failure_then_success(self, driver: Driver) -> None:
        """FALLBACK tries the ordered list and stops at the first success."""
        rid = "req-fallback-1"
        body, record, _ = routed(driver, rid, intent="SummarizeIntent", strategy="FALLBACK")
        assert body["status"] == "success"
        assert body["payload"] == {"summary": "short", "by": "up"}
        assert body["metadata"]["agent"] == "up"
        assert body["metadata"]["strategy"] == "FALLBACK"
        assert body["metadata"]["attempts"] == 2
        assert event_types(record) == [
            "INTENT_RECEIVED",
            "AGENT_ATTEMPT_START",
            "AGENT_ATTEMPT_END",
            "FALLBACK_TRIGGERED",
            "AGENT_ATTEMPT_START",
            "AGENT_ATTEMPT_END",
            "ROUTER_DECISION",
            "FINAL_RESPONSE",
        ]
        events = record["events"]
        assert events[1]["payload"]["agent"] == "down"
        assert events[2]["payload"]["status"] == "error"
        fallback = events[3]["payload"]
        assert fallback["from"] == "down"
        assert fallback["to"] == "up"
        assert fallback.get("reason")
        assert events[4]["payload"]["agent"] == "up"
        assert record["routerDecision"] == {
            "agent": "up",
            "intent": "SummarizeIntent",
            "strategy": "FALLBACK",
            "tryOrder": ["down", "up"],
            "reason": "fallback_attempt",
        }
        assert driver.calls() == [f"down {rid}", f"up {rid}"]
        assert driver.metric("intentus_fallbacks_total", intent="SummarizeIntent") == 1

    def test_named_try_order_all_failing(self, driver: Driver) -> None:
        """targetAgent alone is the whole try order; its failure is the reply."""
        rid = "req-fallback-2"
        body, record, _ = routed(
            driver, rid, intent="SummarizeIntent", strategy="FALLBACK", target="down"
        )
        assert body["status"] == "error"
        assert body["error"]["code"] == "AGENT_UNAVAILABLE"
        assert body["error"]["message"] == "backend down"
        assert body["metadata"]["agent"] == "down"
        assert record["routerDecision"]["tryOrder"] == ["down"]
        assert record["routerDecision"]["reason"] == "all_failed"
        assert driver.calls() == [f"down {rid}"]

    def test_target_and_fallback_agents(self, driver: Driver) -> None:
        """[targetAgent] + fallbackAgents is the try order."""
        rid = "req-fallback-3"
        body, record, _ = routed(
            driver,
            rid,
            intent="SummarizeIntent",
            strategy="FALLBACK",
            target="down",
            fallbacks=["up"],
        )
        assert body["metadata"]["agent"] == "up"
        assert record["routerDecision"]["tryOrder"] == ["down", "up"]
        assert record["routerDecision"]["reason"] == "fallback_attempt"
        assert driver.calls() == [f"down {rid}", f"up {rid}"]


class TestBroadcast:
    def test_every_candidate_once_in_order(self, driver: Driver) -> None:
        """BROADCAST runs every candidate in order (local first) and answers the last success."""
        rid = "req-broadcast-1"
        body, record, _ = routed(driver, rid, strategy="BROADCAST")
        assert body["status"] == "success"
        # remote-zero ran after alpha changed its own copy: copies are private
        assert body["payload"] == {"by": "remote-zero", "saw_mutation": False}
        assert body["metadata"]["agent"] == "remote-zero"
        assert body["metadata"]["attempts"] == 3
        assert event_types(record) == [
            "INTENT_RECEIVED",
            *["AGENT_ATTEMPT_START", "AGENT_ATTEMPT_END"] * 3,
            "ROUTER_DECISION",
            "FINAL_RESPONSE",
        ]
        started = [
            e["payload"]["agent"] for e in record["events"] if e["type"] == "AGENT_ATTEMPT_START"
        ]
        assert started == ["alpha", "beta", "remote-zero"]
        assert record["routerDecision"] == {
            "agent": "remote-zero",
            "intent": "ProcessIntent",
            "strategy": "BROADCAST",
            "tryOrder": ["alpha", "beta", "remote-zero"],
            "reason": "broadcast_last_success",
        }
        assert driver.calls() == [f"alpha {rid}", f"beta {rid}", f"remote-zero {rid}"]


class TestParallel:
    def test_first_success_without_waiting_for_stragglers(self, driver: Driver) -> None:
        """PARALLEL answers at the first success; the straggler is recorded as abandoned."""
        rid = "req-parallel-1"
        started = time.monotonic()
        body, record, _ = routed(driver, rid, intent="RaceIntent", strategy="PARALLEL")
        assert time.monotonic() - started < 2.5  # slowpoke sleeps 3 s
        assert body["status"] == "success"
        assert body["payload"] == {"by": "fast"}
        assert body["metadata"]["agent"] == "fast"
        assert body["metadata"]["strategy"] == "PARALLEL"
        types = event_types(record)
        assert types[0] == "INTENT_RECEIVED"
        assert sorted(types[1:3]) == ["AGENT_ATTEMPT_START", "AGENT_ATTEMPT_START"]
        assert types[3:] == [
            "AGENT_ATTEMPT_END",
            "AGENT_ATTEMPT_ABANDONED",
            "ROUTER_DECISION",
            "FINAL_RESPONSE",
        ]
        assert record["events"][3]["payload"]["agent"] == "fast"
        assert record["events"][4]["payload"]["agent"] == "slowpoke"
        assert record["routerDecision"] == {
            "agent": "fast",
            "intent": "RaceIntent",
            "strategy": "PARALLEL",
            "tryOrder": ["slowpoke", "fast"],
            "reason": "parallel_first_success",
        }
        assert sorted(driver.calls()) == [f"fast {rid}", f"slowpoke {rid}"]


def test_records_dir_holds_only_records_named_exec(driver: Driver) -> None:
    """Nothing but records is named exec-*.json under records_dir."""
    for i in range(3):
        driver.request(envelope(request_id=f"req-only-{i}"))
    files = sorted(p.name for p in driver.records_dir.rglob("exec-*.json"))
    assert files == sorted(f"{execution_id(f'req-only-{i}')}.json" for i in range(3))
