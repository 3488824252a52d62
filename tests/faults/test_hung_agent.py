"""Scenario 7: a hung agent under a 2 s heartbeat. AGENT_TIMEOUT on time, the connection
survives, the abandoned-thread gauge rises, and readiness goes false when abandoned threads
reach INTENTUS_CONCURRENCY (then true again once they return)."""

from __future__ import annotations

import time

import pytest

from tests.faults.load import Publisher, figures, report, request
from tests.support.broker import AMQP_URL

pytestmark = pytest.mark.integration

CONCURRENCY = 2
HANG_S = 12.0


def with_heartbeat(url: str, seconds: int) -> str:
    return url + ("&" if "?" in url else "?") + f"heartbeat={seconds}"


def test_hung_agent_under_short_heartbeat(start_worker, replies, exec_log, agent_env, queue_name):
    env = {
        **agent_env,
        "INTENTUS_AMQP_URL": with_heartbeat(AMQP_URL, 2),
        "INTENTUS_CONCURRENCY": str(CONCURRENCY),
    }
    w = start_worker(env=env)
    publisher = Publisher(queue_name)
    try:
        # One hung agent (deadline 1 s): answered AGENT_TIMEOUT on time.
        first = request("HangIntent", {"hang_s": HANG_S}, replies.queue)
        t0 = time.monotonic()
        publisher.publish(first)
        assert replies.wait_for({first.correlation_id}, timeout=10, poll=0.01)
        reply = replies.first(first.correlation_id)
        assert reply is not None
        timeout_latency = reply.at - t0
        assert w.wait_until(lambda: w.metric("intentus_abandoned_agent_threads") >= 1, timeout=5)
        ready_with_one = w.ready()

        # A long (6 s) agent under the 2 s heartbeat: the connection must survive it.
        slow = request("SlowIntent", {"sleep_s": 6.0}, replies.queue)
        publisher.publish(slow)

        # Abandoned threads reach the concurrency: not ready, with a reason.
        more = [
            request("HangIntent", {"hang_s": HANG_S}, replies.queue) for _ in range(CONCURRENCY - 1)
        ]
        publisher.publish_all(more)
        assert replies.wait_for({m.correlation_id for m in more}, timeout=10)
        not_ready = w.wait_until(lambda: not w.ready(), timeout=5)
        _code, body = w.http("/readyz")
        readyz = body.decode().strip()
        w.wait_until(  # the gauge is refreshed every 0.5 s
            lambda: w.metric("intentus_abandoned_agent_threads") >= CONCURRENCY, timeout=3
        )
        gauge_peak = w.metric("intentus_abandoned_agent_threads")

        # Still consuming and answering while not ready.
        probe = request("ProcessIntent", {"n": 1}, replies.queue)
        publisher.publish(probe)
        probe_answered = replies.wait_for({probe.correlation_id}, timeout=10)

        assert replies.wait_for({slow.correlation_id}, timeout=20)
        t_back = time.monotonic()
        ready_again = w.wait_until(w.ready, timeout=HANG_S + 10)
        ready_again_after_s = time.monotonic() - t_back
        reconnects = w.metric("intentus_broker_reconnects_total")
        connected = w.metric("intentus_broker_connected")
        w.wait_until(lambda: w.metric("intentus_abandoned_agent_threads") == 0, timeout=3)
        gauge_after = w.metric("intentus_abandoned_agent_threads")
    finally:
        publisher.close()
    messages = [first, slow, *more, probe]
    fig = report(
        figures(
            "7-hung-agent",
            messages,
            replies,
            exec_log,
            heartbeat_s=2,
            agent_deadline_s=1.0,
            timeout_reply_after_s=round(timeout_latency, 2),
            ready_with_one_abandoned=ready_with_one,
            abandoned_gauge_peak=gauge_peak,
            not_ready_at_concurrency=not_ready,
            readyz=readyz,
            answered_while_not_ready=probe_answered,
            ready_again=ready_again,
            ready_again_after_s=round(ready_again_after_s, 1),
            abandoned_gauge_after=gauge_after,
            broker_reconnects=reconnects,
            broker_connected=connected,
        )
    )
    assert (reply.code, fig["codes"].get("AGENT_TIMEOUT")) == ("AGENT_TIMEOUT", CONCURRENCY)
    assert timeout_latency < 2.5, fig
    assert ready_with_one and not_ready and gauge_peak >= CONCURRENCY, fig
    assert "stuck" in readyz
    assert probe_answered and ready_again and gauge_after == 0, fig
    assert reconnects == 0 and connected == 1, fig
    assert fig["lost"] == 0 and fig["executed_twice"] == 0, fig
    assert w.stop() == 0
