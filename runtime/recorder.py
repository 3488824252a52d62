"""The execution record's format, the event log of one request, and the record's bytes.

A record is one JSON object, members in this order: `header`, `envelope` (the normalised
envelope as routed; null for a rejected message, whose raw body fields follow instead),
`policy`, `events`, `routerDecision`, `finalResponse` (the reply body, byte for byte), `trace`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, TypedDict, get_args

from runtime.canonical import (
    compact_text,
    dumps,
    float_text,
    names_text,
    optional_text,
    sha256_hex,
    string_text,
    value_text,
)
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
    """Appends events with `seq` from 1 and `t_ms` since receipt, each kept as its JSON text
    (what the record holds), so that no event is built as a dict only to be encoded."""

    __slots__ = ("_encoded", "_monotonic", "_started")

    def __init__(self, monotonic: Callable[[], float], started: float) -> None:
        self._monotonic = monotonic
        self._started = started
        self._encoded: list[str] = []

    def event(self, kind: EventType, payload: dict[str, Any]) -> None:
        self.event_json(kind, compact_text(payload))

    def event_json(self, kind: EventType, payload: str) -> None:
        """An event whose payload is given as its compact JSON text."""
        t_ms = float.__repr__(round((self._monotonic() - self._started) * 1000.0, 3))
        if t_ms[-1] > "9":  # nan, inf: refused as the encoder refuses them
            t_ms = float_text(float(t_ms))
        encoded = self._encoded
        encoded.append(
            f'{{"seq":{len(encoded) + 1},"type":"{kind}","payload":{payload},"t_ms":{t_ms}}}'
        )

    def events_json(self) -> str:
        """The events as the record's JSON array."""
        return "[" + ",".join(self._encoded) + "]"

    @property
    def events(self) -> list[RecordEvent]:
        """The events as data (decoded from their text)."""
        events: list[RecordEvent] = json.loads(self.events_json())
        return events

    def elapsed_ms(self) -> float:
        return (self._monotonic() - self._started) * 1000.0


# -- JSON text of the record's parts, written directly: the same bytes `dumps` gives for the
# -- dicts above (tests/unit/test_canonical.py keeps them equal), at a fraction of the cost.
# Values typed `str` are written with `string_text` (no check of their type), `str | None`
# inline; only values that may be of any type (error codes and messages) take `value_text`.


def intent_received_json(
    *, intent: str | None, version: str | None, request_id: str, strategy: str | None
) -> str:
    """The INTENT_RECEIVED event's payload."""
    return (
        f'{{"intent":{"null" if intent is None else string_text(intent)},'
        f'"version":{"null" if version is None else string_text(version)},'
        f'"requestId":{string_text(request_id)},'
        f'"strategy":{"null" if strategy is None else string_text(strategy)}}}'
    )


def attempt_start_json(agent: str, attempt: int) -> str:
    """The AGENT_ATTEMPT_START event's payload."""
    return f'{{"agent":{string_text(agent)},"attempt":{int.__repr__(attempt)}}}'


def attempt_end_json(
    agent: str, attempt: int, *, status: str, seconds: float, error_code: Any, ending: str
) -> str:
    """The AGENT_ATTEMPT_END event's payload: `error_code` only for an error, and the way it
    ended only if not "returned"."""
    tail = "" if error_code is None else f',"error_code":{value_text(error_code)}'
    if ending != "returned":
        tail += f",{string_text(ending)}:true"
    return (
        f'{{"agent":{string_text(agent)},"attempt":{int.__repr__(attempt)},'
        f'"status":{string_text(status)},'
        f'"latency_ms":{float_text(round(seconds * 1000.0, 3))}{tail}}}'
    )


def decision_json(
    *,
    agent: str | None,
    intent: str | None,
    strategy: str | None,
    try_order: list[str],
    reason: RouteReason,
) -> str:
    """A RouterDecision (the record's `routerDecision`, and its ROUTER_DECISION event)."""
    return (
        f'{{"agent":{"null" if agent is None else string_text(agent)},'
        f'"intent":{"null" if intent is None else string_text(intent)},'
        f'"strategy":{"null" if strategy is None else string_text(strategy)},'
        f'"tryOrder":{names_text(try_order)},"reason":{string_text(reason)}}}'
    )


