"""Bad input on both transports: an error reply with its code, a record, a dead letter with
the reason, a metric, and the worker keeps going. One worker per transport serves the module."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime.canonical import rejection_id_for
from tests.behaviour.drivers import TRANSPORT_PARAMS, Driver, open_driver
from tests.integration.wire import (
    body_of,
    check_reply_shape,
    envelope,
    event_types,
    execution_id,
    load_record,
    record_path,
    sha256_hex,
)

MAX_BYTES = 4096


@pytest.fixture(scope="module", params=TRANSPORT_PARAMS)
def driver(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Driver]:
    """The built-in demo agents, with a small message size limit."""
    folder = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    with open_driver(
        request.param, folder, test_agents=False, max_message_bytes=MAX_BYTES
    ) as driver:
        yield driver


def env_with(rid: str, **changes: Any) -> dict[str, Any]:
    env = envelope(request_id=rid)
    for path, value in changes.items():
        node = env
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return env


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth):
        value = {"n": value}
    return value


@dataclass
class Case:
    body: bytes
    code: str
    request_id: str  # the requestId the record must carry
    content_type: str | None = "application/json"
    message_id: str | None = None
    mentions: str | None = None  # the error message must name this


def _cases() -> dict[str, Case]:
    missing_name = env_with("req-bad-noname")
    del missing_name["intent"]["name"]
    unknown = env_with("req-bad-unknown")
    unknown["colour"] = "red"
    unknown_nested = env_with("req-bad-unknown-nested")
    unknown_nested["routing"]["loadBalance"] = True
    return {
        "not_json": Case(
            b"this is not json {", "PROTOCOL_ERROR", "m-not-json", message_id="m-not-json"
        ),
        "empty_body": Case(b"", "PROTOCOL_ERROR", "m-empty", message_id="m-empty"),
        "bad_utf8": Case(
            b'{"version": "1.0", "intent": {"name": "\xff\xfeX"}}',
            "PROTOCOL_ERROR",
            "m-bad-utf8",
            message_id="m-bad-utf8",
        ),
        # requestId in the body and message_id agree, so the record's id is known either way
        "wrong_content_type": Case(
            body_of(env_with("m-ctype")),
            "PROTOCOL_ERROR",
            "m-ctype",
            content_type="text/plain",
            message_id="m-ctype",
        ),
        "json_array": Case(
            b'[{"version": "1.0"}]', "VALIDATION_ERROR", "m-array", message_id="m-array"
        ),
        "json_string": Case(b'"hello"', "VALIDATION_ERROR", "m-string", message_id="m-string"),
        "unknown_field": Case(
            body_of(unknown),
            "VALIDATION_ERROR",
            "req-bad-unknown",
            message_id="m-x1",
            mentions="colour",
        ),
        "unknown_nested_field": Case(
            body_of(unknown_nested),
            "VALIDATION_ERROR",
            "req-bad-unknown-nested",
            message_id="m-x2",
            mentions="loadBalance",
        ),
        "missing_intent_name": Case(
            body_of(missing_name),
            "VALIDATION_ERROR",
            "req-bad-noname",
            message_id="m-x3",
            mentions="name",
        ),
        "empty_intent_name": Case(
            body_of(env_with("req-bad-emptyname", intent__name="")),
            "VALIDATION_ERROR",
            "req-bad-emptyname",
            message_id="m-x4",
        ),
        "unsupported_version": Case(
            body_of(env_with("req-bad-version", version="2.0")),
            "VALIDATION_ERROR",
            "req-bad-version",
            message_id="m-x5",
            mentions="version",
        ),
        "unknown_strategy": Case(
            body_of(env_with("req-bad-strategy", routing__strategy="ROUND_ROBIN")),
            "VALIDATION_ERROR",
            "req-bad-strategy",
            message_id="m-x6",
            mentions="strategy",
        ),
        "unknown_priority": Case(
            body_of(env_with("req-bad-priority", context__priority="URGENT")),
            "VALIDATION_ERROR",
            "req-bad-priority",
            message_id="m-x7",
            mentions="priority",
        ),
        "target_with_broadcast": Case(
            body_of(
                env_with(
                    "req-bad-bcast", routing__strategy="BROADCAST", routing__targetAgent="echo"
                )
            ),
            "VALIDATION_ERROR",
            "req-bad-bcast",
            message_id="m-x8",
            mentions="targetAgent",
        ),
        "fallbacks_with_parallel": Case(
            body_of(
                env_with(
                    "req-bad-par", routing__strategy="PARALLEL", routing__fallbackAgents=["echo"]
                )
            ),
            "VALIDATION_ERROR",
            "req-bad-par",
            message_id="m-x9",
            mentions="fallbackAgents",
        ),
        "too_large": Case(
            body_of(env_with("m-large", payload={"blob": "x" * (MAX_BYTES + 100)})),
            "PAYLOAD_TOO_LARGE",
            "m-large",
            message_id="m-large",
        ),
        "nesting_over_64": Case(
            body_of(env_with("m-deep", payload=nested(100))),
            "VALIDATION_ERROR",
            "m-deep",
            message_id="m-deep",
        ),
    }


CASES = _cases()


def rejected(driver: Driver, code: str) -> float:
    return driver.metric("intentus_messages_rejected_total", reason=code)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_message(name: str, driver: Driver) -> None:
    """Error reply with the code, record (envelope null), DLQ copy with the reason, metric."""
    case = CASES[name]
    before = rejected(driver, case.code)
    cid = f"cid-{name}"
    driver.send(
        case.body,
        correlation_id=cid,
        message_id=case.message_id,
        content_type=case.content_type,
    )
    reply = driver.reply()
    body = reply.json
    check_reply_shape(body)
    assert reply.correlation_id == cid
    assert reply.headers["x-intentus-status"] == "error"
    assert body["status"] == "error"
    assert body["payload"] is None
    assert body["error"]["code"] == case.code, body["error"]
    if case.mentions:
        assert case.mentions in body["error"]["message"], body["error"]
    # Recorded under its body's rejection id: its requestId is left free for a fixed re-send.
    eid = rejection_id_for(case.body)
    assert eid != execution_id(case.request_id)
    assert body["metadata"]["request_id"] == case.request_id
    assert body["metadata"]["execution_id"] == eid
    assert reply.headers["x-intentus-execution-id"] == eid

    record = load_record(driver.records_dir, eid)
    assert record["envelope"] is None
    assert record["rawBodySha256"] in (sha256_hex(case.body), "sha256:" + sha256_hex(case.body))
    assert record["header"]["requestId"] == case.request_id
    assert record["header"]["executionId"] == eid
    assert record["finalResponse"] == body
    assert event_types(record) == ["INTENT_RECEIVED", "ROUTER_DECISION", "FINAL_RESPONSE"]
    assert record["routerDecision"]["reason"] == "invalid_request"
    assert record["routerDecision"]["agent"] is None

    dead = driver.dead_letter()
    assert dead.body == case.body
    assert isinstance(dead.reason, str) and dead.reason.strip()
    assert dead.correlation_id == cid
    assert dead.message_id == case.message_id
    assert dead.content_type == case.content_type

    assert driver.wait_until(lambda: rejected(driver, case.code) == before + 1, timeout=5)
    assert driver.alive()


def test_raw_body_kept_as_text_or_base64(driver: Driver) -> None:
    """The record keeps the body: text when UTF-8, base64 when not."""
    text_body = b"plain words, not an envelope"
    binary_body = b"\x00\xff\xfe binary \x80"
    driver.send(text_body, message_id="m-raw-text")
    driver.send(binary_body, message_id="m-raw-bin")
    driver.replies(2)
    as_text = json.dumps(load_record(driver.records_dir, rejection_id_for(text_body)))
    assert text_body.decode() in as_text
    as_bin = json.dumps(load_record(driver.records_dir, rejection_id_for(binary_body)))
    assert base64.b64encode(binary_body).decode() in as_bin
    assert {driver.dead_letter().body for _ in range(2)} == {text_body, binary_body}


def test_bad_input_without_reply_to_goes_to_the_default_reply_queue(driver: Driver) -> None:
    """An error reply to bad input follows the same no-reply_to rule."""
    driver.send(b"nope", reply_to=None, message_id="m-noreply", correlation_id="c-nr")
    reply = driver.get(driver.reply_queue)
    assert reply.correlation_id == "c-nr"
    assert reply.json["error"]["code"] == "PROTOCOL_ERROR"
    assert driver.dead_letter().body == b"nope"


def test_no_record_over_an_existing_one(driver: Driver) -> None:
    """A bad message whose requestId already has a record leaves it untouched."""
    rid = "req-bad-existing"
    ok = driver.request(envelope(request_id=rid))
    assert ok.json["status"] == "success"
    path = record_path(driver.records_dir, execution_id(rid))
    stored = path.read_bytes()
    bad = env_with(rid)
    bad["extra"] = 1
    reply = driver.request(bad, correlation_id="bad-over-existing")
    assert reply.json["error"]["code"] == "VALIDATION_ERROR"
    assert path.read_bytes() == stored
    assert driver.dead_letter().body == body_of(bad)


def test_nesting_within_the_limit_is_accepted(driver: Driver) -> None:
    """Deep but allowed nesting is routed normally."""
    reply = driver.request(env_with("req-nested-ok", payload=nested(30)))
    assert reply.json["status"] == "success"


def test_worker_survived_and_acked_everything(driver: Driver) -> None:
    """After all the bad input: still routing, nothing left unacked, clean stop."""
    reply = driver.request(envelope(request_id="req-after-bad"))
    assert reply.json["status"] == "success"
    assert reply.json["payload"]["echo"] == {"document_id": "doc-123"}
    assert driver.stop() == 0
    assert driver.left_in_queue() == 0  # unacked deliveries would be back in the queue
    assert driver.unread_dead_letters() == 0  # every dead letter was read by the tests
    log = driver.logs()
    assert "Traceback" not in log, log


def test_records_folder_of_the_module(driver: Driver) -> None:
    """Every rejected record is a well-formed file named by its executionId."""
    paths = list(Path(driver.records_dir).rglob("exec-*.json"))
    assert len(paths) >= len(CASES)
    for path in paths:
        record = json.loads(path.read_bytes())
        assert path.name == record["header"]["executionId"] + ".json"
