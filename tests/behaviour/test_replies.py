"""Where replies go on both transports: reply_to, the default reply queue, or nowhere; and
what they carry."""

from __future__ import annotations

from collections.abc import Callable

from tests.behaviour.drivers import Driver
from tests.integration.wire import body_of, envelope, execution_id, load_record


def test_no_reply_to_goes_to_the_default_reply_queue(start: Callable[..., Driver]) -> None:
    """Without reply_to the reply lands on the configured default reply queue."""
    driver = start()
    rid = "req-default-reply"
    driver.send(body_of(envelope(request_id=rid)), reply_to=None, correlation_id="c-d")
    reply = driver.get(driver.reply_queue)
    assert reply.correlation_id == "c-d"
    assert reply.json["status"] == "success"
    assert reply.json["metadata"]["execution_id"] == execution_id(rid)
    assert reply.headers["x-intentus-execution-id"] == execution_id(rid)
    assert driver.nothing_on(driver.own_queue, 0.3)
    load_record(driver.records_dir, execution_id(rid))


def test_disabled_default_reply_queue(start: Callable[..., Driver]) -> None:
    """INTENTUS_REPLY_QUEUE="" → no reply, the record is written, the message is acked."""
    driver = start(reply_queue="")
    rid = "req-no-reply"
    driver.send(body_of(envelope(request_id=rid)), reply_to=None)
    record = load_record(driver.records_dir, execution_id(rid))
    assert record["finalResponse"]["status"] == "success"
    assert driver.calls() == [f"alpha {rid}"]
    assert driver.wait_until(
        lambda: (
            driver.metric("intentus_intents_total", intent="ProcessIntent", status="success") == 1
        )
    )
    # with reply_to the reply still goes there
    reply = driver.request(envelope(request_id="req-with-reply"))
    assert reply.json["status"] == "success"
    assert driver.stop() == 0
    assert driver.left_in_queue() == 0  # acked: nothing came back to the queue


def test_reply_without_correlation_id_carries_the_request_id(start: Callable[..., Driver]) -> None:
    """No correlation_id on the delivery → the reply's correlation_id is the requestId."""
    driver = start()
    driver.send(body_of(envelope(request_id="req-no-cid")))
    reply = driver.reply()
    assert reply.correlation_id == "req-no-cid"
    assert reply.json["metadata"]["request_id"] == "req-no-cid"


def test_traceparent_is_passed_through(start: Callable[..., Driver]) -> None:
    """A traceparent header comes back on the reply."""
    driver = start()
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    env = envelope(request_id="req-traced")
    driver.send(body_of(env), correlation_id="c-t", headers={"traceparent": traceparent})
    reply = driver.reply()
    assert reply.headers.get("traceparent") == traceparent
    record = load_record(driver.records_dir, execution_id("req-traced"))
    assert record["envelope"]["metadata"]["traceId"] == reply.json["metadata"]["trace_id"]


def test_many_in_flight_are_matched_by_correlation_id(start: Callable[..., Driver]) -> None:
    """Twenty requests at once: one reply each, matched by correlation id, one record each."""
    driver = start()
    for i in range(20):
        driver.send(
            body_of(envelope(request_id=f"req-many-{i}", payload={"document_id": f"d-{i}"})),
            correlation_id=f"c-{i}",
        )
    replies = driver.replies(20)
    assert sorted(replies) == sorted(f"c-{i}" for i in range(20))
    for i in range(20):
        body = replies[f"c-{i}"].json
        assert body["payload"] == {"by": "alpha", "doc": f"d-{i}"}
        assert body["metadata"]["request_id"] == f"req-many-{i}"
    assert len(list(driver.records_dir.rglob("exec-*.json"))) == 20
    assert sorted(driver.calls()) == sorted(f"alpha req-many-{i}" for i in range(20))
