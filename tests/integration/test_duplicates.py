"""The same requestId twice: answered from the record, or IDEMPOTENCY_CONFLICT; never re-run."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from tests.integration.conftest import Agents
from tests.integration.wire import (
    Wire,
    body_of,
    envelope,
    execution_id,
    load_record,
    record_files,
    record_path,
)
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess], agents: Agents) -> WorkerProcess:
    return start_worker(env=agents.env)


def test_duplicate_is_answered_from_the_record(
    wire: Wire, worker: WorkerProcess, agents: Agents
) -> None:
    """A re-sent requestId gets the stored body byte for byte; the agent ran once."""
    rid = "req-dup-1"
    eid = execution_id(rid)
    body = body_of(envelope(request_id=rid))
    wire.publish(worker.queue, body, correlation_id="first")
    first = wire.reply()
    assert first.props.correlation_id == "first"
    assert first.json["status"] == "success"
    path = record_path(worker.records_dir, eid)
    stored = path.read_bytes()
    stat_before = path.stat()

    wire.publish(worker.queue, body, correlation_id="second")
    second = wire.reply()
    assert second.props.correlation_id == "second"
    assert second.body == first.body
    assert second.headers["x-intentus-execution-id"] == eid
    assert second.headers["x-intentus-status"] == "success"
    assert second.props.type == "AgentResponse"
    assert agents.calls() == [f"alpha {rid}"]
    assert path.read_bytes() == stored
    assert path.stat().st_mtime_ns == stat_before.st_mtime_ns
    assert record_files(worker.records_dir) == [path]
    assert worker.wait_until(
        lambda: worker.metric("intentus_duplicates_total", kind="replayed") == 1
    )
    assert worker.metric("intentus_records_written_total") == 1
    assert worker.metric("intentus_agent_attempts_total", agent="alpha") == 1


def test_duplicate_reply_goes_to_the_new_reply_to(
    wire: Wire, worker: WorkerProcess, agents: Agents
) -> None:
    """The replayed answer follows the new delivery's reply_to."""
    rid = "req-dup-2"
    body = body_of(envelope(request_id=rid))
    wire.publish(worker.queue, body, correlation_id="a")
    first = wire.reply()
    other = Wire()
    try:
        wire.publish(worker.queue, body, correlation_id="b", reply_to=other.reply_queue)
        second = other.reply()
        assert second.props.correlation_id == "b"
        assert second.body == first.body
    finally:
        other.close()
    assert agents.calls() == [f"alpha {rid}"]


