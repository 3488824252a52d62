"""IntentusClient: send intents and wait for their replies, matched by correlation id.

Thread-safe: many threads share one connection, one confirm-mode channel and one reply
consumer. Publishes are pipelined (each settles on its own confirm, none waits for another's);
replies with an unknown or already-answered correlation id are ignored. `timeout` is one
budget for (re)connecting, the broker's confirm and the reply together.

When the connection dies, every request in flight fails at once with ConnectionLost (it may
still be executed: re-send it with the same requestId to get its recorded answer) and the
next call connects again. The clients raise only these (pika's exceptions are translated at
the pika boundary, the original kept as `__cause__`):

    ClientError               base (a WorkerError)
    +-- ConnectionLost        broker unreachable, or the connection died mid-request
    +-- PublishFailed         the broker refused (nack) or could not route the request
    +-- RequestTimeout        no confirm and reply within the timeout (also a TimeoutError)
    +-- ClientClosed          the client was closed

`AsyncIntentusClient` (worker.clients.aio) has the same semantics for asyncio.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Unpack, overload

from runtime.oneshot import OneShot
from runtime.response import AgentResponse
from worker.amqp import ClientConnection
from worker.clients.calls import (
    DEFAULT_TIMEOUT_S,
    AwaitReply,
    Calls,
    ClientBase,
    ConfirmOnly,
    Payload,
    RawOptions,
    SendOptions,
    answer,
    intent_request,
    raw_request,
    timeout_error,
)
from worker.errors import (
    ClientClosed,
    ClientError,
    ConnectionLost,
    PublishFailed,
    RequestTimeout,
    fresh,
)
from worker.intents import (
    PRIORITIES,
    ClientRequest,
    amqp_priority,
    build_envelope,
    new_traceparent,
)

__all__ = [
    "PRIORITIES",
    "ClientClosed",
    "ClientError",
    "ConnectionLost",
    "IntentusClient",
    "PublishFailed",
    "RequestTimeout",
    "amqp_priority",
    "build_envelope",
    "new_traceparent",
]

log = logging.getLogger("intentus.client")


class _Call:
    __slots__ = ("answer", "confirmed", "link", "wait")

    def __init__(self, *, wait: bool, link: object) -> None:
        self.wait = wait
        self.link = link
        self.confirmed = False
        self.answer: OneShot[tuple[bytes | None, ClientError | None]] = OneShot()

    def settle(self, body: bytes | None, error: ClientError | None) -> None:
        self.answer.set((body, error))


class IntentusClient(ClientBase):
    """Blocking client; safe to share between threads. Connects at once (a wrong URL or an
    unreachable broker raises here), and again on the next call after the connection died."""

    _conn: ClientConnection | None

    def _open(self) -> None:
        self._connect_lock = threading.Lock()
        self._conn = self._connect(self.connect_timeout)

    def __enter__(self) -> IntentusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self, timeout: float) -> ClientConnection:
        return ClientConnection(
            self.url,
            on_reply=self._calls.on_reply,
            on_lost=self._on_lost,
            name=f"intentus-client {self.source}",
            timeout=timeout,
        )

    def _connection(self, deadline: float) -> ClientConnection:
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        with self._connect_lock:
            if self._closed:
                raise ClientClosed("the client was closed")
            conn = self._conn
            if conn is None or not conn.alive:
                if conn is not None:
                    conn.close()
                    self._conn = None
                conn = self._conn = self._connect(self._connect_budget(deadline))
                log.info("client reconnected to the broker")
            return conn

    @overload
    def send_intent(
        self, intent_name: str, payload: Payload = ..., **options: Unpack[AwaitReply]
    ) -> AgentResponse: ...

    @overload
    def send_intent(
        self, intent_name: str, payload: Payload = ..., **options: Unpack[ConfirmOnly]
    ) -> str: ...

    def send_intent(
        self,
        intent_name: str,
        payload: Payload = None,
        **options: Unpack[SendOptions],
    ) -> AgentResponse | str:
        """Publish one intent and return its AgentResponse; with `wait=False`, return its
        requestId once the broker confirmed it.

        `version` is the intent's version; `strategy` DIRECT (default), FALLBACK, BROADCAST
        or PARALLEL; `target_agent`/`fallback_agents` name agents for DIRECT and FALLBACK;
        `priority` LOW, NORMAL (default), HIGH or CRITICAL, also published as the AMQP
        priority (see PRIORITIES); `source` defaults to the client's; `request_id` defaults
        to a new unique id (re-sending one gets its recorded answer, nothing runs twice);
        `correlation_id` defaults to the requestId (a new unique id when the requestId is
        longer than the 255 bytes the property holds); `traceparent` (W3C) defaults to a new
        trace, and is sent as the `traceparent` header. Raises RequestTimeout after
        `timeout` seconds, ConnectionLost, PublishFailed or ClientClosed.
        """
        request = intent_request(
            self.queue, intent_name, payload, source=self.source, options=options
        )
        return answer(request, self._send(request, options.get("timeout", DEFAULT_TIMEOUT_S)))

    def send_raw(self, body: bytes, **options: Unpack[RawOptions]) -> bytes | None:
        """Publish raw bytes as a request (with a fresh `traceparent` unless `headers` has
        one); with `wait`, return the reply body. Keywords: timeout (30 s), wait (True),
        correlation_id, message_id, headers, priority."""
        request = raw_request(self.queue, body, options)
        return self._send(request, options.get("timeout", DEFAULT_TIMEOUT_S))

    def _send(self, request: ClientRequest, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        conn = self._connection(deadline)
        call = _Call(wait=request.reply, link=conn)
        request = self._register(request, call)
        try:
            if not conn.alive:  # died between the check above and registering the call
                raise fresh(conn.link.lost or ConnectionLost("the client connection is not open"))
            conn.publish(request, lambda error: Calls.on_confirm(call, error))
            if not call.answer.wait(max(0.0, deadline - time.monotonic())):
                raise timeout_error(request, timeout, confirmed=call.confirmed)
        finally:
            self._calls.remove(request.correlation_id, call)
        assert call.answer.value is not None
        body, error = call.answer.value
        if error is not None:
            raise fresh(error)
        return body

    def close(self) -> None:
        with self._connect_lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._calls.fail(ClientClosed("the client was closed"))
