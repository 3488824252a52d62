"""AsyncIntentusClient against the real broker and worker."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import pika.exceptions
import pytest

from tests.integration.conftest import Agents
from tests.integration.wire import Wire, close_connections, connection_pids, wait_for
from tests.support.broker import AMQP_URL, get_all, unique
from tests.support.workerproc import WorkerProcess, free_port
from worker.clients.aio import AsyncIntentusClient
from worker.errors import ClientClosed, ConnectionLost, PublishFailed, RequestTimeout

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess], agents: Agents) -> WorkerProcess:
    return start_worker(env=agents.env)


def connection_name(client: AsyncIntentusClient) -> str:
    return f"intentus-client {client.source}"


class TestRequests:
    async def test_many_concurrent_requests(self, worker: WorkerProcess, agents: Agents) -> None:
        """Two hundred requests in flight at once on one client; each gets its own answer."""
        async with AsyncIntentusClient(AMQP_URL, queue=worker.queue) as client:
            responses = await asyncio.gather(
                *(
                    client.send_intent(
                        "ProcessIntent", {"document_id": f"a-{i}"}, request_id=f"req-a-{i}"
                    )
                    for i in range(200)
                )
            )
            assert client._conn is not None and client._conn.link.max_unconfirmed > 1
        for i, response in enumerate(responses):
            assert response.ok
            assert response.payload == {"by": "alpha", "doc": f"a-{i}"}
            assert response.metadata.request_id == f"req-a-{i}"
        assert len(agents.calls()) == 200

    async def test_correlation_matching(self, worker: WorkerProcess) -> None:
        """Stray replies (unknown or answered correlation ids) are ignored."""
        async with AsyncIntentusClient(AMQP_URL, queue=worker.queue) as client:
            first = await client.send_intent(
                "ProcessIntent", {"document_id": "one"}, correlation_id="c-1"
            )
            assert client._conn is not None
            wire = Wire()
            try:
                for cid in ("c-1", "c-unknown"):
                    wire.publish(
                        client._conn.link.reply_queue, b"{}", correlation_id=cid, reply_to=None
                    )
            finally:
                wire.close()
            second, third = await asyncio.gather(
                client.send_intent("ProcessIntent", {"document_id": "two"}, correlation_id="c-2"),
                client.send_intent("SleepIntent", {"seconds": 0.2}, correlation_id="c-3"),
            )
        assert first.payload == {"by": "alpha", "doc": "one"}
        assert second.payload == {"by": "alpha", "doc": "two"}
        assert third.payload == {"slept_s": 0.2}

    async def test_no_wait_and_raw(self, worker: WorkerProcess) -> None:
        """wait=False returns the requestId; send_raw returns the reply bytes."""
        async with AsyncIntentusClient(AMQP_URL, queue=worker.queue) as client:
            rid = await client.send_intent("ProcessIntent", request_id="req-a-nowait", wait=False)
            raw = await client.send_raw(b"{not json", timeout=15)
        assert rid == "req-a-nowait"
        assert raw is not None and b'"PROTOCOL_ERROR"' in raw

    async def test_priority_and_traceparent(self, broker: None) -> None:
        """The async client publishes the AMQP priority and a traceparent header too."""
        queue = unique("plain")
        wire = Wire()
        try:
            wire.ch.queue_declare(queue, arguments={"x-max-priority": 9})
            async with AsyncIntentusClient(AMQP_URL, queue=queue) as client:
                await client.send_intent("ProcessIntent", priority="CRITICAL", wait=False)
                await client.send_intent(
                    "ProcessIntent",
                    traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    wait=False,
                )
            (_m1, first, _b1), (_m2, second, _b2) = get_all(queue)
            assert first.priority == 9
            assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", first.headers["traceparent"])
            assert second.priority == 4
            assert second.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        finally:
            wire.ch.queue_delete(queue)
            wire.close()


class TestFailures:
    async def test_timeout(self, worker: WorkerProcess) -> None:
        """No reply in time: RequestTimeout naming the requestId; the client keeps working."""
        async with AsyncIntentusClient(AMQP_URL, queue=worker.queue) as client:
            with pytest.raises(RequestTimeout, match="requestId 'req-a-late'"):
                await client.send_intent(
                    "SleepIntent", {"seconds": 1.5}, request_id="req-a-late", timeout=0.3
                )
            after = await client.send_intent("ProcessIntent", {"document_id": "after"})
        assert after.payload == {"by": "alpha", "doc": "after"}

    async def test_waiters_wake_and_next_call_reconnects(
        self, worker: WorkerProcess, agents: Agents
    ) -> None:
        """When the broker drops the connection, waiters fail at once and the next call reconnects."""
        async with AsyncIntentusClient(
            AMQP_URL, queue=worker.queue, source=unique("acl")
        ) as client:
            pids = await asyncio.to_thread(connection_pids, connection_name(client))
            assert len(pids) == 1
            waiting = asyncio.ensure_future(
                client.send_intent("SleepIntent", {"seconds": 8}, timeout=60)
            )
            ok = await asyncio.to_thread(
                wait_for, lambda: any(c.startswith("sleeper") for c in agents.calls()), 15
            )
            assert ok
            await asyncio.to_thread(close_connections, pids)
            started = time.monotonic()
            with pytest.raises(ConnectionLost) as caught:
                await waiting
            assert time.monotonic() - started < 2.0
            assert isinstance(caught.value.__cause__, pika.exceptions.AMQPError)
            assert not client.connected
            again = await client.send_intent("ProcessIntent", {"document_id": "again"})
            assert client.connected
        assert again.payload == {"by": "alpha", "doc": "again"}

    async def test_unreachable_and_unroutable(self, broker: None) -> None:
        """A closed port is ConnectionLost; a missing queue is PublishFailed."""
        with pytest.raises(ConnectionLost, match=r"127\.0\.0\.1"):
            async with AsyncIntentusClient(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"):
                pass
        async with AsyncIntentusClient(AMQP_URL, queue=unique("missing")) as client:
            with pytest.raises(PublishFailed, match="does not exist"):
                await client.send_intent("ProcessIntent", timeout=5)

    async def test_closed_client(self, worker: WorkerProcess) -> None:
        """Requests after close raise ClientClosed."""
        client = AsyncIntentusClient(AMQP_URL, queue=worker.queue)
        await client.connect()
        await client.close()
        with pytest.raises(ClientClosed):
            await client.send_intent("ProcessIntent", timeout=5)
