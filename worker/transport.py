"""What the worker needs from a message broker, and nothing more.

`worker.amqp.ConsumerConnection` is the real one (RabbitMQ through pika);
`worker.testing.MemoryTransport` runs the whole worker in memory for tests. Everything but
`bind`, `declare`, `start`, `stop`, `call` and the read-only state runs on the transport's
own I/O thread: other threads hand it work through `call()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    """A reply to publish, addressed by `routing_key` and matched by `correlation_id`."""

    routing_key: str
    body: bytes
    correlation_id: str
    headers: dict[str, Any]


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
