"""(I/O thread) Carrying out a decision once its record is durable: publish the reply and the
dead letter, wait for their confirms, then ack (or nack for redelivery if one failed)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from runtime.errors import ErrorCode
from runtime.response import error_dict, response_body, response_dict
from worker import tracing
from worker.config import MAX_REPLY_BYTES
from worker.metrics import Metrics
from worker.pipeline import Decision, Delivery, Reply
from worker.transport import Transport

log = logging.getLogger("intentus.worker")


def error_instead(
    reply: Reply,
    response: dict[str, Any],
    *,
    code: ErrorCode,
    message: str,
    details: dict[str, Any],
) -> Reply:
    """The same reply (destination, correlation id, headers) with an error in place of the
    response: its metadata kept, so the error names the execution it stands for."""
    meta = response.get("metadata") or {}
    body = response_body(
        response_dict(
            payload=None,
            error=error_dict(code, message, details),
            execution_id=str(meta.get("execution_id", "")),
            request_id=meta.get("request_id"),
            trace_id=meta.get("trace_id"),
            agent=meta.get("agent"),
            strategy=meta.get("strategy"),
            attempts=int(meta.get("attempts") or 0),
            latency_ms=float(meta.get("latency_ms") or 0.0),
            replayable=bool(meta.get("replayable")),
        )
    )
    return Reply(
        routing_key=reply.routing_key,
        body=body,
        correlation_id=reply.correlation_id,
        headers={**reply.headers, "x-intentus-status": "error"},
    )


def unstorable(decision: Decision, why: str) -> Decision:
    """The answer to a message whose record the store refuses (a value it cannot hold): an
    error reply and a dead letter. An agent that ran is never run again for its requestId (its
    claim stays, so a duplicate is answered EXECUTION_IN_DOUBT), and this reply says the same;
    without an agent, the answer already is an error and goes as it is."""
    outcome = decision.outcome
    reply = decision.reply
    if reply is not None and outcome.agent_ran:
        reply = error_instead(
            reply,
            outcome.response,
            code=ErrorCode.EXECUTION_IN_DOUBT,
            message=(
                f"the record of this execution could not be stored ({why}); its agent may have"
                " run, and is not run again for this requestId"
            ),
            details={"execution_id": outcome.execution_id},
        )
    return Decision(outcome, reply, f"record not stored: {why}")


class Responder:
    """Replies for one worker; `finished()` is called once per delivery it was handed."""

    def __init__(
        self,
        conn: Transport,
        metrics: Metrics,
        *,
        finished: Callable[[], None],
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.conn = conn
        self.metrics = metrics
        self.finished = finished
        self.max_reply_bytes = max_reply_bytes

    def fitting(self, decision: Decision) -> Decision:
        """The decision with a reply the broker accepts: a response over the limit (recorded
        whole already) is answered RESPONSE_TOO_LARGE, naming its executionId."""
        reply = decision.reply
        if reply is None or len(reply.body) <= self.max_reply_bytes:
            return decision
        outcome = decision.outcome
        self.metrics.replies_too_large.inc()
        log.warning(
            "the response of %s is %d bytes, over the reply limit of %d: answering %s",
            outcome.execution_id,
            len(reply.body),
            self.max_reply_bytes,
            ErrorCode.RESPONSE_TOO_LARGE.value,
            extra={"request_id": outcome.request_id, "trace_id": outcome.trace_id},
        )
        too_large = error_instead(
            reply,
            outcome.response,
            code=ErrorCode.RESPONSE_TOO_LARGE,
            message=(
                f"the response is {len(reply.body)} bytes, more than the broker accepts as a"
                f" message ({self.max_reply_bytes} bytes); it is recorded in full in"
                f" {outcome.execution_id}"
            ),
            details={
                "execution_id": outcome.execution_id,
                "response_bytes": len(reply.body),
                "limit_bytes": self.max_reply_bytes,
            },
        )
        return Decision(outcome, too_large, decision.dead_letter_reason)

    def respond(self, delivery: Delivery, decision: Decision) -> None:
        """(any thread) Reply, confirm and settle on the I/O thread."""
        decision = self.fitting(decision)
        if not self.conn.call(lambda: self._respond(delivery, decision)):
            self.finished()

    def _respond(self, delivery: Delivery, decision: Decision) -> None:
        conn = self.conn
        if delivery.generation != conn.generation:
            # The channel it came on is gone: the broker redelivers it and the redelivery is
            # answered from the record. Acking it here would ack a stranger's tag.
            self.finished()
            return
        parts = (1 if decision.dead_letter_reason else 0) + (1 if decision.reply else 0)
        if parts == 0:
            self.metrics.replies.labels("skipped").inc()
            conn.ack(delivery.generation, delivery.tag)
            self.finished()
            return
        reply_span = tracing.reply(delivery, decision)
        state = {"left": parts, "failed": False}

        def confirmed(which: str, result: str) -> None:
            if which == "reply":
                self.metrics.child(self.metrics.replies, (result,)).inc()
            if result == "failed":
                state["failed"] = True
            state["left"] -= 1
            if state["left"] == 0:
                tracing.end(reply_span, "failed" if state["failed"] else result)
                if state["failed"]:
                    conn.nack(delivery.generation, delivery.tag, requeue=True)
                else:
                    conn.ack(delivery.generation, delivery.tag)
                self.finished()

        sent = True
        if decision.dead_letter_reason:
            sent = conn.publish_dead_letter(
                delivery,
                reason=decision.dead_letter_reason,
                execution_id=decision.outcome.execution_id,
                done=lambda result: confirmed("dlq", result),
            )
        if sent and decision.reply is not None:
            sent = conn.publish_reply(decision.reply, lambda result: confirmed("reply", result))
        if not sent:
            tracing.end(reply_span, "not sent")
            self.finished()
