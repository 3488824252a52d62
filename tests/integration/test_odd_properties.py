"""Odd but legal AMQP properties over the real broker: each ends in one clear outcome.

Unusable ids (not UTF-8, or bearing NUL) are bad input, refused before routing: a structured
`PROTOCOL_ERROR` reply, a record, a metric, a dead-letter copy with its reason, no agent run and
no redelivery loop. Odd but harmless values (headers of unexpected types, 255-byte ids, nothing
set at all) are routed normally, exactly once. The agents count their executions in a file.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.integration.wire import (
    Reply,
    Wire,
    body_of,
    check_reply_shape,
    envelope,
    load_record,
)
from tests.support.broker import delete_topology, queue_depth, require_broker, unique
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration

AGENTS = "tests.faults.sideeffect_agents:registry"


@pytest.fixture(scope="module")
def exec_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("odd-exec") / "executions.log"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, exec_log: Path) -> Iterator[WorkerProcess]:
    require_broker()
    queue = unique("it-odd")
    folder = tmp_path_factory.mktemp("odd-properties")
    w = WorkerProcess(
        queue,
        folder / "records",
        env={"INTENTUS_AGENTS": AGENTS, "INTENTUS_FAULT_EXEC_LOG": str(exec_log)},
        log_path=folder / "worker.log",
    )
    try:
        yield w.start().wait_ready()
    finally:
        w.stop()
        delete_topology(queue, f"{queue}.replies")


@pytest.fixture
def wire(worker: WorkerProcess) -> Iterator[Wire]:
    w = Wire()
    yield w
    w.close()


def executions(exec_log: Path) -> Counter[str]:
    """How many times an agent ran, by requestId."""
    if not exec_log.exists():
        return Counter()
    return Counter(line.split(" ")[0] for line in exec_log.read_text().splitlines() if line)


def publish_raw(wire: Wire, queue: str, body: bytes, **props: Any) -> None:
    """Publish with properties exactly as given: bytes go on the wire as they are."""
    props.setdefault("reply_to", wire.reply_queue)
    props.setdefault("content_type", "application/json")
    wire.ch.basic_publish(
        "", queue, body, pika.BasicProperties(delivery_mode=2, **props), mandatory=True
    )


def no_request_id(rid_hint: str) -> dict[str, Any]:
    env = envelope(request_id=rid_hint)
    del env["metadata"]["requestId"]
    env["payload"] = {"n": rid_hint}
    return env


def rejected(worker: WorkerProcess, code: str) -> float:
    return worker.metric("intentus_messages_rejected_total", reason=code)


def check_refused(
    worker: WorkerProcess, wire: Wire, reply: Reply, body: bytes, *, mentions: str
) -> dict[str, Any]:
    """A PROTOCOL_ERROR reply naming the property, its record, and one dead-letter copy."""
    answer = reply.json
    check_reply_shape(answer)
    assert answer["status"] == "error"
    assert answer["error"]["code"] == "PROTOCOL_ERROR", answer["error"]
    assert mentions in answer["error"]["message"], answer["error"]
    assert answer["error"]["details"].get("field") == mentions
    eid = reply.headers["x-intentus-execution-id"]
    assert answer["metadata"]["execution_id"] == eid
    record = load_record(worker.records_dir, eid)
    assert record["envelope"] is None
    assert record["finalResponse"] == answer
    dead = wire.get(f"{worker.queue}.dlq")
    assert dead.body == body
    reason = dead.headers.get("x-intentus-reject-reason")
    assert isinstance(reason, str) and "PROTOCOL_ERROR" in reason and mentions in reason
    assert wire.nothing_on(f"{worker.queue}.dlq", wait=0.5)  # dead-lettered once, no loop
    return answer


def test_non_utf8_correlation_id_is_refused_before_any_agent(
    wire: Wire, worker: WorkerProcess, exec_log: Path
) -> None:
    rid = "req-odd-cid-bytes"
    body = body_of(envelope(request_id=rid))
    before = rejected(worker, "PROTOCOL_ERROR")
    publish_raw(wire, worker.queue, body, correlation_id=b"\xff\xfe-cid")
    reply = wire.reply()
    # The correlation id cannot be echoed: the reply carries the requestId instead.
    assert reply.props.correlation_id == rid
    answer = check_refused(worker, wire, reply, body, mentions="correlation_id")
    assert answer["metadata"]["request_id"] == rid
    assert worker.wait_until(lambda: rejected(worker, "PROTOCOL_ERROR") == before + 1, timeout=5)
    assert executions(exec_log)[rid] == 0
    # A good message runs exactly once.
    good = "req-odd-cid-good"
    publish_raw(wire, worker.queue, body_of(envelope(request_id=good)), correlation_id="cid-good")
    assert wire.reply().json["status"] == "success"
    assert executions(exec_log)[good] == 1


def test_a_refused_request_id_runs_once_fixed(
    wire: Wire, worker: WorkerProcess, exec_log: Path
) -> None:
    """The client fixes its message and sends the same requestId again: it runs, once."""
    rid = "req-odd-cid-refixed"
    body = body_of(envelope(request_id=rid))
    publish_raw(wire, worker.queue, body, correlation_id=b"\xff-again")
    assert wire.reply().json["error"]["code"] == "PROTOCOL_ERROR"
    assert wire.get(f"{worker.queue}.dlq").body == body
    publish_raw(wire, worker.queue, body, correlation_id="cid-fixed")
    fixed = wire.reply()
    assert fixed.props.correlation_id == "cid-fixed"
    assert fixed.json["status"] == "success", fixed.json
    assert executions(exec_log)[rid] == 1


def test_non_utf8_message_id_without_request_id_is_refused_once(
    wire: Wire, worker: WorkerProcess, exec_log: Path
) -> None:
    env = no_request_id("odd-mid-bytes")
    body = body_of(env)
    ran_before = sum(executions(exec_log).values())
    publish_raw(wire, worker.queue, body, correlation_id="cid-mid-bytes", message_id=b"m-\xc3(")
    reply = wire.reply()
    assert reply.props.correlation_id == "cid-mid-bytes"
    check_refused(worker, wire, reply, body, mentions="message_id")
    assert sum(executions(exec_log).values()) == ran_before  # nothing ran
    assert worker.wait_until(lambda: queue_depth(worker.queue) == 0, timeout=5)
    assert wire.nothing_on(wire.reply_queue, wait=0.5)


@pytest.mark.parametrize(
    ("prop", "value"),
    [
        ("correlation_id", "cid-with-\x00-nul"),
        ("message_id", "mid-with-\x00-nul"),
        ("message_id", b"\x80\x81"),
        ("content_type", b"application/json\xff"),
    ],
)
def test_unusable_property_is_refused(
    prop: str, value: Any, wire: Wire, worker: WorkerProcess, exec_log: Path
) -> None:
    rid = f"req-odd-{prop}-{unique('v')}"
    body = body_of(envelope(request_id=rid))
    props: dict[str, Any] = {"correlation_id": f"cid-{rid}", prop: value}
    publish_raw(wire, worker.queue, body, **props)
    reply = wire.reply()
    expected = rid if prop == "correlation_id" else f"cid-{rid}"
    assert reply.props.correlation_id == expected
    check_refused(worker, wire, reply, body, mentions=prop)
    assert executions(exec_log)[rid] == 0


def test_non_utf8_reply_to_answers_on_the_default_reply_queue(
    wire: Wire, worker: WorkerProcess, exec_log: Path
) -> None:
    rid = "req-odd-reply-to"
    body = body_of(envelope(request_id=rid))
    publish_raw(wire, worker.queue, body, correlation_id="cid-rt", reply_to=b"q-\xff")
    reply = wire.get(worker.reply_queue)
    assert reply.props.correlation_id == "cid-rt"
    check_refused(worker, wire, reply, body, mentions="reply_to")
    assert executions(exec_log)[rid] == 0


ODD_HEADERS: dict[str, dict[str, Any]] = {
    "traceparent_int": {"traceparent": 42},
    "traceparent_bytes": {"traceparent": b"\xff\xfe"},
    "traceparent_table": {"traceparent": {"a": 1}},
    "traceparent_nul": {"traceparent": "00-\x00"},
    "delivery_count_text": {"x-delivery-count": "five"},
    "delivery_count_bool": {"x-delivery-count": True},
    "delivery_count_negative": {"x-delivery-count": -3},
    "delivery_count_huge": {"x-delivery-count": 2**62},
    "delivery_count_list": {"x-delivery-count": [1, 2]},
    "key_not_utf8": {
        b"\xff-key": "v",
        "x-nested": {"deep": {"deeper": [b"\x00", Decimal("1.5"), None]}},
    },
    "long_values": {"x-long": "v" * 65_536, "x-bytes": b"\xff" * 300},
}


@pytest.mark.parametrize("name", list(ODD_HEADERS))
def test_odd_headers_are_routed_once(
    name: str, wire: Wire, worker: WorkerProcess, exec_log: Path
) -> None:
    rid = f"req-odd-h-{name}"
    publish_raw(
        wire,
        worker.queue,
        body_of(envelope(request_id=rid)),
        correlation_id=f"cid-{name}",
        headers=ODD_HEADERS[name],
    )
    reply = wire.reply()
    assert reply.props.correlation_id == f"cid-{name}"
    assert reply.json["status"] == "success", reply.json
    traceparent = reply.headers.get("traceparent")
    assert traceparent is None or (isinstance(traceparent, str) and "\x00" not in traceparent)
    assert executions(exec_log)[rid] == 1


def test_longest_ids_are_routed_once(wire: Wire, worker: WorkerProcess, exec_log: Path) -> None:
    """255 bytes (the most an AMQP short string holds) of multi-byte UTF-8 in every id."""
    cid = ("é" * 127) + "c"
    mid = ("ü" * 127) + "m"
    assert len(cid.encode()) == len(mid.encode()) == 255
    env = no_request_id("odd-long")
    publish_raw(wire, worker.queue, body_of(env), correlation_id=cid, message_id=mid)
    reply = wire.reply()
    assert reply.props.correlation_id == cid
    assert reply.json["status"] == "success", reply.json
    assert reply.json["metadata"]["request_id"] == mid
    assert executions(exec_log)[mid] == 1


def test_no_properties_at_all(wire: Wire, worker: WorkerProcess, exec_log: Path) -> None:
    """No reply_to, ids or content type: routed, answered on the default reply queue."""
    rid = "req-odd-bare"
    wire.ch.basic_publish("", worker.queue, body_of(envelope(request_id=rid)))
    reply = wire.get(worker.reply_queue)
    assert reply.props.correlation_id == rid
    assert reply.json["status"] == "success", reply.json
    assert executions(exec_log)[rid] == 1


def test_worker_survived_every_odd_property(wire: Wire, worker: WorkerProcess) -> None:
    reply = wire.request(worker.queue, envelope(request_id="req-odd-after"))
    assert reply.json["status"] == "success"
    assert worker.ready()
    assert worker.stop() == 0
    assert queue_depth(worker.queue) == 0
    assert queue_depth(f"{worker.queue}.dlq") == 0
    log = worker.logs()
    assert "Traceback" not in log, log
    assert json.dumps(log)  # the log itself stays text
