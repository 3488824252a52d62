"""(I/O thread) Carrying out a decision once its record is durable: publish the reply and the
dead letter, wait for their confirms, then ack (or nack for redelivery if one failed)."""

from __future__ import annotations

from collections.abc import Callable

from worker import tracing
from worker.config import MAX_REPLY_BYTES
from worker.error_replies import too_large
from worker.metrics import Metrics
from worker.pipeline import Decision
from worker.transport import Delivery, Transport


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

    def respond(self, delivery: Delivery, decision: Decision) -> None:
        """(any thread) Reply, confirm and settle on the I/O thread."""
        if decision.reply is not None and len(decision.reply.body) > self.max_reply_bytes:
            self.metrics.replies_too_large.inc()
            decision = too_large(decision, self.max_reply_bytes)
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
