"""A claim outlives every failure after an agent ran: one real worker, each execution store.

- The same requestId twice at once to ONE worker (its routing threads race each other):
  one execution, no EXECUTION_IN_DOUBT, one record per requestId, both callers answered with it.
- A handler raising what `except Exception` does not catch (SystemExit, KeyboardInterrupt,
  GeneratorExit, any BaseException): an agent failure, recorded and answered once; the routing
  threads all survive; a re-send of the same requestId never runs the agent again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.canonical import execution_id_for
from tests.faults.load import Collector, Message, Publisher, body_of, envelope, executions
from tests.support import pg
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration

AGENTS = "tests.faults.claims_agents:registry"
PAIRS = 300


@pytest.fixture(params=["files", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "postgres":
        with pg.temporary_database() as url:
            yield {"INTENTUS_RECORDS_URL": url}
        return
    yield {"INTENTUS_RECORDS_DIR": str(tmp_path / "records")}


@pytest.fixture
def worker_env(exec_log: Path, store_env: dict[str, str]) -> dict[str, str]:
    return {"INTENTUS_AGENTS": AGENTS, "INTENTUS_FAULT_EXEC_LOG": str(exec_log), **store_env}


def stored_record(store_env: dict[str, str], records_dir: Path, eid: str) -> dict[str, Any] | None:
    if "INTENTUS_RECORDS_URL" in store_env:
        rows = pg.execute(
            store_env["INTENTUS_RECORDS_URL"],
            "SELECT record FROM intentus_executions WHERE execution_id = %s",
            (eid,),
        )
        return json.loads(bytes(rows[0][0])) if rows and rows[0][0] is not None else None  # type: ignore[arg-type]
    path = records_dir / eid[5:8] / f"{eid}.json"
    return json.loads(path.read_text()) if path.exists() else None


def publish(queue: str, messages: list[Message]) -> None:
    p = Publisher(queue)
    try:
        p.publish_all(messages)
    finally:
        p.close()


def test_one_worker_same_request_twice_at_once(
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
    store_env: dict[str, str],
    replies: Collector,
    queue_name: str,
    exec_log: Path,
    tmp_path: Path,
) -> None:
    """300 requestIds, each sent twice back to back to one worker: each runs exactly once."""
    worker = start_worker(env=worker_env)
    messages: list[Message] = []
    for i in range(PAIRS):
        rid = f"twin-{uuid.uuid4().hex[:12]}"
        body = body_of(envelope("ProcessIntent", {"n": i, "sleep_ms": 2}, request_id=rid))
        for _ in range(2):
            messages.append(Message(body, uuid.uuid4().hex, request_id=rid, reply_to=replies.queue))
    publish(queue_name, messages)
    assert replies.wait_for({m.correlation_id for m in messages}, timeout=120)
    runs = executions(exec_log)
    twice = {rid: n for (rid, _agent), n in runs.items() if n != 1}
    assert twice == {}
    codes: dict[str, set[str | None]] = {}
    bodies: dict[str, set[bytes]] = {}
    for m in messages:
        reply = replies.first(m.correlation_id)
        assert reply is not None
        assert m.request_id is not None
        codes.setdefault(m.request_id, set()).add(reply.code)
        bodies.setdefault(m.request_id, set()).add(reply.body)
    in_doubt = sorted(rid for rid, c in codes.items() if "EXECUTION_IN_DOUBT" in c)
    assert in_doubt == []
    assert {rid for rid, c in codes.items() if c != {None}} == set()
    # The duplicate was answered from the record: the same body for both deliveries.
    assert {rid for rid, b in bodies.items() if len(b) != 1} == set()
    for rid, (reply_body,) in bodies.items():
        record = stored_record(store_env, tmp_path / "records", execution_id_for(rid))
        assert record is not None, f"no record for {rid}"
        assert record["header"]["kind"] == "execution"
        assert json.loads(reply_body) == record["finalResponse"]
        assert runs[(rid, "work")] == 1
    assert worker.metric("intentus_records_written_total") == PAIRS
    assert "recorded by another worker meanwhile" not in worker.logs()
    # Sent once more each, later: answered from the record, nothing runs again.
    later = [
        Message(m.body, uuid.uuid4().hex, request_id=m.request_id, reply_to=replies.queue)
        for m in messages[::2]
    ]
    publish(queue_name, later)
    assert replies.wait_for({m.correlation_id for m in later}, timeout=120)
    for m in later:
        reply = replies.first(m.correlation_id)
        assert reply is not None and m.request_id is not None
        assert {reply.body} == bodies[m.request_id]
    assert executions(exec_log) == runs
    assert worker.metric("intentus_records_written_total") == PAIRS


@pytest.mark.parametrize("raised", ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "Custom"])
@pytest.mark.parametrize("strategy", ["DIRECT", "PARALLEL"])
def test_handler_raising_base_exception_is_an_agent_failure(
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
    store_env: dict[str, str],
    replies: Collector,
    queue_name: str,
    exec_log: Path,
    tmp_path: Path,
    raised: str,
    strategy: str,
) -> None:
    """More raising requests than routing threads: each answered INTERNAL_AGENT_ERROR once,
    recorded once; the worker keeps routing; a re-send runs nothing."""
    worker = start_worker(env={**worker_env, "INTENTUS_CONCURRENCY": "2"})
    rids = [f"raise-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    first = [
        Message(
            body_of(envelope("RaiseIntent", {"raise": raised}, request_id=rid, strategy=strategy)),
            uuid.uuid4().hex,
            request_id=rid,
            reply_to=replies.queue,
        )
        for rid in rids
    ]
    publish(queue_name, first)
    assert replies.wait_for({m.correlation_id for m in first}, timeout=30)
    for m in first:
        reply = replies.first(m.correlation_id)
        assert reply is not None
        assert reply.code == "INTERNAL_AGENT_ERROR", reply.json
        assert raised in json.dumps(reply.json["error"])
    # Past the agent's 2 s deadline: nothing carried the request on and answered it again.
    time.sleep(3.0)
    assert {m.correlation_id: len(replies.replies[m.correlation_id]) for m in first} == {
        m.correlation_id: 1 for m in first
    }
    # Both routing threads are alive: ordinary requests are still routed.
    ok = Message(
        body_of(envelope("ProcessIntent", {"n": 1})), uuid.uuid4().hex, reply_to=replies.queue
    )
    again = [
        Message(m.body, uuid.uuid4().hex, request_id=m.request_id, reply_to=replies.queue)
        for m in first
    ]
    publish(queue_name, [ok, *again])
    assert replies.wait_for({m.correlation_id for m in [ok, *again]}, timeout=30)
    ok_reply = replies.first(ok.correlation_id)
    assert ok_reply is not None and ok_reply.code is None
    for old, new in zip(first, again, strict=True):
        reply, previous = replies.first(new.correlation_id), replies.first(old.correlation_id)
        assert reply is not None and previous is not None
        assert reply.body == previous.body  # answered from the record
    runs = executions(exec_log)
    assert {rid: runs[(rid, "raiser")] for rid in rids} == dict.fromkeys(rids, 1)
    for rid in rids:
        record = stored_record(store_env, tmp_path / "records", execution_id_for(rid))
        assert record is not None
        assert record["finalResponse"]["error"]["code"] == "INTERNAL_AGENT_ERROR"
    assert worker.ready()
    assert worker.metric("intentus_records_written_total") == len(rids) + 1
