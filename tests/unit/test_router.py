"""Routing through IntentusRuntime: the four strategies, their edge cases and exact events."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from runtime import AgentError, AgentRegistry, ErrorCode, IntentusRuntime
from runtime.envelope import validate_envelope
from runtime.policy import Policy, PolicyDecision
from runtime.router import plan

from .conftest import Calls, envelope, event_types, fail, ok, stored


def registry_of(*agents: tuple[str, Any], **opts: dict[str, Any]) -> AgentRegistry:
    reg = AgentRegistry()
    for name, handler in agents:
        reg.register(name, handler, intents=["ProcessIntent"], **opts.get(name, {}))
    return reg


def route(rt: IntentusRuntime, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    out = rt.process(data)
    rt.commit_sync(out)
    return out.response, stored(rt, out.execution_id)


class TestDirect:
    def test_first_in_order_is_chosen(self, make_runtime, calls: Calls) -> None:
        """DIRECT without a target runs the first agent in (local, priority, name) order."""
        reg = registry_of(("b", ok(calls, "b")), ("a", ok(calls, "a")), ("c", ok(calls, "c")))
        response, record = route(make_runtime(reg), envelope())
        assert calls.names == ["a"]
        assert response["status"] == "success"
        assert response["payload"] == {"by": "a"}
        assert record["routerDecision"] == {
            "agent": "a",
            "intent": "ProcessIntent",
            "strategy": "DIRECT",
            "tryOrder": ["a"],
            "reason": "deterministic_match",
        }
        assert event_types(record) == [
            "INTENT_RECEIVED",
            "AGENT_ATTEMPT_START",
            "AGENT_ATTEMPT_END",
            "ROUTER_DECISION",
            "FINAL_RESPONSE",
        ]

    def test_local_and_priority_win_over_name(self, make_runtime, calls: Calls) -> None:
        """A local agent beats a remote one; lower node_priority beats a smaller name."""
        reg = registry_of(
            ("a-remote", ok(calls, "a-remote")),
            ("b-local", ok(calls, "b-local")),
            ("c-local", ok(calls, "c-local")),
            **{"a-remote": {"node_id": "n1", "node_priority": 1}, "c-local": {"node_priority": 5}},
        )
        response, _ = route(make_runtime(reg), envelope())
        assert response["metadata"]["agent"] == "c-local"

    def test_target_agent(self, make_runtime, calls: Calls) -> None:
        """targetAgent is used when it is a candidate; the reason says so."""
        reg = registry_of(("a", ok(calls, "a")), ("b", ok(calls, "b")))
        _response, record = route(make_runtime(reg), envelope(target="b"))
        assert calls.names == ["b"]
        assert record["routerDecision"]["reason"] == "target_specified"

    def test_unknown_target_is_a_routing_error(self, make_runtime, calls: Calls) -> None:
        """A targetAgent that is not a candidate: ROUTING_ERROR, no agent runs, three events."""
        reg = registry_of(("a", ok(calls, "a")))
        response, record = route(make_runtime(reg), envelope(target="zzz"))
        assert calls.names == []
        assert response["error"]["code"] == "ROUTING_ERROR"
        assert "zzz" in response["error"]["message"]
        assert event_types(record) == ["INTENT_RECEIVED", "ROUTER_DECISION", "FINAL_RESPONSE"]
        assert record["routerDecision"]["reason"] == "invalid_request"

    def test_error_without_fallback(self, make_runtime, calls: Calls) -> None:
        """DIRECT does not fall back: the agent's error is the answer."""
        reg = registry_of(("a", fail(calls, "a")), ("b", ok(calls, "b")))
        response, record = route(make_runtime(reg), envelope())
        assert calls.names == ["a"]
        assert response["status"] == "error"
        assert response["error"] == {
            "code": "AGENT_UNAVAILABLE",
            "message": "a failed",
            "retryable": False,
            "details": {"agent": "a"},
        }
        assert response["payload"] is None
        assert record["routerDecision"]["reason"] == "deterministic_match"

    def test_exception_becomes_internal_agent_error(self, make_runtime) -> None:
        """Any other exception is INTERNAL_AGENT_ERROR carrying the exception's message."""

        def boom(env: Any) -> dict[str, Any]:
            raise KeyError("document_id missing")

        response, _ = route(make_runtime(registry_of(("a", boom))), envelope())
        assert response["error"]["code"] == "INTERNAL_AGENT_ERROR"
        assert "document_id missing" in response["error"]["message"]
        assert response["error"]["details"]["exception"] == "KeyError"

    def test_non_dict_result_is_an_internal_error(self, make_runtime) -> None:
        """A handler must return a dict."""
        response, _ = route(make_runtime(registry_of(("a", lambda env: [1]))), envelope())
        assert response["error"]["code"] == "INTERNAL_AGENT_ERROR"
        assert "list" in response["error"]["message"]

    def test_unserialisable_result_is_an_internal_error(self, make_runtime) -> None:
        """A result that is not JSON-serialisable is an error, not a crash."""
        response, _ = route(
            make_runtime(registry_of(("a", lambda env: {"x": object()}))), envelope()
        )
        assert response["error"]["code"] == "INTERNAL_AGENT_ERROR"

    def test_no_candidates(self, make_runtime, calls: Calls) -> None:
        """No agent for the intent: CAPABILITY_NOT_FOUND with just three events."""
        reg = registry_of(("a", ok(calls, "a")))
        response, record = route(make_runtime(reg), envelope(intent="Other"))
        assert response["error"]["code"] == "CAPABILITY_NOT_FOUND"
        assert event_types(record) == ["INTENT_RECEIVED", "ROUTER_DECISION", "FINAL_RESPONSE"]
        assert record["routerDecision"]["reason"] == "no_candidates"
        assert record["routerDecision"]["agent"] is None

    def test_version_mismatch_is_no_candidate(self, make_runtime, calls: Calls) -> None:
        """An agent for ProcessIntent@1.0 does not handle version 2.0."""
        reg = registry_of(("a", ok(calls, "a")))
        response, _ = route(make_runtime(reg), envelope(version="2.0"))
        assert response["error"]["code"] == "CAPABILITY_NOT_FOUND"
        assert calls.names == []

    def test_wildcards_match(self, make_runtime, calls: Calls) -> None:
        """'*' matches any intent; 'Name@*' any version of Name."""
        reg = AgentRegistry()
        reg.register("any", ok(calls, "any"), intents=["*"], node_priority=200)
        reg.register("versions", ok(calls, "versions"), intents=["ProcessIntent@*"])
        rt = make_runtime(reg)
        r1, _ = route(rt, envelope(version="7.3", request_id="1"))
        r2, _ = route(rt, envelope(intent="Else", request_id="2"))
        assert (r1["metadata"]["agent"], r2["metadata"]["agent"]) == ("versions", "any")

    def test_all_filtered_by_policy(self, make_runtime, calls: Calls) -> None:
        """Policy leaving no agent: UNAUTHORIZED, reasons recorded, no agent runs."""
        reg = registry_of(("a", ok(calls, "a")), ("b", ok(calls, "b")))
        policy = {"default": "deny", "rules": [{"id": "r1", "action": "deny", "agents": ["a"]}]}
        response, record = route(make_runtime(reg, policy=policy), envelope())
        assert calls.names == []
        assert response["error"]["code"] == "UNAUTHORIZED"
        assert record["policy"] == {
            "allowed": [],
            "filtered": ["a", "b"],
            "reasons": {"a": "denied by rule 'r1'", "b": "denied by default"},
        }
        assert record["routerDecision"]["reason"] == "all_filtered"
        assert event_types(record) == ["INTENT_RECEIVED", "ROUTER_DECISION", "FINAL_RESPONSE"]

    def test_filtered_target_is_unauthorized(self, make_runtime, calls: Calls) -> None:
        """A targetAgent removed by policy: UNAUTHORIZED, even though others are allowed."""
        reg = registry_of(("a", ok(calls, "a")), ("b", ok(calls, "b")))
        policy = {"rules": [{"id": "no-b", "action": "deny", "agents": ["b"]}]}
        response, _ = route(make_runtime(reg, policy=policy), envelope(target="b"))
        assert response["error"]["code"] == "UNAUTHORIZED"
        assert calls.names == []

    def test_policy_skips_to_next_allowed(self, make_runtime, calls: Calls) -> None:
        """DIRECT picks the first agent the policy allows."""
        reg = registry_of(("a", ok(calls, "a")), ("b", ok(calls, "b")))
        policy = {"rules": [{"id": "no-a", "action": "deny", "agents": ["a"]}]}
        _response, record = route(make_runtime(reg, policy=policy), envelope())
        assert calls.names == ["b"]
        assert record["policy"]["filtered"] == ["a"]


