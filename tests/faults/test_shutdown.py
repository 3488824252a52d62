"""Scenario 4: SIGTERM with 50 messages in flight; a second SIGTERM exits at once."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.load import Publisher, executions, figures, report, request
from tests.support.broker import queue_depth

pytestmark = pytest.mark.integration


def publish(queue: str, messages) -> None:
    p = Publisher(queue)
    try:
        p.publish_all(messages)
    finally:
        p.close()


def started_count(exec_log, messages) -> int:
    rids = {m.request_id for m in messages}
    return sum(1 for (rid, _a) in executions(exec_log) if rid in rids)


def test_sigterm_with_50_in_flight(start_worker, replies, exec_log, agent_env, queue_name):
    """50 agents running (concurrency 50): SIGTERM → all replied and acked, exit 0 in grace."""
    env = {**agent_env, "INTENTUS_CONCURRENCY": "50", "INTENTUS_SHUTDOWN_GRACE_S": "20"}
    w = start_worker(env=env)
    messages = [request("SlowIntent", {"sleep_s": 2.0}, replies.queue) for _ in range(50)]
    publish(queue_name, messages)
    assert w.wait_until(lambda: started_count(exec_log, messages) == 50, timeout=20)
    time.sleep(0.6)  # the gauge is refreshed every 0.5 s
    inflight = w.metric("intentus_inflight")
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    code = w.wait(timeout=30)
    exit_s = time.monotonic() - t0
    cids = {m.correlation_id for m in messages}
    replies.wait_for(cids, timeout=10)
    depth = queue_depth(queue_name)
    fig = report(
        figures(
            "4-sigterm-50-in-flight",
            messages,
            replies,
            exec_log,
            inflight_gauge_at_sigterm=inflight,
            exit_code=code,
            exit_after_s=round(exit_s, 2),
            grace_s=20,
            left_in_queue=depth,
        )
    )
    assert code == 0, w.logs()[-3000:]
    assert exit_s < 20
    assert fig["lost"] == 0 and fig["codes"] == {"success": 50}, fig
    assert depth == 0, "every request was acked"
    assert fig["executed_twice"] == 0


def test_sigterm_hands_back_unstarted(start_worker, replies, exec_log, agent_env, queue_name):
    """Concurrency 8 with 50 prefetched: the 8 running finish, the rest go back to the queue
    and the next worker answers them; each request runs once."""
    env = {**agent_env, "INTENTUS_CONCURRENCY": "8", "INTENTUS_SHUTDOWN_GRACE_S": "20"}
    w = start_worker(env=env)
    messages = [request("SlowIntent", {"sleep_s": 1.0}, replies.queue) for _ in range(50)]
    publish(queue_name, messages)
    assert w.wait_until(lambda: started_count(exec_log, messages) >= 8, timeout=20)
    w.signal(signal.SIGTERM)
    code = w.wait(timeout=30)
    cids = {m.correlation_id for m in messages}
    time.sleep(0.5)
    answered_by_first = replies.count(cids)
    returned = queue_depth(queue_name)
    w2 = start_worker(env=env)
    replies.wait_for(cids, timeout=60)
    w2.stop()
    fig = report(
        figures(
            "4-sigterm-hand-back",
            messages,
            replies,
            exec_log,
            exit_code=code,
            answered_before_exit=answered_by_first,
            returned_to_queue=returned,
        )
    )
    assert code == 0
    assert answered_by_first + returned == 50
    assert fig["lost"] == 0 and fig["executed_twice"] == 0, fig


def test_second_sigterm_exits_at_once(start_worker, replies, exec_log, agent_env, queue_name):
    """A second SIGTERM during a long grace period exits with 130 at once; the next worker
    answers the interrupted requests EXECUTION_IN_DOUBT and runs none of them again."""
    env = {**agent_env, "INTENTUS_CONCURRENCY": "8", "INTENTUS_SHUTDOWN_GRACE_S": "60"}
    w = start_worker(env=env)
    messages = [request("SlowIntent", {"sleep_s": 30.0}, replies.queue) for _ in range(8)]
    publish(queue_name, messages)
    assert w.wait_until(lambda: started_count(exec_log, messages) == 8, timeout=20)
    w.signal(signal.SIGTERM)
    time.sleep(0.5)
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    code = w.wait(timeout=10)
    exit_s = time.monotonic() - t0
    w2 = start_worker(env=env)
    cids = {m.correlation_id for m in messages}
    replies.wait_for(cids, timeout=30)
    w2.stop()
    fig = report(
        figures(
            "4-second-sigterm",
            messages,
            replies,
            exec_log,
            exit_code=code,
            exit_after_second_signal_s=round(exit_s, 3),
        )
    )
    assert code == 130
    assert exit_s < 2.0
    assert fig["lost"] == 0 and fig["executed_twice"] == 0, fig
    assert fig["codes"] == {"EXECUTION_IN_DOUBT": 8}, fig
