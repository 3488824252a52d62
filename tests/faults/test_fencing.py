"""PostgreSQL fencing guards the reply, not only the record.

Worker A runs an agent; its liveness session is cut (a failover, a network cut), worker B
takes the request over and is about to record it in doubt. A's agent then finishes: A's record
write is fenced (the claim is B's), and A must not answer its own result, which is not the
durable record. Nothing is replied that is not the durable record.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.canonical import execution_id_for
from tests.faults.load import Collector, Message, Publisher, body_of, envelope
from tests.support import pg
from tests.support.broker import delete_topology, unique
from tests.support.workerproc import ROOT, WorkerProcess

pytestmark = pytest.mark.integration

AGENTS = textwrap.dedent(
    """
    import os, time
    from runtime import AgentRegistry

    registry = AgentRegistry()


    @registry.agent("gated", intents=["GatedIntent"], timeout_s=300)
    def gated(envelope):
        with open(os.environ["FENCE_TEST_RUNS"], "a") as f:
            f.write(f"{envelope.metadata.requestId} {os.getpid()}\\n")
        gate = os.environ["FENCE_TEST_GATE"]
        while not os.path.exists(gate):
            time.sleep(0.05)
        return {"ran": True}
    """
)

# Holds back in-doubt records (raises, so no row lock is kept): B's takeover stays unrecorded
# until the test lets it through. The error is one of the store's (a lock not available), not
# one of the record's own, so B keeps the record and writes it again until it is let through.
HOLD_IN_DOUBT = (
    """CREATE FUNCTION hold_in_doubt() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION USING ERRCODE = 'lock_not_available',
        MESSAGE = 'in-doubt records held by the test'; END $$""",
    """CREATE TRIGGER hold_in_doubt BEFORE UPDATE ON intentus_executions FOR EACH ROW
    WHEN (NEW.error_code = 'EXECUTION_IN_DOUBT') EXECUTE FUNCTION hold_in_doubt()""",
)
RELEASE_IN_DOUBT = "DROP TRIGGER hold_in_doubt ON intentus_executions"

TERMINATE_OWNER = """
SELECT pg_terminate_backend(l.pid) FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.objsubid = 1
  AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
"""


@pytest.fixture
def database() -> Iterator[str]:
    with pg.temporary_database() as url:
        yield url


@pytest.fixture
def other_queue() -> Iterator[str]:
    name = unique("fence")
    yield name
    delete_topology(name)


class SessionCutter:
    """Cuts one worker's liveness session again and again (it reconnects within a second)."""

    def __init__(self, url: str, owner_key: int) -> None:
        self.url = url
        self.owner_key = owner_key
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pg.execute(self.url, TERMINATE_OWNER, (self.owner_key,))
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _row(url: str, rid: str) -> tuple[object, ...]:
    """(owner, owner_key, recorded) of the request's row."""
    rows = pg.execute(
        url,
        "SELECT owner, owner_key, record IS NOT NULL FROM intentus_executions"
        " WHERE execution_id = %s",
        (execution_id_for(rid),),
    )
    return rows[0] if rows else (None, None, False)


def _send(queue: str, message: Message) -> None:
    publisher = Publisher(queue)
    try:
        publisher.publish_all([message])
    finally:
        publisher.close()


