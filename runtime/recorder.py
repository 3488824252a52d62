"""The execution record's format, the event log of one request, and the record's bytes.

A record is one JSON object, members in this order: `header`, `envelope` (the normalised
envelope as routed; null for a rejected message, whose raw body fields follow instead),
`policy`, `events`, `routerDecision`, `finalResponse` (the reply body, byte for byte), `trace`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypedDict, get_args

from runtime.canonical import dumps, sha256_hex
from runtime.clock import format_timestamp
from runtime.version import __version__

if TYPE_CHECKING:
    from runtime.envelope import Arrival

EventType = Literal[
    "INTENT_RECEIVED",
    "AGENT_ATTEMPT_START",
    "AGENT_ATTEMPT_END",
    "AGENT_ATTEMPT_ABANDONED",
    "FALLBACK_TRIGGERED",
    "ROUTER_DECISION",
    "FINAL_RESPONSE",
    "DUPLICATE_DELIVERY",
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
RecordKind = Literal["execution", "rejected", "in_doubt"]
RAW_BODY_LIMIT = 64 * 1024
RECORD_FORMAT = 1

# Why a record ended as it did: the routing decision, written into every record.
RouteReason = Literal[
    "deterministic_match",  # the first candidate in the deterministic order
    "target_specified",  # the request named the agent
    "fallback_attempt",  # an agent after the first in a FALLBACK order answered
    "broadcast_last_success",
    "parallel_first_success",
    "all_failed",
    "no_candidates",  # no agent handles the intent
    "all_filtered",  # the policy allows none of the candidates
    "invalid_request",  # a named agent is not a candidate, or the message was refused
    "execution_in_doubt",  # a duplicate of a request whose outcome is unknown
]


class RecordHeader(TypedDict):
    executionId: str
    requestId: str
    correlationId: str | None
    createdAt: str
    envelopeHash: str | None
    fingerprint: str | None
    replayable: bool
    kind: RecordKind
    workerId: str
    runtimeVersion: str
    userId: str | None
    recordFormat: int


class RecordEvent(TypedDict):
    seq: int
    type: EventType
    payload: dict[str, Any]
    t_ms: float


class RecordPolicy(TypedDict):
    allowed: list[str]
    filtered: list[str]
    reasons: dict[str, str]


class RouterDecision(TypedDict):
    agent: str | None
    intent: str | None
    strategy: str | None
    tryOrder: list[str]
    reason: RouteReason


class RecordTrace(TypedDict):
    traceId: str | None
    agent: str | None
    intent: str | None
    status: str
    latencyMs: float
    error: str | None


def trace_of(
    *,
    trace_id: str | None,
    agent: str | None,
    intent: str | None,
    response: dict[str, Any],
    latency_ms: float,
) -> RecordTrace:
    error = response.get("error")
    return {
        "traceId": trace_id,
        "agent": agent,
        "intent": intent,
        "status": response["status"],
        "latencyMs": round(latency_ms, 3),
        "error": None if error is None else error["message"],
    }


def final_event(response: dict[str, Any]) -> dict[str, Any]:
    """The FINAL_RESPONSE event's payload."""
    error = response.get("error")
    return {
        "status": response["status"],
        "has_error": error is not None,
        "error_code": None if error is None else error["code"],
    }


class ExecutionRecorder:
    """Appends events with `seq` from 1 and `t_ms` since receipt."""

    __slots__ = ("_monotonic", "_started", "events")

    def __init__(self, monotonic: Callable[[], float], started: float) -> None:
        self._monotonic = monotonic
        self._started = started
        self.events: list[RecordEvent] = []

    def event(self, kind: EventType, payload: dict[str, Any]) -> None:
        self.events.append(
            {
                "seq": len(self.events) + 1,
                "type": kind,
                "payload": payload,
                "t_ms": round((self._monotonic() - self._started) * 1000.0, 3),
            }
        )

    def elapsed_ms(self) -> float:
        return (self._monotonic() - self._started) * 1000.0


