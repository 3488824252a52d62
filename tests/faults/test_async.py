"""Async agents over the real broker: many in flight on few routing threads, every strategy
mixed with sync agents, deadlines that cancel, duplicates of a request in flight, a loop blocked
by mistake, SIGTERM with async agents in flight."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.load import (
    Message,
    Publisher,
    body_of,
    envelope,
    executions,
    figures,
    report,
    request,
)
from tests.integration.wire import execution_id, load_record
from tests.support import pg
from tests.support.broker import queue_depth

pytestmark = pytest.mark.integration

ASYNC_AGENTS = "tests.faults.async_agents:registry"


@pytest.fixture
def async_env(exec_log: Path) -> dict[str, str]:
    return {"INTENTUS_AGENTS": ASYNC_AGENTS, "INTENTUS_FAULT_EXEC_LOG": str(exec_log)}


def publish(queue: str, messages) -> None:
    p = Publisher(queue)
    try:
        p.publish_all(messages)
    finally:
        p.close()


def ran(exec_log: Path, agent: str) -> int:
    return sum(n for (_rid, a), n in executions(exec_log).items() if a == agent)


def ends(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["payload"] for e in record["events"] if e["type"] == "AGENT_ATTEMPT_END"]


def test_200_async_agents_in_flight_on_8_routing_threads(
    start_worker, replies, exec_log, async_env, queue_name
):
    """Default concurrency (8 routing threads) and default prefetch: 200 requests whose agent
    awaits 1 s are all waiting at once, and each is answered and recorded once."""
    w = start_worker(env=async_env)
    messages = [request("AwaitIntent", {"sleep_s": 1.0}, replies.queue) for _ in range(200)]
    publish(queue_name, messages)
    cids = {m.correlation_id for m in messages}
    assert replies.wait_for(cids, timeout=60), w.logs()[-3000:]
    fig = report(figures("async-200-in-flight", messages, replies, exec_log))
    most = max(replies.first(c).json["payload"]["most_waiting"] for c in cids)  # type: ignore[union-attr]
    assert fig["lost"] == 0 and fig["codes"] == {"success": 200}, fig
    assert fig["executed_twice"] == 0
    assert most >= 100, f"only {most} async agents waited at once"
    for m in messages[:5]:
        assert m.request_id is not None
        record = load_record(w.records_dir, execution_id(m.request_id))
        assert ends(record)[0]["status"] == "success"
    assert queue_depth(queue_name) == 0


def test_mixed_strategies_and_deadlines_over_the_wire(
    start_worker, replies, exec_log, async_env, queue_name
):
    """FALLBACK from an async failure to a sync agent, BROADCAST over async and sync, PARALLEL,
    and an async agent cancelled at its deadline (its cleanup ran) before a sync fallback."""
    w = start_worker(env=async_env)
    cases = {
        "fallback": request("AsyncMixIntent", {}, replies.queue, strategy="FALLBACK"),
        "broadcast": request("AsyncMixIntent", {}, replies.queue, strategy="BROADCAST"),
        "parallel": request("AsyncMixIntent", {}, replies.queue, strategy="PARALLEL"),
        "deadline": request("AsyncHangIntent", {}, replies.queue, strategy="FALLBACK"),
    }
    publish(queue_name, list(cases.values()))
    assert replies.wait_for({m.correlation_id for m in cases.values()}, timeout=30)

    def answer(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        m = cases[name]
        reply = replies.first(m.correlation_id)
        assert reply is not None and m.request_id is not None
        return reply.json, load_record(w.records_dir, execution_id(m.request_id))

    body, record = answer("fallback")
    assert body["payload"]["by"] == "amix-b"
    assert [e.get("error_code") for e in ends(record)] == ["AGENT_UNAVAILABLE", None]

    body, record = answer("broadcast")
    assert body["payload"]["by"] == "amix-c" and body["metadata"]["attempts"] == 3
    assert [e["agent"] for e in ends(record)] == ["amix-a", "amix-b", "amix-c"]

    body, _record = answer("parallel")
    assert body["status"] == "success" and body["payload"]["by"] in ("amix-b", "amix-c")

    body, record = answer("deadline")
    assert body["payload"]["by"] == "asave"
    first = ends(record)[0]
    assert (first["agent"], first["error_code"], first["cancelled"]) == (
        "ahang",
        "AGENT_TIMEOUT",
        True,
    )
    assert w.wait_until(lambda: ran(exec_log, "ahang-cancelled") == 1, timeout=5)
    assert w.metric("intentus_agent_cancellations_total", agent="ahang") == 1
    assert w.metric("intentus_abandoned_agent_threads") == 0


def test_duplicate_of_an_async_request_in_flight(
    start_worker, replies, exec_log, async_env, queue_name
):
    """The same requestId twice while its async agent waits: the second delivery is parked and
    answered from the first's record; the agent runs once."""
    w = start_worker(env=async_env)
    first = request("AwaitIntent", {"sleep_s": 1.0}, replies.queue, request_id="req-async-dup")
    second = request("AwaitIntent", {"sleep_s": 1.0}, replies.queue, request_id="req-async-dup")
    publish(queue_name, [first, second])
    assert replies.wait_for({first.correlation_id, second.correlation_id}, timeout=30)
    a, b = replies.first(first.correlation_id), replies.first(second.correlation_id)
    assert a is not None and b is not None
    assert a.body == b.body
    assert executions(exec_log)[("req-async-dup", "await")] == 1
    assert w.metric("intentus_duplicates_total", kind="replayed") == 1


