"""What both clients share: building a request, the requests in flight matched by
correlation id, and the errors they end with. The blocking and the asyncio client differ
only in how they wait (worker.clients.blocking, worker.clients.aio)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, Protocol, Required, TypedDict

from runtime.canonical import dumps
from runtime.response import AgentResponse
from worker.config import DEFAULT_AMQP_URL, DEFAULT_QUEUE, REPLY_TIMEOUT_S
from worker.errors import ClientClosed, ClientError, ConnectionLost, RequestTimeout
from worker.intents import (
    ClientRequest,
    amqp_priority,
    build_envelope,
    check_traceparent,
    new_traceparent,
)

log = logging.getLogger("intentus.client")

DEFAULT_TIMEOUT_S = REPLY_TIMEOUT_S
DEFAULT_CONNECT_TIMEOUT_S = 10.0

Payload = Mapping[str, Any] | None


#: AMQP short strings (message_id, correlation_id) hold at most this many bytes; a requestId
#: may be longer (up to 1024 characters): it always travels in the envelope.
SHORT_STRING_BYTES = 255


def fits_property(value: str) -> bool:
    return len(value.encode()) <= SHORT_STRING_BYTES


def correlation_id_for(request_id: str) -> str:
    """A request's default correlation id: its requestId when that fits in the AMQP
    property (so a reply read elsewhere, `send --no-wait`'s, is matched by the requestId the
    caller knows), else a generated one."""
    return request_id if fits_property(request_id) else uuid.uuid4().hex


def _checked_property(name: str, value: str | None) -> str | None:
    if value is not None and not fits_property(value):
        raise ValueError(
            f"{name}: at most {SHORT_STRING_BYTES} bytes (an AMQP short string), "
            f"got {len(value.encode())}"
        )
    return value


class IntentOptions(TypedDict, total=False):
    """`send_intent`'s keywords but `wait` (see IntentusClient.send_intent)."""

    version: str
    strategy: str | None
    target_agent: str | None
    fallback_agents: Sequence[str] | None
    priority: str | None
    tags: Sequence[str] | None
    source: str | None
    request_id: str | None
    correlation_id: str | None
    trace_id: str | None
    traceparent: str | None
    timeout: float


class AwaitReply(IntentOptions, total=False):
    """Wait for the reply (the default): `send_intent` returns the AgentResponse."""

    wait: Literal[True]


class ConfirmOnly(IntentOptions, total=False):
    """`wait=False`: `send_intent` returns the requestId once the broker confirmed it."""

    wait: Required[Literal[False]]


class SendOptions(IntentOptions, total=False):
    wait: bool


class RawOptions(TypedDict, total=False):
    """`send_raw`'s keywords."""

    timeout: float
    wait: bool
    correlation_id: str | None
    message_id: str | None
    headers: Mapping[str, Any] | None
    priority: int | None


def _check_keywords(method: str, given: Mapping[str, object], known: frozenset[str]) -> None:
    for name in given:
        if name not in known:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")


def intent_request(
    queue: str,
    intent_name: str,
    payload: Mapping[str, Any] | None,
    *,
    source: str,
    options: SendOptions,
) -> ClientRequest:
    """The request of one `send_intent`; ValueError for a bad priority or traceparent."""
    _check_keywords("send_intent", options, SendOptions.__optional_keys__)
    envelope_fields: dict[str, Any] = dict(options)
    wait = envelope_fields.pop("wait", True)
    envelope_fields.pop("timeout", None)
    correlation_id = envelope_fields.pop("correlation_id", None)
    traceparent = envelope_fields.pop("traceparent", None)
    envelope_fields["source"] = envelope_fields.get("source") or source
    priority = amqp_priority(envelope_fields.get("priority"))
    _checked_property("correlation_id", correlation_id)
    envelope = build_envelope(intent_name, payload, **envelope_fields)
    request_id: str = envelope["metadata"]["requestId"]
    return ClientRequest(
        queue=queue,
        body=dumps(envelope),
        correlation_id=correlation_id or correlation_id_for(request_id),
        message_id=request_id if fits_property(request_id) else None,
        reply=wait,
        headers={
            "traceparent": check_traceparent(traceparent) if traceparent else new_traceparent()
        },
        priority=priority,
        request_id=request_id,
        correlation_chosen=bool(correlation_id),
    )


