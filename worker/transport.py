"""What the worker needs from a message broker, and nothing more.

`worker.amqp.ConsumerConnection` is the real one (RabbitMQ through pika);
`worker.testing.MemoryTransport` runs the whole worker in memory for tests. Everything but
`bind`, `declare`, `start`, `stop`, `call` and the read-only state runs on the transport's
own I/O thread: other threads hand it work through `call()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from worker.pipeline import Delivery, Reply

Confirm = Callable[[str], None]
"""Called on the I/O thread with "confirmed", "unroutable" or "failed"."""


def _ignore(*_args: object, **_kwargs: object) -> None:
    return None


class StateListener(Protocol):
    def __call__(self, *, consuming: bool) -> None: ...


@dataclass(slots=True)
class Listeners:
    """What a transport tells the worker, always on its I/O thread."""

    on_delivery: Callable[[Delivery], None] = _ignore
    on_state: StateListener = _ignore
    """Whether the transport is consuming now."""
    on_reconnect: Callable[[], None] = _ignore
    on_cancel: Callable[[], None] = _ignore
    """The broker cancelled the consumer."""


class Transport(Protocol):
    generation: int
    """Bumped on every lost channel: tags of an older generation are never settled."""
    consuming: bool
    cancelled: bool
    """The broker cancelled the consumer and the transport is setting it up again."""

    def bind(self, listeners: Listeners) -> None:
        """Set the callbacks; before `start()`."""

    def declare(self) -> None:
        """Check or create the queues and exchanges; raises a WorkerError if impossible."""

    def start(self) -> None: ...

    def stop(self) -> None:
        """Close; deliveries not settled return to the queue."""

    def call(self, fn: Callable[[], None]) -> bool:
        """Run `fn` on the I/O thread; False if there is no connection to run it on."""

    def set_consuming(self, on: bool) -> None: ...

    def ack(self, generation: int, tag: int) -> bool: ...

    def nack(self, generation: int, tag: int, *, requeue: bool = True) -> bool: ...

    def publish_reply(self, reply: Reply, done: Confirm) -> bool:
        """Publish with a confirm; False if not sent (no channel), else `done` runs once."""

    def publish_dead_letter(
        self, delivery: Delivery, *, reason: str, execution_id: str, done: Confirm
    ) -> bool: ...