class TestFallback:
    def test_moves_on_after_failure(self, make_runtime, calls: Calls) -> None:
        """FALLBACK tries in order, stops at the first success, events as documented."""
        reg = registry_of(("a", fail(calls, "a")), ("b", ok(calls, "b")), ("c", ok(calls, "c")))
        response, record = route(make_runtime(reg), envelope(strategy="FALLBACK"))
        assert calls.names == ["a", "b"]
        assert response["payload"] == {"by": "b"}
        assert response["metadata"]["attempts"] == 2
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
        assert [e["seq"] for e in events] == list(range(1, 9))
        assert events[3]["payload"] == {"from": "a", "to": "b", "reason": "AGENT_UNAVAILABLE"}
        assert events[1]["payload"] == {"agent": "a", "attempt": 1}
        assert events[4]["payload"] == {"agent": "b", "attempt": 2}
        assert events[2]["payload"]["status"] == "error"
        assert events[2]["payload"]["error_code"] == "AGENT_UNAVAILABLE"
        assert record["routerDecision"]["reason"] == "fallback_attempt"
        assert record["routerDecision"]["tryOrder"] == ["a", "b", "c"]

    def test_first_success_is_deterministic_match(self, make_runtime, calls: Calls) -> None:
        """A first-try success keeps the deterministic_match reason."""
        reg = registry_of(("a", ok(calls, "a")), ("b", ok(calls, "b")))
        _, record = route(make_runtime(reg), envelope(strategy="FALLBACK"))
        assert record["routerDecision"]["reason"] == "deterministic_match"
        assert calls.names == ["a"]

    def test_exhausted_returns_the_last_error(self, make_runtime, calls: Calls) -> None:
        """All fail: each runs once and the answer is the last error."""
        reg = registry_of(
            ("a", fail(calls, "a")), ("b", fail(calls, "b", "AGENT_ERROR")), ("c", fail(calls, "c"))
        )
        response, record = route(make_runtime(reg), envelope(strategy="FALLBACK"))
        assert calls.names == ["a", "b", "c"]
        assert response["error"]["message"] == "c failed"
        assert response["metadata"]["agent"] == "c"
        assert response["metadata"]["attempts"] == 3
        assert record["routerDecision"]["reason"] == "all_failed"
        assert event_types(record).count("FALLBACK_TRIGGERED") == 2

    def test_explicit_order_from_target_and_fallbacks(self, make_runtime, calls: Calls) -> None:
        """[targetAgent] + fallbackAgents is the try order, each at most once."""
        reg = registry_of(("a", ok(calls, "a")), ("b", fail(calls, "b")), ("c", fail(calls, "c")))
        response, record = route(
            make_runtime(reg),
            envelope(strategy="FALLBACK", target="c", fallbacks=["b", "c", "a"]),
        )
        assert calls.names == ["c", "b", "a"]
        assert record["routerDecision"]["tryOrder"] == ["c", "b", "a"]
        assert response["metadata"]["agent"] == "a"

    def test_unknown_fallback_name_is_a_routing_error(self, make_runtime, calls: Calls) -> None:
        """A fallback name that is not a candidate: ROUTING_ERROR, nothing runs."""
        reg = registry_of(("a", ok(calls, "a")))
        response, record = route(
            make_runtime(reg), envelope(strategy="FALLBACK", fallbacks=["a", "ghost"])
        )
        assert response["error"]["code"] == "ROUTING_ERROR"
        assert "ghost" in response["error"]["message"]
        assert calls.names == []
        assert event_types(record) == ["INTENT_RECEIVED", "ROUTER_DECISION", "FINAL_RESPONSE"]

    def test_filtered_names_are_skipped(self, make_runtime, calls: Calls) -> None:
        """A named agent removed by policy is skipped; its reason is recorded."""
        reg = registry_of(("a", ok(calls, "a")), ("b", ok(calls, "b")))
        policy = {"rules": [{"id": "no-a", "action": "deny", "agents": ["a"]}]}
        _response, record = route(
            make_runtime(reg, policy=policy),
            envelope(strategy="FALLBACK", target="a", fallbacks=["b"]),
        )
        assert calls.names == ["b"]
        assert record["policy"]["reasons"] == {"a": "denied by rule 'no-a'"}
        assert record["routerDecision"]["tryOrder"] == ["b"]

    def test_timeout_moves_on(self, make_runtime, calls: Calls, release) -> None:
        """A timed-out attempt ends as AGENT_TIMEOUT and FALLBACK moves on without waiting."""

        def stuck(env: Any) -> dict[str, Any]:
            calls.add("a")
            release.wait(10)
            return {}

        reg = registry_of(("a", stuck), ("b", ok(calls, "b")), a={"timeout_s": 0.2})
        rt = make_runtime(reg)
        start = time.monotonic()
        response, record = route(rt, envelope(strategy="FALLBACK"))
        assert time.monotonic() - start < 2.0
        assert response["payload"] == {"by": "b"}
        end_a = record["events"][2]["payload"]
        assert end_a["error_code"] == "AGENT_TIMEOUT"
        assert end_a["abandoned"] is True
        assert record["events"][3]["payload"]["reason"] == "AGENT_TIMEOUT"
        assert rt.invoker.abandoned() == 1
        release.set()
        deadline = time.monotonic() + 5
        while rt.invoker.abandoned() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rt.invoker.abandoned() == 0


