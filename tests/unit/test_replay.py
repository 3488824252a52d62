"""Reading records back: find, replay, verify (integrity and determinism), diff, stats."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from runtime import AgentRegistry, RecordNotFound, load_policy
from runtime.canonical import execution_id_for
from runtime.replay import (
    MISSING,
    ROUTING_UNCHECKED,
    diff,
    differences,
    find,
    replay,
    stats,
    summary,
    verify,
)

from .conftest import Calls, body, envelope, fail, ok, stored


@pytest.fixture
def setup(make_runtime, calls: Calls) -> tuple[Any, AgentRegistry]:
    reg = AgentRegistry()
    reg.register("a", fail(calls, "a"), intents=["ProcessIntent"])
    reg.register("b", ok(calls, "b"), intents=["ProcessIntent"])
    return make_runtime(reg), reg


def routed(rt: Any, **kw: Any) -> tuple[Any, dict[str, Any]]:
    out = rt.process(body(envelope(**kw)), correlation_id=kw.get("request_id", "") + "-corr")
    rt.commit_sync(out)
    return out, stored(rt, out.execution_id)


class TestFindAndReplay:
    def test_replay_is_byte_identical(self, setup, calls: Calls) -> None:
        """replay() gives the exact bytes that were answered, and runs no agent."""
        rt, _ = setup
        out, record = routed(rt, request_id="r1", strategy="FALLBACK")
        before = list(calls.names)
        assert replay(record) == out.body
        assert calls.names == before

    def test_find_by_any_id(self, setup) -> None:
        """find() accepts executionId, requestId or correlationId."""
        rt, _ = setup
        out, _ = routed(rt, request_id="r1")
        for ident in (out.execution_id, "r1", "r1-corr"):
            assert find(rt.store, ident)[0] == out.execution_id
        with pytest.raises(RecordNotFound):
            find(rt.store, "nothing")


class TestVerify:
    def test_clean_record_verifies(self, setup) -> None:
        """A fresh record passes integrity and determinism checks."""
        rt, reg = setup
        out, record = routed(rt, request_id="r1", strategy="FALLBACK")
        result = verify(out.execution_id, record, registry=reg, policy=rt.policy)
        assert result.ok, result.problems

    def test_rejected_record_verifies(self, setup) -> None:
        """A rejected-input record (envelope null) is well-formed."""
        rt, reg = setup
        out = rt.process(b"{broken", None)
        rt.commit_sync(out)
        assert verify(out.execution_id, stored(rt, out.execution_id), registry=reg).ok

    def test_tampered_envelope(self, setup) -> None:
        """Changing the recorded envelope breaks the envelopeHash check."""
        rt, _ = setup
        out, record = routed(rt, request_id="r1")
        record["envelope"]["payload"]["document_id"] = "other"
        assert any("envelopeHash" in p for p in verify(out.execution_id, record).problems)

    def test_broken_events(self, setup) -> None:
        """Gaps in seq, a missing FINAL_RESPONSE and a mismatched response are reported."""
        rt, _ = setup
        out, record = routed(rt, request_id="r1")
        bad = copy.deepcopy(record)
        del bad["events"][1]
        assert any("contiguous" in p for p in verify(out.execution_id, bad).problems)
        bad = copy.deepcopy(record)
        bad["events"].pop()
        assert any("FINAL_RESPONSE" in p for p in verify(out.execution_id, bad).problems)
        bad = copy.deepcopy(record)
        flipped = {"error": "success", "success": "error"}
        bad["finalResponse"]["status"] = flipped[bad["finalResponse"]["status"]]
        assert any("status" in p for p in verify(out.execution_id, bad).problems)

    def test_wrong_file_name(self, setup) -> None:
        """A record under another id is reported."""
        rt, _ = setup
        _, record = routed(rt, request_id="r1")
        assert not verify(execution_id_for("other"), record).ok

    def test_registry_change_breaks_determinism(self, setup) -> None:
        """If the current registry would try agents in another order, verify says so."""
        rt, _ = setup
        out, record = routed(rt, request_id="r1", strategy="FALLBACK")
        changed = AgentRegistry()
        changed.register("a", lambda e: {}, intents=["ProcessIntent"], node_priority=500)
        changed.register("b", lambda e: {}, intents=["ProcessIntent"])
        problems = verify(out.execution_id, record, registry=changed).problems
        assert any("not reproducible" in p for p in problems)

    def test_unknown_agents_leave_routing_unchecked(self, setup) -> None:
        """A registry that knows none of the recorded agents cannot judge routing: a note, no failure."""
        rt, _ = setup
        out, record = routed(rt, request_id="r1", strategy="FALLBACK")
        other = AgentRegistry()
        other.register("echo", lambda e: {}, intents=["ProcessIntent"])
        result = verify(out.execution_id, record, registry=other)
        assert result.ok, result.problems
        assert result.notes == [ROUTING_UNCHECKED]

    def test_one_known_agent_is_enough_to_check(self, setup) -> None:
        """A registry that lost one of the recorded agents fails the check."""
        rt, _ = setup
        out, record = routed(rt, request_id="r1", strategy="FALLBACK")
        shrunk = AgentRegistry()
        shrunk.register("b", lambda e: {}, intents=["ProcessIntent"])
        result = verify(out.execution_id, record, registry=shrunk)
        assert any("not reproducible" in p for p in result.problems)
        assert result.notes == []

    def test_records_without_agents_are_checked(self, setup) -> None:
        """A no-candidates record is checked against any registry (no agents to miss)."""
        rt, _ = setup
        out, record = routed(rt, request_id="r1", intent="NoSuchIntent")
        other = AgentRegistry()
        other.register("x", lambda e: {}, intents=["NoSuchIntent"])
        result = verify(out.execution_id, record, registry=other)
        assert any("not reproducible" in p for p in result.problems)

    def test_policy_change_breaks_determinism(self, setup) -> None:
        """A policy that now filters an agent changes the try order."""
        rt, reg = setup
        out, record = routed(rt, request_id="r1", strategy="FALLBACK")
        policy = load_policy({"rules": [{"id": "x", "action": "deny", "agents": ["a"]}]})
        assert not verify(out.execution_id, record, registry=reg, policy=policy).ok

    def test_unparseable(self) -> None:
        """A record that did not parse is reported as such."""
        assert verify("exec-000000000000000000000000", None).problems == [
            "record file does not parse"
        ]


class TestDiffAndStats:
    def test_diff_names_paths(self, setup) -> None:
        """diff lists the paths that differ, and nothing for identical records."""
        rt, _ = setup
        _, a = routed(rt, request_id="r1")
        _, b = routed(rt, request_id="r2")
        assert diff(a, a) == []
        paths = diff(a, b)
        assert any(p.startswith("header.requestId") for p in paths)
        assert diff({"x": [1]}, {"x": [1, 2], "y": 0}) == ["x[1]: only in B", "y: only in B"]

    def test_differences_carry_both_values(self) -> None:
        """differences gives each path with A's and B's value, MISSING where a side has none."""
        a = {"h": {"id": "a", "same": 1}, "ev": [{"t": 1}], "only_a": {"k": [1]}}
        b = {"h": {"id": "b", "same": 1}, "ev": [{"t": 1}, {"t": 2}], "only_b": None}
        assert differences(a, b) == [
            ("h.id", "a", "b"),
            ("ev[1]", MISSING, {"t": 2}),
            ("only_a", {"k": [1]}, MISSING),
            ("only_b", MISSING, None),
        ]
        assert diff(a, b) == [
            'h.id: "a" != "b"',
            "ev[1]: only in B",
            "only_a: only in A",
            "only_b: only in B",
        ]

    def test_summary_and_stats(self, setup) -> None:
        """stats counts records by status, kind, intent, agent and error code."""
        rt, _ = setup
        routed(rt, request_id="r1")
        routed(rt, request_id="r2", strategy="FALLBACK")
        bad = rt.process(b"nope")
        rt.commit_sync(bad)
        s = stats(rt.store)
        assert s["records"] == 3
        assert s["by_status"] == {"error": 2, "success": 1}
        assert s["by_kind"] == {"execution": 2, "rejected": 1}
        assert s["by_error_code"] == {"AGENT_UNAVAILABLE": 1, "PROTOCOL_ERROR": 1}
        line = summary(stored(rt, execution_id_for("r2")))
        assert (line["agent"], line["status"], line["strategy"]) == ("b", "success", "FALLBACK")
