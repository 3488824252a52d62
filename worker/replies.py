"""(I/O thread) Carrying out a decision once its record is durable: publish the reply and the
dead letter, wait for their confirms, then ack (or nack for redelivery if one failed)."""

from __future__ import annotations

from collections.abc import Callable

from worker.config import MAX_REPLY_BYTES
from worker.error_replies import too_large
from worker.middleware import WorkerMiddleware
from worker.pipeline import Decision
from worker.transport import Delivery, Transport


class Responder:
    """Replies for one worker; `finished(delivery, how)` is called once per delivery it was
    handed (`how`: `ack`, `requeue` or `dropped`)."""

    def __init__(
        self,
        conn: Transport,
        hooks: WorkerMiddleware,
        *,
        finished: Callable[[Delivery, str], None],
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.conn = conn
        self.hooks = hooks
        self.finished = finished
        self.max_reply_bytes = max_reply_bytes

    def respond(self, delivery: Delivery, decision: Decision) -> None:
        """(any thread) Reply, confirm and settle on the I/O thread."""
        if decision.reply is not None and len(decision.reply.body) > self.max_reply_bytes:
            self.hooks.reply_too_large(delivery, decision)
            decision = too_large(decision, self.max_reply_bytes)
        if not self.conn.call(lambda: self._respond(delivery, decision)):
            self.finished(delivery, "dropped")

    def _respond(self, delivery: Delivery, decision: Decision) -> None:
        conn = self.conn
        if delivery.generation != conn.generation:
            # The channel it came on is gone: the broker redelivers it and the redelivery is
            # answered from the record. Acking it here would ack a stranger's tag.
            self.finished(delivery, "dropped")
            return
        hooks = self.hooks
        parts = (1 if decision.dead_letter_reason else 0) + (1 if decision.reply else 0)
        if parts == 0:
            hooks.replied(delivery, decision, "skipped")
            conn.ack(delivery.generation, delivery.tag)
            self.finished(delivery, "ack")
            return
        hooks.replying(delivery, decision)
        state = {"left": parts, "failed": False}

        def confirmed(which: str, result: str) -> None:
            hooks.published(delivery, which, result)
            if result == "failed":
                state["failed"] = True
            state["left"] -= 1
            if state["left"] == 0:
                hooks.replied(delivery, decision, "failed" if state["failed"] else result)
                if state["failed"]:
                    conn.nack(delivery.generation, delivery.tag, requeue=True)
                    self.finished(delivery, "requeue")
                else:
                    conn.ack(delivery.generation, delivery.tag)
                    self.finished(delivery, "ack")

        sent = True
        if decision.dead_letter_reason:
            sent = conn.publish_dead_letter(
                delivery,
                reason=decision.dead_letter_reason,
                execution_id=decision.outcome.execution_id,
                done=lambda result: confirmed("dead_letter", result),
            )
        if sent and decision.reply is not None:
            sent = conn.publish_reply(decision.reply, lambda result: confirmed("reply", result))
        if not sent:
            hooks.replied(delivery, decision, "not sent")
            self.finished(delivery, "dropped")