class TestBroadcast:
    def test_runs_each_once_in_order_and_returns_last_success(self, make_runtime, calls) -> None:
        """BROADCAST runs every candidate once, in order; the answer is the last success."""
        reg = registry_of(("a", ok(calls, "a")), ("b", ok(calls, "b")), ("c", fail(calls, "c")))
        response, record = route(make_runtime(reg), envelope(strategy="BROADCAST"))
        assert calls.names == ["a", "b", "c"]
        assert response["payload"] == {"by": "b"}
        assert response["metadata"]["agent"] == "b"
        assert response["metadata"]["attempts"] == 3
        assert record["routerDecision"]["reason"] == "broadcast_last_success"
        assert event_types(record) == ["INTENT_RECEIVED"] + [
            "AGENT_ATTEMPT_START",
            "AGENT_ATTEMPT_END",
        ] * 3 + ["ROUTER_DECISION", "FINAL_RESPONSE"]

    def test_all_fail_returns_last_error(self, make_runtime, calls: Calls) -> None:
        """BROADCAST with no success returns the last error."""
        reg = registry_of(("a", fail(calls, "a")), ("b", fail(calls, "b")))
        response, record = route(make_runtime(reg), envelope(strategy="BROADCAST"))
        assert response["error"]["message"] == "b failed"
        assert record["routerDecision"]["reason"] == "all_failed"


