"""The same requestId twice: answered from the record, or IDEMPOTENCY_CONFLICT; never re-run."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from tests.behaviour.drivers import Driver, Message
from tests.integration.wire import (
    body_of,
    envelope,
    execution_id,
    load_record,
    record_files,
    record_path,
)


@pytest.fixture
def driver(start: Callable[..., Driver]) -> Driver:
    return start()


def test_duplicate_is_answered_from_the_record(driver: Driver) -> None:
    """A re-sent requestId gets the stored body byte for byte; the agent ran once."""
    rid = "req-dup-1"
    eid = execution_id(rid)
    body = body_of(envelope(request_id=rid))
    driver.send(body, correlation_id="first")
    first = driver.reply()
    assert first.correlation_id == "first"
    assert first.json["status"] == "success"
    path = record_path(driver.records_dir, eid)
    stored = path.read_bytes()
    stat_before = path.stat()

    driver.send(body, correlation_id="second")
    second = driver.reply()
    assert second.correlation_id == "second"
    assert second.body == first.body
    assert second.headers["x-intentus-execution-id"] == eid
    assert second.headers["x-intentus-status"] == "success"
    assert driver.calls() == [f"alpha {rid}"]
    assert path.read_bytes() == stored
    assert path.stat().st_mtime_ns == stat_before.st_mtime_ns
    assert record_files(driver.records_dir) == [path]
    assert driver.wait_until(
        lambda: driver.metric("intentus_duplicates_total", kind="replayed") == 1
    )
    assert driver.metric("intentus_records_written_total") == 1
    assert driver.metric("intentus_agent_attempts_total", agent="alpha") == 1


def test_duplicate_reply_goes_to_the_new_reply_to(driver: Driver) -> None:
    """The replayed answer follows the new delivery's reply_to."""
    rid = "req-dup-2"
    body = body_of(envelope(request_id=rid))
    driver.send(body, correlation_id="a")
    first = driver.reply()
    other = driver.new_reply_queue()
    driver.send(body, correlation_id="b", reply_to=other)
    second = driver.get(other)
    assert second.correlation_id == "b"
    assert second.body == first.body
    assert driver.calls() == [f"alpha {rid}"]


def test_same_request_id_with_another_payload_is_a_conflict(driver: Driver) -> None:
    """A different fingerprint under a used requestId → IDEMPOTENCY_CONFLICT, record untouched."""
    rid = "req-conflict-1"
    eid = execution_id(rid)
    first = driver.request(envelope(request_id=rid, payload={"document_id": "d-1"}))
    assert first.json["status"] == "success"
    path = record_path(driver.records_dir, eid)
    stored = path.read_bytes()

    reply = driver.request(
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
    assert record_files(driver.records_dir) == [path]
    assert driver.calls() == [f"alpha {rid}"]
    assert driver.metric("intentus_duplicates_total", kind="conflict") == 1

    # a different strategy is a different request too
    reply = driver.request(
        envelope(request_id=rid, payload={"document_id": "d-1"}, strategy="BROADCAST"),
        correlation_id="conflicting-2",
    )
    assert reply.json["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    # and the original request still gets its stored answer
    again = driver.request(
        envelope(request_id=rid, payload={"document_id": "d-1"}),
        correlation_id="again",
    )
    assert again.body == first.body
    assert path.read_bytes() == stored
    assert driver.calls() == [f"alpha {rid}"]


def test_request_id_from_message_id(driver: Driver) -> None:
    """No metadata.requestId → the AMQP message_id is the requestId."""
    env = envelope(request_id="unused")
    del env["metadata"]["requestId"]
    driver.send(body_of(env), message_id="msg-id-1", correlation_id="c-1")
    reply = driver.reply()
    assert reply.json["metadata"]["request_id"] == "msg-id-1"
    assert reply.json["metadata"]["execution_id"] == execution_id("msg-id-1")
    record = load_record(driver.records_dir, execution_id("msg-id-1"))
    assert record["header"]["requestId"] == "msg-id-1"
    assert record["envelope"]["metadata"]["requestId"] == "msg-id-1"


def test_request_id_from_correlation_id(driver: Driver) -> None:
    """No requestId and no message_id → the correlation_id is the requestId."""
    env = envelope(request_id="unused")
    del env["metadata"]["requestId"]
    driver.send(body_of(env), correlation_id="corr-as-rid")
    reply = driver.reply()
    assert reply.json["metadata"]["request_id"] == "corr-as-rid"
    load_record(driver.records_dir, execution_id("corr-as-rid"))


def test_id_less_message_sent_twice_runs_once(driver: Driver) -> None:
    """With no id at all, the requestId is req-+sha256(body)[:24]: a re-send is a duplicate."""
    env = envelope(request_id="unused")
    del env["metadata"]["requestId"]
    body = body_of(env)
    rid = "req-" + hashlib.sha256(body).hexdigest()[:24]
    driver.send(body)
    first = driver.reply()
    driver.send(body)
    second = driver.reply()
    assert first.json["metadata"]["request_id"] == rid
    assert second.body == first.body
    # no correlation_id on the delivery → the reply carries the requestId
    assert first.correlation_id == rid
    assert second.correlation_id == rid
    assert driver.calls() == [f"alpha {rid}"]
    assert len(record_files(driver.records_dir)) == 1


def test_duplicate_while_the_first_is_running_waits_for_its_record(driver: Driver) -> None:
    """A duplicate that arrives mid-execution is answered from the record once it exists."""
    rid = "req-dup-running"
    body = body_of(envelope("SleepIntent", {"seconds": 1.5}, request_id=rid))
    driver.send(body, correlation_id="run-1")
    driver.send(body, correlation_id="run-2")
    replies = driver.replies(2, timeout=15)
    assert replies["run-1"].body == replies["run-2"].body
    assert replies["run-1"].json["status"] == "success"
    assert driver.calls() == [f"sleeper {rid}"]
    assert len(record_files(driver.records_dir)) == 1
    assert driver.metric("intentus_duplicates_total", kind="replayed") == 1


def test_waiting_duplicates_do_not_hold_routing_threads(start: Callable[..., Driver]) -> None:
    """Duplicates of a running request are parked: with 2 routing threads, 6 duplicates of a
    3 s request still leave a thread for new requests, answered before the slow one ends."""
    w = start(concurrency=2)
    slow = body_of(envelope("SleepIntent", {"seconds": 3}, request_id="req-park-slow"))
    w.send(slow, correlation_id="slow-0")
    assert w.wait_until(lambda: w.calls() == ["sleeper req-park-slow"], timeout=10)
    for i in range(1, 7):
        w.send(slow, correlation_id=f"slow-{i}")
    for i in range(3):
        fast = body_of(envelope("ProcessIntent", {"document_id": f"d{i}"}, request_id=f"p-{i}"))
        w.send(fast, correlation_id=f"fast-{i}")
    order = []
    replies: dict[str | None, Message] = {}
    while len(replies) < 10:
        r = w.reply(timeout=20)
        order.append(r.correlation_id)
        replies[r.correlation_id] = r
    assert set(order[:3]) == {"fast-0", "fast-1", "fast-2"}, order
    assert len({replies[f"slow-{i}"].body for i in range(7)}) == 1
    assert w.calls().count("sleeper req-park-slow") == 1
    assert w.metric("intentus_duplicates_total", kind="replayed") == 6
