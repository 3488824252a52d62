"""(I/O thread) The worker's publishes: replies and dead letters, each settled by the broker's
confirm. A publish that never reached the broker is failed at once, never registered, so
later confirms keep matching their own publishes."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import pika
from pika.channel import Channel

from worker.amqp.connect import PERSISTENT
from worker.config import Config
from worker.transport import Confirm, Delivery, Reply

log = logging.getLogger("intentus.amqp")
_T = TypeVar("_T")

MAX_SHORTSTR = 255  # AMQP short strings, such as correlation_id, hold at most 255 bytes
CORRELATION_HEADER = "x-intentus-correlation-id"
EXECUTION_HEADER = "x-intentus-execution-id"


def fit_correlation_id(correlation_id: str) -> tuple[str, str | None]:
    """(property, header): an id too long for the correlation_id property travels whole in a
    header, and the property carries its fixed-length `sha256:` digest."""
    encoded = correlation_id.encode("utf-8")
    if len(encoded) <= MAX_SHORTSTR:
        return correlation_id, None
    return "sha256:" + hashlib.sha256(encoded).hexdigest(), correlation_id


def settle_confirmed(pending: OrderedDict[int, _T], tag: int, *, multiple: bool) -> list[_T]:
    """Take out the publishes a broker confirm (ack or nack) settles: `tag` alone, or with
    `multiple` every publish up to it (publish sequence numbers are in order)."""
    settled: list[_T] = []
    if multiple:
        while pending:
            sequence, first = next(iter(pending.items()))
            if sequence > tag:
                break
            del pending[sequence]
            settled.append(first)
    elif tag in pending:
        settled.append(pending.pop(tag))
    return settled


def dead_letter_properties(
    original: pika.BasicProperties | None, headers: dict[str, Any]
) -> pika.BasicProperties:
    """The original's properties with our headers, minus what the broker would refuse."""
    return pika.BasicProperties(
        content_type=getattr(original, "content_type", None),
        content_encoding=getattr(original, "content_encoding", None),
        headers=headers,
        delivery_mode=PERSISTENT,
        priority=getattr(original, "priority", None),
        correlation_id=getattr(original, "correlation_id", None),
        reply_to=getattr(original, "reply_to", None),
        expiration=None,
        message_id=getattr(original, "message_id", None),
        timestamp=getattr(original, "timestamp", None),
        type=getattr(original, "type", None),
        user_id=None,  # the broker would reject a user_id that is not ours
        app_id=getattr(original, "app_id", None),
    )


class _Pending:
    """A publish awaiting its confirm."""

    __slots__ = ("done", "key", "returned")

    def __init__(self, key: tuple[str, str], done: Confirm) -> None:
        self.key = key
        self.done = done
        self.returned = False


class ConfirmedPublisher:
    """Publishes on the current channel in confirm mode; `attach` to each new channel."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._channel: Channel | None = None
        self._sequence = 0
        self._pending: OrderedDict[int, _Pending] = OrderedDict()

    @property
    def waiting(self) -> bool:
        """Some publish awaits its confirm."""
        return bool(self._pending)

    def attach(self, channel: Channel, on_ready: Callable[[], None]) -> None:
        """Put a fresh channel in confirm mode; `on_ready` once the broker agreed."""
        self._channel = channel
        self._sequence = 0
        self._pending.clear()
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: on_ready())

    def detach(self) -> None:
        """The channel is gone: publishes awaiting a confirm failed (the request is redelivered
        and answered from its record)."""
        self._channel = None
        pending, self._pending = self._pending, OrderedDict()
        for publish in pending.values():
            try:
                publish.done("failed")
            except Exception:
                log.exception("publish confirm handler failed")

    def publish_reply(self, reply: Reply, done: Confirm) -> bool:
        correlation_id, whole = fit_correlation_id(reply.correlation_id)
        headers = reply.headers if whole is None else {**reply.headers, CORRELATION_HEADER: whole}
        properties = pika.BasicProperties(
            content_type="application/json",
            correlation_id=correlation_id,
            type="AgentResponse",
            headers=headers,
            delivery_mode=PERSISTENT,
        )
        return self._publish(
            exchange="",
            routing_key=reply.routing_key,
            body=reply.body,
            properties=properties,
            execution_id=headers[EXECUTION_HEADER],
            done=done,
        )

    def publish_dead_letter(
        self, delivery: Delivery, *, reason: str, execution_id: str, done: Confirm
    ) -> bool:
        original: pika.BasicProperties | None = delivery.properties
        headers = dict((original.headers if original is not None else None) or {})
        headers["x-intentus-reject-reason"] = reason[:1000]
        headers[EXECUTION_HEADER] = execution_id
        headers["x-intentus-original-queue"] = self.cfg.queue
        headers["x-intentus-dead-lettered-at"] = int(time.time())  # the age `intentus dlq` shows
        return self._publish(
            exchange=self.cfg.dlx,
            routing_key=delivery.routing_key or self.cfg.queue,
            body=delivery.body,
            properties=dead_letter_properties(original, headers),
            execution_id=execution_id,
            done=done,
        )

    def _publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        execution_id: str,
        done: Confirm,
    ) -> bool:
        if self._channel is None or not self._channel.is_open:
            return False
        try:
            self._channel.basic_publish(
                exchange=exchange,
                routing_key=routing_key,
                body=body,
                properties=properties,
                mandatory=True,
            )
        except Exception as exc:
            # Nothing went out, so no confirm will come: registering it would shift every
            # later confirm onto the wrong delivery.
            log.error("cannot publish to %r: %s", routing_key, exc)
            done("failed")
            return True
        self._sequence += 1
        self._pending[self._sequence] = _Pending((routing_key, execution_id), done)
        return True

    def _on_return(
        self, channel: Channel, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> None:
        execution_id = str((properties.headers or {}).get(EXECUTION_HEADER, ""))
        key = (method.routing_key, execution_id)
        for pending in self._pending.values():
            if pending.key == key and not pending.returned:
                pending.returned = True
                break
        log.warning("reply to %r was unroutable (%s)", method.routing_key, method.reply_text)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        settled = settle_confirmed(self._pending, method.delivery_tag, multiple=method.multiple)
        for pending in settled:
            outcome = "unroutable" if pending.returned else ("confirmed" if ok else "failed")
            try:
                pending.done(outcome)
            except Exception:
                log.exception("publish confirm handler failed")
