"""Helpers for the integration suite: publish over the real broker, read replies, read records."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.support.broker import IN_CI, connection

OWN = object()  # reply_to sentinel: the Wire's own exclusive reply queue

REPLY_KEYS = {"version", "status", "payload", "error", "metadata"}
METADATA_KEYS = {
    "execution_id",
    "request_id",
    "trace_id",
    "agent",
    "strategy",
    "attempts",
    "latency_ms",
    "replayable",
}
ERROR_KEYS = {"code", "message", "retryable", "details"}
HEADER_KEYS = {
    "executionId",
    "requestId",
    "correlationId",
    "createdAt",
    "envelopeHash",
    "replayable",
    "workerId",
}


def execution_id(request_id: str) -> str:
    return "exec-" + hashlib.sha256(request_id.encode()).hexdigest()[:24]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def envelope_hash(envelope: dict[str, Any]) -> str:
    canonical = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + sha256_hex(canonical.encode())


def envelope(
    intent: str = "ProcessIntent",
    payload: dict[str, Any] | None = None,
    *,
    request_id: str,
    strategy: str = "DIRECT",
    target: str | None = None,
    fallbacks: list[str] | None = None,
    version: str = "1.0",
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """A complete IntentEnvelope as in docs/contract.md."""
    return {
        "version": "1.0",
        "intent": {"name": intent, "version": version},
        "payload": payload if payload is not None else {"document_id": "doc-123"},
        "context": {
            "sourceAgent": "it-client",
            "timestamp": "2024-01-15T10:30:00Z",
            "priority": "NORMAL",
            "tags": tags or [],
        },
        "metadata": {
            "requestId": request_id,
            "source": "it-client",
            "createdAt": "2024-01-15T10:30:00Z",
            "traceId": None,
            "identityChain": [],
        },
        "routing": {
            "strategy": strategy,
            "targetAgent": target,
            "fallbackAgents": fallbacks or [],
        },
    }


def body_of(value: dict[str, Any] | list[Any]) -> bytes:
    return json.dumps(value).encode()


class Reply:
    """One message read from a queue."""

    def __init__(self, props: pika.BasicProperties, body: bytes) -> None:
        self.props = props
        self.body = body

    @property
    def json(self) -> dict[str, Any]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value

    @property
    def headers(self) -> dict[str, Any]:
        return {
            k: (v.decode() if isinstance(v, bytes) else v)
            for k, v in (self.props.headers or {}).items()
        }


class Wire:
    """A publisher with confirms and its own exclusive reply queue (gone when closed)."""

    def __init__(self) -> None:
        self.conn = connection()
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.reply_queue: str = self.ch.queue_declare("", exclusive=True).method.queue

    def publish(
        self,
        queue: str,
        body: bytes,
        *,
        reply_to: Any = OWN,
        correlation_id: str | None = None,
        message_id: str | None = None,
        content_type: str | None = "application/json",
        user_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        self.ch.basic_publish(
            "",
            queue,
            body,
            pika.BasicProperties(
                content_type=content_type,
                correlation_id=correlation_id,
                message_id=message_id,
                reply_to=self.reply_queue if reply_to is OWN else reply_to,
                user_id=user_id,
                headers=headers,
                delivery_mode=2,
            ),
            mandatory=True,
        )

    def get(self, queue: str, timeout: float = 15.0) -> Reply:
        """The next message on `queue`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is not None:
                return Reply(props, body)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no message on {queue} within {timeout} s")
            self.conn.sleep(0.05)

    def reply(self, timeout: float = 15.0) -> Reply:
        return self.get(self.reply_queue, timeout)

    def replies(self, count: int, timeout: float = 15.0) -> dict[str, Reply]:
        """`count` replies from the own queue, by correlation id."""
        out: dict[str, Reply] = {}
        deadline = time.monotonic() + timeout
        while len(out) < count:
            r = self.reply(max(0.1, deadline - time.monotonic()))
            out[r.props.correlation_id] = r
        return out

    def nothing_on(self, queue: str, wait: float = 1.0) -> bool:
        """True if no message shows up on `queue` within `wait` seconds."""
        try:
            self.get(queue, wait)
        except TimeoutError:
            return True
        return False

    def request(self, queue: str, env: dict[str, Any], timeout: float = 15.0, **kw: Any) -> Reply:
        cid = kw.pop("correlation_id", None) or f"cid-{env['metadata']['requestId']}"
        self.publish(queue, body_of(env), correlation_id=cid, **kw)
        reply = self.reply(timeout)
        assert reply.props.correlation_id == cid
        return reply

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


