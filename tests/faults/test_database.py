"""Scenario 12: the PostgreSQL store fails under a running worker, then comes back.

Two faults: the records table becomes unwritable (renamed away, as a botched migration or a
revoked grant would do), and every database session of the worker is cut (a failover, a
restarted server, a network cut: the liveness session goes too). Either way the worker stops
taking messages, reports not ready, replies to nothing it has not recorded, runs nothing
twice, and resumes by itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.load import Collector, Message, Publisher, body_of, envelope, executions, report
from tests.support import pg
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def database() -> Iterator[str]:
    with pg.temporary_database() as url:
        yield url


def batch(n: int, reply_to: str, tag: str) -> list[Message]:
    out = []
    for i in range(n):
        rid = f"{tag}-{uuid.uuid4().hex[:12]}"
        body = body_of(envelope("ProcessIntent", {"n": i, "sleep_ms": 5}, request_id=rid))
        out.append(Message(body, uuid.uuid4().hex, rid, reply_to=reply_to))
    return out


def send(queue: str, messages: list[Message]) -> None:
    p = Publisher(queue)
    try:
        p.publish_all(messages)
    finally:
        p.close()


def check(fig: dict[str, object], complete: bool) -> None:
    assert complete and fig["lost"] == 0, fig
    assert fig["executed_twice"] == 0, fig


def test_table_unwritable_then_back(
    start_worker: Callable[..., WorkerProcess],
    replies: Collector,
    agent_env: dict[str, str],
    queue_name: str,
    exec_log: Path,
    database: str,
) -> None:
    """Records table renamed away mid-run: not ready, nothing replied unrecorded, resumes."""
    w = start_worker(env={**agent_env, "INTENTUS_RECORDS_URL": database})
    before = batch(50, replies.queue, "before")
    send(queue_name, before)
    assert replies.wait_for({m.correlation_id for m in before}, timeout=30)
    pg.execute(database, "ALTER TABLE intentus_executions RENAME TO away")
    during = batch(50, replies.queue, "during")
    send(queue_name, during)
    went_unready = w.wait_until(lambda: not w.ready(), timeout=15)
    replied_while_down = replies.count({m.correlation_id for m in during})
    time.sleep(1.0)
    pg.execute(database, "ALTER TABLE away RENAME TO intentus_executions")
    back = w.wait_until(w.ready, timeout=20)
    complete = replies.wait_for({m.correlation_id for m in before + during}, timeout=60)
    runs = executions(exec_log)
    recorded = pg.execute(
        database, "SELECT count(*) FROM intentus_executions WHERE record IS NOT NULL"
    )[0][0]
    fig = report(
        {
            "scenario": "12-database-table-unwritable",
            "sent": 100,
            "replied": replies.count({m.correlation_id for m in before + during}),
            "lost": 100 - replies.count({m.correlation_id for m in before + during}),
            "executed_twice": sum(1 for n in runs.values() if n > 1),
            "went_unready": went_unready,
            "replied_while_down": replied_while_down,
            "resumed": back,
            "records": recorded,
        }
    )
    check(fig, complete)
    assert went_unready and back, fig
    assert recorded == 100, fig
    assert w.stop() == 0


def test_sessions_cut_then_back(
    start_worker: Callable[..., WorkerProcess],
    replies: Collector,
    agent_env: dict[str, str],
    queue_name: str,
    exec_log: Path,
    database: str,
) -> None:
    """Every session of the worker terminated mid-run, twice: 0 lost, 0 run twice."""
    w = start_worker(env={**agent_env, "INTENTUS_RECORDS_URL": database})
    messages = batch(400, replies.queue, "cut")
    send(queue_name, messages)
    name = database.rsplit("/", 1)[1]
    cids = {m.correlation_id for m in messages}
    cut = 0
    for round_ in (1, 2):
        w.wait_until(lambda r=round_: replies.count(cids) > 100 * r)
        rows = pg.execute(
            pg.url_for("postgres"),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        cut += len(rows)
    complete = replies.wait_for({m.correlation_id for m in messages}, timeout=90)
    runs = executions(exec_log)
    codes: dict[str, int] = {}
    for m in messages:
        reply = replies.first(m.correlation_id)
        if reply is not None:
            codes[reply.code or "success"] = codes.get(reply.code or "success", 0) + 1
    fig = report(
        {
            "scenario": "12-database-sessions-cut",
            "sent": len(messages),
            "replied": replies.count({m.correlation_id for m in messages}),
            "lost": len(messages) - replies.count({m.correlation_id for m in messages}),
            "executed_twice": sum(1 for n in runs.values() if n > 1),
            "sessions_terminated": cut,
            "codes": codes,
        }
    )
    check(fig, complete)
    assert cut >= 2, fig
    assert set(codes) == {"success"}, fig
    assert w.wait_until(w.ready, timeout=20)
    assert w.stop() == 0
