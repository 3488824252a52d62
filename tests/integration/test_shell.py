"""The AMQP shell over the real broker: over-long correlation ids, broker-cancelled consumers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from tests.integration.conftest import Agents
from tests.integration.wire import Wire, body_of, envelope, wait_for
from tests.support.broker import connection, queue_depth
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration


def test_over_long_request_id_is_answered_and_later_confirms_stay_in_step(
    wire: Wire, start_worker: Callable[..., WorkerProcess]
) -> None:
    """No correlation_id and a 1000-character requestId: a digest-keyed reply, every message acked."""
    worker = start_worker()
    long_id = "r" * 1000
    wire.publish(worker.queue, body_of(envelope(request_id=long_id)))
    for i in range(3):
        wire.publish(
            worker.queue, body_of(envelope(request_id=f"after-{i}")), correlation_id=f"c{i}"
        )
    replies = wire.replies(4, timeout=15)
    digest = "sha256:" + hashlib.sha256(long_id.encode()).hexdigest()
    assert set(replies) == {digest, "c0", "c1", "c2"}
    assert replies[digest].headers["x-intentus-correlation-id"] == long_id
    assert replies[digest].json["status"] == "success"
    assert "x-intentus-correlation-id" not in replies["c0"].headers
    assert worker.stop() == 0
    assert queue_depth(worker.queue) == 0  # all acked: nothing came back when the worker left
    assert queue_depth(f"{worker.queue}.dlq") == 0


def test_deleted_queue_is_declared_again_and_consumed(
    wire: Wire, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The queue deleted under a running worker: the cancel is counted, and work resumes."""
    worker = start_worker()
    conn = connection()
    try:
        conn.channel().queue_delete(worker.queue)
    finally:
        conn.close()
    assert wait_for(lambda: worker.metric("intentus_consumer_cancels_total") == 1, timeout=10)
    assert wait_for(worker.ready, timeout=10), worker.logs()
    reply = wire.request(worker.queue, envelope(request_id="after-delete"), timeout=15)
    assert reply.json["status"] == "success"
    assert worker.metric("intentus_broker_connected") == 1


def test_queue_deleted_under_a_running_agent(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """The queue deleted while an agent runs: that request is still answered, the channel
    survives its ack, and the re-declared queue is served."""
    worker = start_worker(env=agents.env)
    wire.publish(
        worker.queue,
        body_of(envelope("SleepIntent", {"seconds": 1.5}, request_id="slow-1")),
        correlation_id="slow-1",
    )
    assert wait_for(lambda: agents.calls() == ["sleeper slow-1"], timeout=10)
    conn = connection()
    try:
        conn.channel().queue_delete(worker.queue)
    finally:
        conn.close()
    assert wire.reply(timeout=10).props.correlation_id == "slow-1"
    assert wait_for(lambda: worker.metric("intentus_consumer_cancels_total") == 1, timeout=10)
    reply = wire.request(worker.queue, envelope(request_id="after-slow"), timeout=15)
    assert reply.json["status"] == "success"
    assert worker.metric("intentus_broker_reconnects_total") == 0
    assert wait_for(worker.ready, timeout=5)