def test_a_blocked_loop_is_reported_and_the_worker_stays(
    start_worker, replies, exec_log, async_env, queue_name
):
    """An async agent that calls time.sleep: the worker logs which agent blocks the loop,
    counts it, stays ready (the broker connection has its own thread), and goes on."""
    w = start_worker(env=async_env)
    blocker = request("AsyncBlockIntent", {"block_s": 1.5}, replies.queue)
    publish(queue_name, [blocker])
    assert replies.wait_for({blocker.correlation_id}, timeout=30)
    assert w.metric("intentus_async_loop_stalls_total") >= 1
    assert "agent 'ablock'" in w.logs() and "blocked" in w.logs()
    assert w.ready()
    after = request("AwaitIntent", {"sleep_s": 0.1}, replies.queue)
    publish(queue_name, [after])
    assert replies.wait_for({after.correlation_id}, timeout=30)


def test_sigterm_with_500_async_in_flight(start_worker, replies, exec_log, async_env, queue_name):
    """SIGTERM while 500 async agents wait: the worker finishes them within the grace, replies,
    acks and exits 0; nothing lost, nothing run twice."""
    env = {**async_env, "INTENTUS_SHUTDOWN_GRACE_S": "20"}
    w = start_worker(env=env)
    messages = [request("AwaitIntent", {"sleep_s": 2.0}, replies.queue) for _ in range(500)]
    publish(queue_name, messages)
    assert w.wait_until(lambda: ran(exec_log, "await") == 500, timeout=30)
    time.sleep(0.6)  # the gauge is refreshed every 0.5 s
    assert w.metric("intentus_async_inflight") == 500
    w.signal(signal.SIGTERM)
    code = w.wait(timeout=30)
    cids = {m.correlation_id for m in messages}
    replies.wait_for(cids, timeout=10)
    fig = report(figures("async-sigterm-500", messages, replies, exec_log, exit_code=code))
    assert code == 0, w.logs()[-3000:]
    assert fig["lost"] == 0 and fig["codes"] == {"success": 500}, fig
    assert fig["executed_twice"] == 0
    assert queue_depth(queue_name) == 0


def test_sigterm_past_the_grace_cancels_async_agents(
    start_worker, replies, exec_log, async_env, queue_name
):
    """Async agents still waiting when the grace ends are cancelled (their cleanup runs); their
    messages go back to the broker unacked, and the next worker answers each in doubt, from a
    record; none is run twice, none is lost."""
    env = {**async_env, "INTENTUS_SHUTDOWN_GRACE_S": "1"}
    w = start_worker(env=env)
    messages = [request("AwaitIntent", {"sleep_s": 60}, replies.queue) for _ in range(50)]
    publish(queue_name, messages)
    assert w.wait_until(lambda: ran(exec_log, "await") == 50, timeout=30)
    w.signal(signal.SIGTERM)
    assert w.wait(timeout=30) == 75
    assert ran(exec_log, "await-cancelled") == 50
    cids = {m.correlation_id for m in messages}
    assert replies.count(cids) == 0  # nothing answered (nor acked) without its record
    w2 = start_worker(env=env)
    assert replies.wait_for(cids, timeout=30), w2.logs()[-3000:]
    fig = report(figures("async-sigterm-past-grace", messages, replies, exec_log))
    assert fig["lost"] == 0 and fig["codes"] == {"EXECUTION_IN_DOUBT": 50}, fig
    assert fig["executed_twice"] == 0
    for m in messages[:5]:
        assert m.request_id is not None
        record = load_record(w2.records_dir, execution_id(m.request_id))
        assert record["finalResponse"]["error"]["code"] == "EXECUTION_IN_DOUBT"
    assert queue_depth(queue_name) == 0


