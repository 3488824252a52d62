"""IntentusClient: send intents and wait for their replies, matched by correlation id.

Thread-safe: many requests may be in flight at once over one connection and one reply
consumer. Replies with an unknown or already-answered correlation id are ignored.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from runtime.canonical import dumps
from runtime.response import AgentResponse
from worker.amqp import ClientConnection
from worker.config import DEFAULT_AMQP_URL
from worker.errors import ClientError, RequestTimeout

log = logging.getLogger("intentus.client")


class _Waiter:
    __slots__ = ("body", "event")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.body: bytes | None = None


class IntentusClient:
    def __init__(
        self,
        url: str = DEFAULT_AMQP_URL,
        *,
        queue: str = "intentus.requests",
        source: str = "client",
    ) -> None:
        self.url = url
        self.queue = queue
        self.source = source
        self._waiters: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self._conn = ClientConnection(url, self._on_reply)

    def __enter__(self) -> IntentusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_reply(self, correlation_id: str | None, body: bytes, headers: dict[str, Any]) -> None:
        with self._lock:
            waiter = self._waiters.pop(correlation_id or "", None)
        if waiter is None:
            log.debug("ignoring reply with unknown or answered correlation id %r", correlation_id)
            return
        waiter.body = body
        waiter.event.set()

    @staticmethod
    def envelope(
        intent_name: str,
        payload: dict[str, Any] | None = None,
        *,
        intent_version: str = "1.0",
        strategy: str | None = None,
        target: str | None = None,
        fallbacks: list[str] | None = None,
        priority: str | None = None,
        tags: list[str] | None = None,
        source: str = "client",
        request_id: str | None = None,
        trace_id: str | None = None,
    ) -> dict[str, Any]:
        """The IntentEnvelope JSON for one request."""
        routing: dict[str, Any] = {"strategy": (strategy or "DIRECT").upper()}
        if target:
            routing["targetAgent"] = target
        if fallbacks:
            routing["fallbackAgents"] = list(fallbacks)
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
            "intent": {"name": intent_name, "version": intent_version},
            "payload": dict(payload or {}),
            "context": context,
            "metadata": metadata,
            "routing": routing,
        }

    def send_intent(
        self,
        intent_name: str,
        payload: dict[str, Any] | None = None,
        *,
        timeout: float = 30.0,
        wait: bool = True,
        correlation_id: str | None = None,
        **options: Any,
    ) -> AgentResponse | None:
        """Publish one intent; with `wait`, return its AgentResponse or raise RequestTimeout."""
        envelope = self.envelope(
            intent_name, payload, source=options.pop("source", self.source), **options
        )
        body = self.send_raw(
            dumps(envelope),
            timeout=timeout,
            wait=wait,
            correlation_id=correlation_id,
            message_id=envelope["metadata"]["requestId"],
        )
        return AgentResponse.from_json(body) if body is not None else None

    def send_raw(
        self,
        body: bytes,
        *,
        timeout: float = 30.0,
        wait: bool = True,
        correlation_id: str | None = None,
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> bytes | None:
        """Publish raw bytes as a request; with `wait`, return the reply body."""
        deadline = time.monotonic() + timeout
        cid = correlation_id or uuid.uuid4().hex
        waiter = _Waiter()
        if wait:
            with self._lock:
                if cid in self._waiters:
                    raise ClientError(f"correlation id {cid!r} is already in flight")
                self._waiters[cid] = waiter
        try:
            self._conn.publish(
                self.queue,
                body,
                cid,
                message_id or cid,
                headers,
                wait_reply=wait,
                timeout=timeout,
            )
        except BaseException:
            with self._lock:
                self._waiters.pop(cid, None)
            raise
        if not wait:
            return None
        # One budget for the confirm and the reply together.
        if not waiter.event.wait(max(0.0, deadline - time.monotonic())):
            with self._lock:
                self._waiters.pop(cid, None)
            raise RequestTimeout(
                f"no reply for correlation id {cid} within {timeout:g} s "
                "(the request may still be executed; re-send with the same requestId "
                "to get its recorded answer)"
            )
        assert waiter.body is not None
        return waiter.body

    def close(self) -> None:
        self._conn.close()
