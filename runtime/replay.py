"""Reading records back: find, replay, verify, diff, stats. No agent ever runs here."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from runtime.canonical import envelope_hash, execution_id_for, rejection_id_for_digest
from runtime.envelope import RequestContext, validate_envelope
from runtime.errors import EnvelopeError, RecordNotFound, RecordStoreError
from runtime.policy import Policy, PolicySubject
from runtime.recorder import EVENT_TYPES
from runtime.registry import AgentRegistry
from runtime.response import response_body
from runtime.router import plan
from runtime.stores.base import EXECUTION_ID, RecordStore


def load(store: RecordStore, execution_id: str) -> dict[str, Any]:
    data = store.get(execution_id)
    if data is None:
        raise RecordNotFound(f"no record {execution_id}")
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise RecordStoreError(f"record {execution_id} is not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise RecordStoreError(f"record {execution_id} is not a JSON object")
    return record


def iter_records(store: RecordStore) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Every record (None where a file does not parse, which `verify` reports)."""
    for eid in store.ids():
        try:
            yield eid, load(store, eid)
        except (RecordStoreError, RecordNotFound):
            yield eid, None


def find(store: RecordStore, ident: str) -> tuple[str, dict[str, Any]]:
    """By executionId, requestId or correlationId.

    A requestId finds the record of its execution (or in-doubt answer). A message rejected
    before routing did not consume its requestId: its record is under a rejection id derived
    from its body, and a requestId finds it only when that requestId has no execution record
    (the newest such rejection). Without an index (files) the last two look-ups scan."""
    if EXECUTION_ID.match(ident) and store.exists(ident):
        return ident, load(store, ident)
    eid = execution_id_for(ident)
    if store.exists(eid):
        return eid, load(store, eid)
    by_request = getattr(store, "find_rejection_by_request_id", None)
    by_correlation = getattr(store, "find_by_correlation_id", None)
    if by_request is not None and by_correlation is not None:  # an indexed backend: no scan
        found = by_request(ident) or by_correlation(ident)
        if found is not None:
            return found, load(store, found)
        raise RecordNotFound(f"no record with executionId, requestId or correlationId {ident!r}")
    rejected: tuple[str, str, dict[str, Any]] | None = None
    correlated: tuple[str, dict[str, Any]] | None = None
    for eid, record in iter_records(store):
        header = record.get("header") if record is not None else None
        if not isinstance(header, dict) or record is None:
            continue
        if header.get("kind") == "rejected" and header.get("requestId") == ident:
            created = str(header.get("createdAt") or "")
            if rejected is None or created > rejected[0]:
                rejected = (created, eid, record)
        elif correlated is None and header.get("correlationId") == ident:
            correlated = (eid, record)
    if rejected is not None:
        return rejected[1], rejected[2]
    if correlated is not None:
        return correlated
    raise RecordNotFound(f"no record with executionId, requestId or correlationId {ident!r}")


def _is_hex_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def replay(record: dict[str, Any]) -> bytes:
    """The recorded response, byte for byte as it was sent."""
    response = record.get("finalResponse")
    if not isinstance(response, dict):
        raise RecordStoreError("record has no finalResponse")
    return response_body(response)


ROUTING_UNCHECKED = "cannot check routing without the agents that recorded it"


