"""One record or one reply the outside world refuses fails that message alone, over the real
broker: a requestId bearing NUL on PostgreSQL, a record the database refuses, a reply larger
than the broker accepts. Each gets its answer; the worker stays ready and keeps serving."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.canonical import execution_id_for
from tests.faults.load import body_of, envelope, executions
from tests.integration.wire import Wire
from tests.support import pg
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def database() -> Iterator[str]:
    with pg.temporary_database() as url:
        yield url


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.close()


def runs(exec_log: Path, rid: str) -> int:
    return sum(n for (r, _agent), n in executions(exec_log).items() if r == rid)


def ask(wire: Wire, queue: str, rid: str, intent: str = "ProcessIntent", **payload: object) -> dict:
    cid = "c-" + execution_id_for(rid)
    wire.publish(
        queue, body_of(envelope(intent, dict(payload), request_id=rid)), correlation_id=cid
    )
    reply = wire.reply(timeout=30)
    assert reply.props.correlation_id == cid
    return reply.json


def stored(database: str, rid: str) -> bytes | None:
    rows = pg.execute(
        database,
        "SELECT record FROM intentus_executions WHERE execution_id = %s",
        (execution_id_for(rid),),
    )
    return bytes(rows[0][0]) if rows and rows[0][0] is not None else None


def test_nul_request_id_on_postgres_is_answered_and_the_worker_keeps_serving(
    start_worker: Callable[..., WorkerProcess],
    agent_env: dict[str, str],
    queue_name: str,
    exec_log: Path,
    database: str,
    wire: Wire,
) -> None:
    w = start_worker(env={**agent_env, "INTENTUS_RECORDS_URL": database})
    rid = "req-\x00-nul-" + "\u00e9" * 1000
    answer = ask(wire, queue_name, rid, n=1)
    assert answer["status"] == "success", answer
    assert answer["metadata"]["request_id"] == rid
    record = stored(database, rid)
    assert record is not None and json.loads(record)["header"]["requestId"] == rid
    again = ask(wire, queue_name, rid, n=1)  # a re-send is answered from the record
    assert again == answer
    assert runs(exec_log, rid) == 1
    assert w.ready()
    for i in range(5):
        assert ask(wire, queue_name, f"req-after-nul-{i}", n=i)["status"] == "success"
    assert w.ready()


def test_a_record_the_database_refuses_fails_that_message_alone(
    start_worker: Callable[..., WorkerProcess],
    agent_env: dict[str, str],
    queue_name: str,
    exec_log: Path,
    database: str,
    wire: Wire,
) -> None:
    """The record over the database's limits: an error reply naming it, a dead letter, the
    agent never run again, and the worker ready for the rest."""
    w = start_worker(env={**agent_env, "INTENTUS_RECORDS_URL": database})
    pg.execute(
        database,
        "ALTER TABLE intentus_executions ADD CONSTRAINT poison"
        " CHECK (request_id IS DISTINCT FROM 'poison')",
    )
    for i in range(3):
        wire.publish(
            queue_name,
            body_of(envelope("ProcessIntent", {"n": i}, request_id=f"req-mate-{i}")),
            correlation_id=f"c-req-mate-{i}",
        )
    wire.publish(
        queue_name,
        body_of(envelope("ProcessIntent", {"n": 9}, request_id="poison")),
        correlation_id="c-poison",
    )
    got = wire.replies(4, timeout=30)
    refused = got.pop("c-poison").json
    assert refused["status"] == "error"
    assert refused["error"]["code"] == "EXECUTION_IN_DOUBT", refused["error"]
    assert refused["metadata"]["execution_id"] == execution_id_for("poison")
    for reply in got.values():
        assert reply.json["status"] == "success", reply.json
    dead = wire.get(f"{queue_name}.dlq")
    assert b'"poison"' in dead.body
    assert "record" in dead.headers["x-intentus-reject-reason"]
    assert stored(database, "poison") is None
    assert w.ready()
    # The same requestId again: in doubt (it may have run), never run a second time.
    again = ask(wire, queue_name, "poison", n=9)
    assert again["error"]["code"] == "EXECUTION_IN_DOUBT", again
    assert runs(exec_log, "poison") == 1
    assert ask(wire, queue_name, "req-after-poison", n=1)["status"] == "success"
    assert w.ready()
    assert "Traceback" not in w.logs()
