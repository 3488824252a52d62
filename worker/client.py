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

`AsyncIntentusClient` (worker.async_client) has the same semantics for asyncio.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, overload

from runtime.canonical import dumps
from runtime.response import AgentResponse
from worker.amqp import ClientConnection, ClientRequest, fresh
from worker.config import DEFAULT_AMQP_URL
from worker.errors import (
    ClientClosed,
    ClientError,
    ConnectionLost,
    PublishFailed,
    RequestTimeout,
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

#: AMQP `priority` published for each `context.priority`. A classic queue declared with
#: x-max-priority 9 keeps all four apart; RabbitMQ 4 quorum queues serve 5 and above first.
PRIORITIES: dict[str, int] = {"LOW": 0, "NORMAL": 4, "HIGH": 7, "CRITICAL": 9}

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_CONNECT_TIMEOUT_S = 10.0


def amqp_priority(priority: str | None) -> int:
    """The AMQP priority of a `context.priority` (None is the envelope default, NORMAL)."""
    name = (priority or "NORMAL").upper()
    if name not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    return PRIORITIES[name]


def new_traceparent() -> str:
    """A fresh W3C traceparent (version 00, sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def check_traceparent(traceparent: str) -> str:
    value = traceparent.strip().lower()
    if not _TRACEPARENT.match(value) or value.split("-")[1] == "0" * 32:
        raise ValueError(f"not a W3C traceparent: {traceparent!r}")
    return value


def build_envelope(
    intent_name: str,
    payload: Mapping[str, Any] | None = None,
    *,
    version: str = "1.0",
    strategy: str | None = None,
    target_agent: str | None = None,
    fallback_agents: Sequence[str] | None = None,
    priority: str | None = None,
    tags: Sequence[str] | None = None,
    source: str = "client",
    request_id: str | None = None,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """The IntentEnvelope JSON of one request."""
    routing: dict[str, Any] = {"strategy": (strategy or "DIRECT").upper()}
    if target_agent:
        routing["targetAgent"] = target_agent
    if fallback_agents:
        routing["fallbackAgents"] = list(fallback_agents)
    context: dict[str, Any] = {"sourceAgent": source}
    if priority:
        context["priority"] = priority.upper()
    if tags:
        context["tags"] = list(tags)
    metadata: dict[str, Any] = {
        "requestId": request_id or f"req-{uuid.uuid4().hex}",
        "source": source,
    }
    if trace_id:
        metadata["traceId"] = trace_id
    return {
        "version": "1.0",
        "intent": {"name": intent_name, "version": version},
        "payload": dict(payload or {}),
        "context": context,
        "metadata": metadata,
        "routing": routing,
    }


@dataclass(frozen=True)
class Prepared:
    """A request ready to publish, and the requestId to report it by."""

    body: bytes
    request_id: str
    headers: dict[str, Any]
    priority: int


def prepare(
    intent_name: str,
    payload: Mapping[str, Any] | None,
    *,
    version: str,
    strategy: str | None,
    target_agent: str | None,
    fallback_agents: Sequence[str] | None,
    priority: str | None,
    tags: Sequence[str] | None,
    source: str,
    request_id: str | None,
    trace_id: str | None,
    traceparent: str | None,
) -> Prepared:
    amqp = amqp_priority(priority)
    envelope = build_envelope(
        intent_name,
        payload,
        version=version,
        strategy=strategy,
        target_agent=target_agent,
        fallback_agents=fallback_agents,
        priority=priority,
        tags=tags,
        source=source,
        request_id=request_id,
        trace_id=trace_id,
    )
    tp = check_traceparent(traceparent) if traceparent else new_traceparent()
    return Prepared(
        body=dumps(envelope),
        request_id=envelope["metadata"]["requestId"],
        headers={"traceparent": tp},
        priority=amqp,
    )


def timeout_error(
    request_id: str, timeout: float, *, confirmed: bool, wait: bool
) -> RequestTimeout:
    if wait:
        what = f"no reply to requestId {request_id!r} within {timeout:g} s"
        if not confirmed:
            what += " (not even the broker's confirm)"
    else:
        what = f"no publisher confirm for requestId {request_id!r} within {timeout:g} s"
    return RequestTimeout(
        f"{what}; the request may still be executed: re-send it with "
        f"request_id={request_id!r} to get its recorded answer"
    )


class Call(Protocol):
    """A request in flight, settled once: by its reply, its confirm (no wait) or an error."""

    wait: bool
    confirmed: bool
    link: object

    def settle(self, body: bytes | None, error: ClientError | None) -> None: ...


class Calls:
    """The requests in flight of one client, by correlation id (shared by both clients)."""

    def __init__(self) -> None:
        self._calls: dict[str, Call] = {}
        self._lock = threading.Lock()

    def add(self, cid: str, call: Call) -> None:
        with self._lock:
            if cid in self._calls:
                raise ClientError(f"correlation id {cid!r} is already in flight")
            self._calls[cid] = call

    def remove(self, cid: str, call: Call) -> None:
        with self._lock:
            if self._calls.get(cid) is call:
                del self._calls[cid]

    def on_reply(self, correlation_id: str | None, body: bytes) -> None:
        with self._lock:
            call = self._calls.get(correlation_id or "")
            if call is None or not call.wait:
                call = None
            else:
                del self._calls[correlation_id or ""]
        if call is None:
            log.debug("ignoring reply with unknown or answered correlation id %r", correlation_id)
            return
        call.settle(body, None)

    @staticmethod
    def on_confirm(call: Call, error: ClientError | None) -> None:
        if error is not None:
            call.settle(None, error)
            return
        call.confirmed = True
        if not call.wait:
            call.settle(None, None)

    def fail(self, error: ClientError, link: object | None = None) -> None:
        """Fail every call of `link` (all calls without one) at once."""
        with self._lock:
            doomed = [c for c in self._calls.values() if link is None or c.link is link]
        for call in doomed:
            call.settle(None, error)


class _Call:
    __slots__ = ("_lock", "body", "confirmed", "error", "event", "link", "wait")

    def __init__(self, wait: bool, link: object) -> None:
        self.wait = wait
        self.link = link
        self.confirmed = False
        self.event = threading.Event()
        self.body: bytes | None = None
        self.error: ClientError | None = None
        self._lock = threading.Lock()

    def settle(self, body: bytes | None, error: ClientError | None) -> None:
        with self._lock:
            if self.event.is_set():
                return
            self.body, self.error = body, error
            self.event.set()


class IntentusClient:
    """Blocking client; safe to share between threads. Connects at once (a wrong URL or an
    unreachable broker raises here), and again on the next call after the connection died."""

    def __init__(
        self,
        url: str = DEFAULT_AMQP_URL,
        *,
        queue: str = "intentus.requests",
        source: str = "client",
        connect_timeout: float = _CONNECT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.queue = queue
        self.source = source
        self.connect_timeout = connect_timeout
        self._calls = Calls()
        self._connect_lock = threading.Lock()
        self._closed = False
        self._conn: ClientConnection | None = self._connect(connect_timeout)

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

    def _on_lost(self, conn: ClientConnection, error: ClientError) -> None:
        if not isinstance(error, ClientClosed):
            log.info("%s", error)  # every waiter gets it raised; no need to shout twice
        self._calls.fail(error, conn)

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
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionLost("no time left to reconnect to the broker")
                conn = self._conn = self._connect(min(remaining, self.connect_timeout))
                log.info("client reconnected to the broker")
            return conn

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.alive

    @overload
    def send_intent(
        self,
        intent_name: str,
        payload: Mapping[str, Any] | None = ...,
        *,
        version: str = ...,
        strategy: str | None = ...,
        target_agent: str | None = ...,
        fallback_agents: Sequence[str] | None = ...,
        priority: str | None = ...,
        tags: Sequence[str] | None = ...,
        source: str | None = ...,
        request_id: str | None = ...,
        correlation_id: str | None = ...,
        trace_id: str | None = ...,
        traceparent: str | None = ...,
        timeout: float = ...,
        wait: Literal[True] = ...,
    ) -> AgentResponse: ...

    @overload
    def send_intent(
        self,
        intent_name: str,
        payload: Mapping[str, Any] | None = ...,
        *,
        version: str = ...,
        strategy: str | None = ...,
        target_agent: str | None = ...,
        fallback_agents: Sequence[str] | None = ...,
        priority: str | None = ...,
        tags: Sequence[str] | None = ...,
        source: str | None = ...,
        request_id: str | None = ...,
        correlation_id: str | None = ...,
        trace_id: str | None = ...,
        traceparent: str | None = ...,
        timeout: float = ...,
        wait: Literal[False],
    ) -> str: ...

    def send_intent(
        self,
        intent_name: str,
        payload: Mapping[str, Any] | None = None,
        *,
        version: str = "1.0",
        strategy: str | None = None,
        target_agent: str | None = None,
        fallback_agents: Sequence[str] | None = None,
        priority: str | None = None,
        tags: Sequence[str] | None = None,
        source: str | None = None,
        request_id: str | None = None,
        correlation_id: str | None = None,
        trace_id: str | None = None,
        traceparent: str | None = None,
        timeout: float = 30.0,
        wait: bool = True,
    ) -> AgentResponse | str:
        """Publish one intent and return its AgentResponse; with `wait=False`, return its
        requestId once the broker confirmed it.

        `version` is the intent's version; `strategy` DIRECT (default), FALLBACK, BROADCAST
        or PARALLEL; `target_agent`/`fallback_agents` name agents for DIRECT and FALLBACK;
        `priority` LOW, NORMAL (default), HIGH or CRITICAL, also published as the AMQP
        priority (see PRIORITIES); `source` defaults to the client's; `request_id` defaults
        to a new unique id (re-sending one gets its recorded answer, nothing runs twice);
        `correlation_id` defaults to a new unique id; `traceparent` (W3C) defaults to a new
        trace, and is sent as the `traceparent` header. Raises RequestTimeout after
        `timeout` seconds, ConnectionLost, PublishFailed or ClientClosed.
        """
        prepared = prepare(
            intent_name,
            payload,
            version=version,
            strategy=strategy,
            target_agent=target_agent,
            fallback_agents=fallback_agents,
            priority=priority,
            tags=tags,
            source=source or self.source,
            request_id=request_id,
            trace_id=trace_id,
            traceparent=traceparent,
        )
        body = self._send(
            prepared.body,
            request_id=prepared.request_id,
            correlation_id=correlation_id,
            headers=prepared.headers,
            priority=prepared.priority,
            timeout=timeout,
            wait=wait,
        )
        if body is None:
            return prepared.request_id
        return AgentResponse.from_json(body)

    def send_raw(
        self,
        body: bytes,
        *,
        timeout: float = 30.0,
        wait: bool = True,
        correlation_id: str | None = None,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> bytes | None:
        """Publish raw bytes as a request (with a fresh `traceparent` unless `headers` has
        one); with `wait`, return the reply body."""
        cid = correlation_id or uuid.uuid4().hex
        merged = {"traceparent": new_traceparent(), **(headers or {})}
        return self._send(
            body,
            request_id=message_id or cid,
            correlation_id=cid,
            headers=merged,
            priority=priority,
            timeout=timeout,
            wait=wait,
        )

    def _send(
        self,
        body: bytes,
        *,
        request_id: str,
        correlation_id: str | None,
        headers: dict[str, Any],
        priority: int | None,
        timeout: float,
        wait: bool,
    ) -> bytes | None:
        deadline = time.monotonic() + timeout
        cid = correlation_id or uuid.uuid4().hex
        conn = self._connection(deadline)
        call = _Call(wait, conn)
        self._calls.add(cid, call)
        try:
            if not conn.alive:  # died between the check above and registering the call
                raise fresh(conn.link.lost or ConnectionLost("the client connection is not open"))
            request = ClientRequest(
                queue=self.queue,
                body=body,
                correlation_id=cid,
                message_id=request_id,
                reply=wait,
                headers=headers,
                priority=priority,
            )
            conn.publish(request, lambda error: Calls.on_confirm(call, error))
            if not call.event.wait(max(0.0, deadline - time.monotonic())):
                raise timeout_error(request_id, timeout, confirmed=call.confirmed, wait=wait)
        finally:
            self._calls.remove(cid, call)
        if call.error is not None:
            raise fresh(call.error)
        return call.body

    def close(self) -> None:
        with self._connect_lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._calls.fail(ClientClosed("the client was closed"))