class TestParallel:
    def test_first_success_without_waiting_and_no_leak(self, make_runtime, release) -> None:
        """PARALLEL answers at the first success; a slow agent is abandoned; copies are private."""
        mutated = threading.Event()
        seen: dict[str, Any] = {}

        def mutator(env: Any) -> dict[str, Any]:
            env.payload["document_id"] = "mutated"
            env.payload["extra"] = [1]
            env.context.tags.append("leak")
            env.metadata.requestId = "hijacked"
            mutated.set()
            raise AgentError(ErrorCode.AGENT_ERROR, "mutator fails on purpose")

        def reader(env: Any) -> dict[str, Any]:
            mutated.wait(5)
            seen["payload"] = dict(env.payload)
            seen["tags"] = list(env.context.tags)
            seen["rid"] = env.metadata.requestId
            return {"by": "reader"}

        def slow(env: Any) -> dict[str, Any]:
            release.wait(10)
            return {"by": "slow"}

        reg = registry_of(("m", mutator), ("r", reader), ("s", slow))
        rt = make_runtime(reg)
        start = time.monotonic()
        response, record = route(rt, envelope(strategy="PARALLEL", context={"tags": ["t"]}))
        assert time.monotonic() - start < 3.0
        assert response["payload"] == {"by": "reader"}
        assert response["metadata"]["agent"] == "r"
        assert seen == {"payload": {"document_id": "doc-123"}, "tags": ["t"], "rid": "req-1"}
        assert record["envelope"]["payload"] == {"document_id": "doc-123"}
        assert record["envelope"]["context"]["tags"] == ["t"]
        assert record["envelope"]["metadata"]["requestId"] == "req-1"
        assert record["routerDecision"]["reason"] == "parallel_first_success"
        types = event_types(record)
        assert types[:4] == [
            "INTENT_RECEIVED",
            "AGENT_ATTEMPT_START",
            "AGENT_ATTEMPT_START",
            "AGENT_ATTEMPT_START",
        ]
        assert types.count("AGENT_ATTEMPT_END") == 2
        abandoned = [e for e in record["events"] if e["type"] == "AGENT_ATTEMPT_ABANDONED"]
        assert [e["payload"]["agent"] for e in abandoned] == ["s"]
        assert types[-2:] == ["ROUTER_DECISION", "FINAL_RESPONSE"]
        assert [e["seq"] for e in record["events"]] == list(range(1, len(types) + 1))

    def test_all_fail_returns_error_of_last_in_try_order(self, make_runtime, calls) -> None:
        """PARALLEL with no success answers with the error of the last agent in try order."""
        reg = registry_of(("a", fail(calls, "a")), ("b", fail(calls, "b")), ("c", fail(calls, "c")))
        response, record = route(make_runtime(reg), envelope(strategy="PARALLEL"))
        assert sorted(calls.names) == ["a", "b", "c"]
        assert response["error"]["message"] == "c failed"
        assert record["routerDecision"]["reason"] == "all_failed"

    def test_timeouts_end_as_agent_timeout(self, make_runtime, release) -> None:
        """Every PARALLEL agent past its deadline ends as AGENT_TIMEOUT; none is waited for."""

        def stuck(env: Any) -> dict[str, Any]:
            release.wait(10)
            return {}

        reg = registry_of(("a", stuck), ("b", stuck), a={"timeout_s": 0.1}, b={"timeout_s": 0.2})
        rt = make_runtime(reg)
        start = time.monotonic()
        response, record = route(rt, envelope(strategy="PARALLEL"))
        assert time.monotonic() - start < 2.0
        assert response["error"]["code"] == "AGENT_TIMEOUT"
        ends = [e["payload"] for e in record["events"] if e["type"] == "AGENT_ATTEMPT_END"]
        assert [(e["agent"], e["error_code"]) for e in ends] == [
            ("a", "AGENT_TIMEOUT"),
            ("b", "AGENT_TIMEOUT"),
        ]
        assert rt.invoker.abandoned() == 2


