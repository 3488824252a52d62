"""AsyncIntentusClient: IntentusClient for asyncio, on pika's asyncio adapter.

    async with AsyncIntentusClient(url, queue="intentus.requests") as client:
        response = await client.send_intent("ProcessIntent", {"document_id": "doc-123"})

Same semantics as `IntentusClient` (worker.clients.blocking): many requests in flight on one
connection and one reply consumer, matched by correlation id; pipelined publishes; one
timeout budget for (re)connecting, confirm and reply; requests in flight fail at once with
ConnectionLost when the connection dies, and the next call connects again; the same
exceptions. Use one client per event loop (it lives in the loop it was opened in).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Unpack, overload

from runtime.response import AgentResponse
from worker.amqp import AsyncClientConnection
from worker.clients import calls
from worker.clients.calls import ClientBase
from worker.errors import ClientClosed, ClientError, fresh
from worker.intents import ClientRequest

__all__ = ["AsyncIntentusClient"]

log = logging.getLogger("intentus.client")


class _Call:
    __slots__ = ("confirmed", "future", "link", "wait")

    def __init__(self, *, wait: bool, link: object, future: asyncio.Future[bytes | None]) -> None:
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


class AsyncIntentusClient(ClientBase):
    """asyncio client; open it with `async with` or `await client.connect()`."""

    _conn: AsyncClientConnection | None
    _connect_lock: asyncio.Lock | None = None  # made in the client's event loop, when needed

    async def __aenter__(self) -> AsyncIntentusClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect now (otherwise the first request does); raises ConnectionLost."""
        await self._connection(time.monotonic() + self.connect_timeout)

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
                conn = self._conn = await AsyncClientConnection.open(
                    self.url,
                    on_reply=self._calls.on_reply,
                    on_lost=self._on_lost,
                    name=f"intentus-client {self.source}",
                    timeout=self._connect_budget(deadline),
                )
            return conn

    @overload
    async def send_intent(
        self, intent_name: str, payload: calls.Payload = ..., **options: Unpack[calls.AwaitReply]
    ) -> AgentResponse: ...

    @overload
    async def send_intent(
        self, intent_name: str, payload: calls.Payload = ..., **options: Unpack[calls.ConfirmOnly]
    ) -> str: ...

    async def send_intent(
        self, intent_name: str, payload: calls.Payload = None, **options: Unpack[calls.SendOptions]
    ) -> AgentResponse | str:
        """As IntentusClient.send_intent: the AgentResponse, or the requestId with
        `wait=False` once the broker confirmed the request."""
        request = calls.intent_request(
            self.queue, intent_name, payload, source=self.source, options=options
        )
        body = await self._send(request, options.get("timeout", calls.DEFAULT_TIMEOUT_S))
        return calls.answer(request, body)

    async def send_raw(self, body: bytes, **options: Unpack[calls.RawOptions]) -> bytes | None:
        """Publish raw bytes as a request; with `wait`, return the reply body."""
        request = calls.raw_request(self.queue, body, options)
        return await self._send(request, options.get("timeout", calls.DEFAULT_TIMEOUT_S))

    async def _send(self, request: ClientRequest, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        conn = await self._connection(deadline)  # bounded by the deadline itself
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        call = _Call(wait=request.reply, link=conn, future=future)
        request = self._register(request, call)
        try:
            conn.publish(request, lambda error: calls.Calls.on_confirm(call, error))
            remaining = max(0.0, deadline - time.monotonic())
            try:
                return await asyncio.wait_for(call.future, remaining)
            except TimeoutError:
                raise calls.timeout_error(request, timeout, confirmed=call.confirmed) from None
        finally:
            self._calls.remove(request.correlation_id, call)

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        self._calls.fail(ClientClosed("the client was closed"))
