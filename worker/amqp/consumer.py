"""The worker's connection: one I/O thread owns it (pika is not thread-safe), reconnects it,
consumes the request queue and settles deliveries.

Other threads hand work to the I/O thread with `call()` (a `Mailbox`: one wake-up per burst).
Acks settled within one loop iteration go out together as planned by `worker.acks`.
Deliveries carry the connection *generation*, so tags from a lost channel are dropped, never
acked on a new one. A consumer cancelled by the broker (queue deleted, quorum leader moved)
is re-declared and consumed again. Publishing is `ConfirmedPublisher`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
from pika.channel import Channel

from runtime import forksafe
from worker.acks import AckBook
from worker.amqp.batched import BatchedSelectConnection
from worker.amqp.connect import parameters
from worker.amqp.mailbox import Mailbox
from worker.amqp.properties import delivery_of
from worker.amqp.publisher import ConfirmedPublisher
from worker.amqp.topology import declare_topology, queue_arguments
from worker.config import Config
from worker.transport import Confirm, Delivery, Listeners, Reply

log = logging.getLogger("intentus.amqp")

RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)


def _backoff(attempt: int) -> float:
    return RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]


class ConsumerConnection:
    """The worker's consuming/publishing connection on its own I/O thread, reconnecting.
    It implements `worker.transport.Transport`."""

    def __init__(self, cfg: Config, listeners: Listeners | None = None) -> None:
        self.cfg = cfg
        self.listeners = listeners or Listeners()
        self._conn: BatchedSelectConnection | None = None
        self._channel: Channel | None = None
        self._consumer_tag: str | None = None
        self._want_consume = True
        self._stopping = False
        self.generation = 0
        self._publisher = ConfirmedPublisher(cfg)
        self._mailbox = Mailbox()
        self._acks = AckBook()
        self._ack_flush_due = False
        self._thread = threading.Thread(target=self._run, name="intentus-amqp-io", daemon=True)
        # A child an agent forks must not keep this worker's broker connection (and with it
        # its consumer and unacked deliveries) open after the worker died.
        forksafe.detach_in_children(
            self, lambda c: forksafe.fileno_of(c._conn, "_transport", "_sock")
        )
        self._connected_once = False
        self.consuming = False
        # The broker cancelled our consumer and the queue is being declared again.
        self.cancelled = False

    def bind(self, listeners: Listeners) -> None:
        """Set the callbacks (before `start()`)."""
        self.listeners = listeners

    def declare(self) -> None:
        declare_topology(self.cfg)

    @property
    def tracked(self) -> int:
        """Delivery tags held for acking (bounded by the prefetch count)."""
        return self._acks.tracked

    # -- thread boundary -----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def call(self, fn: Callable[[], None]) -> bool:
        """Run `fn` on the I/O thread; False if there is no connection to run it on."""
        conn = self._conn
        if conn is None or conn.is_closed:
            return False
        return self._mailbox.post(fn, conn.ioloop.add_callback_threadsafe)

    def stop(self) -> None:
        """Close the connection and end the I/O thread (unacked deliveries return to the queue)."""
        self._stopping = True
        self.call(self._close)  # no connection: the I/O thread ends at its next check
        self._thread.join(timeout=10)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- I/O thread: lifecycle -----------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            if self._connected_once:
                try:
                    declare_topology(self.cfg)
                except Exception as exc:
                    log.warning("broker not usable yet: %s", exc)
                    time.sleep(_backoff(attempt))
                    attempt += 1
                    continue
            self._mailbox.forget_wake_up()
            self._run_one_connection()
            if self._stopping:
                break
            attempt = 0 if self.consuming else attempt + 1
            self.consuming = False
            time.sleep(_backoff(attempt))

    def _run_one_connection(self) -> None:
        try:
            self._conn = BatchedSelectConnection(
                parameters(self.cfg.amqp_url, f"intentus-worker {self.cfg.worker_id}"),
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
            self._conn.ioloop.start()
        except Exception:
            log.exception("AMQP I/O loop failed; reconnecting")
            self._abandon(self._conn)
        finally:
            # However the loop ended: old tags become stale and waiting confirms fail.
            self._lost()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.ioloop.close()  # its wake-up socket pair, not the broker connection
            except Exception:
                pass

    def _abandon(self, conn: pika.SelectConnection | None) -> None:
        """Close a connection whose loop died, so the broker returns its unacked deliveries
        now rather than when a heartbeat runs out."""
        if conn is None or conn.is_closed:
            return
        try:
            if not conn.is_closing:
                conn.close()
            conn.ioloop.start()  # until _on_closed stops it
        except Exception as exc:
            log.warning("could not close the failed connection cleanly: %s", exc)
            try:
                conn.ioloop.close()
            except Exception:
                pass

    def _on_open(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel_open)
        self._mailbox.drain()  # whatever was handed in while there was no loop to run it

    def _on_open_error(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        log.warning("cannot connect to the broker at %s: %s", self.cfg.safe_url, exc)
        conn.ioloop.stop()

    def _on_closed(self, conn: pika.SelectConnection, reason: BaseException) -> None:
        self._lost()
        if not self._stopping:
            log.warning("broker connection lost: %s; reconnecting", reason)
        conn.ioloop.stop()

    def _lost(self) -> None:
        was_consuming = self.consuming
        if self._channel is None and not self._publisher.waiting and not was_consuming:
            return  # already done for this connection
        self._channel = None
        self._consumer_tag = None
        self.consuming = False
        self.cancelled = False
        self._acks.clear()
        self.generation += 1  # every delivery tag of the old channel is now stale
        self._publisher.detach()
        if was_consuming:
            self.listeners.on_state(consuming=False)

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        self._acks.clear()
        self._ack_flush_due = False
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_cancel_callback(self._on_cancelled)
        self._publisher.attach(channel, on_ready=self._qos)

    def _qos(self) -> None:
        assert self._channel is not None
        self._channel.basic_qos(prefetch_count=self.cfg.prefetch, callback=lambda _f: self._ready())

    def _ready(self) -> None:
        reconnected = self._connected_once
        self._connected_once = True
        if self._want_consume:
            self._consume()
        if reconnected:
            self.listeners.on_reconnect()
        log.info(
            "connected to %s, queue %s, prefetch %d",
            self.cfg.safe_url,
            self.cfg.queue,
            self.cfg.prefetch,
        )

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if self._stopping:
            return
        log.warning("channel closed: %s; reconnecting", reason)
        conn = self._conn
        self._lost()
        if conn is not None and conn.is_open:
            conn.close()

    def _close(self) -> None:
        conn = self._conn
        if conn is not None and not (conn.is_closing or conn.is_closed):
            self._flush_acks()
            conn.close()

    # -- I/O thread: consuming -----------------------------------------------------------
    def _consume(self) -> None:
        if self._channel is None or self._consumer_tag is not None or self.cancelled:
            return  # once cancelled, the re-declare's callback consumes
        self._consumer_tag = self._channel.basic_consume(self.cfg.queue, self._on_message)
        self.consuming = True
        self.listeners.on_state(consuming=True)

    def _on_cancelled(self, frame: Any) -> None:
        """(I/O thread) The broker ended our consumer: the queue was deleted, or its quorum
        leader moved. Declare the queue again (a no-op if it still exists) and consume anew;
        deliveries already taken stay ours to settle on this channel."""
        if frame.method.consumer_tag != self._consumer_tag or self._channel is None:
            return
        log.warning(
            "the broker cancelled the consumer of queue %s; declaring it again", self.cfg.queue
        )
        self._consumer_tag = None
        self.consuming = False
        self.cancelled = True
        self.listeners.on_cancel()
        self.listeners.on_state(consuming=False)
        if self._stopping:
            return
        channel = self._channel

        def declared(_frame: Any) -> None:
            if self._channel is not channel:
                return  # the channel was lost meanwhile; reconnecting declares everything
            self.cancelled = False
            if self._want_consume:
                self._consume()

        channel.queue_declare(
            self.cfg.queue, durable=True, arguments=queue_arguments(self.cfg), callback=declared
        )

    def set_consuming(self, on: bool) -> None:
        """(I/O thread) Start or stop taking new deliveries; held ones stay unacked."""
        self._want_consume = on
        if on:
            self._consume()
        elif self._channel is not None and self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            self.consuming = False
            self.listeners.on_state(consuming=False)
            try:
                self._channel.basic_cancel(tag)
            except Exception as exc:
                log.warning("basic.cancel failed: %s", exc)

    def _on_message(
        self, channel: Channel, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> None:
        self._acks.delivered(method.delivery_tag)
        self.listeners.on_delivery(
            delivery_of(method, properties, body, generation=self.generation)
        )

    # -- I/O thread: settling ------------------------------------------------------------
    def ack(self, generation: int, tag: int) -> bool:
        """(I/O thread) Ack unless the tag belongs to a lost channel. The ack is sent at the
        end of this loop iteration, together with the others settled in it."""
        if generation != self.generation or self._channel is None:
            return False
        if not self._acks.ack(tag):
            log.warning("delivery tag %d settled twice; the second ack is not sent", tag)
            return False
        if not self._ack_flush_due and self._conn is not None:
            self._ack_flush_due = True
            self._conn.ioloop.call_later(0, self._flush_acks)
        return True

    def nack(self, generation: int, tag: int, *, requeue: bool = True) -> bool:
        if generation != self.generation or self._channel is None:
            return False
        if not self._acks.nack(tag):
            log.warning("delivery tag %d settled twice; the nack is not sent", tag)
            return False
        self._channel.basic_nack(tag, requeue=requeue)
        return True

    def _flush_acks(self) -> None:
        """Send the acks of this loop iteration as planned by `worker.acks.plan_acks`."""
        self._ack_flush_due = False
        channel = self._channel
        if channel is None or not self._acks.due or not channel.is_open:
            return
        plan = self._acks.plan()
        if plan.upto is not None:
            channel.basic_ack(plan.upto, multiple=True)
        for tag in plan.singles:
            channel.basic_ack(tag)

    # -- I/O thread: publishing ----------------------------------------------------------
    def publish_reply(self, reply: Reply, done: Confirm) -> bool:
        return self._publisher.publish_reply(reply, done)

    def publish_dead_letter(
        self, delivery: Delivery, *, reason: str, execution_id: str, done: Confirm
    ) -> bool:
        return self._publisher.publish_dead_letter(
            delivery, reason=reason, execution_id=execution_id, done=done
        )
