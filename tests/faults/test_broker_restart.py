"""Scenario 3: the broker stops and starts mid-run; the worker reconnects and nothing is lost."""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.brokerctl import ctl, ensure_running, require_rabbitmqctl, wait_up
from tests.faults.load import Publisher, figures, report
from tests.faults.test_kills import assert_promise_kept, check_store, make_messages

pytestmark = pytest.mark.integration


def run_restart(
    scenario, start_worker, replies, exec_log, agent_env, tmp_path, queue_name, n, restarts, rate
):
    require_rabbitmqctl()
    records = tmp_path / "records"
    w = start_worker(records_dir=records, env=agent_env)
    messages = make_messages(n, replies.queue)
    cids = {m.correlation_id for m in messages}
    publisher = Publisher(queue_name, retry_for_s=180)
    t = threading.Thread(target=publisher.publish_all, args=(messages, rate), daemon=True)
    started = time.monotonic()
    reconnect_s: list[float] = []
    down_s: list[float] = []
    try:
        t.start()
        for i in range(restarts):
            target = n * (i + 1) // (restarts + 2)
            while replies.count(cids) < target and time.monotonic() - started < 300:
                time.sleep(0.02)
            t0 = time.monotonic()
            ctl("stop_app", timeout=120)
            time.sleep(2.0)
            ctl("start_app", timeout=120)
            assert wait_up(60)
            back = time.monotonic()
            down_s.append(round(back - t0, 2))
            assert w.wait_until(
                lambda: w.metric("intentus_broker_connected") == 1.0 and w.ready(),
                timeout=30,
                interval=0.05,
            ), w.logs()[-3000:]
            reconnect_s.append(round(time.monotonic() - back, 2))
    finally:
        ensure_running()
    t.join(timeout=300)
    complete = replies.wait_for(cids, timeout=300, idle_timeout=90)
    reconnects = w.metric("intentus_broker_reconnects_total")
    assert w.stop() == 0, w.logs()[-3000:]
    start_worker(records_dir=records, env=agent_env).stop()
    store = check_store(records, messages)
    fig = report(
        figures(
            scenario,
            messages,
            replies,
            exec_log,
            broker_restarts=restarts,
            broker_down_s=down_s,
            reconnect_after_broker_back_s=reconnect_s,
            worker_reconnects_metric=reconnects,
            publisher_republished=publisher.republished,
            publisher_reconnects=publisher.reconnects,
            publish_rate_per_s=rate,
            collector_reconnects=replies.reconnects,
            seconds=round(time.monotonic() - started, 1),
            **store,
        )
    )
    publisher.close()
    assert_promise_kept(fig, complete, store)
    assert all(s <= 5.0 for s in reconnect_s), fig


def test_broker_restart_fast(start_worker, replies, exec_log, agent_env, tmp_path, queue_name):
    """1000 requests; RabbitMQ stopped (stop_app) and started once mid-run."""
    run_restart(
        "3-broker-restart-fast",
        start_worker,
        replies,
        exec_log,
        agent_env,
        tmp_path,
        queue_name,
        1000,
        1,
        150,
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_broker_restart_full(start_worker, replies, exec_log, agent_env, tmp_path, queue_name):
    """10 000 requests; RabbitMQ stopped and started three times mid-run."""
    run_restart(
        "3-broker-restart-full",
        start_worker,
        replies,
        exec_log,
        agent_env,
        tmp_path,
        queue_name,
        10_000,
        3,
        300,
    )
