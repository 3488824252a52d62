"""From one delivery (bytes + properties) to one decision: what to record, reply, dead-letter.

No pika here: the transport hands in a `Delivery` and carries out the `Decision`, so the heart
of the worker is tested without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.engine import IntentusRuntime, Outcome
from runtime.envelope import RequestContext
from runtime.errors import EnvelopeError


@dataclass(slots=True)
class Delivery:
    """A message as received, transport-neutral."""

    body: bytes
    tag: int = 0
    generation: int = 0
    redelivered: bool = False
    reply_to: str | None = None
    correlation_id: str | None = None
    message_id: str | None = None
    user_id: str | None = None
    content_type: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    exchange: str = ""
    routing_key: str = ""
    properties: Any = None  # the transport's own properties object, for the dead-letter copy
    refusal: EnvelopeError | None = None
    """Why a property cannot be used (set by the transport): the message is refused."""
    state: dict[object, Any] = field(default_factory=dict, init=False, compare=False, repr=False)
    """What middlewares keep about this delivery until it is settled, each under its own key
    (itself): per-delivery state lives with the delivery, never in a module."""

    @property
    def delivery_count(self) -> int:
        value = self.headers.get("x-delivery-count")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def traceparent(self) -> str | None:
        value = self.headers.get("traceparent")
        return value if isinstance(value, str) and value.isprintable() else None


@dataclass(slots=True)
class Reply:
    routing_key: str
    body: bytes
    correlation_id: str
    headers: dict[str, Any]


@dataclass(slots=True)
class Decision:
    outcome: Outcome
    reply: Reply | None
    dead_letter_reason: str | None

    @property
    def record(self) -> bytes | None:
        return self.outcome.record


def context_of(delivery: Delivery) -> RequestContext:
    return RequestContext(
        message_id=delivery.message_id or None,
        correlation_id=delivery.correlation_id or None,
        user_id=delivery.user_id or None,
        traceparent=delivery.traceparent,
        redelivered=delivery.redelivered or delivery.delivery_count > 0,
        refusal=delivery.refusal,
    )


def reply_for(outcome: Outcome, delivery: Delivery, default_reply_queue: str) -> Reply | None:
    """Where and how the answer goes: `reply_to`, else the default reply queue, else nowhere."""
    destination = delivery.reply_to or default_reply_queue
    if not destination:
        return None
    headers: dict[str, Any] = {
        "x-intentus-status": outcome.status,
        "x-intentus-execution-id": outcome.execution_id,
    }
    if delivery.traceparent:
        headers["traceparent"] = delivery.traceparent
    return Reply(
        routing_key=destination,
        body=outcome.body,
        correlation_id=delivery.correlation_id or outcome.request_id,
        headers=headers,
    )


def decide(runtime: IntentusRuntime, delivery: Delivery, default_reply_queue: str) -> Decision:
    """Route (or answer from the record) one delivery. Never raises for bad input."""
    outcome = runtime.process(
        delivery.body,
        context_of(delivery),
        content_type=delivery.content_type,
        correlation_id=delivery.correlation_id,
    )
    return redecide(outcome, delivery, default_reply_queue)


def redecide(outcome: Outcome, delivery: Delivery, default_reply_queue: str) -> Decision:
    if outcome.parked:
        return Decision(outcome, None, None)  # nothing to answer yet: it waits for a record
    reason = outcome.reject_reason if outcome.kind == "rejected" else None
    return Decision(outcome, reply_for(outcome, delivery, default_reply_queue), reason)
