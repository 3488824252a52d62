"""What the worker needs from a message broker, and nothing more.

`worker.amqp.ConsumerConnection` is the real one (RabbitMQ through pika);
`worker.testing.MemoryTransport` runs the whole worker in memory for tests. Everything but
`bind`, `declare`, `start`, `stop`, `call` and the read-only state runs on the transport's
own I/O thread: other threads hand it work through `call()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from worker.pipeline import Delivery

Confirm = Callable[[str], None]
"""Called on the I/O thread with "confirmed", "unroutable" or "failed"."""


class Transport(Protocol):
    generation: int
    """Bumped on every lost channel: tags of an older generation are never settled."""
    consuming: bool
    cancelled: bool
    """The broker cancelled the consumer and the transport is setting it up again."""

    def bind(
        self,
        on_delivery: Callable[[Delivery], None],
        on_state: Callable[[bool], None],
        on_reconnect: Callable[[], None],
        on_cancel: Callable[[], None],
    ) -> None:
        """Set the callbacks (all run on the I/O thread); before `start()`."""

    def declare(self) -> None:
        """Check or create the queues and exchanges; raises a WorkerError if impossible."""

    def start(self) -> None: ...

    def stop(self) -> None:
        """Close; deliveries not settled return to the queue."""

    def call(self, fn: Callable[[], None]) -> bool:
        """Run `fn` on the I/O thread; False if there is no connection to run it on."""

    def set_consuming(self, on: bool) -> None: ...

    def ack(self, generation: int, tag: int) -> bool: ...

    def nack(self, generation: int, tag: int, requeue: bool = True) -> bool: ...

    def publish_reply(
        self,
        routing_key: str,
        body: bytes,
        correlation_id: str,
        headers: dict[str, Any],
        done: Confirm,
    ) -> bool:
        """Publish with a confirm; False if not sent (no channel), else `done` runs once."""

    def publish_dead_letter(
        self, delivery: Delivery, reason: str, execution_id: str, done: Confirm
    ) -> bool: ...
