"""Everything that speaks AMQP. The only module that imports pika.

- `declare_topology`: the queues and exchanges, checked at start (and after each reconnect).
- `ConsumerConnection`: the worker's connection. One I/O thread owns it (pika is not
  thread-safe); other threads hand work to it with `call()`, which queues it in a mailbox
  and wakes the loop once per batch, not once per call. Publishes use publisher confirms;
  acks are gathered per loop iteration and sent as planned by `worker.acks`. Deliveries
  carry the connection *generation*, so tags from a lost channel are dropped, never acked on
  a new one. A consumer cancelled by the broker (queue deleted, quorum leader moved) is
  re-declared and consumed again. It implements `worker.transport.Transport`.
- Client side: `ClientLink`, one client connection's protocol (pipelined publishes with
  confirms, an exclusive reply queue), run by `ClientConnection` (SelectConnection on an I/O
  thread) for the blocking client and by `AsyncClientConnection` (pika's asyncio adapter)
  for the asyncio one.

pika errors are translated here, once, into the worker's own exceptions.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel

from worker.acks import AckBook
from worker.config import Config, mask_url
from worker.errors import (
    BrokerUnavailable,
    ClientClosed,
    ClientError,
    ConnectionLost,
    PublishFailed,
    TopologyConflict,
)
from worker.pipeline import Delivery

log = logging.getLogger("intentus.amqp")
_T = TypeVar("_T")

PERSISTENT = 2
RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)
MAX_SHORTSTR = 255  # AMQP short strings, such as correlation_id, hold at most 255 bytes
CORRELATION_HEADER = "x-intentus-correlation-id"


def fit_correlation_id(correlation_id: str) -> tuple[str, str | None]:
    """(property, header): an id too long for the correlation_id property travels whole in a
    header, and the property carries its fixed-length `sha256:` digest."""
    encoded = correlation_id.encode("utf-8")
    if len(encoded) <= MAX_SHORTSTR:
        return correlation_id, None
    return "sha256:" + hashlib.sha256(encoded).hexdigest(), correlation_id


def parameters(url: str, name: str) -> pika.URLParameters:
    """URL parameters; amqps:// verifies the server certificate with the system CAs unless
    the URL carries its own ssl_options."""
    params = pika.URLParameters(url)
    if url.startswith("amqps://") and params.ssl_options is None:
        context = ssl.create_default_context()
        params.ssl_options = pika.SSLOptions(context, params.host)
    params.client_properties = {"connection_name": name, "product": "intentusnet-worker"}
    if "connection_attempts" not in url:
        params.connection_attempts = 1
    if "socket_timeout" not in url:
        params.socket_timeout = 5
    return params


def queue_arguments(cfg: Config) -> dict[str, Any]:
    args: dict[str, Any] = {"x-queue-type": cfg.queue_type, "x-dead-letter-exchange": cfg.dlx}
    if cfg.queue_type == "quorum":
        args["x-delivery-limit"] = cfg.delivery_limit
    elif cfg.queue_max_priority:
        args["x-max-priority"] = cfg.queue_max_priority
    return args


def _connect_blocking(
    url: str, name: str, attempts: int = 3, delay_s: float = 1.0
) -> pika.BlockingConnection:
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            return pika.BlockingConnection(parameters(url, name))
        except pika.exceptions.ProbableAuthenticationError as exc:
            raise BrokerUnavailable(f"broker at {mask_url(url)} refused the login: {exc}") from None
        except pika.exceptions.ProbableAccessDeniedError as exc:
            raise BrokerUnavailable(
                f"broker at {mask_url(url)} denied access to the vhost: {exc}"
            ) from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            last = exc
            if attempt + 1 < attempts:
                time.sleep(delay_s)
    detail = f"{type(last).__name__}: {last}" if str(last) else type(last).__name__
    raise BrokerUnavailable(
        f"cannot reach the broker at {mask_url(url)} after {attempts} "
        f"attempt{'' if attempts == 1 else 's'} ({detail})"
    )


def _broker_version(conn: pika.BlockingConnection) -> str:
    props = getattr(getattr(conn, "_impl", None), "server_properties", None) or {}
    version = props.get("version", "unknown")
    return version.decode() if isinstance(version, bytes) else str(version)


def _exists(conn: pika.BlockingConnection, kind: str, name: str) -> bool:
    """Passive declare on a throwaway channel (a 404 closes the channel, not the connection)."""
    ch = conn.channel()
    try:
        if kind == "queue":
            ch.queue_declare(name, passive=True)
        else:
            ch.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise
    ch.close()
    return True


def declare_topology(cfg: Config) -> None:
    """Request queue (strict: other arguments are a conflict), its dead-letter exchange and
    queue, and the default reply queue (each of those used as found if it already exists)."""
    conn = _connect_blocking(cfg.amqp_url, f"intentus-worker {cfg.worker_id} (topology)")
    if cfg.queue_max_priority and cfg.queue_type == "quorum":
        # RabbitMQ refuses x-max-priority on quorum queues (3.x and 4.x alike).
        log.warning(
            "INTENTUS_QUEUE_MAX_PRIORITY=%d ignored: quorum queues take no x-max-priority; "
            "RabbitMQ before 4.0 (this broker: %s) delivers them in publish order whatever "
            "the priority, 4.0 and later put AMQP priority 5 and above first. "
            "Use INTENTUS_QUEUE_TYPE=classic for priorities.",
            cfg.queue_max_priority,
            _broker_version(conn),
        )
    try:
        if not _exists(conn, "exchange", cfg.dlx):
            conn.channel().exchange_declare(cfg.dlx, exchange_type="fanout", durable=True)
        if not _exists(conn, "queue", cfg.dlq):
            ch = conn.channel()
            ch.queue_declare(cfg.dlq, durable=True, arguments={"x-queue-type": cfg.queue_type})
        conn.channel().queue_bind(cfg.dlq, cfg.dlx, routing_key="#")
        if cfg.reply_queue and not _exists(conn, "queue", cfg.reply_queue):
            conn.channel().queue_declare(cfg.reply_queue, durable=True)
        try:
            conn.channel().queue_declare(cfg.queue, durable=True, arguments=queue_arguments(cfg))
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 406:
                raise TopologyConflict(
                    f"queue {cfg.queue!r} already exists with other arguments than "
                    f"{queue_arguments(cfg)} (durable): {exc.reply_text}. Delete it, or set "
                    "INTENTUS_QUEUE/INTENTUS_QUEUE_TYPE to match."
                ) from None
            raise
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise TopologyConflict(
            f"broker refused the topology: {exc.reply_code} {exc.reply_text}"
        ) from None
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailable(
            f"broker connection failed while declaring topology: {exc!r}"
        ) from None
    finally:
        try:
            conn.close()
        except Exception:
            pass


def settle_confirmed(pending: OrderedDict[int, _T], tag: int, multiple: bool) -> list[_T]:
    """Take out the publishes a broker confirm (ack or nack) settles: `tag` alone, or with
    `multiple` every publish up to it (publish sequence numbers are in order)."""
    settled: list[_T] = []
    if multiple:
        while pending:
            seq, first = next(iter(pending.items()))
            if seq > tag:
                break
            del pending[seq]
            settled.append(first)
    elif tag in pending:
        settled.append(pending.pop(tag))
    return settled


class _Pending:
    """A publish awaiting its confirm."""

    __slots__ = ("done", "key", "returned")

    def __init__(self, key: tuple[str, str], done: Callable[[str], None]) -> None:
        self.key = key
        self.done = done
        self.returned = False


class ConsumerConnection:
    """The worker's consuming/publishing connection on its own I/O thread, reconnecting."""

    def __init__(
        self,
        cfg: Config,
        on_delivery: Callable[[Delivery], None] | None = None,
        on_state: Callable[[bool], None] | None = None,
        on_reconnect: Callable[[], None] | None = None,
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._on_delivery: Callable[[Delivery], None] = on_delivery or (lambda _d: None)
        self._on_state: Callable[[bool], None] = on_state or (lambda _on: None)
        self._on_reconnect: Callable[[], None] = on_reconnect or (lambda: None)
        self._on_cancel: Callable[[], None] = on_cancel or (lambda: None)
        self._conn: pika.SelectConnection | None = None
        self._channel: Channel | None = None
        self._consumer_tag: str | None = None
        self._want_consume = True
        self._stopping = False
        self.generation = 0
        self._seq = 0
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        # Work handed in by other threads; one wake-up of the loop drains all of it.
        self._mail: deque[Callable[[], None]] = deque()
        self._mail_lock = threading.Lock()
        self._mail_woken = False
        self._acks = AckBook()
        self._ack_flush_due = False
        self._thread = threading.Thread(target=self._run, name="intentus-amqp-io", daemon=True)
        self._connected_once = False
        self.consuming = False
        # The broker cancelled our consumer and the queue is being declared again.
        self.cancelled = False

    def bind(
        self,
        on_delivery: Callable[[Delivery], None],
        on_state: Callable[[bool], None],
        on_reconnect: Callable[[], None],
        on_cancel: Callable[[], None],
    ) -> None:
        """Set the callbacks (before `start()`)."""
        self._on_delivery = on_delivery
        self._on_state = on_state
        self._on_reconnect = on_reconnect
        self._on_cancel = on_cancel

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
        with self._mail_lock:
            self._mail.append(fn)
            if self._mail_woken:
                return True  # a wake-up is on its way and will drain this too
            self._mail_woken = True
        try:
            conn.ioloop.add_callback_threadsafe(self._drain)
        except Exception:
            with self._mail_lock:
                self._mail_woken = False
                try:
                    self._mail.remove(fn)
                except ValueError:
                    return True  # drained meanwhile
            return False
        return True

    def _drain(self) -> None:
        """(I/O thread) Run everything handed in so far, in order."""
        with self._mail_lock:
            batch = list(self._mail)
            self._mail.clear()
            self._mail_woken = False
        for fn in batch:
            try:
                fn()
            except Exception:
                log.exception("I/O thread task failed")

    def stop(self) -> None:
        """Close the connection and end the I/O thread (unacked deliveries return to the queue)."""
        self._stopping = True
        self.call(self._close)  # no connection: the I/O thread ends at its next check
        self._thread.join(timeout=10)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- I/O thread: lifecycle -----------------------------------------------------------
    def _run(self) -> None:
        backoff = 0
        while not self._stopping:
            if self._connected_once:
                try:
                    declare_topology(self.cfg)
                except Exception as exc:
                    log.warning("broker not usable yet: %s", exc)
                    time.sleep(RECONNECT_BACKOFF_S[min(backoff, len(RECONNECT_BACKOFF_S) - 1)])
                    backoff += 1
                    continue
            with self._mail_lock:
                self._mail_woken = False  # a wake-up sent to a closed loop never came
            try:
                self._conn = pika.SelectConnection(
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
            if self._stopping:
                break
            backoff = 0 if self.consuming else backoff + 1
            self.consuming = False
            time.sleep(RECONNECT_BACKOFF_S[min(backoff, len(RECONNECT_BACKOFF_S) - 1)])

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
        self._drain()  # whatever was handed in while there was no loop to run it

    def _on_open_error(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        log.warning("cannot connect to the broker at %s: %s", self.cfg.safe_url, exc)
        conn.ioloop.stop()

    def _on_closed(self, conn: pika.SelectConnection, reason: BaseException) -> None:
        self._lost()
        if not self._stopping:
            log.warning("broker connection lost: %s; reconnecting", reason)
        conn.ioloop.stop()

    def _lost(self) -> None:
        was = self.consuming
        if self._channel is None and not self._pending and not was:
            return  # already done for this connection
        self._channel = None
        self._consumer_tag = None
        self.consuming = False
        self.cancelled = False
        self._acks.clear()
        self.generation += 1  # every delivery tag of the old channel is now stale
        pending, self._pending = self._pending, OrderedDict()
        for p in pending.values():
            try:
                p.done("failed")  # never confirmed; the request is redelivered and replayed
            except Exception:
                log.exception("publish confirm handler failed")
        if was:
            self._on_state(False)

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        self._seq = 0
        self._pending.clear()
        self._acks.clear()
        self._ack_flush_due = False
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_cancel_callback(self._on_cancelled)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _f: self._qos()
        )

    def _qos(self) -> None:
        assert self._channel is not None
        self._channel.basic_qos(prefetch_count=self.cfg.prefetch, callback=lambda _f: self._ready())

    def _ready(self) -> None:
        reconnected = self._connected_once
        self._connected_once = True
        if self._want_consume:
            self._consume()
        if reconnected:
            self._on_reconnect()
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
        self._on_state(True)

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
        self._on_cancel()
        self._on_state(False)
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
            self._on_state(False)
            try:
                self._channel.basic_cancel(tag)
            except Exception as exc:
                log.warning("basic.cancel failed: %s", exc)

    def _on_message(
        self, channel: Channel, method: Any, props: pika.BasicProperties, body: bytes
    ) -> None:
        headers = props.headers or {}
        self._acks.delivered(method.delivery_tag)
        self._on_delivery(
            Delivery(
                body=body,
                tag=method.delivery_tag,
                generation=self.generation,
                redelivered=bool(method.redelivered),
                reply_to=props.reply_to,
                correlation_id=props.correlation_id,
                message_id=props.message_id,
                user_id=props.user_id,
                content_type=props.content_type,
                headers=headers,
                exchange=method.exchange,
                routing_key=method.routing_key,
                properties=props,
            )
        )

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

    def nack(self, generation: int, tag: int, requeue: bool = True) -> bool:
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

    # -- I/O thread: publishing with confirms --------------------------------------------
    def publish_reply(
        self,
        routing_key: str,
        body: bytes,
        correlation_id: str,
        headers: dict[str, Any],
        done: Callable[[str], None],
    ) -> bool:
        correlation_id, whole = fit_correlation_id(correlation_id)
        if whole is not None:
            headers = {**headers, CORRELATION_HEADER: whole}
        props = pika.BasicProperties(
            content_type="application/json",
            correlation_id=correlation_id,
            type="AgentResponse",
            headers=headers,
            delivery_mode=PERSISTENT,
        )
        return self._publish("", routing_key, body, props, headers["x-intentus-execution-id"], done)

    def publish_dead_letter(
        self, delivery: Delivery, reason: str, execution_id: str, done: Callable[[str], None]
    ) -> bool:
        original: pika.BasicProperties | None = delivery.properties
        headers = dict((original.headers if original is not None else None) or {})
        headers["x-intentus-reject-reason"] = reason[:1000]
        headers["x-intentus-execution-id"] = execution_id
        headers["x-intentus-original-queue"] = self.cfg.queue
        headers["x-intentus-dead-lettered-at"] = int(time.time())  # the age `intentus dlq` shows
        props = pika.BasicProperties(
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
        return self._publish(
            self.cfg.dlx,
            delivery.routing_key or self.cfg.queue,
            delivery.body,
            props,
            execution_id,
            done,
        )

    def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: pika.BasicProperties,
        execution_id: str,
        done: Callable[[str], None],
    ) -> bool:
        if self._channel is None or not self._channel.is_open:
            return False
        try:
            self._channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
        except Exception as exc:
            # Nothing went out, so no confirm will come: registering it would shift every
            # later confirm onto the wrong delivery.
            log.error("cannot publish to %r: %s", routing_key, exc)
            done("failed")
            return True
        self._seq += 1
        self._pending[self._seq] = _Pending((routing_key, execution_id), done)
        return True

    def _on_return(
        self, channel: Channel, method: Any, props: pika.BasicProperties, body: bytes
    ) -> None:
        key = (method.routing_key, str((props.headers or {}).get("x-intentus-execution-id", "")))
        for pending in self._pending.values():
            if pending.key == key and not pending.returned:
                pending.returned = True
                break
        log.warning("reply to %r was unroutable (%s)", method.routing_key, method.reply_text)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        for pending in settle_confirmed(self._pending, method.delivery_tag, method.multiple):
            outcome = "unroutable" if pending.returned else ("confirmed" if ok else "failed")
            try:
                pending.done(outcome)
            except Exception:
                log.exception("publish confirm handler failed")


# == Client side =============================================================================
# Serves worker/client.py (threads) and worker/async_client.py (asyncio). One protocol class,
# ClientLink, runs on whichever loop owns its connection; pika's failures become the client
# exceptions (ClientError and below) here and nowhere else.


@dataclass(frozen=True)
class ClientRequest:
    """One request as a client hands it to its link."""

    queue: str
    body: bytes
    correlation_id: str
    message_id: str
    reply: bool
    headers: dict[str, Any]
    priority: int | None


def _detail(exc: BaseException | None) -> str:
    """What went wrong, in words: pika wraps the cause (a refused or reset socket, a failed
    login) in layers of workflow exceptions whose own text says little."""
    if exc is None:
        return "unknown reason"
    root: BaseException = exc
    for _ in range(8):
        inner = getattr(root, "exceptions", None)
        if inner:
            root = inner[-1]
            continue
        single = getattr(root, "exception", None)
        if isinstance(single, BaseException):
            root = single
            continue
        nested = [a for a in root.args if isinstance(a, BaseException)]
        if not nested:
            break
        root = nested[-1]
    text = str(root)
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def _translated(error: ClientError, cause: BaseException | None) -> ClientError:
    # What `raise error from cause` records, for errors handed to waiters instead of raised.
    error.__cause__ = cause
    return error


class _Unconfirmed:
    __slots__ = ("correlation_id", "done", "queue")

    def __init__(
        self, correlation_id: str, queue: str, done: Callable[[ClientError | None], None]
    ) -> None:
        self.correlation_id = correlation_id
        self.queue = queue
        self.done = done


class ClientLink:
    """(I/O loop) One client connection: a confirm-mode channel and an exclusive reply queue
    with its consumer. Publishes are pipelined: each goes out at once and is settled by its
    own confirm, so callers sharing the link never wait on each other's confirms."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        on_ready: Callable[[], None],
        on_reply: Callable[[str | None, bytes], None],
        on_lost: Callable[[ClientError], None],
        on_finished: Callable[[], None] = lambda: None,
    ) -> None:
        self.url = url
        self.name = name
        self.reply_queue = ""
        self.alive = False
        self.lost: ClientError | None = None
        self.max_unconfirmed = 0  # the most publishes awaiting their confirms at once
        self._on_ready = on_ready
        self._on_reply = on_reply
        self._on_lost = on_lost
        self._on_finished = on_finished
        self._conn: Any = None
        self._channel: Channel | None = None
        self._seq = 0
        self._pending: OrderedDict[int, _Unconfirmed] = OrderedDict()
        self._returned: set[str] = set()
        self._closing = False

    def open(self, factory: Callable[..., Any]) -> Any:
        """Start connecting with `factory` (pika.SelectConnection or AsyncioConnection)."""
        try:
            params = parameters(self.url, self.name)
        except (ValueError, TypeError, pika.exceptions.AMQPError) as exc:
            raise ClientError(f"invalid broker URL {mask_url(self.url)}: {exc}") from exc
        try:
            self._conn = factory(
                params,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise ConnectionLost(
                f"cannot connect to the broker at {mask_url(self.url)}: {_detail(exc)}"
            ) from exc
        return self._conn

    def close(self) -> None:
        self._closing = True
        conn = self._conn
        if conn is not None and not (conn.is_closing or conn.is_closed):
            try:
                conn.close()
            except pika.exceptions.AMQPError as exc:
                log.debug("closing the client connection: %s", exc)

    # -- opening: connection → channel → confirm mode → reply queue → consumer ---------------
    def _on_open(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: self._declare()
        )

    def _declare(self) -> None:
        assert self._channel is not None
        self._channel.queue_declare(
            "", exclusive=True, auto_delete=True, callback=self._on_declared
        )

    def _on_declared(self, frame: Any) -> None:
        assert self._channel is not None
        self.reply_queue = frame.method.queue
        self._channel.basic_consume(
            self.reply_queue, self._on_message, auto_ack=True, callback=lambda _f: self._ready()
        )

    def _ready(self) -> None:
        if self.lost is None:
            self.alive = True
            self._on_ready()

    # -- losing it -------------------------------------------------------------------------
    def _fail(self, error: ClientError) -> None:
        """Every request awaiting a confirm fails now, and so does the link (once)."""
        if self.lost is not None:
            return
        self.alive = False
        self.lost = error
        pending, self._pending = self._pending, OrderedDict()
        for p in pending.values():
            p.done(error)
        self._on_lost(error)

    def _on_open_error(self, conn: Any, exc: BaseException) -> None:
        self._fail(
            _translated(
                ConnectionLost(
                    f"cannot connect to the broker at {mask_url(self.url)}: {_detail(exc)}"
                ),
                exc,
            )
        )
        self._on_finished()

    def _on_closed(self, conn: Any, reason: BaseException) -> None:
        if self._closing:
            error: ClientError = ClientClosed("the client was closed")
        else:
            error = ConnectionLost(
                f"connection to the broker at {mask_url(self.url)} lost: {_detail(reason)} "
                "(a request in flight may still be executed)"
            )
        self._fail(_translated(error, reason))
        self._on_finished()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if self._closing:
            return
        self._fail(
            _translated(
                ConnectionLost(
                    f"the broker closed the client channel: {_detail(reason)} "
                    "(a request in flight may still be executed)"
                ),
                reason,
            )
        )
        conn = self._conn
        if conn is not None and conn.is_open:
            conn.close()

    # -- requests and replies --------------------------------------------------------------
    def publish(self, request: ClientRequest, done: Callable[[ClientError | None], None]) -> None:
        """Send now; `done(None)` on the broker's confirm, `done(error)` otherwise."""
        channel = self._channel
        if not self.alive or channel is None:
            done(self.lost or ConnectionLost("the client connection is not open"))
            return
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=PERSISTENT,
            correlation_id=request.correlation_id,
            message_id=request.message_id,
            reply_to=self.reply_queue if request.reply else None,
            headers=request.headers or None,
            priority=request.priority,
        )
        self._seq += 1
        seq = self._seq
        self._pending[seq] = _Unconfirmed(request.correlation_id, request.queue, done)
        self.max_unconfirmed = max(self.max_unconfirmed, len(self._pending))
        try:
            channel.basic_publish("", request.queue, request.body, props, mandatory=True)
        except Exception as exc:
            # Nothing reached the broker, so its confirm numbering did not move either.
            del self._pending[seq]
            self._seq -= 1
            error: ClientError
            if isinstance(exc, pika.exceptions.AMQPError):
                error = ConnectionLost(f"publish failed: {_detail(exc)}")
            else:
                error = PublishFailed(f"the request could not be encoded: {_detail(exc)}")
            done(_translated(error, exc))

    def _on_return(
        self, channel: Channel, method: Any, props: pika.BasicProperties, body: bytes
    ) -> None:
        # A return precedes the confirm of the same message.
        if props.correlation_id:
            self._returned.add(props.correlation_id)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        for p in settle_confirmed(self._pending, method.delivery_tag, method.multiple):
            if p.correlation_id in self._returned:
                self._returned.discard(p.correlation_id)
                p.done(PublishFailed(f"queue {p.queue!r} does not exist (request unroutable)"))
            elif ok:
                p.done(None)
            else:
                p.done(PublishFailed("the broker refused the request (nack)"))

    def _on_message(
        self, channel: Channel, method: Any, props: pika.BasicProperties, body: bytes
    ) -> None:
        self._on_reply(props.correlation_id, body)


class ClientConnection:
    """A ClientLink on a SelectConnection run by its own I/O thread; usable from any thread."""

    def __init__(
        self,
        url: str,
        *,
        on_reply: Callable[[str | None, bytes], None],
        on_lost: Callable[[ClientConnection, ClientError], None],
        name: str = "intentus-client",
        timeout: float = 10.0,
    ) -> None:
        self._ready = threading.Event()
        self._user_on_lost = on_lost
        self.link = ClientLink(
            url,
            name=name,
            on_ready=self._ready.set,
            on_reply=on_reply,
            on_lost=self._lost,
            on_finished=self._finished,
        )
        self._conn = self.link.open(pika.SelectConnection)
        self._thread = threading.Thread(target=self._run, name="intentus-client-io", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.close()
            raise ConnectionLost(
                f"no connection to the broker at {mask_url(url)} within {timeout:g} s"
            )
        if self.link.lost is not None:
            self.close()
            raise fresh(self.link.lost)

    @property
    def alive(self) -> bool:
        return self.link.alive

    def _run(self) -> None:
        try:
            self._conn.ioloop.start()
        except Exception:
            log.exception("client I/O loop failed")
            self.link._fail(ConnectionLost("the client I/O loop failed"))
        finally:
            self._ready.set()
            self._conn.ioloop.close()  # its wake-up socket pair

    def _lost(self, error: ClientError) -> None:
        self._ready.set()
        self._user_on_lost(self, error)

    def _finished(self) -> None:
        self._conn.ioloop.stop()

    def publish(self, request: ClientRequest, done: Callable[[ClientError | None], None]) -> None:
        """Hand the request to the I/O thread; `done` runs there when it is settled."""
        try:
            self._conn.ioloop.add_callback_threadsafe(lambda: self.link.publish(request, done))
        except Exception as exc:
            raise ConnectionLost(f"the client connection is gone: {_detail(exc)}") from exc

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._conn.ioloop.add_callback_threadsafe(self.link.close)
            except Exception as exc:
                log.debug("client I/O loop already stopped: %s", exc)
            self._thread.join(timeout=5)


class AsyncClientConnection:
    """A ClientLink on pika's asyncio adapter, in the running event loop."""

    def __init__(self, link: ClientLink, finished: asyncio.Future[None]) -> None:
        self.link = link
        self._finished = finished

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        on_reply: Callable[[str | None, bytes], None],
        on_lost: Callable[[AsyncClientConnection, ClientError], None],
        name: str = "intentus-client",
        timeout: float = 10.0,
    ) -> AsyncClientConnection:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        finished: asyncio.Future[None] = loop.create_future()
        holder: list[AsyncClientConnection] = []

        def settle(fut: asyncio.Future[None]) -> None:
            if not fut.done():
                fut.set_result(None)

        def lost(error: ClientError) -> None:
            settle(ready)
            if holder:
                on_lost(holder[0], error)

        link = ClientLink(
            url,
            name=name,
            on_ready=lambda: settle(ready),
            on_reply=on_reply,
            on_lost=lost,
            on_finished=lambda: settle(finished),
        )
        connection = cls(link, finished)
        holder.append(connection)
        link.open(functools.partial(AsyncioConnection, custom_ioloop=loop))
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            await connection.close()
            raise ConnectionLost(
                f"no connection to the broker at {mask_url(url)} within {timeout:g} s"
            ) from None
        if link.lost is not None:
            await connection.close()
            raise fresh(link.lost)
        return connection

    @property
    def alive(self) -> bool:
        return self.link.alive

    def publish(self, request: ClientRequest, done: Callable[[ClientError | None], None]) -> None:
        self.link.publish(request, done)

    async def close(self) -> None:
        self.link.close()
        if self.link._conn is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._finished), 5)
            except TimeoutError:
                log.warning("client connection did not close within 5 s")


