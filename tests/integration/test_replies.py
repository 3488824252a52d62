"""Replies as only a broker shows them: the properties the AMQP publisher sets, and a
reply_to naming no queue. Where replies go runs on both transports in tests/behaviour."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import Agents
from tests.integration.wire import Reply, Wire, body_of, envelope, execution_id, load_record
from tests.support.broker import queue_depth
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration


def check_amqp_properties(reply: Reply) -> None:
    assert reply.props.type == "AgentResponse"
    assert reply.props.content_type == "application/json"


def test_every_reply_is_typed_json(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """Success, error, replayed and default-queue replies are AgentResponse, application/json."""
    worker = start_worker(env=agents.env)
    body = body_of(envelope(request_id="req-typed"))
    wire.publish(worker.queue, body, correlation_id="first")
    first = wire.reply()
    assert first.json["status"] == "success"
    wire.publish(worker.queue, body, correlation_id="again")
    replayed = wire.reply()
    assert replayed.body == first.body
    wire.publish(worker.queue, b"not json", correlation_id="bad", message_id="m-typed-bad")
    error = wire.reply()
    assert error.json["error"]["code"] == "PROTOCOL_ERROR"
    wire.publish(worker.queue, body_of(envelope(request_id="req-typed-2")), reply_to=None)
    default = wire.get(worker.reply_queue)
    assert default.json["status"] == "success"
    for reply in (first, replayed, error, default):
        check_amqp_properties(reply)


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
