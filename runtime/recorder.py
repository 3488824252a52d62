"""ExecutionRecorder: the ordered event log of one request, and the record built from it."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from runtime.canonical import dumps, sha256_hex

EVENT_TYPES = (
    "INTENT_RECEIVED",
    "AGENT_ATTEMPT_START",
    "AGENT_ATTEMPT_END",
    "AGENT_ATTEMPT_ABANDONED",
    "FALLBACK_TRIGGERED",
    "ROUTER_DECISION",
    "FINAL_RESPONSE",
    "DUPLICATE_DELIVERY",
)
RAW_BODY_LIMIT = 64 * 1024
RECORD_FORMAT = 1


class ExecutionRecorder:
    """Appends events with `seq` from 1 and `t_ms` since receipt."""

    __slots__ = ("_mono", "_t0", "events")

    def __init__(self, monotonic: Callable[[], float], t0: float) -> None:
        self._mono = monotonic
        self._t0 = t0
        self.events: list[dict[str, Any]] = []

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        self.events.append(
            {
                "seq": len(self.events) + 1,
                "type": kind,
                "payload": payload,
                "t_ms": round((self._mono() - self._t0) * 1000.0, 3),
            }
        )

    def elapsed_ms(self) -> float:
        return (self._mono() - self._t0) * 1000.0


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
    header: dict[str, Any],
    envelope: dict[str, Any] | None,
    policy: dict[str, Any],
    events: list[dict[str, Any]],
    decision: dict[str, Any],
    response: dict[str, Any],
    trace: dict[str, Any],
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
    header: dict[str, Any],
    envelope_json: bytes,
    policy: dict[str, Any],
    events: list[dict[str, Any]],
    decision: dict[str, Any],
    response_body: bytes,
    trace: dict[str, Any],
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
