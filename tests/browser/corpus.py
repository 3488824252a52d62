"""Records made by the real runtime for the record browser's tests, in any execution store."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runtime import AgentError, AgentRegistry, ErrorCode, FixedClock, IntentusRuntime

#: Policy that filters the `audit` agent out of every request, with a reason in each record.
POLICY: dict[str, Any] = {
    "default": "allow",
    "rules": [{"id": "no-audit", "action": "deny", "agents": ["audit"]}],
}
#: The first record's createdAt; each later one is a minute after the one before.
START = datetime(2024, 1, 15, 10, 0, 0, tzinfo=UTC)
SCRIPT = "<script>alert(1)</script>"
#: A requestId that would run script if it were ever parsed as HTML.
HOSTILE_ID = 'req-<img src=x onerror="alert(2)">'


def registry(release: threading.Event) -> AgentRegistry:
    """Agents for every shape of timeline: success, error, fallback, timeout, abandoned."""
    reg = AgentRegistry()

    @reg.agent("echo", intents=["ProcessIntent"])
    def echo(envelope: Any) -> dict[str, Any]:
        return {"echo": envelope.payload}

    @reg.agent("audit", intents=["ProcessIntent"], node_priority=200)
    def audit(envelope: Any) -> dict[str, Any]:
        return {"audited": True}

    @reg.agent("primary", intents=["SummarizeIntent"], node_priority=10)
    def primary(envelope: Any) -> dict[str, Any]:
        raise AgentError(ErrorCode.AGENT_UNAVAILABLE, "primary is down", {"retry": False})

    @reg.agent("backup", intents=["SummarizeIntent"], node_priority=50)
    def backup(envelope: Any) -> dict[str, Any]:
        return {"summary": str(envelope.payload.get("text", ""))[:10]}

    @reg.agent("broken", intents=["BrokenIntent"])
    def broken(envelope: Any) -> dict[str, Any]:
        raise AgentError(ErrorCode.AGENT_ERROR, "cannot do that")

    @reg.agent("sleepy", intents=["SlowIntent"], timeout_s=0.05)
    def sleepy(envelope: Any) -> dict[str, Any]:
        release.wait(30)
        return {}

    @reg.agent("quick", intents=["FanIntent"], node_priority=10)
    def quick(envelope: Any) -> dict[str, Any]:
        return {"by": "quick"}

    @reg.agent("stuck", intents=["FanIntent"], node_priority=50, timeout_s=30)
    def stuck(envelope: Any) -> dict[str, Any]:
        release.wait(30)
        return {"by": "stuck"}

    return reg


def request(
    intent: str,
    request_id: str,
    payload: dict[str, Any] | None = None,
    *,
    strategy: str = "DIRECT",
) -> bytes:
    return json.dumps(
        {
            "version": "1.0",
            "intent": {"name": intent},
            "payload": payload or {},
            "metadata": {"requestId": request_id},
            "routing": {"strategy": strategy},
        }
    ).encode()


@dataclass
class Corpus:
    """What was recorded: executionIds by name, the replies as sent, and when."""

    ids: dict[str, str] = field(default_factory=dict)
    request_ids: dict[str, str] = field(default_factory=dict)
    replies: dict[str, bytes] = field(default_factory=dict)
    created: dict[str, datetime] = field(default_factory=dict)
    correlation: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.ids)


#: name → (intent, requestId, payload, strategy); `bulk-*` fill more than one page of 5.
REQUESTS: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("direct", "ProcessIntent", "req-direct", {"document_id": "doc-1"}, "DIRECT"),
    ("fallback", "SummarizeIntent", "req-fallback", {"text": "a long text"}, "FALLBACK"),
    ("script", "ProcessIntent", HOSTILE_ID, {"note": SCRIPT}, "DIRECT"),
    ("error", "BrokenIntent", "req-error", {}, "DIRECT"),
    ("timeout", "SlowIntent", "req-timeout", {}, "DIRECT"),
    ("parallel", "FanIntent", "req-parallel", {}, "PARALLEL"),
    ("missing", "NobodyIntent", "req-missing", {}, "DIRECT"),
    *[(f"bulk-{i}", "ProcessIntent", f"req-bulk-{i}", {"n": i}, "DIRECT") for i in range(6)],
]


def populate(runtime: IntentusRuntime, clock: FixedClock) -> Corpus:
    """Route every request of REQUESTS (and one body that is not JSON), a minute apart."""
    corpus = Corpus()
    for name, intent, rid, payload, strategy in REQUESTS:
        corpus.created[name] = clock.now()
        outcome = runtime.process(
            request(intent=intent, request_id=rid, payload=payload, strategy=strategy),
            correlation_id=f"corr-{name}",
        )
        runtime.commit_sync(outcome)
        corpus.ids[name] = outcome.execution_id
        corpus.request_ids[name] = rid
        corpus.replies[name] = outcome.body
        corpus.correlation[name] = f"corr-{name}"
        clock.advance(60)
    corpus.created["rejected"] = clock.now()
    outcome = runtime.process(b"{not json", correlation_id="corr-rejected")
    runtime.commit_sync(outcome)
    corpus.ids["rejected"] = outcome.execution_id
    corpus.request_ids["rejected"] = outcome.request_id
    corpus.replies["rejected"] = outcome.body
    corpus.correlation["rejected"] = "corr-rejected"
    return corpus


def make_runtime(reg: AgentRegistry, **store_kwargs: Any) -> tuple[IntentusRuntime, FixedClock]:
    # A small step gives each event its own t_ms, so timelines have widths to draw.
    clock = FixedClock(START, step_s=0.0004)
    runtime = IntentusRuntime(
        reg, policy=POLICY, clock=clock, worker_id="browser-test", **store_kwargs
    )
    return runtime, clock
