"""Where replies go: reply_to, the default reply queue, or nowhere; and what they carry."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import Agents
from tests.integration.wire import Wire, body_of, envelope, execution_id, load_record
from tests.support.broker import queue_depth
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration


def test_no_reply_to_goes_to_the_default_reply_queue(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """Without reply_to the reply lands on the configured default reply queue."""
    worker = start_worker(env=agents.env)
    rid = "req-default-reply"
    wire.publish(
        worker.queue, body_of(envelope(request_id=rid)), reply_to=None, correlation_id="c-d"
    )
    reply = wire.get(worker.reply_queue)
    assert reply.props.correlation_id == "c-d"
    assert reply.props.type == "AgentResponse"
    assert reply.props.content_type == "application/json"
    assert reply.json["status"] == "success"
    assert reply.json["metadata"]["execution_id"] == execution_id(rid)
    assert reply.headers["x-intentus-execution-id"] == execution_id(rid)
    assert wire.nothing_on(wire.reply_queue, 0.3)
    load_record(worker.records_dir, execution_id(rid))


def test_disabled_default_reply_queue(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """INTENTUS_REPLY_QUEUE="" → no reply, the record is written, the message is acked."""
    worker = start_worker(env=agents.env, reply_queue="")
    rid = "req-no-reply"
    wire.publish(worker.queue, body_of(envelope(request_id=rid)), reply_to=None)
    record = load_record(worker.records_dir, execution_id(rid))
    assert record["finalResponse"]["status"] == "success"
    assert agents.calls() == [f"alpha {rid}"]
    assert worker.wait_until(
        lambda: (
            worker.metric("intentus_intents_total", intent="ProcessIntent", status="success") == 1
        )
    )
    # with reply_to the reply still goes there
    reply = wire.request(worker.queue, envelope(request_id="req-with-reply"))
    assert reply.json["status"] == "success"
    assert worker.stop() == 0
    assert queue_depth(worker.queue) == 0  # acked: nothing came back to the queue


def test_reply_without_correlation_id_carries_the_request_id(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """No correlation_id on the delivery → the reply's correlation_id is the requestId."""
    worker = start_worker(env=agents.env)
    wire.publish(worker.queue, body_of(envelope(request_id="req-no-cid")))
    reply = wire.reply()
    assert reply.props.correlation_id == "req-no-cid"
    assert reply.json["metadata"]["request_id"] == "req-no-cid"


def test_traceparent_is_passed_through(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """A traceparent header comes back on the reply."""
    worker = start_worker(env=agents.env)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    env = envelope(request_id="req-traced")
    wire.publish(
        worker.queue, body_of(env), correlation_id="c-t", headers={"traceparent": traceparent}
    )
    reply = wire.reply()
    assert reply.headers.get("traceparent") == traceparent
    record = load_record(worker.records_dir, execution_id("req-traced"))
    assert record["envelope"]["metadata"]["traceId"] == reply.json["metadata"]["trace_id"]


def test_many_in_flight_are_matched_by_correlation_id(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """Twenty requests at once: one reply each, matched by correlation id, one record each."""
    worker = start_worker(env=agents.env)
    for i in range(20):
        wire.publish(
            worker.queue,
            body_of(envelope(request_id=f"req-many-{i}", payload={"document_id": f"d-{i}"})),
            correlation_id=f"c-{i}",
        )
    replies = wire.replies(20)
    assert sorted(replies) == sorted(f"c-{i}" for i in range(20))
    for i in range(20):
        body = replies[f"c-{i}"].json
        assert body["payload"] == {"by": "alpha", "doc": f"d-{i}"}
        assert body["metadata"]["request_id"] == f"req-many-{i}"
    assert len(list(worker.records_dir.rglob("exec-*.json"))) == 20
    assert sorted(agents.calls()) == sorted(f"alpha req-many-{i}" for i in range(20))


def test_reply_to_a_missing_queue_is_unroutable_and_still_acked(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """A reply_to naming no queue: counted unroutable, recorded, acked, worker unharmed."""
    worker = start_worker(env=agents.env)
    rid = "req-unroutable"
    wire.publish(worker.queue, body_of(envelope(request_id=rid)), reply_to="it.no-such-queue.x")
    record = load_record(worker.records_dir, execution_id(rid))
    assert record["finalResponse"]["status"] == "success"
    assert worker.wait_until(
        lambda: worker.metric("intentus_replies_published_total", outcome="unroutable") == 1
    )
    reply = wire.request(worker.queue, envelope(request_id="req-routable"))
    assert reply.json["status"] == "success"
    assert worker.stop() == 0
    assert queue_depth(worker.queue) == 0
    assert agents.calls() == [f"alpha {rid}", "alpha req-routable"]