class TestPlan:
    def test_plan_is_pure(self) -> None:
        """plan() gives the same try order for the same inputs, and never runs anything."""
        env = validate_envelope(envelope(strategy="FALLBACK"))
        decision = Policy.allow_all().evaluate(["a", "b"], _subject(env))
        assert plan(env, ["a", "b"], decision).try_order == ["a", "b"]
        assert plan(env, ["a", "b"], decision).reason == "deterministic_match"

    def test_plan_no_candidates(self) -> None:
        """Empty candidates: CAPABILITY_NOT_FOUND."""
        env = validate_envelope(envelope())
        p = plan(env, [], PolicyDecision())
        assert p.error is not None and p.error["code"] == "CAPABILITY_NOT_FOUND"
        assert p.reason == "no_candidates"


def _subject(env: Any) -> Any:
    from runtime.policy import PolicySubject

    return PolicySubject.of(env, None)


@pytest.mark.parametrize("strategy", ["DIRECT", "FALLBACK", "BROADCAST", "PARALLEL"])
def test_agent_never_called_twice(make_runtime, calls: Calls, strategy: str) -> None:
    """Whatever the strategy, an agent runs at most once per request."""
    reg = registry_of(("a", fail(calls, "a")), ("b", fail(calls, "b")))
    route(make_runtime(reg), envelope(strategy=strategy))
    assert sorted(calls.names) == sorted(set(calls.names))
