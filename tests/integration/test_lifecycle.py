"""Lifecycle: long agents under short heartbeats, graceful SIGTERM, broker loss and return."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.integration.conftest import Agents
from tests.integration.wire import (
    Wire,
    body_of,
    envelope,
    execution_id,
    load_record,
    rabbitmqctl,
    wait_for,
)
from tests.support.broker import AMQP_URL, broker_up, queue_depth
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration


def sleep_env(rid: str, seconds: float) -> bytes:
    return body_of(envelope("SleepIntent", {"seconds": seconds}, request_id=rid))


def test_long_agent_under_a_short_heartbeat(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """A 10 s agent with a 2 s heartbeat: the connection survives and the reply arrives."""
    sep = "&" if "?" in AMQP_URL else "?"
    worker = start_worker(env={**agents.env, "INTENTUS_AMQP_URL": f"{AMQP_URL}{sep}heartbeat=2"})
    started = time.monotonic()
    wire.publish(worker.queue, sleep_env("req-long", 10), correlation_id="long")
    reply = wire.reply(timeout=25)
    assert time.monotonic() - started >= 10
    assert reply.props.correlation_id == "long"
    assert reply.json["status"] == "success"
    assert reply.json["payload"] == {"slept_s": 10}
    assert agents.calls() == ["sleeper req-long"]  # run once: no redelivery after a lost link
    assert worker.metric("intentus_broker_reconnects_total") == 0
    assert worker.metric("intentus_broker_connected") == 1
    assert worker.ready()
    assert "connection lost" not in worker.logs()


def test_sigterm_finishes_in_flight_agents(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """SIGTERM with two agents running: both replied and recorded, exit code 0."""
    worker = start_worker(env={**agents.env, "INTENTUS_CONCURRENCY": "2"})
    wire.publish(worker.queue, sleep_env("req-term-1", 2), correlation_id="t1")
    wire.publish(worker.queue, sleep_env("req-term-2", 2), correlation_id="t2")
    assert wait_for(lambda: len(agents.calls()) == 2, timeout=10), agents.calls()
    worker.signal()
    assert worker.wait(timeout=20) == 0
    replies = wire.replies(2, timeout=5)
    assert {cid: r.json["status"] for cid, r in replies.items()} == {
        "t1": "success",
        "t2": "success",
    }
    for rid in ("req-term-1", "req-term-2"):
        assert load_record(worker.records_dir, execution_id(rid))["finalResponse"]["status"] == (
            "success"
        )
    assert queue_depth(worker.queue) == 0


def test_sigterm_returns_unstarted_deliveries(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """Prefetched but not started deliveries go back to the queue; their agents never run."""
    worker = start_worker(
        env={**agents.env, "INTENTUS_CONCURRENCY": "1", "INTENTUS_PREFETCH": "10"}
    )
    wire.publish(worker.queue, sleep_env("req-held-1", 1.5), correlation_id="h1")
    wire.publish(worker.queue, sleep_env("req-held-2", 1.5), correlation_id="h2")
    wire.publish(worker.queue, sleep_env("req-held-3", 1.5), correlation_id="h3")
    assert wait_for(lambda: len(agents.calls()) == 1, timeout=10)
    assert worker.wait_until(lambda: worker.metric("intentus_messages_received_total") == 3)
    worker.signal()
    assert worker.wait(timeout=20) == 0
    first = wire.reply(timeout=5)
    assert first.props.correlation_id == "h1"
    assert first.json["status"] == "success"
    assert agents.calls() == ["sleeper req-held-1"]
    assert queue_depth(worker.queue) == 2
    assert wire.nothing_on(wire.reply_queue, 0.3)


def test_second_signal_exits_at_once(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """A second signal during the grace period exits immediately with 130."""
    worker = start_worker(env=agents.env)
    wire.publish(worker.queue, sleep_env("req-second-signal", 8), correlation_id="s")
    assert wait_for(lambda: len(agents.calls()) == 1, timeout=10)
    worker.signal()
    time.sleep(0.3)
    started = time.monotonic()
    worker.signal()
    assert worker.wait(timeout=5) == 130
    assert time.monotonic() - started < 3
    assert queue_depth(worker.queue) == 1  # unacked: back in the queue


def test_grace_period_expiry_exits_75(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """Work still running when the grace period ends: exit 75, the message returns."""
    worker = start_worker(env={**agents.env, "INTENTUS_SHUTDOWN_GRACE_S": "1"})
    wire.publish(worker.queue, sleep_env("req-grace", 6), correlation_id="g")
    assert wait_for(lambda: len(agents.calls()) == 1, timeout=10)
    worker.signal()
    assert worker.wait(timeout=15) == 75
    assert queue_depth(worker.queue) == 1


def test_readiness_follows_the_broker(
    start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """/readyz is false while the broker app is stopped, true again (and consuming) after."""
    ctl = rabbitmqctl()
    worker = start_worker(env=agents.env)
    assert worker.http("/readyz")[0] == 200
    try:
        ctl("stop_app")
        assert worker.wait_until(lambda: worker.http("/readyz")[0] == 503, timeout=20)
        status, body = worker.http("/readyz")
        assert status == 503 and b"ready" in body
        assert worker.metric("intentus_broker_connected") == 0
        assert worker.http("/healthz")[0] == 200
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        ctl("start_app")
    assert wait_for(broker_up, timeout=30)
    assert worker.wait_until(lambda: worker.http("/readyz")[0] == 200, timeout=45), worker.logs()
    assert worker.metric("intentus_broker_connected") == 1
    assert worker.metric("intentus_broker_reconnects_total") >= 1
    wire = Wire()
    try:
        reply = wire.request(worker.queue, envelope(request_id="req-after-restart"), timeout=20)
    finally:
        wire.close()
    assert reply.json["status"] == "success"
    assert agents.calls() == ["alpha req-after-restart"]
