"""Scenarios 8 and 9: a reply queue that is gone, and a message that would be redelivered
forever (its reply is always refused) stopped by the quorum delivery limit."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.faults.load import Publisher, executions, report, request
from tests.support.broker import connection, get_all, queue_depth

pytestmark = pytest.mark.integration


def test_reply_queue_deleted(start_worker, exec_log, agent_env, queue_name):
    """Replies to a missing queue (never declared, or deleted while the agent ran) are counted
    unroutable; the requests are acked once and never redelivered."""
    w = start_worker(env=agent_env)
    publisher = Publisher(queue_name)
    missing = [request("ProcessIntent", {"n": i}, f"gone.{uuid.uuid4().hex}") for i in range(20)]
    doomed = f"doomed.{uuid.uuid4().hex}"
    conn = connection()
    try:
        conn.channel().queue_declare(doomed)
        late = [request("SlowIntent", {"sleep_s": 1.0}, doomed) for _ in range(5)]
        publisher.publish_all(missing + late)
        time.sleep(0.3)
        conn.channel().queue_delete(doomed)  # deleted while the agents run
    finally:
        conn.close()
        publisher.close()
    total = len(missing) + len(late)
    assert w.wait_until(
        lambda: w.metric("intentus_replies_published_total", outcome="unroutable") >= total,
        timeout=20,
    ), w.logs()[-2000:]
    time.sleep(3.0)  # a redelivery loop would show up here
    received = w.metric("intentus_messages_received_total")
    unroutable = w.metric("intentus_replies_published_total", outcome="unroutable")
    depth_running = queue_depth(queue_name)
    assert w.stop() == 0
    depth_after_stop = queue_depth(queue_name)  # unacked deliveries would be back now
    runs = executions(exec_log)
    rids = {m.request_id for m in missing + late}
    fig = report(
        {
            "scenario": "8-reply-queue-deleted",
            "sent": total,
            "received_by_worker": received,
            "replies_unroutable": unroutable,
            "left_in_queue_after_stop": depth_after_stop,
            "executed": sum(1 for (rid, _a) in runs if rid in rids),
            "executed_twice": sum(1 for (rid, _a), n in runs.items() if rid in rids and n > 1),
        }
    )
    assert received == total and unroutable == total, fig
    assert depth_running == 0 and depth_after_stop == 0, fig
    assert fig["executed"] == total and fig["executed_twice"] == 0, fig


def test_poison_message_reaches_the_dlq(start_worker, exec_log, agent_env, queue_name):
    """A reply queue that refuses every publish (max-length 0, reject-publish) makes the worker
    nack-and-requeue forever; x-delivery-limit (3 here) dead-letters the message instead."""
    limit = 3
    env = {**agent_env, "INTENTUS_DELIVERY_LIMIT": str(limit)}
    w = start_worker(env=env)
    refusing = f"refusing.{uuid.uuid4().hex}"
    conn = connection()
    try:
        conn.channel().queue_declare(
            refusing, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        m = request("ProcessIntent", {"n": 1}, refusing)
        publisher = Publisher(queue_name)
        t0 = time.monotonic()
        publisher.publish(m)
        publisher.close()
        dlq = f"{queue_name}.dlq"
        landed = w.wait_until(lambda: queue_depth(dlq) >= 1, timeout=30)
        to_dlq_s = time.monotonic() - t0
        time.sleep(1.0)
        received = w.metric("intentus_messages_received_total")
        failed = w.metric("intentus_replies_published_total", outcome="failed")
        replayed = w.metric("intentus_duplicates_total", kind="replayed")
        dead = get_all(dlq)
        depth = queue_depth(queue_name)
    finally:
        conn.channel().queue_delete(refusing)
        conn.close()
    runs = executions(exec_log)
    death = dict(dead[0][1].headers or {}).get("x-death") if dead else None
    fig = report(
        {
            "scenario": "9-poison-delivery-limit",
            "delivery_limit": limit,
            "deliveries_to_worker": received,
            "replies_refused": failed,
            "answered_from_record": replayed,
            "in_dlq": len(dead),
            "seconds_to_dlq": round(to_dlq_s, 2),
            "dlq_reason": str(death[0].get("reason")) if death else None,
            "executed": runs.get((m.request_id, "work"), 0),
            "left_in_queue": depth,
        }
    )
    assert landed and len(dead) == 1 and depth == 0, fig
    assert fig["executed"] == 1, "the agent ran once; redeliveries were answered from the record"
    assert received <= limit + 1, fig
    assert w.proc is not None and w.proc.poll() is None
    assert w.stop() == 0
