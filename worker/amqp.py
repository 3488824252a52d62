"""Everything that speaks AMQP. The only module that imports pika.

- `declare_topology`: the queues and exchanges, checked at start (and after each reconnect).
- `ConsumerConnection`: the worker's connection. One I/O thread owns it (pika is not
  thread-safe); other threads hand work to it with `call()`, which queues it in a mailbox
  and wakes the loop once per batch, not once per call. Publishes use publisher confirms;
  acks are gathered per loop iteration and sent as one `multiple` ack for the settled run of
  tags at the front. Deliveries carry the connection *generation*, so tags from a lost
  channel are dropped, never acked on a new one.
- `ClientConnection`: the caller's side (publish with confirms, consume replies), also
  confined to one I/O thread.

pika errors are translated here, once, into the worker's own exceptions.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.channel import Channel

from worker.config import Config, mask_url
from worker.errors import BrokerUnavailable, PublishFailed, RequestTimeout, TopologyConflict
from worker.pipeline import Delivery

log = logging.getLogger("intentus.amqp")

PERSISTENT = 2
RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)


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
        f"cannot reach the broker at {mask_url(url)} after {attempts} attempts ({detail})"
    )


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
        on_delivery: Callable[[Delivery], None],
        on_state: Callable[[bool], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self._on_delivery = on_delivery
        self._on_state = on_state
        self._on_reconnect = on_reconnect
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
        # Delivery tags of the current channel in arrival order; those settled (acked or
        # nacked by us), and the acks not sent yet.
        self._unacked: deque[int] = deque()
        self._settled: set[int] = set()
        self._to_ack: set[int] = set()
        self._ack_flush_due = False
        self._thread = threading.Thread(target=self._run, name="intentus-amqp-io", daemon=True)
        self._connected_once = False
        self.consuming = False

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
                log.exception("AMQP I/O loop failed")
            self._conn = None
            if self._stopping:
                break
            backoff = 0 if self.consuming else backoff + 1
            self.consuming = False
            time.sleep(RECONNECT_BACKOFF_S[min(backoff, len(RECONNECT_BACKOFF_S) - 1)])

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
        self._channel = None
        self._consumer_tag = None
        self.consuming = False
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
        self._unacked.clear()
        self._settled.clear()
        self._to_ack.clear()
        self._ack_flush_due = False
        channel.add_on_close_callback(self._on_channel_closed)
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
        if self._channel is None or self._consumer_tag is not None:
            return
        self._consumer_tag = self._channel.basic_consume(self.cfg.queue, self._on_message)
        self.consuming = True
        self._on_state(True)

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
        self._unacked.append(method.delivery_tag)
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
        self._settled.add(tag)
        self._to_ack.add(tag)
        if not self._ack_flush_due and self._conn is not None:
            self._ack_flush_due = True
            self._conn.ioloop.call_later(0, self._flush_acks)
        return True

    def nack(self, generation: int, tag: int, requeue: bool = True) -> bool:
        if generation != self.generation or self._channel is None:
            return False
        self._settled.add(tag)
        self._channel.basic_nack(tag, requeue=requeue)
        return True

    def _flush_acks(self) -> None:
        """One `multiple` ack for the settled run of tags at the front; single acks for any
        settled out of order (so one slow delivery never holds back the prefetch window)."""
        self._ack_flush_due = False
        channel = self._channel
        if channel is None or not self._to_ack:
            return
        unacked, settled, to_ack = self._unacked, self._settled, self._to_ack
        top = 0
        while unacked and unacked[0] in settled:
            tag = unacked.popleft()
            settled.discard(tag)
            if tag in to_ack:
                to_ack.discard(tag)
                top = tag
        if top:
            channel.basic_ack(top, multiple=True)
        for tag in sorted(to_ack):
            channel.basic_ack(tag)
        to_ack.clear()

    # -- I/O thread: publishing with confirms --------------------------------------------
    def publish_reply(
        self,
        routing_key: str,
        body: bytes,
        correlation_id: str,
        headers: dict[str, Any],
        done: Callable[[str], None],
    ) -> bool:
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
        self._seq += 1
        self._pending[self._seq] = _Pending((routing_key, execution_id), done)
        self._channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
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
        tag = method.delivery_tag
        done: list[_Pending] = []
        if method.multiple:
            while self._pending:
                seq, first = next(iter(self._pending.items()))
                if seq > tag:
                    break
                del self._pending[seq]
                done.append(first)
        elif tag in self._pending:
            done.append(self._pending.pop(tag))
        for pending in done:
            outcome = "unroutable" if pending.returned else ("confirmed" if ok else "failed")
            try:
                pending.done(outcome)
            except Exception:
                log.exception("publish confirm handler failed")


class ClientConnection:
    """The caller's connection: publishes requests with confirms and consumes replies from an
    exclusive queue, all on one I/O thread."""

    def __init__(
        self,
        url: str,
        on_reply: Callable[[str | None, bytes, dict[str, Any]], None],
        name: str = "intentus-client",
    ) -> None:
        self._conn = _connect_blocking(url, name, attempts=1)
        self._ch: BlockingChannel = self._conn.channel()
        self._ch.confirm_delivery()
        result = self._ch.queue_declare("", exclusive=True, auto_delete=True)
        self.reply_queue: str = result.method.queue
        self._on_reply = on_reply
        self._ch.basic_consume(self.reply_queue, self._on_message, auto_ack=True)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="intentus-client-io", daemon=True)
        self._thread.start()

    def _on_message(
        self, ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes
    ) -> None:
        self._on_reply(props.correlation_id, body, dict(props.headers or {}))

    def _loop(self) -> None:
        while not self._closed:
            try:
                self._conn.process_data_events(time_limit=0.2)
            except Exception as exc:
                if not self._closed:
                    log.warning("client connection lost: %s", exc)
                self._closed = True
                return

    def publish(
        self,
        queue: str,
        body: bytes,
        correlation_id: str,
        message_id: str,
        headers: dict[str, Any] | None,
        wait_reply: bool,
        timeout: float = 30.0,
    ) -> None:
        """Publish (persistent, mandatory) and return once the broker confirmed it."""
        result: list[BaseException | None] = []
        event = threading.Event()

        def send() -> None:
            try:
                self._ch.basic_publish(
                    "",
                    queue,
                    body,
                    pika.BasicProperties(
                        content_type="application/json",
                        delivery_mode=PERSISTENT,
                        correlation_id=correlation_id,
                        message_id=message_id,
                        reply_to=self.reply_queue if wait_reply else None,
                        headers=headers or None,
                    ),
                    mandatory=True,
                )
                result.append(None)
            except pika.exceptions.UnroutableError:
                result.append(PublishFailed(f"queue {queue!r} does not exist (request unroutable)"))
            except pika.exceptions.NackError:
                result.append(PublishFailed("the broker refused the request (nack)"))
            except Exception as exc:
                result.append(PublishFailed(f"publish failed: {exc!r}"))
            event.set()

        if self._closed:
            raise PublishFailed("client connection is closed")
        self._conn.add_callback_threadsafe(send)
        if not event.wait(timeout):
            # Not a refusal: the request may still be published and executed.
            raise RequestTimeout(
                f"no publisher confirm from the broker within {timeout:g} s "
                "(the request may still be executed)"
            )
        if result[0] is not None:
            raise result[0]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._thread.join(timeout=2)
        try:
            self._conn.close()
        except Exception:
            pass


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
            self._ch: BlockingChannel = self._conn.channel()
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