@dataclass(slots=True)
class Verification:
    execution_id: str
    problems: list[str]
    #: What could not be checked (not a failure), e.g. ROUTING_UNCHECKED.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    execution_id: str,
    record: dict[str, Any] | None,
    *,
    registry: AgentRegistry | None = None,
    policy: Policy | None = None,
) -> Verification:
    """Integrity (hash, ids, events, response) and, given a registry, routing determinism."""
    problems: list[str] = []
    if record is None:
        return Verification(execution_id, ["record file does not parse"])
    header = record.get("header")
    if not isinstance(header, dict):
        return Verification(execution_id, ["record has no header"])
    if header.get("executionId") != execution_id:
        problems.append(
            f"header.executionId {header.get('executionId')!r} does not match the file name"
        )
    rid = header.get("requestId")
    if header.get("kind") == "rejected":
        # Recorded under its body's rejection id, not its requestId's (which it left free).
        raw = record.get("rawBodySha256")
        if not isinstance(raw, str) or not _is_hex_digest(raw):
            problems.append("rawBodySha256 is missing")
        elif rejection_id_for_digest(raw) != execution_id:
            problems.append("executionId is not derived from rawBodySha256")
    elif not isinstance(rid, str) or execution_id_for(rid) != execution_id:
        problems.append("executionId is not derived from header.requestId")
    envelope = record.get("envelope")
    if envelope is not None:
        if header.get("envelopeHash") != envelope_hash(envelope):
            problems.append("envelopeHash does not match the recorded envelope")
        # No fingerprint check: it is taken of the request as received, and middleware may
        # have adjusted what was routed (and recorded) since.
    elif header.get("kind") != "rejected":
        problems.append("envelope is missing")
    events = record.get("events")
    if not isinstance(events, list) or not events:
        problems.append("events are missing")
        events = []
    for index, event in enumerate(events, start=1):
        if not isinstance(event, dict) or event.get("seq") != index:
            problems.append(f"event {index}: seq is not contiguous from 1")
            break
        if event.get("type") not in EVENT_TYPES:
            problems.append(f"event {index}: unknown type {event.get('type')!r}")
    types = [e.get("type") for e in events if isinstance(e, dict)]
    if types:
        if types[0] != "INTENT_RECEIVED":
            problems.append("first event is not INTENT_RECEIVED")
        if types[-1] != "FINAL_RESPONSE":
            problems.append("last event is not FINAL_RESPONSE")
        if types.count("ROUTER_DECISION") != 1:
            problems.append("there must be exactly one ROUTER_DECISION event")
        t_ms = [e.get("t_ms", 0) for e in events if isinstance(e, dict)]
        if any(b < a for a, b in itertools.pairwise(t_ms)):
            problems.append("event times go backwards")
    response = record.get("finalResponse")
    if not isinstance(response, dict):
        problems.append("finalResponse is missing")
    else:
        final = next(
            (
                e
                for e in reversed(events)
                if isinstance(e, dict) and e.get("type") == "FINAL_RESPONSE"
            ),
            None,
        )
        if final is not None and final.get("payload", {}).get("status") != response.get("status"):
            problems.append("finalResponse status differs from the FINAL_RESPONSE event")
        if response.get("metadata", {}).get("execution_id") != execution_id:
            problems.append("finalResponse.metadata.execution_id does not match")
        decision = record.get("routerDecision")
        event_decision = next(
            (
                e.get("payload")
                for e in events
                if isinstance(e, dict) and e.get("type") == "ROUTER_DECISION"
            ),
            None,
        )
        if decision != event_decision:
            problems.append("routerDecision differs from the ROUTER_DECISION event")
    notes: list[str] = []
    if registry is not None and envelope is not None and header.get("kind") == "execution":
        recorded = recorded_agents(record)
        if recorded and not any(name in registry for name in recorded):
            # A registry that knows none of them is another application's (often the demo
            # agents, when none were given): comparing with it would report a false failure.
            notes.append(ROUTING_UNCHECKED)
        else:
            problems.extend(
                _determinism(
                    record,
                    envelope=envelope,
                    header=header,
                    registry=registry,
                    policy=policy or Policy.allow_all(),
                )
            )
    return Verification(execution_id, problems, notes)


def recorded_agents(record: dict[str, Any]) -> set[str]:
    """The agents a record names as candidates (allowed or filtered by policy) or tried."""
    names: set[str] = set()
    policy = record.get("policy")
    if isinstance(policy, dict):
        for key in ("allowed", "filtered"):
            value = policy.get(key)
            if isinstance(value, list):
                names.update(n for n in value if isinstance(n, str))
    decision = record.get("routerDecision")
    if isinstance(decision, dict) and isinstance(decision.get("tryOrder"), list):
        names.update(n for n in decision["tryOrder"] if isinstance(n, str))
    return names


