"""One record or one reply the outside world refuses fails that message alone, over the real
broker: a requestId bearing NUL on PostgreSQL, a record the database refuses, a reply larger
than the broker accepts. Each gets its answer; the worker stays ready and keeps serving."""

from __future__ import annotations

import json
import subprocess
import sys
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


REPLY_LIMIT = 65_536


def test_a_reply_over_the_broker_limit_is_answered_response_too_large(
    start_worker: Callable[..., WorkerProcess],
    agent_env: dict[str, str],
    queue_name: str,
    exec_log: Path,
    wire: Wire,
    tmp_path: Path,
) -> None:
    """The response is recorded whole; the caller is told it is too large and where its record
    is, on the first answer and on a re-send; the message is settled, never redelivered."""
    w = start_worker(
        env={**agent_env, "INTENTUS_MAX_REPLY_BYTES": str(REPLY_LIMIT)},
        records_dir=tmp_path / "records",
    )
    rid = "req-big-reply"
    size = 3 * REPLY_LIMIT
    for _ in range(2):  # the first answer, then a re-send answered from the record
        answer = ask(wire, queue_name, rid, "BigIntent", bytes=size)
        assert answer["status"] == "error", str(answer)[:300]
        assert answer["error"]["code"] == "RESPONSE_TOO_LARGE", answer["error"]
        eid = execution_id_for(rid)
        assert answer["metadata"]["execution_id"] == eid
        assert answer["error"]["details"]["execution_id"] == eid
        assert answer["error"]["details"]["limit_bytes"] == REPLY_LIMIT
        assert answer["error"]["details"]["response_bytes"] > size
        assert eid in answer["error"]["message"]
    assert runs(exec_log, rid) == 1
    record = json.loads(next((tmp_path / "records").rglob(f"{eid}.json")).read_bytes())
    assert record["finalResponse"]["status"] == "success"
    assert len(record["finalResponse"]["payload"]["blob"]) == size
    replayed = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "records",
            "replay",
            eid,
            "--records-dir",
            str(tmp_path / "records"),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert json.loads(replayed) == record["finalResponse"]
    assert wire.nothing_on(f"{queue_name}.dlq", wait=0.5)
    small = ask(wire, queue_name, "req-small-reply", "BigIntent", bytes=10)
    assert small["status"] == "success"
    assert w.ready()
    assert w.metric("intentus_replies_too_large_total") == 2


@pytest.mark.slow
def test_a_reply_over_the_brokers_own_default_limit(
    start_worker: Callable[..., WorkerProcess],
    agent_env: dict[str, str],
    queue_name: str,
    exec_log: Path,
    wire: Wire,
) -> None:
    """With the default setting, a response over RabbitMQ's default max_message_size (128 MiB)
    is answered RESPONSE_TOO_LARGE at once; published, it would close the channel on every
    attempt and end dead-lettered with no answer."""
    w = start_worker(env=agent_env)
    rid = "req-129-mib"
    answer = ask(wire, queue_name, rid, "BigIntent", bytes=129 * 1024 * 1024)
    assert answer["error"]["code"] == "RESPONSE_TOO_LARGE", str(answer)[:300]
    assert answer["error"]["details"]["limit_bytes"] == 128 * 1024 * 1024
    assert runs(exec_log, rid) == 1
    assert wire.nothing_on(f"{queue_name}.dlq", wait=0.5)
    assert "PRECONDITION_FAILED" not in w.logs()
    assert w.ready()


def test_a_record_refused_for_no_stated_reason_fails_alone_while_the_table_works(
    start_worker: Callable[..., WorkerProcess],
    agent_env: dict[str, str],
    queue_name: str,
    exec_log: Path,
    database: str,
    wire: Wire,
) -> None:
    """The database fails one record with an error that does not say it is that record's (an
    internal error, as a value over a server limit may give): as the table takes a row
    meanwhile, the record is at fault, not the store: an error reply and a dead letter for
    that message, never a worker retrying it forever."""
    w = start_worker(env={**agent_env, "INTENTUS_RECORDS_URL": database})
    pg.execute(
        database,
        """CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.request_id = 'refused' THEN
            RAISE EXCEPTION 'cannot hold this one' USING ERRCODE = 'XX000';
          END IF;
          RETURN NEW;
        END $$""",
    )
    pg.execute(
        database,
        "CREATE TRIGGER refuse BEFORE UPDATE OR INSERT ON intentus_executions"
        " FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    wire.publish(
        queue_name,
        body_of(envelope("ProcessIntent", {"n": 1}, request_id="refused")),
        correlation_id="c-refused",
    )
    for i in range(3):
        wire.publish(
            queue_name,
            body_of(envelope("ProcessIntent", {"n": i}, request_id=f"req-beside-{i}")),
            correlation_id=f"c-beside-{i}",
        )
    got = wire.replies(4, timeout=60)
    refused = got.pop("c-refused").json
    assert refused["error"]["code"] == "EXECUTION_IN_DOUBT", refused
    assert all(r.json["status"] == "success" for r in got.values())
    assert wire.get(f"{queue_name}.dlq").props.correlation_id == "c-refused"
    assert runs(exec_log, "refused") == 1
    assert w.wait_until(w.ready, timeout=15)
    assert ask(wire, queue_name, "req-after-refused", n=1)["status"] == "success"