def record_files(records_dir: Path) -> list[Path]:
    return sorted(records_dir.rglob("exec-*.json"))


def record_path(records_dir: Path, eid: str, timeout: float = 5.0) -> Path:
    """The record file of `eid` (exactly one), waiting briefly for it to appear."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(records_dir.rglob(f"{eid}.json"))
        if found:
            assert len(found) == 1, found
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no record {eid} under {records_dir}")
        time.sleep(0.05)


def load_record(records_dir: Path, eid: str) -> dict[str, Any]:
    value = json.loads(record_path(records_dir, eid).read_bytes())
    assert isinstance(value, dict)
    return value


def event_types(record: dict[str, Any]) -> list[str]:
    return [e["type"] for e in record["events"]]


def check_events_well_formed(record: dict[str, Any]) -> None:
    events = record["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for e in events:
        assert set(e) >= {"seq", "type", "payload", "t_ms"}, e
        assert isinstance(e["payload"], dict)
        assert isinstance(e["t_ms"], int | float) and e["t_ms"] >= 0
    times = [e["t_ms"] for e in events]
    assert times == sorted(times), times
    assert events[0]["type"] == "INTENT_RECEIVED"
    assert events[-1]["type"] == "FINAL_RESPONSE"
    decisions = [e for e in events if e["type"] == "ROUTER_DECISION"]
    assert len(decisions) == 1
    assert decisions[0]["payload"] == record["routerDecision"]


def check_reply_shape(reply: dict[str, Any]) -> None:
    """The AgentResponse of docs/contract.md, exactly these keys."""
    assert set(reply) == REPLY_KEYS, reply
    assert reply["version"] == "1.0"
    assert set(reply["metadata"]) == METADATA_KEYS, reply["metadata"]
    assert isinstance(reply["metadata"]["latency_ms"], int | float)
    assert reply["metadata"]["latency_ms"] >= 0
    assert isinstance(reply["metadata"]["attempts"], int)
    if reply["status"] == "success":
        assert reply["error"] is None
        assert isinstance(reply["payload"], dict)
    else:
        assert reply["status"] == "error"
        assert set(reply["error"]) == ERROR_KEYS, reply["error"]
        assert reply["error"]["retryable"] is False
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
        assert isinstance(reply["error"]["details"], dict)


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def rabbitmqctl() -> Callable[..., str]:
    """Run `rabbitmqctl ARGS...` (needs root); skips the test locally without it, fails in CI."""
    path = shutil.which("rabbitmqctl")
    if path is None or os.geteuid() != 0:
        message = "needs rabbitmqctl, run as root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)

    def run(*args: str) -> str:
        done = subprocess.run(
            [path, *args], check=True, capture_output=True, text=True, timeout=120
        )
        return done.stdout

    return run


def queue_type(queue: str) -> str | None:
    """The queue's type as the broker reports it (quorum, classic), or None if absent."""
    for line in rabbitmqctl()("list_queues", "-q", "name", "type").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0] == queue:
            return parts[1]
    return None


def connection_pids(name: str) -> list[str]:
    """The broker's ids of the connections named `name`."""
    pids = []
    for line in rabbitmqctl()("list_connections", "-q", "pid", "client_properties").splitlines():
        pid, _, props = line.partition("\t")
        if f'{{"connection_name","{name}"}}' in props:
            pids.append(pid)
    return pids


def close_connections(pids: list[str]) -> None:
    """Have the broker force-close these connections, as on a node shutdown."""
    for pid in pids:
        rabbitmqctl()("close_connection", pid, "closed by the test")