def _determinism(
    record: dict[str, Any],
    *,
    envelope: dict[str, Any],
    header: dict[str, Any],
    registry: AgentRegistry,
    policy: Policy,
) -> list[str]:
    try:
        env = validate_envelope(envelope)
    except EnvelopeError as exc:
        return [f"recorded envelope no longer validates: {exc.message}"]
    candidates = [a.name for a in registry.find_by_capability(env.intent.name, env.intent.version)]
    decision = policy.evaluate(candidates, PolicySubject.of(env, header.get("userId")))
    p = plan(env, candidates, decision)
    recorded = (record.get("routerDecision") or {}).get("tryOrder")
    if p.try_order != recorded:
        return [
            f"routing is not reproducible: recorded try order {recorded}, "
            f"the current registry and policy give {p.try_order}"
        ]
    code = (p.error or {}).get("code")
    recorded_error = ((record.get("finalResponse") or {}).get("error") or {}).get("code")
    if code is not None and code != recorded_error:
        return [f"routing is not reproducible: recorded {recorded_error}, now {code}"]
    return []


class _Missing:
    """Where one side of a diff has no value at a path."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """`(path, value in A, value in B)` wherever two records differ; `MISSING` on one side."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in list(a) + [k for k in b if k not in a]:
            sub = f"{path}.{key}" if path else str(key)
            out.extend(differences(a.get(key, MISSING), b.get(key, MISSING), sub))
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = []
        for i in range(max(len(a), len(b))):
            out.extend(
                differences(
                    a[i] if i < len(a) else MISSING, b[i] if i < len(b) else MISSING, f"{path}[{i}]"
                )
            )
        return out
    if a is MISSING or b is MISSING:
        return [(path, a, b)]
    return [] if a == b else [(path, a, b)]


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two records differ (`events[3].payload.agent: 'x' != 'y'`)."""
    lines = []
    for sub, va, vb in differences(a, b, path):
        if va is MISSING:
            lines.append(f"{sub}: only in B")
        elif vb is MISSING:
            lines.append(f"{sub}: only in A")
        else:
            lines.append(f"{sub}: {json.dumps(va)} != {json.dumps(vb)}")
    return lines


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """One line of `records list`."""
    header = record.get("header", {})
    response = record.get("finalResponse") or {}
    meta = response.get("metadata") or {}
    envelope = record.get("envelope") or {}
    return {
        "executionId": header.get("executionId"),
        "requestId": header.get("requestId"),
        "createdAt": header.get("createdAt"),
        "kind": header.get("kind"),
        "intent": (envelope.get("intent") or {}).get("name")
        or (record.get("routerDecision") or {}).get("intent"),
        "status": response.get("status"),
        "errorCode": (response.get("error") or {}).get("code"),
        "agent": meta.get("agent"),
        "strategy": meta.get("strategy"),
        "latencyMs": meta.get("latency_ms"),
    }


#: How stats name a record without an intent or agent (rejected input, say): never "None".
NO_NAME = "(none)"


def stat_key(value: object) -> str:
    return NO_NAME if value is None else str(value)


def stats(store: RecordStore) -> dict[str, Any]:
    own = getattr(store, "stats", None)
    if own is not None:  # an indexed backend counts without reading every record
        return dict(own())
    by_status: Counter[str] = Counter()
    by_intent: Counter[str] = Counter()
    by_agent: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    by_error: Counter[str] = Counter()
    unreadable = 0
    total = 0
    for _eid, record in iter_records(store):
        total += 1
        if record is None:
            unreadable += 1
            continue
        s = summary(record)
        by_status[stat_key(s["status"])] += 1
        by_intent[stat_key(s["intent"])] += 1
        by_agent[stat_key(s["agent"])] += 1
        by_kind[stat_key(s["kind"])] += 1
        if s["errorCode"]:
            by_error[str(s["errorCode"])] += 1
    return {
        "records": total,
        "unreadable": unreadable,
        "by_status": dict(by_status),
        "by_kind": dict(by_kind),
        "by_intent": dict(by_intent),
        "by_agent": dict(by_agent),
        "by_error_code": dict(by_error),
    }


__all__ = [
    "MISSING",
    "NO_NAME",
    "ROUTING_UNCHECKED",
    "RequestContext",
    "Verification",
    "diff",
    "differences",
    "find",
    "iter_records",
    "load",
    "recorded_agents",
    "replay",
    "stats",
    "summary",
    "verify",
]
