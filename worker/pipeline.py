"""From one delivery (bytes + properties) to one decision: what to record, reply, dead-letter.

No pika here: the transport hands in a `Delivery` and carries out the `Decision`, so the heart
of the worker is tested without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.engine import Outcome
from runtime.envelope import RequestContext
from worker.transport import Delivery, Reply


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


def redecide(outcome: Outcome, delivery: Delivery, default_reply_queue: str) -> Decision:
    """The decision for the outcome the runtime reached for `delivery` (routed, answered from
    its record, refused, or parked until a record exists)."""
    if outcome.parked:
        return Decision(outcome, None, None)  # nothing to answer yet: it waits for a record
    reason = outcome.reject_reason if outcome.kind == "rejected" else None
    return Decision(outcome, reply_for(outcome, delivery, default_reply_queue), reason)