def raw_body_fields(body: bytes) -> dict[str, Any]:
    """How a body that could not be used is kept: its hash and its first 64 KiB."""
    head = body[:RAW_BODY_LIMIT]
    try:
        text, encoding = head.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the limit is still text.
        if exc.start >= len(head) - 3 and len(body) > RAW_BODY_LIMIT:
            try:
                text, encoding = head[: exc.start].decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                text, encoding = base64.b64encode(head).decode("ascii"), "base64"
        else:
            text, encoding = base64.b64encode(head).decode("ascii"), "base64"
    return {
        "rawBodySha256": sha256_hex(body),
        "rawBodyBytes": len(body),
        "rawBodyEncoding": encoding,
        "rawBody": text,
        "rawBodyTruncated": len(body) > RAW_BODY_LIMIT,
    }


def build_record(
    *,
    header: RecordHeader,
    envelope: dict[str, Any] | None,
    policy: RecordPolicy,
    events: list[RecordEvent],
    decision: RouterDecision,
    response: dict[str, Any],
    trace: RecordTrace,
    raw: dict[str, Any] | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {"header": header, "envelope": envelope}
    if raw is not None:
        record.update(raw)
    record["policy"] = policy
    record["events"] = events
    record["routerDecision"] = decision
    record["finalResponse"] = response
    record["trace"] = trace
    return record


def encode_record(
    *,
    header: RecordHeader,
    envelope_json: bytes,
    policy: RecordPolicy,
    events: list[RecordEvent],
    decision: RouterDecision,
    response_body: bytes,
    trace: RecordTrace,
) -> bytes:
    """`dumps(build_record(...))` of a routed request, joining the envelope and the response
    as already encoded (compact JSON is its members joined, so the bytes are the same)."""
    return b"".join(
        (
            b'{"header":',
            dumps(header),
            b',"envelope":',
            envelope_json,
            b',"policy":',
            dumps(policy),
            b',"events":',
            dumps(events),
            b',"routerDecision":',
            dumps(decision),
            b',"finalResponse":',
            response_body,
            b',"trace":',
            dumps(trace),
            b"}",
        )
    )


def record_header(
    *,
    execution_id: str,
    request_id: str,
    arrival: Arrival,
    envelope_hash: str | None,
    fingerprint: str | None,
    kind: RecordKind,
    replayable: bool,
    worker_id: str,
) -> RecordHeader:
    context = arrival.context
    return {
        "executionId": execution_id,
        "requestId": request_id,
        "correlationId": arrival.correlation_id or context.correlation_id,
        "createdAt": format_timestamp(arrival.received),
        "envelopeHash": envelope_hash,
        "fingerprint": fingerprint,
        "replayable": replayable,
        "kind": kind,
        "workerId": worker_id,
        "runtimeVersion": __version__,
        "userId": context.user_id,
        "recordFormat": RECORD_FORMAT,
    }


def unrouted_record(
    recorder: ExecutionRecorder,
    *,
    header: RecordHeader,
    envelope: dict[str, Any] | None,
    response: dict[str, Any],
    intent: str | None,
    strategy: str | None,
    reason: RouteReason,
    raw: dict[str, Any] | None = None,
) -> bytes:
    """The record of a request that reached no agent: its last two events and the rest."""
    decision: RouterDecision = {
        "agent": None,
        "intent": intent,
        "strategy": strategy,
        "tryOrder": [],
        "reason": reason,
    }
    recorder.event("ROUTER_DECISION", dict(decision))
    recorder.event("FINAL_RESPONSE", final_event(response))
    trace = trace_of(
        trace_id=response["metadata"]["trace_id"],
        agent=None,
        intent=intent,
        response=response,
        latency_ms=recorder.elapsed_ms(),
    )
    return dumps(
        build_record(
            header=header,
            envelope=envelope,
            raw=raw,
            policy={"allowed": [], "filtered": [], "reasons": {}},
            events=recorder.events,
            decision=decision,
            response=response,
            trace=trace,
        )
    )
