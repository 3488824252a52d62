"""IntentusClient against the real broker and worker: many in flight, reconnects, errors."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from runtime.canonical import trace_id_for
from tests.integration.conftest import Agents
from tests.integration.wire import Wire, close_connections, connection_pids, wait_for
from tests.support.broker import AMQP_URL, delete_topology, get_all, unique
from tests.support.workerproc import WorkerProcess, free_port
from worker.clients.blocking import PRIORITIES, IntentusClient
from worker.errors import (
    ClientClosed,
    ClientError,
    ConnectionLost,
    PublishFailed,
    RequestTimeout,
)

pytestmark = pytest.mark.integration

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess], agents: Agents) -> WorkerProcess:
    return start_worker(env=agents.env)


@pytest.fixture
def plain_queue(broker: None) -> Iterator[str]:
    """A queue no worker reads, to look at requests as the broker holds them."""
    name = unique("plain")
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    conn.channel().queue_declare(name, durable=True, arguments={"x-max-priority": 9})
    conn.close()
    yield name
    delete_topology(name)


def connection_name(client: IntentusClient) -> str:
    return f"intentus-client {client.source}"


class TestRequests:
    def test_many_threads_share_one_client(self, worker: WorkerProcess, agents: Agents) -> None:
        """Ten threads send at once over one client; each gets its own answer."""
        results: dict[int, Any] = {}
        with IntentusClient(AMQP_URL, queue=worker.queue) as client:

            def send(i: int) -> None:
                results[i] = client.send_intent(
                    "ProcessIntent",
                    {"document_id": f"d-{i}"},
                    request_id=f"req-thr-{i}",
                    timeout=15,
                )

            threads = [threading.Thread(target=send, args=(i,)) for i in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        assert sorted(results) == list(range(10))
        for i, response in results.items():
            assert response.ok
            assert response.payload == {"by": "alpha", "doc": f"d-{i}"}
            assert response.metadata.request_id == f"req-thr-{i}"
        assert len(agents.calls()) == 10

    def test_publishes_are_pipelined(self, worker: WorkerProcess) -> None:
        """Publishes from many threads are in flight together, not one confirm at a time."""
        with IntentusClient(AMQP_URL, queue=worker.queue) as client:
            link = client._conn.link  # type: ignore[union-attr]
            ids: list[str] = []
            lock = threading.Lock()

            def send(i: int) -> None:
                for j in range(10):
                    rid = client.send_intent(
                        "ProcessIntent", {"document_id": f"p-{i}-{j}"}, wait=False, timeout=15
                    )
                    with lock:
                        ids.append(rid)

            threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert len(set(ids)) == 160
            assert link.max_unconfirmed > 1

    def test_send_raw_returns_the_reply_bytes(self, worker: WorkerProcess) -> None:
        """send_raw gives back the body as published, including error replies to bad input."""
        with IntentusClient(AMQP_URL, queue=worker.queue) as client:
            body = client.send_raw(b"{not json", timeout=15)
        assert body is not None
        assert b'"PROTOCOL_ERROR"' in body

    def test_no_wait_returns_the_request_id(self, worker: WorkerProcess) -> None:
        """wait=False returns the requestId (given or generated) once the broker confirmed it."""
        with IntentusClient(AMQP_URL, queue=worker.queue) as client:
            given = client.send_intent("ProcessIntent", request_id="req-nowait-1", wait=False)
            generated = client.send_intent("ProcessIntent", wait=False)
        assert given == "req-nowait-1"
        assert generated.startswith("req-") and generated != given
        # without a reply queue of its own, the worker answers on its default reply queue
        wire = Wire()
        try:
            got = {wire.get(worker.reply_queue).json["metadata"]["request_id"] for _ in range(2)}
        finally:
            wire.close()
        assert got == {given, generated}

    def test_stray_and_repeated_replies_are_ignored(self, worker: WorkerProcess) -> None:
        """Replies with unknown or already answered correlation ids change nothing."""
        with IntentusClient(AMQP_URL, queue=worker.queue) as client:
            first = client.send_intent(
                "ProcessIntent", {"document_id": "one"}, correlation_id="c-1"
            )
            reply_queue = client._conn.link.reply_queue  # type: ignore[union-attr]
            wire = Wire()
            try:
                for cid in ("c-1", "c-unknown", None):
                    wire.publish(reply_queue, b'{"stray": true}', correlation_id=cid, reply_to=None)
            finally:
                wire.close()
            second = client.send_intent(
                "ProcessIntent", {"document_id": "two"}, correlation_id="c-2"
            )
        assert first.payload == {"by": "alpha", "doc": "one"}
        assert second.payload == {"by": "alpha", "doc": "two"}

    def test_a_correlation_id_in_flight_is_refused(self, worker: WorkerProcess) -> None:
        """A second request with the correlation id of one in flight is a ClientError."""
        with IntentusClient(AMQP_URL, queue=worker.queue) as client:
            slow = threading.Thread(
                target=client.send_intent,
                args=("SleepIntent", {"seconds": 1.0}),
                kwargs={"correlation_id": "c-busy", "timeout": 15},
            )
            slow.start()
            time.sleep(0.3)
            with pytest.raises(ClientError, match="already in flight"):
                client.send_intent("ProcessIntent", correlation_id="c-busy", timeout=5)
            slow.join(15)


class TestTimeouts:
    def test_timeout_names_the_request_id(self, worker: WorkerProcess) -> None:
        """No reply in time: RequestTimeout naming the requestId to re-send; late replies are dropped."""
        with IntentusClient(AMQP_URL, queue=worker.queue) as client:
            with pytest.raises(RequestTimeout) as caught:
                client.send_intent(
                    "SleepIntent", {"seconds": 1.5}, request_id="req-late-1", timeout=0.3
                )
            message = str(caught.value)
            assert "no reply to requestId 'req-late-1' within 0.3 s" in message
            assert "request_id='req-late-1'" in message
            assert isinstance(caught.value, TimeoutError)
            response = client.send_intent("ProcessIntent", {"document_id": "after"}, timeout=15)
            # re-sending the same requestId gets the recorded answer
            again = client.send_intent(
                "SleepIntent", {"seconds": 1.5}, request_id="req-late-1", timeout=15
            )
        assert response.payload == {"by": "alpha", "doc": "after"}
        assert again.ok and again.payload == {"slept_s": 1.5}

    def test_generated_request_id_is_named(self, worker: WorkerProcess) -> None:
        """A timeout without a given requestId names the generated one."""
        with (
            IntentusClient(AMQP_URL, queue=worker.queue) as client,
            pytest.raises(RequestTimeout, match=r"requestId 'req-[0-9a-f]{32}'"),
        ):
            client.send_intent("SleepIntent", {"seconds": 1.0}, timeout=0.2)


class TestConnectionLoss:
    def test_waiters_wake_at_once(self, worker: WorkerProcess, agents: Agents) -> None:
        """A request waiting for its reply fails with ConnectionLost as soon as the connection dies."""
        client = IntentusClient(AMQP_URL, queue=worker.queue, source=unique("cl"))
        outcome: list[BaseException] = []

        def wait_long() -> None:
            try:
                client.send_intent("SleepIntent", {"seconds": 8}, timeout=60)
            except BaseException as exc:
                outcome.append(exc)

        try:
            pids = connection_pids(connection_name(client))
            assert len(pids) == 1
            t = threading.Thread(target=wait_long)
            t.start()
            assert wait_for(lambda: any(c.startswith("sleeper") for c in agents.calls()), 15)
            close_connections(pids)
            started = time.monotonic()
            t.join(30)
            woke_after = time.monotonic() - started
        finally:
            client.close()
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectionLost), outcome
        assert woke_after < 2.0
        assert isinstance(outcome[0].__cause__, pika.exceptions.AMQPError)

    def test_next_call_reconnects(self, worker: WorkerProcess) -> None:
        """After the broker closed the connection, the next call connects again and succeeds."""
        with IntentusClient(AMQP_URL, queue=worker.queue, source=unique("cl")) as client:
            assert client.send_intent("ProcessIntent", {"document_id": "before"}).ok
            close_connections(connection_pids(connection_name(client)))
            assert wait_for(lambda: not client.connected, 10)
            response = client.send_intent("ProcessIntent", {"document_id": "after"}, timeout=15)
            assert client.connected
        assert response.payload == {"by": "alpha", "doc": "after"}

    def test_unreachable_broker(self, broker: None) -> None:
        """A closed port: ConnectionLost (from pika's error), no pika exception."""
        url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
        with pytest.raises(ConnectionLost, match=r"127\.0\.0\.1") as caught:
            IntentusClient(url)
        assert isinstance(caught.value.__cause__, pika.exceptions.AMQPError | OSError)

    def test_unroutable_request(self, broker: None) -> None:
        """A request queue that does not exist: PublishFailed, and the client keeps working."""
        with IntentusClient(AMQP_URL, queue=unique("missing")) as client:
            with pytest.raises(PublishFailed, match="does not exist"):
                client.send_intent("ProcessIntent", timeout=5)
            with pytest.raises(PublishFailed, match="does not exist"):
                client.send_intent("ProcessIntent", wait=False, timeout=5)

    def test_closed_client(self, worker: WorkerProcess) -> None:
        """A closed client raises ClientClosed instead of reconnecting."""
        client = IntentusClient(AMQP_URL, queue=worker.queue)
        client.close()
        with pytest.raises(ClientClosed):
            client.send_intent("ProcessIntent", timeout=5)


class TestWireProperties:
    def test_keywords_reach_the_envelope(self, plain_queue: str) -> None:
        """Every send_intent keyword lands in its place in the published envelope."""
        with IntentusClient(AMQP_URL, queue=plain_queue) as client:
            rid = client.send_intent(
                "ProcessIntent",
                {"document_id": "k"},
                version="2.0",
                strategy="fallback",
                target_agent="alpha",
                fallback_agents=["beta"],
                priority="high",
                tags=["t1", "t2"],
                source="kw-test",
                request_id="req-kw-1",
                trace_id="f" * 32,
                wait=False,
            )
        assert rid == "req-kw-1"
        [(_method, props, body)] = get_all(plain_queue)
        env = json.loads(body)
        assert env["intent"] == {"name": "ProcessIntent", "version": "2.0"}
        assert env["payload"] == {"document_id": "k"}
        assert env["routing"] == {
            "strategy": "FALLBACK",
            "targetAgent": "alpha",
            "fallbackAgents": ["beta"],
        }
        assert env["context"] == {
            "sourceAgent": "kw-test",
            "priority": "HIGH",
            "tags": ["t1", "t2"],
        }
        assert env["metadata"] == {
            "requestId": "req-kw-1",
            "source": "kw-test",
            "traceId": "f" * 32,
        }
        assert props.message_id == "req-kw-1"
        assert props.delivery_mode == 2

    def test_priority_property(self, plain_queue: str) -> None:
        """context.priority becomes the AMQP priority (NORMAL when not given)."""
        with IntentusClient(AMQP_URL, queue=plain_queue) as client:
            for priority in (None, "LOW", "NORMAL", "HIGH", "CRITICAL"):
                client.send_intent("ProcessIntent", priority=priority, wait=False)
        got = sorted(props.priority for _m, props, _b in get_all(plain_queue))
        assert got == sorted([4, 0, 4, 7, 9])
        assert PRIORITIES == {"LOW": 0, "NORMAL": 4, "HIGH": 7, "CRITICAL": 9}

    def test_traceparent_header(self, plain_queue: str) -> None:
        """Each request carries a fresh traceparent, or the caller's."""
        given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        with IntentusClient(AMQP_URL, queue=plain_queue) as client:
            client.send_intent("ProcessIntent", request_id="req-tp-1", wait=False)
            client.send_intent("ProcessIntent", request_id="req-tp-2", wait=False)
            client.send_intent(
                "ProcessIntent", request_id="req-tp-3", traceparent=given, wait=False
            )
            client.send_raw(b"{}", message_id="req-tp-4", wait=False)
            with pytest.raises(ValueError, match="traceparent"):
                client.send_intent("ProcessIntent", traceparent="00-nope", wait=False)
        headers = {p.message_id: (p.headers or {}) for _m, p, _b in get_all(plain_queue)}
        assert set(headers) == {"req-tp-1", "req-tp-2", "req-tp-3", "req-tp-4"}
        fresh = [headers[r]["traceparent"] for r in ("req-tp-1", "req-tp-2", "req-tp-4")]
        assert all(TRACEPARENT.match(tp) for tp in fresh)
        assert len(set(fresh)) == 3
        assert headers["req-tp-3"]["traceparent"] == given

    def test_trace_crosses_the_broker(self, worker: WorkerProcess) -> None:
        """The worker takes the request's trace id from the client's traceparent."""
        given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        with IntentusClient(AMQP_URL, queue=worker.queue) as client:
            mine = client.send_intent("ProcessIntent", traceparent=given, timeout=15)
            fresh = client.send_intent("ProcessIntent", request_id="req-tp-fresh", timeout=15)
        assert mine.metadata.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert re.fullmatch(r"[0-9a-f]{32}", fresh.metadata.trace_id or "")
        assert fresh.metadata.trace_id != trace_id_for("req-tp-fresh")
