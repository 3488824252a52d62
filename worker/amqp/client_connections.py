"""The loops a `ClientLink` runs on: a SelectConnection on its own I/O thread for the blocking
client, pika's asyncio adapter in the running event loop for the asyncio one."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from worker.amqp.client_link import ClientLink
from worker.amqp.connect import describe
from worker.config import mask_url
from worker.errors import ClientError, ConnectionLost, fresh
from worker.intents import ClientRequest

log = logging.getLogger("intentus.amqp")


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
            self.link.fail(ConnectionLost("the client I/O loop failed"))
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
            raise ConnectionLost(f"the client connection is gone: {describe(exc)}") from exc

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
        if self.link.opened:
            try:
                await asyncio.wait_for(asyncio.shield(self._finished), 5)
            except TimeoutError:
                log.warning("client connection did not close within 5 s")