def fresh(error: ClientError) -> ClientError:
    """A copy of a shared error to raise in one caller, keeping its cause."""
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy


# -- dead-letter queue access (`intentus dlq`) ---------------------------------------------
# Kept apart from the worker's connections above: a short-lived blocking connection of an
# operator's command, never of a running worker.


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
        self._conn = _connect_blocking(cfg.amqp_url, "intentus dlq", attempts=1)
        try:
            self._ch = self._conn.channel()
            self._ch.queue_declare(cfg.dlq, passive=True)
            self._ch.confirm_delivery()
        except pika.exceptions.ChannelClosedByBroker as exc:
            self.close()
            if exc.reply_code == 404:
                raise TopologyConflict(
                    f"queue {cfg.dlq!r} does not exist (a worker declares it at start)"
                ) from None
            raise BrokerUnavailable(f"broker refused {cfg.dlq!r}: {exc.reply_text}") from None

    def __enter__(self) -> DeadLetterQueue:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def ready(self) -> int:
        """Messages ready in the DLQ now (not counting those held by any consumer)."""
        try:
            result = self._ch.queue_declare(self.cfg.dlq, passive=True)
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"cannot read {self.cfg.dlq!r}: {exc!r}") from None
        return int(result.method.message_count)

    def take(self, limit: int) -> list[HeldMessage]:
        """Up to `limit` messages, oldest first, held unacked until requeued or released."""
        held: list[HeldMessage] = []
        try:
            while len(held) < limit:
                method, props, body = self._ch.basic_get(self.cfg.dlq, auto_ack=False)
                if method is None:
                    break
                held.append(
                    HeldMessage(
                        tag=method.delivery_tag,
                        body=body,
                        properties={
                            name: getattr(props, name)
                            for name in _PROPERTY_NAMES
                            if getattr(props, name, None) is not None
                        },
                        redelivered=bool(method.redelivered),
                    )
                )
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"cannot read {self.cfg.dlq!r}: {exc!r}") from None
        return held

    def requeue(self, message: HeldMessage, properties: dict[str, Any]) -> None:
        """Publish a copy to the request queue, wait for the broker's confirm, then ack the
        dead letter. A refused or unconfirmed copy leaves the dead letter where it is."""
        try:
            self._ch.basic_publish(
                "",
                self.cfg.queue,
                message.body,
                pika.BasicProperties(**properties),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            raise PublishFailed(f"queue {self.cfg.queue!r} does not exist") from None
        except pika.exceptions.NackError:
            raise PublishFailed(f"the broker refused the copy for {self.cfg.queue!r}") from None
        except pika.exceptions.AMQPError as exc:
            raise PublishFailed(f"publishing to {self.cfg.queue!r} failed: {exc!r}") from None
        try:
            self._ch.basic_ack(message.tag)
        except pika.exceptions.AMQPError as exc:
            # The copy is in the request queue; the dead letter returns to the DLQ with the
            # channel. A duplicate is answered from its record, a lost message never is.
            raise PublishFailed(
                f"copy confirmed but the dead letter could not be acked: {exc!r}"
            ) from None

    def purge(self) -> int:
        """Delete every ready message of the DLQ; returns how many."""
        try:
            result = self._ch.queue_purge(self.cfg.dlq)
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"cannot purge {self.cfg.dlq!r}: {exc!r}") from None
        return int(result.method.message_count)

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:
            pass
