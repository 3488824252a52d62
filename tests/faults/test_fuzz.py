"""Scenario 5: fuzz over the wire. Every message gets exactly one answer; bad ones are
answered with an error reply and dead-lettered with their reason; the worker never dies."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.load import (
    Message,
    Publisher,
    envelope,
    executions,
    figures,
    record_files,
    report,
)
from tests.support.broker import get_all

pytestmark = pytest.mark.integration

REJECTED = {"PROTOCOL_ERROR", "VALIDATION_ERROR", "PAYLOAD_TOO_LARGE"}
MAX_BYTES = 65_536

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=50),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
PATHS = [
    ("version",),
    ("intent",),
    ("intent", "name"),
    ("intent", "version"),
    ("payload",),
    ("context",),
    ("context", "priority"),
    ("context", "tags"),
    ("context", "timestamp"),
    ("metadata",),
    ("metadata", "requestId"),
    ("metadata", "identityChain"),
    ("routing",),
    ("routing", "strategy"),
    ("routing", "targetAgent"),
    ("routing", "fallbackAgents"),
    ("unknownField",),
    ("payload", "x"),
]


def base() -> dict[str, Any]:
    return envelope("ProcessIntent", {"n": 1})


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    node: Any = doc
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return doc


def _delete(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node: Any = doc
    for key in path[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return doc
    node.pop(path[-1], None)
    return doc


def _nested(depth: int) -> bytes:
    doc = base()
    inner = "[" * depth + "]" * depth
    return json.dumps(doc).replace('{"n": 1}', '{"deep": ' + inner + "}").encode()


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    kind = draw(
        st.sampled_from(
            [
                "bytes",
                "set",
                "delete",
                "deep",
                "huge-int",
                "huge-float",
                "huge-string",
                "unicode",
                "duplicate-keys",
                "bad-utf8",
                "surrogate",
                "valid",
            ]
        )
    )
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                None,
                "application/json; charset=utf-8",
                "text/plain",
                "application/xml",
                "",
            ]
        )
    )
    doc = base()
    if kind == "bytes":
        return draw(st.binary(max_size=300)), content_type
    if kind == "set":
        doc = _set(doc, draw(st.sampled_from(PATHS)), draw(json_value))
    elif kind == "delete":
        doc = _delete(doc, draw(st.sampled_from(PATHS)))
    elif kind == "deep":
        return _nested(draw(st.integers(min_value=60, max_value=5000))), content_type
    elif kind == "huge-int":
        digits = draw(st.integers(min_value=10, max_value=20_000))
        raw = json.dumps(doc).replace('"n": 1', '"n": 1' + "0" * digits)
        return raw.encode(), content_type
    elif kind == "huge-float":
        raw = json.dumps(doc).replace(
            '"n": 1', '"n": ' + draw(st.sampled_from(["1e400", "-1e999"]))
        )
        return raw.encode(), content_type
    elif kind == "huge-string":
        doc = _set(doc, ("payload", "s"), "x" * draw(st.integers(1_000, 2 * MAX_BYTES)))
    elif kind == "unicode":
        doc = _set(doc, draw(st.sampled_from(PATHS)), draw(st.text(min_size=1, max_size=40)))
    elif kind == "duplicate-keys":
        raw = json.dumps(doc)
        return ('{"version": "2.0", ' + raw[1:]).encode(), content_type
    elif kind == "bad-utf8":
        raw = json.dumps(doc).encode()
        cut = draw(st.integers(0, len(raw) - 1))
        return raw[:cut] + b"\xff\xfe" + raw[cut:], content_type
    elif kind == "surrogate":
        raw = json.dumps(doc).replace('"n": 1', '"n": "\\ud800"')
        return raw.encode(), content_type
    return json.dumps(doc).encode(), content_type


def run_fuzz(scenario, start_worker, replies, exec_log, agent_env, queue_name, examples) -> None:
    env = {**agent_env, "INTENTUS_MAX_MESSAGE_BYTES": str(MAX_BYTES)}
    w = start_worker(env=env)
    publisher = Publisher(queue_name)
    sent: list[Message] = []
    kinds: dict[str, str] = {}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(bodies())
    def one(case: tuple[bytes, str | None]) -> None:
        body, content_type = case
        cid = uuid.uuid4().hex
        m = Message(
            body,
            correlation_id=cid,
            request_id=f"fuzz-{cid}",
            content_type=content_type,
            reply_to=replies.queue,
        )
        publisher.publish(m)
        sent.append(m)
        assert replies.wait_for({cid}, timeout=15, poll=0.002), f"no reply for {body[:200]!r}"
        reply = replies.first(cid)
        assert reply is not None
        kinds[cid] = reply.code or "success"
        assert w.proc is not None and w.proc.poll() is None, w.logs()[-3000:]

    started = time.monotonic()
    try:
        one()
    finally:
        publisher.close()
    rejected = {c for c, code in kinds.items() if code in REJECTED}
    time.sleep(1.0)
    dead = get_all(f"{queue_name}.dlq")
    dead_cids = {}
    for _method, props, _body in dead:
        reason = (props.headers or {}).get("x-intentus-reject-reason")
        dead_cids[props.correlation_id] = reason
    missing_dlq = [c for c in rejected if not dead_cids.get(c)]
    twice = sum(1 for n in executions(exec_log).values() if n > 1)
    alive = w.proc is not None and w.proc.poll() is None and w.http("/healthz")[0] == 200
    fig = report(
        figures(
            scenario,
            sent,
            replies,
            exec_log,
            executions_repeated=twice,
            rejected=len(rejected),
            dead_lettered=len(dead_cids),
            rejected_without_dlq_reason=len(missing_dlq),
            worker_alive=alive,
            records=len(record_files(w.records_dir)),
            seconds=round(time.monotonic() - started, 1),
        )
    )
    assert alive
    assert fig["lost"] == 0 and fig["duplicate_replies"] == 0, fig
    assert not missing_dlq, fig
    assert twice == 0, fig
    assert set(dead_cids) <= rejected, "only rejected messages are dead-lettered"
    assert w.stop() == 0


def test_fuzz_over_the_wire_fast(start_worker, replies, exec_log, agent_env, queue_name):
    """300 generated messages."""
    run_fuzz("5-fuzz-fast", start_worker, replies, exec_log, agent_env, queue_name, 300)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fuzz_over_the_wire_full(start_worker, replies, exec_log, agent_env, queue_name):
    """3000 generated messages."""
    run_fuzz("5-fuzz-full", start_worker, replies, exec_log, agent_env, queue_name, 3000)