def final_event_json(status: str, error_code: Any) -> str:
    """The FINAL_RESPONSE event's payload (`final_event`)."""
    if error_code is None:
        return f'{{"status":{string_text(status)},"has_error":false,"error_code":null}}'
    return (
        f'{{"status":{string_text(status)},"has_error":true,"error_code":{value_text(error_code)}}}'
    )


def policy_json(policy: RecordPolicy) -> str:
    reasons = policy["reasons"]
    reasons_text = (
        "{"
        + ",".join(f"{string_text(name)}:{string_text(why)}" for name, why in reasons.items())
        + "}"
        if reasons
        else "{}"
    )
    return (
        f'{{"allowed":{names_text(policy["allowed"])},'
        f'"filtered":{names_text(policy["filtered"])},"reasons":{reasons_text}}}'
    )


def trace_json(
    *,
    trace_id: str | None,
    agent: str | None,
    intent: str | None,
    status: str,
    latency_ms: float,
    error: dict[str, Any] | None,
) -> str:
    """`trace_of(...)` as JSON text."""
    message = "null" if error is None else value_text(error["message"])
    return (
        f'{{"traceId":{"null" if trace_id is None else string_text(trace_id)},'
        f'"agent":{"null" if agent is None else string_text(agent)},'
        f'"intent":{"null" if intent is None else string_text(intent)},'
        f'"status":{string_text(status)},'
        f'"latencyMs":{float_text(round(latency_ms, 3))},"error":{message}}}'
    )


@lru_cache(maxsize=16)
def _worker_members(worker_id: str) -> str:
    return f'"workerId":{value_text(worker_id)},"runtimeVersion":{value_text(__version__)},'


def header_json(
    *,
    execution_id: str,
    request_id: str,
    arrival: Arrival,
    envelope_hash: str | None,
    fingerprint: str | None,
    kind: RecordKind,
    replayable: bool,
    worker_id: str,
) -> str:
    """`record_header(...)` as JSON text."""
    context = arrival.context
    return (
        f'{{"executionId":{string_text(execution_id)},"requestId":{string_text(request_id)},'
        f'"correlationId":{optional_text(arrival.correlation_id or context.correlation_id)},'
        f'"createdAt":{string_text(format_timestamp(arrival.received))},'
        f'"envelopeHash":{"null" if envelope_hash is None else string_text(envelope_hash)},'
        f'"fingerprint":{"null" if fingerprint is None else string_text(fingerprint)},'
        f'"replayable":{"true" if replayable else "false"},"kind":{string_text(kind)},'
        f'{_worker_members(worker_id)}"userId":{optional_text(context.user_id)},'
        f'"recordFormat":{RECORD_FORMAT}}}'
    )


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
    header: str,
    envelope_json: bytes,
    policy: str,
    events: str,
    decision: str,
    response_body: bytes,
    trace: str,
) -> bytes:
    """`dumps(build_record(...))` of a routed request, joined from its parts' JSON text (the
    envelope and the response as already encoded: compact JSON is its members joined, so the
    bytes are the same)."""
    return b"".join(
        (
            f'{{"header":{header},"envelope":'.encode(),
            envelope_json,
            f',"policy":{policy},"events":{events},"routerDecision":{decision},'
            '"finalResponse":'.encode(),
            response_body,
            f',"trace":{trace}}}'.encode(),
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
    decision = decision_json(
        agent=None, intent=intent, strategy=strategy, try_order=[], reason=reason
    )
    recorder.event_json("ROUTER_DECISION", decision)
    recorder.event("FINAL_RESPONSE", final_event(response))
    trace = trace_of(
        trace_id=response["metadata"]["trace_id"],
        agent=None,
        intent=intent,
        response=response,
        latency_ms=recorder.elapsed_ms(),
    )
    # `dumps(build_record(...))`, joined from its members.
    return b"".join(
        (
            b'{"header":',
            dumps(header),
            b',"envelope":',
            dumps(envelope),
            b"," + dumps(raw)[1:-1] if raw else b"",
            b',"policy":{"allowed":[],"filtered":[],"reasons":{}},"events":',
            recorder.events_json().encode(),
            b',"routerDecision":',
            decision.encode(),
            b',"finalResponse":',
            dumps(response),
            b',"trace":',
            dumps(trace),
            b"}",
        )
    )
