"""An in-memory transport: run a whole `Worker` without a broker, in tests.

    transport = MemoryTransport()
    with Worker(cfg, registry, transport=transport) as worker:
        transport.publish(body, reply_to="replies", correlation_id="c1")
        transport.wait_for(lambda: transport.acked)

Like a broker it delivers on its own I/O thread, confirms publishes asynchronously, and
redelivers what was nacked with requeue or left unsettled when the connection is lost.
Everything it did is in `events`, in order: ("ack", tag), ("nack", tag, requeue),
("reply", Published), ("dead_letter", Published), ("consume", on).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from worker.config import DEFAULT_QUEUE
from worker.transport import Confirm, Delivery, Listeners, Reply

log = logging.getLogger("intentus.testing")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Published:
    """A reply or dead letter as it would reach the broker."""

    routing_key: str
    body: bytes
    correlation_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    # A dead letter keeps these properties of the original, as the broker's copy does.
    message_id: str | None = None
    content_type: str | None = None


class _Events(Generic[_T]):
    """The subjects of one kind of event, in order (read-only)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __get__(self, transport: MemoryTransport, owner: object = None) -> list[_T]:
        return [event[1] for event in list(transport.events) if event[0] == self.kind]


class MemoryTransport:
    """`worker.transport.Transport` in memory, with an I/O thread of its own."""

    def __init__(self, queue_name: str = DEFAULT_QUEUE) -> None:
        self.queue_name = queue_name
        self.generation = 0
        self.consuming = False
        self.cancelled = False
        self.declared = 0
        self.events: list[tuple[Any, ...]] = []
        # What publishes are confirmed with; None holds confirms until `release_confirms()`.
        self.confirm_with: str | None = "confirmed"
        self._held_confirms: list[Confirm] = []
        self._ready: deque[Delivery] = deque()  # the queue, not yet delivered
        self._unsettled: dict[int, Delivery] = {}
        self._tags = itertools.count(1)
        self._want = True
        self._connected = False
        self._mail: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="memory-io", daemon=True)
        self.listeners = Listeners()

    # -- Transport -----------------------------------------------------------------------
    def bind(self, listeners: Listeners) -> None:
        self.listeners = listeners

    def declare(self) -> None:
        self.declared += 1

    def start(self) -> None:
        self._connected = True
        self._thread.start()
        self.call(self._open)

    def stop(self) -> None:
        if self._connected:
            self.call(self._close)
            self._mail.put(None)
            self._thread.join(timeout=10)

    def call(self, fn: Callable[[], None]) -> bool:
        if not self._connected:
            return False
        self._mail.put(fn)
        return True

    def set_consuming(self, on: bool) -> None:
        self._want = on
        self._set_state(on)
        self._pump()

    def ack(self, generation: int, tag: int) -> bool:
        if generation != self.generation or self._unsettled.pop(tag, None) is None:
            return False
        self.events.append(("ack", tag))
        return True

    def nack(self, generation: int, tag: int, *, requeue: bool = True) -> bool:
        if generation != self.generation:
            return False
        delivery = self._unsettled.pop(tag, None)
        if delivery is None:
            return False
        self.events.append(("nack", tag, requeue))
        if requeue:
            self._ready.appendleft(self._redelivery(delivery))
            self._pump()
        return True

    def publish_reply(self, reply: Reply, done: Confirm) -> bool:
        if not self._connected:
            return False
        published = Published(
            routing_key=reply.routing_key,
            body=reply.body,
            correlation_id=reply.correlation_id,
            headers=dict(reply.headers),
        )
        self.events.append(("reply", published))
        self._confirm(done)
        return True

    def publish_dead_letter(
        self, delivery: Delivery, *, reason: str, execution_id: str, done: Confirm
    ) -> bool:
        if not self._connected:
            return False
        published = Published(
            routing_key=f"{self.queue_name}.dlq",
            body=delivery.body,
            correlation_id=delivery.correlation_id,
            headers={**delivery.headers, "x-intentus-execution-id": execution_id},
            reason=reason,
            message_id=delivery.message_id,
            content_type=delivery.content_type,
        )
        self.events.append(("dead_letter", published))
        self._confirm(done)
        return True

    # -- driving it from a test ----------------------------------------------------------
    def publish(self, body: bytes, **properties: Any) -> None:
        """Put a request on the queue (any `Delivery` field but tag and generation)."""
        delivery = Delivery(body=body, routing_key=self.queue_name, **properties)

        def enqueue() -> None:
            self._ready.append(delivery)
            self._pump()

        self.call(enqueue)

    def lose_connection(self) -> None:
        """The channel dies: unsettled deliveries go back to the queue, waiting confirms fail,
        then the transport reconnects (as ConsumerConnection does)."""

        def lose() -> None:
            self.generation += 1
            returned = [self._redelivery(d) for d in self._unsettled.values()]
            self._unsettled.clear()
            self._ready.extendleft(reversed(returned))
            held, self._held_confirms = self._held_confirms, []
            for done in held:
                done("failed")
            self._set_state(on=False)
            self._set_state(self._want)
            self.listeners.on_reconnect()
            self._pump()

        self.call(lose)

    def cancel_consumer(self, *, redeclare: bool = True) -> None:
        """The broker cancels the consumer; with `redeclare` it is set up again at once."""

        def cancel() -> None:
            self.cancelled = True
            self.listeners.on_cancel()
            self._set_state(on=False)
            if redeclare:
                self.cancelled = False
                self._set_state(self._want)
                self._pump()

        self.call(cancel)

    def release_confirms(self, outcome: str = "confirmed") -> None:
        def release() -> None:
            held, self._held_confirms = self._held_confirms, []
            for done in held:
                done(outcome)

        self.call(release)

    acked: _Events[int] = _Events("ack")
    nacked: _Events[int] = _Events("nack")
    replies: _Events[Published] = _Events("reply")
    dead_letters: _Events[Published] = _Events("dead_letter")

    @property
    def unsettled(self) -> int:
        return len(self._unsettled)

    @property
    def queued(self) -> int:
        return len(self._ready)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())

    # -- the I/O thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            fn = self._mail.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:
                log.exception("I/O thread task failed")

    def _open(self) -> None:
        self._set_state(self._want)
        self._pump()

    def _close(self) -> None:
        self._set_state(on=False)
        self._connected = False
        self._ready.extendleft(reversed([self._redelivery(d) for d in self._unsettled.values()]))
        self._unsettled.clear()

    def _set_state(self, on: bool) -> None:
        if on != self.consuming:
            self.consuming = on
            self.events.append(("consume", on))
            self.listeners.on_state(consuming=on)

    def _pump(self) -> None:
        while self.consuming and self._ready:
            delivery = replace(
                self._ready.popleft(), tag=next(self._tags), generation=self.generation
            )
            self._unsettled[delivery.tag] = delivery
            self.listeners.on_delivery(delivery)

    def _confirm(self, done: Confirm) -> None:
        if self.confirm_with is None:
            self._held_confirms.append(done)
        else:
            outcome = self.confirm_with
            self._mail.put(lambda: done(outcome))

    @staticmethod
    def _redelivery(delivery: Delivery) -> Delivery:
        return replace(delivery, redelivered=True)
