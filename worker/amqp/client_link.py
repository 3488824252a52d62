"""(I/O loop) `ClientLink`: one client connection's protocol, for whichever loop owns it.

Serves worker/clients/blocking.py (threads, through `ClientConnection`) and worker/clients/aio.py
(asyncio, through `AsyncClientConnection`). pika's failures become the client exceptions
(ClientError and below) here and nowhere else, the original kept as `__cause__`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pika.channel import Channel

from worker.amqp.connect import PERSISTENT, describe, parameters, translated
from worker.amqp.publisher import settle_confirmed
from worker.config import mask_url, url_problem
from worker.errors import ClientClosed, ClientError, ConnectionLost, PublishFailed
from worker.intents import ClientRequest

log = logging.getLogger("intentus.amqp")


class _Unconfirmed:
    """A request awaiting its confirm."""

    __slots__ = ("correlation_id", "done", "queue")

    def __init__(
        self, *, correlation_id: str, queue: str, done: Callable[[ClientError | None], None]
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
        self._sequence = 0
        self._pending: OrderedDict[int, _Unconfirmed] = OrderedDict()
        self._returned: set[str] = set()
        self._closing = False

    def open(self, factory: Callable[..., Any]) -> Any:
        """Start connecting with `factory` (pika.SelectConnection or AsyncioConnection)."""
        problem = url_problem(self.url)
        if problem:
            raise ClientError(f"invalid broker URL: {problem}")
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
                f"cannot connect to the broker at {mask_url(self.url)}: {describe(exc)}"
            ) from exc
        return self._conn

    @property
    def opened(self) -> bool:
        """A connection was started (it may have closed since)."""
        return self._conn is not None

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
    def fail(self, error: ClientError) -> None:
        """Every request awaiting a confirm fails now, and so does the link (once)."""
        if self.lost is not None:
            return
        self.alive = False
        self.lost = error
        pending, self._pending = self._pending, OrderedDict()
        for unconfirmed in pending.values():
            unconfirmed.done(error)
        self._on_lost(error)

    def _on_open_error(self, conn: Any, exc: BaseException) -> None:
        self.fail(
            translated(
                ConnectionLost(
                    f"cannot connect to the broker at {mask_url(self.url)}: {describe(exc)}"
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
                f"connection to the broker at {mask_url(self.url)} lost: {describe(reason)} "
                "(a request in flight may still be executed)"
            )
        self.fail(translated(error, reason))
        self._on_finished()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if self._closing:
            return
        self.fail(
            translated(
                ConnectionLost(
                    f"the broker closed the client channel: {describe(reason)} "
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
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=PERSISTENT,
            correlation_id=request.correlation_id,
            message_id=request.message_id,
            reply_to=self.reply_queue if request.reply else None,
            headers=request.headers or None,
            priority=request.priority,
        )
        self._sequence += 1
        sequence = self._sequence
        self._pending[sequence] = _Unconfirmed(
            correlation_id=request.correlation_id, queue=request.queue, done=done
        )
        self.max_unconfirmed = max(self.max_unconfirmed, len(self._pending))
        try:
            channel.basic_publish(
                exchange="",
                routing_key=request.queue,
                body=request.body,
                properties=properties,
                mandatory=True,
            )
        except Exception as exc:
            # Nothing reached the broker, so its confirm numbering did not move either.
            del self._pending[sequence]
            self._sequence -= 1
            error: ClientError
            # Encoding happens before anything is written: the connection is still fine.
            encoding = isinstance(exc, pika.exceptions.ShortStringTooLong)
            if isinstance(exc, pika.exceptions.AMQPError) and not encoding:
                error = ConnectionLost(f"publish failed: {describe(exc)}")
            else:
                error = PublishFailed(f"the request could not be encoded: {describe(exc)}")
            done(translated(error, exc))

    def _on_return(
        self, channel: Channel, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> None:
        # A return precedes the confirm of the same message.
        if properties.correlation_id:
            self._returned.add(properties.correlation_id)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        settled = settle_confirmed(self._pending, method.delivery_tag, multiple=method.multiple)
        for request in settled:
            if request.correlation_id in self._returned:
                self._returned.discard(request.correlation_id)
                request.done(
                    PublishFailed(f"queue {request.queue!r} does not exist (request unroutable)")
                )
            elif ok:
                request.done(None)
            else:
                request.done(PublishFailed("the broker refused the request (nack)"))

    def _on_message(
        self, channel: Channel, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> None:
        self._on_reply(properties.correlation_id, body)