def _wait(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_fenced_worker_answers_only_the_durable_record(
    start_worker: Callable[..., WorkerProcess],
    replies: Collector,
    queue_name: str,
    other_queue: str,
    database: str,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "agents"
    folder.mkdir()
    (folder / "gated_agents.py").write_text(AGENTS)
    runs, gate = tmp_path / "runs.log", tmp_path / "gate"
    env = {
        "INTENTUS_AGENTS": "gated_agents:registry",
        "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]),
        "INTENTUS_RECORDS_URL": database,
        "FENCE_TEST_RUNS": str(runs),
        "FENCE_TEST_GATE": str(gate),
    }
    rid = f"fence-{uuid.uuid4().hex[:12]}"
    body = body_of(envelope("GatedIntent", {}, request_id=rid))
    first = Message(body, "cid-first", rid, reply_to=replies.queue)
    again = Message(body, "cid-again", rid, reply_to=replies.queue)

    a = start_worker(env=env)
    _send(queue_name, first)
    assert _wait(lambda: runs.exists() and rid in runs.read_text(), 30), a.logs()
    a_owner, a_key, _ = _row(database, rid)
    for statement in HOLD_IN_DOUBT:
        pg.execute(database, statement)
    cutter = SessionCutter(database, int(a_key))  # type: ignore[arg-type]
    try:
        # B shares the database, not the queue: the duplicate reaches B, not A.
        b = WorkerProcess(other_queue, tmp_path / "records-b", reply_queue=replies.queue, env=env)
        b.log_path = tmp_path / "worker-b.log"
        b.start()
        try:
            b.wait_ready()
            _send(other_queue, again)
            assert _wait(lambda: _row(database, rid)[0] not in (None, a_owner), 30), b.logs()
        finally:
            cutter.stop()
        # A is alive again; its agent finishes, and its record write is fenced: the claim is
        # B's, and B's in-doubt record is not written yet.
        assert a.wait_until(a.ready, timeout=30), a.logs()
        gate.write_text("go")
        assert a.wait_until(lambda: "another worker" in a.logs(), timeout=30), a.logs()
        time.sleep(1.0)  # room for a wrong answer to arrive before the record exists
        early = replies.first("cid-first")
        pg.execute(database, RELEASE_IN_DOUBT)
        assert replies.wait_for({"cid-first", "cid-again"}, timeout=60), (a.logs(), b.logs())
    finally:
        b.stop()
    record = pg.execute(
        database,
        "SELECT record FROM intentus_executions WHERE execution_id = %s",
        (execution_id_for(rid),),
    )
    assert record, "no record"
    stored = json.loads(bytes(record[0][0]))
    assert stored["finalResponse"]["error"]["code"] == "EXECUTION_IN_DOUBT"
    assert early is None or early.code == "EXECUTION_IN_DOUBT", early.json
    for cid in ("cid-first", "cid-again"):
        answer = replies.first(cid)
        assert answer is not None and answer.code == "EXECUTION_IN_DOUBT", (cid, answer)
    assert runs.read_text().count(rid) == 1
    assert a.stop() == 0


@pytest.mark.timeout(300)
def test_frozen_worker_loses_its_claims(
    start_worker: Callable[..., WorkerProcess],
    replies: Collector,
    queue_name: str,
    other_queue: str,
    database: str,
    tmp_path: Path,
) -> None:
    """A worker that stops answering (its host died or froze: no FIN reaches the server, so
    the server's own TCP keepalive would hold its session for hours) loses its liveness lock
    within seconds: a duplicate of its request is answered EXECUTION_IN_DOUBT."""
    folder = tmp_path / "agents"
    folder.mkdir()
    (folder / "gated_agents.py").write_text(AGENTS)
    runs = tmp_path / "runs.log"
    env = {
        "INTENTUS_AGENTS": "gated_agents:registry",
        "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]),
        "INTENTUS_RECORDS_URL": database,
        "FENCE_TEST_RUNS": str(runs),
        "FENCE_TEST_GATE": str(tmp_path / "never"),
    }
    rid = f"frozen-{uuid.uuid4().hex[:12]}"
    body = body_of(envelope("GatedIntent", {}, request_id=rid))
    a = start_worker(env=env)
    _send(queue_name, Message(body, "cid-first", rid, reply_to=replies.queue))
    assert _wait(lambda: runs.exists() and rid in runs.read_text(), 30), a.logs()
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)  # nothing more from it: no query, no FIN
    try:
        b = WorkerProcess(other_queue, tmp_path / "records-b", reply_queue=replies.queue, env=env)
        b.log_path = tmp_path / "worker-b.log"
        b.start()
        try:
            b.wait_ready()
            _send(other_queue, Message(body, "cid-again", rid, reply_to=replies.queue))
            answered = replies.wait_for({"cid-again"}, timeout=150)
        finally:
            b.stop()
    finally:
        a.proc.send_signal(signal.SIGCONT)
        a.kill()
    assert answered, b.logs()
    reply = replies.first("cid-again")
    assert reply is not None and reply.code == "EXECUTION_IN_DOUBT", reply
    assert runs.read_text().count(rid) == 1