def test_same_request_id_with_another_payload_is_a_conflict(
    wire: Wire, worker: WorkerProcess, agents: Agents
) -> None:
    """A different fingerprint under a used requestId → IDEMPOTENCY_CONFLICT, record untouched."""
    rid = "req-conflict-1"
    eid = execution_id(rid)
    first = wire.request(worker.queue, envelope(request_id=rid, payload={"document_id": "d-1"}))
    assert first.json["status"] == "success"
    path = record_path(worker.records_dir, eid)
    stored = path.read_bytes()

    reply = wire.request(
        worker.queue,
        envelope(request_id=rid, payload={"document_id": "d-2"}),
        correlation_id="conflicting",
    )
    body = reply.json
    assert body["status"] == "error"
    assert body["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert body["error"]["retryable"] is False
    assert body["metadata"]["request_id"] == rid
    assert body["metadata"]["execution_id"] == eid
    assert reply.headers["x-intentus-status"] == "error"
    assert path.read_bytes() == stored
    assert record_files(worker.records_dir) == [path]
    assert agents.calls() == [f"alpha {rid}"]
    assert worker.metric("intentus_duplicates_total", kind="conflict") == 1

    # a different strategy is a different request too
    reply = wire.request(
        worker.queue,
        envelope(request_id=rid, payload={"document_id": "d-1"}, strategy="BROADCAST"),
        correlation_id="conflicting-2",
    )
    assert reply.json["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    # and the original request still gets its stored answer
    again = wire.request(
        worker.queue,
        envelope(request_id=rid, payload={"document_id": "d-1"}),
        correlation_id="again",
    )
    assert again.body == first.body
    assert path.read_bytes() == stored
    assert agents.calls() == [f"alpha {rid}"]


def test_request_id_from_message_id(wire: Wire, worker: WorkerProcess, agents: Agents) -> None:
    """No metadata.requestId → the AMQP message_id is the requestId."""
    env = envelope(request_id="unused")
    del env["metadata"]["requestId"]
    wire.publish(worker.queue, body_of(env), message_id="msg-id-1", correlation_id="c-1")
    reply = wire.reply()
    assert reply.json["metadata"]["request_id"] == "msg-id-1"
    assert reply.json["metadata"]["execution_id"] == execution_id("msg-id-1")
    record = load_record(worker.records_dir, execution_id("msg-id-1"))
    assert record["header"]["requestId"] == "msg-id-1"
    assert record["envelope"]["metadata"]["requestId"] == "msg-id-1"


def test_request_id_from_correlation_id(wire: Wire, worker: WorkerProcess) -> None:
    """No requestId and no message_id → the correlation_id is the requestId."""
    env = envelope(request_id="unused")
    del env["metadata"]["requestId"]
    wire.publish(worker.queue, body_of(env), correlation_id="corr-as-rid")
    reply = wire.reply()
    assert reply.json["metadata"]["request_id"] == "corr-as-rid"
    load_record(worker.records_dir, execution_id("corr-as-rid"))


def test_id_less_message_sent_twice_runs_once(
    wire: Wire, worker: WorkerProcess, agents: Agents
) -> None:
    """With no id at all, the requestId is req-+sha256(body)[:24]: a re-send is a duplicate."""
    env = envelope(request_id="unused")
    del env["metadata"]["requestId"]
    body = body_of(env)
    rid = "req-" + hashlib.sha256(body).hexdigest()[:24]
    wire.publish(worker.queue, body)
    first = wire.reply()
    wire.publish(worker.queue, body)
    second = wire.reply()
    assert first.json["metadata"]["request_id"] == rid
    assert second.body == first.body
    # no correlation_id on the delivery → the reply carries the requestId
    assert first.props.correlation_id == rid
    assert second.props.correlation_id == rid
    assert agents.calls() == [f"alpha {rid}"]
    assert len(record_files(worker.records_dir)) == 1


def test_duplicate_while_the_first_is_running_waits_for_its_record(
    wire: Wire, worker: WorkerProcess, agents: Agents
) -> None:
    """A duplicate that arrives mid-execution is answered from the record once it exists."""
    rid = "req-dup-running"
    body = body_of(envelope("SleepIntent", {"seconds": 1.5}, request_id=rid))
    wire.publish(worker.queue, body, correlation_id="run-1")
    wire.publish(worker.queue, body, correlation_id="run-2")
    replies = wire.replies(2, timeout=15)
    assert replies["run-1"].body == replies["run-2"].body
    assert replies["run-1"].json["status"] == "success"
    assert agents.calls() == [f"sleeper {rid}"]
    assert len(record_files(worker.records_dir)) == 1
    assert worker.metric("intentus_duplicates_total", kind="replayed") == 1


def test_crash_mid_agent_is_execution_in_doubt(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """A worker killed mid-agent: the redelivery is EXECUTION_IN_DOUBT, recorded, never re-run."""
    env = {**agents.env, "INTENTUS_AGENT_TIMEOUT_S": "60"}
    first = start_worker(env=env)
    rid = "req-in-doubt"
    eid = execution_id(rid)
    body = body_of(envelope("SleepIntent", {"seconds": 30}, request_id=rid))
    wire.publish(first.queue, body, correlation_id="doubt-1")
    assert first.wait_until(lambda: agents.calls() == [f"sleeper {rid}"], timeout=10)
    first.kill()

    second = start_worker(env=env)
    reply = wire.reply(timeout=20)
    assert reply.props.correlation_id == "doubt-1"
    answer = reply.json
    assert answer["status"] == "error"
    assert answer["error"]["code"] == "EXECUTION_IN_DOUBT"
    assert answer["metadata"]["execution_id"] == eid
    assert agents.calls() == [f"sleeper {rid}"]
    record = load_record(second.records_dir, eid)
    assert "DUPLICATE_DELIVERY" in [e["type"] for e in record["events"]]
    assert record["finalResponse"] == answer
    assert second.metric("intentus_duplicates_total", kind="in_doubt") == 1

    # later duplicates get the same answer, from the record
    wire.publish(second.queue, body, correlation_id="doubt-2")
    again = wire.reply()
    assert again.props.correlation_id == "doubt-2"
    assert again.body == reply.body
    assert agents.calls() == [f"sleeper {rid}"]


def test_waiting_duplicates_do_not_hold_routing_threads(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """Duplicates of a running request are parked: with 2 routing threads, 6 duplicates of a
    3 s request still leave a thread for new requests, answered before the slow one ends."""
    w = start_worker(env={**agents.env, "INTENTUS_CONCURRENCY": "2"})
    slow = body_of(envelope("SleepIntent", {"seconds": 3}, request_id="req-park-slow"))
    wire.publish(w.queue, slow, correlation_id="slow-0")
    assert w.wait_until(lambda: agents.calls() == ["sleeper req-park-slow"], timeout=10)
    for i in range(1, 7):
        wire.publish(w.queue, slow, correlation_id=f"slow-{i}")
    for i in range(3):
        fast = body_of(envelope("ProcessIntent", {"document_id": f"d{i}"}, request_id=f"p-{i}"))
        wire.publish(w.queue, fast, correlation_id=f"fast-{i}")
    order = []
    replies = {}
    while len(replies) < 10:
        r = wire.reply(timeout=20)
        order.append(r.props.correlation_id)
        replies[r.props.correlation_id] = r
    assert set(order[:3]) == {"fast-0", "fast-1", "fast-2"}, order
    assert len({replies[f"slow-{i}"].body for i in range(7)}) == 1
    assert agents.calls().count("sleeper req-park-slow") == 1
    assert w.metric("intentus_duplicates_total", kind="replayed") == 6
