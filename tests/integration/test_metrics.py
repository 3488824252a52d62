"""Metric values after a known sequence of messages."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import Agents
from tests.integration.wire import Wire, envelope
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration

CONTRACT_METRICS = (
    "messages_received_total",
    "intents_total",
    "route_duration_seconds",
    "agent_attempts_total",
    "agent_duration_seconds",
    "fallbacks_total",
    "policy_filtered_total",
    "messages_rejected_total",
    "replies_published_total",
    "duplicates_total",
    "records_written_total",
    "record_write_seconds",
    "record_write_errors_total",
    "inflight",
    "abandoned_agent_threads",
    "broker_connected",
    "broker_reconnects_total",
    "build_info",
)


def test_metrics_after_known_messages(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """3 DIRECT successes, 1 fallback, 1 unknown intent, 1 bad message, then 1 duplicate."""
    worker = start_worker(env=agents.env)
    m = worker.metric
    assert m("intentus_broker_connected") == 1
    assert m("intentus_messages_received_total") == 0

    for i in range(3):
        wire.request(worker.queue, envelope(request_id=f"req-m-{i}"))
    wire.request(
        worker.queue, envelope("SummarizeIntent", request_id="req-m-fb", strategy="FALLBACK")
    )
    wire.request(worker.queue, envelope("NobodyIntent", request_id="req-m-none"))
    wire.publish(worker.queue, b"garbage", message_id="m-garbage", correlation_id="garbage")
    assert wire.reply().json["error"]["code"] == "PROTOCOL_ERROR"
    wire.get(f"{worker.queue}.dlq")

    assert worker.wait_until(
        lambda: m("intentus_replies_published_total", outcome="confirmed") == 6
    )
    q = worker.queue
    assert m("intentus_messages_received_total", queue=q) == 6
    ok = {"status": "success", "error_code": ""}
    assert m("intentus_intents_total", intent="ProcessIntent", **ok) == 3
    assert m("intentus_intents_total", intent="SummarizeIntent", **ok) == 1
    assert (
        m(
            "intentus_intents_total",
            intent="unknown",
            status="error",
            error_code="CAPABILITY_NOT_FOUND",
        )
        == 1
    )
    assert m("intentus_intents_total", intent="NobodyIntent") == 0  # never a label from content
    assert m("intentus_agent_attempts_total", agent="alpha", status="success") == 3
    assert m("intentus_agent_attempts_total", agent="down", status="error") == 1
    assert m("intentus_agent_attempts_total", agent="up", status="success") == 1
    assert m("intentus_agent_duration_seconds_count", agent="alpha") == 3
    assert (
        m("intentus_route_duration_seconds_count", intent="ProcessIntent", strategy="DIRECT") == 3
    )
    assert (
        m("intentus_route_duration_seconds_count", intent="SummarizeIntent", strategy="FALLBACK")
        == 1
    )
    assert m("intentus_fallbacks_total", intent="SummarizeIntent") == 1
    assert m("intentus_messages_rejected_total", reason="PROTOCOL_ERROR") == 1
    assert m("intentus_messages_rejected_total") == 1
    assert m("intentus_records_written_total") == 6
    assert m("intentus_record_write_seconds_count") == 6
    assert m("intentus_record_write_errors_total") == 0
    assert m("intentus_duplicates_total") == 0

    # a duplicate: answered and counted, no agent, no record
    wire.request(worker.queue, envelope(request_id="req-m-0"), correlation_id="dup")
    assert worker.wait_until(
        lambda: m("intentus_replies_published_total", outcome="confirmed") == 7
    )
    assert m("intentus_messages_received_total", queue=q) == 7
    assert m("intentus_duplicates_total", kind="replayed") == 1
    assert m("intentus_records_written_total") == 6
    assert m("intentus_agent_attempts_total", agent="alpha") == 3

    assert worker.wait_until(lambda: m("intentus_inflight") == 0, timeout=5)
    assert m("intentus_abandoned_agent_threads") == 0
    assert m("intentus_broker_connected") == 1
    assert m("intentus_broker_reconnects_total") == 0

    text = worker.http("/metrics")[1].decode()
    build = [line for line in text.splitlines() if line.startswith("intentus_build_info{")]
    assert len(build) == 1 and 'version="' in build[0] and build[0].endswith(" 1.0"), build
    assert "process_cpu_seconds_total" in text
    assert "_created" not in text  # no creation-time series beside every counter and histogram
    for name in CONTRACT_METRICS:
        assert f"# HELP intentus_{name} " in text, name
    # no ids in labels
    assert "req-m-" not in text and "exec-" not in text and "m-garbage" not in text


def test_health_endpoints(start_worker: Callable[..., WorkerProcess]) -> None:
    """/healthz and /readyz answer JSON; unknown paths 404."""
    worker = start_worker()
    code, body = worker.http("/healthz")
    assert code == 200
    code, body = worker.http("/readyz")
    assert code == 200
    assert b"true" in body
    assert worker.http("/nope")[0] == 404
