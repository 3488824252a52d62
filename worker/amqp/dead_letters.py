"""Dead-letter queue access for `intentus dlq`: a short-lived blocking connection of an
operator's command, never one of a running worker."""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions

from worker.amqp.connect import connect_blocking, parameters
from worker.config import Config
from worker.errors import BrokerUnavailable, PublishFailed, TopologyConflict


class HeldMessage:
    """A message taken from a queue with basic.get and not acked yet."""

    __slots__ = ("body", "properties", "redelivered", "tag")

    def __init__(
        self, tag: int, body: bytes, properties: dict[str, Any], *, redelivered: bool
    ) -> None:
        self.tag = tag
        self.body = body
        self.properties = properties
        self.redelivered = redelivered


_PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)


class DeadLetterQueue:
    """Reads `<queue>.dlq` without removing anything it has not been told to.

    Messages taken with `take()` stay unacked on this channel (invisible to other consumers)
    until `requeue()` acks one after its copy is confirmed, or `close()` closes the channel,
    which hands every remaining one back to the queue.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._held = 0
        self._last_held = 0
        username = getattr(parameters(cfg.amqp_url, "intentus dlq").credentials, "username", None)
        self._user = username if isinstance(username, str) and username else None
        self._conn = connect_blocking(cfg.amqp_url, "intentus dlq", attempts=1)
        try:
            self._channel = self._conn.channel()
            self._channel.queue_declare(cfg.dlq, passive=True)
            self._channel.confirm_delivery()
        except pika.exceptions.ChannelClosedByBroker as exc:
            self.close()
            if exc.reply_code == 404:
                raise TopologyConflict(
                    f"queue {cfg.dlq!r} does not exist (a worker declares it at start)"
                ) from exc
            raise BrokerUnavailable(f"broker refused {cfg.dlq!r}: {exc.reply_text}") from exc

    @property
    def user(self) -> str | None:
        """The user this connection logged in as (None with EXTERNAL/certificate login): the
        only user_id the broker accepts on what it publishes."""
        return self._user

    def __enter__(self) -> DeadLetterQueue:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def ready(self) -> int:
        """Messages ready in the DLQ now (not counting those held by any consumer)."""
        try:
            result = self._channel.queue_declare(self.cfg.dlq, passive=True)
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"cannot read {self.cfg.dlq!r}: {exc!r}") from exc
        return int(result.method.message_count)

    def take(self, limit: int) -> list[HeldMessage]:
        """Up to `limit` messages, oldest first, held unacked until requeued or released."""
        held: list[HeldMessage] = []
        try:
            while len(held) < limit:
                method, properties, body = self._channel.basic_get(self.cfg.dlq, auto_ack=False)
                if method is None:
                    break
                held.append(
                    HeldMessage(
                        tag=method.delivery_tag,
                        body=body,
                        properties={
                            name: getattr(properties, name)
                            for name in _PROPERTY_NAMES
                            if getattr(properties, name, None) is not None
                        },
                        redelivered=bool(method.redelivered),
                    )
                )
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"cannot read {self.cfg.dlq!r}: {exc!r}") from exc
        return held

    def requeue(self, message: HeldMessage, properties: dict[str, Any]) -> None:
        """Publish a copy to the request queue, wait for the broker's confirm, then ack the
        dead letter. A refused or unconfirmed copy leaves the dead letter where it is."""
        try:
            self._channel.basic_publish(
                exchange="",
                routing_key=self.cfg.queue,
                body=message.body,
                properties=pika.BasicProperties(**properties),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError as exc:
            raise PublishFailed(f"queue {self.cfg.queue!r} does not exist") from exc
        except pika.exceptions.NackError as exc:
            raise PublishFailed(f"the broker refused the copy for {self.cfg.queue!r}") from exc
        except pika.exceptions.AMQPError as exc:
            raise PublishFailed(f"publishing to {self.cfg.queue!r} failed: {exc!r}") from exc
        try:
            self._channel.basic_ack(message.tag)
        except pika.exceptions.AMQPError as exc:
            # The copy is in the request queue; the dead letter returns to the DLQ with the
            # channel. A duplicate is answered from its record, a lost message never is.
            raise PublishFailed(
                f"copy confirmed but the dead letter could not be acked: {exc!r}"
            ) from exc

    def hold_ready(self) -> int:
        """Take the messages ready now (at most as many as were counted, so a steady inflow
        cannot keep it going) and hold them unacked; returns how many. Bodies are not kept."""
        wanted = self.ready()
        held = 0
        try:
            while held < wanted:
                method, _properties, _body = self._channel.basic_get(self.cfg.dlq, auto_ack=False)
                if method is None:
                    break
                self._last_held = int(method.delivery_tag)
                held += 1
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"cannot read {self.cfg.dlq!r}: {exc!r}") from exc
        self._held = held
        return held

    def delete_held(self) -> int:
        """Delete exactly the messages `hold_ready()` holds (never a queue.purge, which would
        also take whatever arrived since they were counted); returns how many."""
        if not self._held:
            return 0
        try:
            self._channel.basic_ack(self._last_held, multiple=True)
            # A round trip: the acks are processed before the connection closes.
            self._channel.queue_declare(self.cfg.dlq, passive=True)
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"cannot delete from {self.cfg.dlq!r}: {exc!r}") from exc
        deleted, self._held = self._held, 0
        return deleted

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:
            pass
