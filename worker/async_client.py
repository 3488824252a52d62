"""AsyncIntentusClient: IntentusClient for asyncio, on pika's asyncio adapter.

    async with AsyncIntentusClient(url, queue="intentus.requests") as client:
        response = await client.send_intent("ProcessIntent", {"document_id": "doc-123"})

Same semantics as worker.client.IntentusClient: many requests in flight on one connection
and one reply consumer, matched by correlation id; pipelined publishes; one timeout budget
for (re)connecting, confirm and reply; requests in flight fail at once with ConnectionLost
when the connection dies, and the next call connects again; the same exceptions. Use one
client per event loop (it lives in the loop it was opened in).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

from runtime.response import AgentResponse
from worker.amqp import AsyncClientConnection, ClientRequest, fresh
from worker.client import Calls, new_traceparent, prepare, timeout_error
from worker.config import DEFAULT_AMQP_URL
from worker.errors import ClientClosed, ClientError, ConnectionLost

__all__ = ["AsyncIntentusClient"]

log = logging.getLogger("intentus.client")


class _Call:
    __slots__ = ("confirmed", "future", "link", "wait")

    def __init__(self, wait: bool, link: object, future: asyncio.Future[bytes | None]) -> None:
        self.wait = wait
        self.link = link
        self.confirmed = False
        self.future = future

    def settle(self, body: bytes | None, error: ClientError | None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(fresh(error))
        else:
            self.future.set_result(body)


class AsyncIntentusClient:
    """asyncio client; open it with `async with` or `await client.connect()`."""

    def __init__(
        self,
        url: str = DEFAULT_AMQP_URL,
        *,
        queue: str = "intentus.requests",
        source: str = "client",
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.queue = queue
        self.source = source
        self.connect_timeout = connect_timeout
        self._calls = Calls()
        self._conn: AsyncClientConnection | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._closed = False

    async def __aenter__(self) -> AsyncIntentusClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect now (otherwise the first request does); raises ConnectionLost."""
        await self._connection(time.monotonic() + self.connect_timeout)

    def _on_lost(self, conn: AsyncClientConnection, error: ClientError) -> None:
        if not isinstance(error, ClientClosed):
            log.info("%s", error)  # every waiter gets it raised; no need to shout twice
        self._calls.fail(error, conn)

    async def _connection(self, deadline: float) -> AsyncClientConnection:
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._closed:
                raise ClientClosed("the client was closed")
            conn = self._conn
            if conn is None or not conn.alive:
                if conn is not None:
                    self._conn = None
                    await conn.close()
                    log.info("client reconnecting to the broker")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionLost("no time left to reconnect to the broker")
                conn = self._conn = await AsyncClientConnection.open(
                    self.url,
                    on_reply=self._calls.on_reply,
                    on_lost=self._on_lost,
                    name=f"intentus-client {self.source}",
                    timeout=min(remaining, self.connect_timeout),
                )
            return conn

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.alive

    @overload
    async def send_intent(
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
    async def send_intent(
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

    async def send_intent(
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
        """As IntentusClient.send_intent: the AgentResponse, or the requestId with
        `wait=False` once the broker confirmed the request."""
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
        body = await self._send(
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

    async def send_raw(
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
        """Publish raw bytes as a request; with `wait`, return the reply body."""
        cid = correlation_id or uuid.uuid4().hex
        return await self._send(
            body,
            request_id=message_id or cid,
            correlation_id=cid,
            headers={"traceparent": new_traceparent(), **(headers or {})},
            priority=priority,
            timeout=timeout,
            wait=wait,
        )

    async def _send(
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
        conn = await self._connection(deadline)  # bounded by the deadline itself
        call = _Call(wait, conn, asyncio.get_running_loop().create_future())
        self._calls.add(cid, call)
        try:
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
            remaining = max(0.0, deadline - time.monotonic())
            try:
                return await asyncio.wait_for(call.future, remaining)
            except TimeoutError:
                raise timeout_error(
                    request_id, timeout, confirmed=call.confirmed, wait=wait
                ) from None
        finally:
            self._calls.remove(cid, call)

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        self._calls.fail(ClientClosed("the client was closed"))