@pytest.fixture(params=["files", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "postgres":
        with pg.temporary_database() as url:
            yield {"INTENTUS_RECORDS_URL": url}
        return
    yield {"INTENTUS_RECORDS_DIR": str(tmp_path / "shared-records")}


def twins(n: int, reply_to: str, sleep_s: float) -> list[Message]:
    out = []
    for _ in range(n):
        rid = f"arace-{uuid.uuid4().hex[:12]}"
        body = body_of(envelope("AwaitIntent", {"sleep_s": sleep_s}, request_id=rid))
        out += [Message(body, uuid.uuid4().hex, request_id=rid, reply_to=reply_to) for _ in "ab"]
    return out


def test_race_of_three_workers_with_async_agents(
    start_worker, replies, exec_log, async_env, store_env, queue_name, tmp_path
):
    """Three workers, each requestId sent twice at once, the agent async: one execution and
    one answer per requestId, on either store."""
    env = {**async_env, **store_env}
    workers = [start_worker(records_dir=tmp_path / "shared-records", env=env) for _ in range(3)]
    messages = twins(100, replies.queue, sleep_s=0.2)
    publish(queue_name, messages)
    assert replies.wait_for({m.correlation_id for m in messages}, timeout=60)
    fig = report(figures("async-race-twins", messages, replies, exec_log, workers=len(workers)))
    assert fig["lost"] == 0 and fig["executed_twice"] == 0, fig
    assert fig["inconsistent_replies"] == 0 and fig["codes"] == {"success": 200}, fig
    answers: dict[str | None, set[bytes]] = {}
    for m in messages:
        reply = replies.first(m.correlation_id)
        assert reply is not None
        answers.setdefault(m.request_id, set()).add(reply.body)
    assert all(len(bodies) == 1 for bodies in answers.values())


def test_sigkill_with_async_agents_in_flight(
    start_worker, replies, exec_log, async_env, store_env, queue_name, tmp_path
):
    """SIGKILL while 100 async agents wait: the next worker answers every request, those
    that had started in doubt (from a record), none run twice, none lost."""
    env = {**async_env, **store_env}
    w = start_worker(records_dir=tmp_path / "shared-records", env=env)
    messages = [request("AwaitIntent", {"sleep_s": 30}, replies.queue) for _ in range(100)]
    publish(queue_name, messages)
    assert w.wait_until(lambda: ran(exec_log, "await") == 100, timeout=30)
    w.kill()
    start_worker(records_dir=tmp_path / "shared-records", env=env)
    cids = {m.correlation_id for m in messages}
    assert replies.wait_for(cids, timeout=60)
    fig = report(figures("async-sigkill", messages, replies, exec_log))
    assert fig["lost"] == 0 and fig["executed_twice"] == 0, fig
    assert fig["codes"] == {"EXECUTION_IN_DOUBT": 100}, fig


def test_parallel_over_async_agents_holds_no_thread(
    start_worker, replies, exec_log, async_env, queue_name
):
    """PARALLEL over async agents only, 100 requests on 8 routing threads: the winners all
    wait at once, and every straggler is cancelled (its cleanup ran)."""
    w = start_worker(env=async_env)
    messages = [
        request("RaceAsyncIntent", {}, replies.queue, strategy="PARALLEL") for _ in range(100)
    ]
    publish(queue_name, messages)
    cids = {m.correlation_id for m in messages}
    assert replies.wait_for(cids, timeout=60), w.logs()[-3000:]
    fig = report(figures("async-parallel-100", messages, replies, exec_log))
    assert fig["lost"] == 0 and fig["codes"] == {"success": 100}, fig
    most = max(replies.first(c).json["payload"]["most_waiting"] for c in cids)  # type: ignore[union-attr]
    assert most >= 50, f"only {most} PARALLEL winners waited at once"
    assert w.wait_until(lambda: ran(exec_log, "pslow-cancelled") == 100, timeout=10)
    assert w.metric("intentus_agent_cancellations_total", agent="pslow") == 100