def raw_request(queue: str, body: bytes, options: RawOptions) -> ClientRequest:
    """The request of one `send_raw`: a fresh `traceparent` unless its headers have one."""
    _check_keywords("send_raw", options, RawOptions.__optional_keys__)
    chosen = _checked_property("correlation_id", options.get("correlation_id"))
    correlation_id = chosen or uuid.uuid4().hex
    message_id = _checked_property("message_id", options.get("message_id")) or correlation_id
    return ClientRequest(
        queue=queue,
        body=body,
        correlation_id=correlation_id,
        message_id=message_id,
        reply=options.get("wait", True),
        headers={"traceparent": new_traceparent(), **(options.get("headers") or {})},
        priority=options.get("priority"),
        request_id=message_id,
        correlation_chosen=bool(chosen),
    )


def answer(request: ClientRequest, body: bytes | None) -> AgentResponse | str:
    """What `send_intent` returns: the reply, or without one the requestId."""
    return request.request_id if body is None else AgentResponse.from_json(body)


def timeout_error(request: ClientRequest, timeout: float, *, confirmed: bool) -> RequestTimeout:
    request_id = request.request_id
    if request.reply:
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
    """The requests in flight of one client, by correlation id."""

    def __init__(self) -> None:
        self._calls: dict[str, Call] = {}
        self._lock = threading.Lock()

    def add(self, correlation_id: str, call: Call) -> None:
        if not self.try_add(correlation_id, call):
            raise ClientError(f"correlation id {correlation_id!r} is already in flight")

    def try_add(self, correlation_id: str, call: Call) -> bool:
        with self._lock:
            if correlation_id in self._calls:
                return False
            self._calls[correlation_id] = call
            return True

    def remove(self, correlation_id: str, call: Call) -> None:
        with self._lock:
            if self._calls.get(correlation_id) is call:
                del self._calls[correlation_id]

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


class Link(Protocol):
    @property
    def alive(self) -> bool: ...


class ClientBase:
    """Where both clients send, and their requests in flight."""

    _conn: Link | None = None

    def __init__(
        self,
        url: str = DEFAULT_AMQP_URL,
        *,
        queue: str = DEFAULT_QUEUE,
        source: str = "client",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.queue = queue
        self.source = source
        self.connect_timeout = connect_timeout
        self._calls = Calls()
        self._closed = False
        self._open()

    def _open(self) -> None:
        """Connect at once, or get ready to on first use."""

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.alive

    def _on_lost(self, conn: object, error: ClientError) -> None:
        if not isinstance(error, ClientClosed):
            log.info("%s", error)  # every waiter gets it raised; no need to shout twice
        self._calls.fail(error, conn)

    def _register(self, request: ClientRequest, call: Call) -> ClientRequest:
        """Put `call` in flight under the request's correlation id. The same requestId sent
        again while its first send still waits gets a generated correlation id instead of
        its default (the requestId), so each caller gets its own reply."""
        if self._calls.try_add(request.correlation_id, call):
            return request
        if request.correlation_chosen:
            raise ClientError(f"correlation id {request.correlation_id!r} is already in flight")
        request = replace(request, correlation_id=uuid.uuid4().hex, correlation_chosen=True)
        self._calls.add(request.correlation_id, call)
        return request

    def _connect_budget(self, deadline: float) -> float:
        """The time left to connect in, within the request's deadline."""
        if self._closed:
            raise ClientClosed("the client was closed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectionLost("no time left to reconnect to the broker")
        return min(remaining, self.connect_timeout)
