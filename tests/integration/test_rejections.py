"""Over the broker: a message rejected before routing does not consume its requestId.

It is answered with its error, recorded once under its body's rejection id, dead-lettered; the
client may fix it and re-send the same requestId, which runs normally. A valid request and a
malformed copy racing: the valid one is never refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.canonical import execution_id_for, rejection_id_for
from tests.integration.conftest import Agents
from tests.integration.wire import Wire, body_of, envelope
from tests.support import pg
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(params=["files", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "postgres":
        with pg.temporary_database() as url:
            yield {"INTENTUS_RECORDS_URL": url}
        return
    yield {}


@pytest.fixture
def worker(
    start_worker: Callable[..., WorkerProcess], agents: Agents, store_env: dict[str, str]
) -> WorkerProcess:
    return start_worker(env={**agents.env, **store_env})


def stored(worker: WorkerProcess, store_env: dict[str, str], eid: str) -> list[dict[str, Any]]:
    """The records stored under `eid` (0 or 1)."""
    if "INTENTUS_RECORDS_URL" in store_env:
        rows = pg.execute(
            store_env["INTENTUS_RECORDS_URL"],
            "SELECT record FROM intentus_executions WHERE execution_id = %s AND record IS NOT NULL",
            (eid,),
        )
        return [json.loads(bytes(row[0])) for row in rows]  # type: ignore[arg-type]
    return [json.loads(p.read_bytes()) for p in worker.records_dir.rglob(f"{eid}.json")]


def malformed(rid: str, n: int = 0) -> bytes:
    bad = envelope(request_id=rid)
    bad["unexpected"] = n
    return body_of(bad)


def test_malformed_then_fixed_runs(
    wire: Wire, worker: WorkerProcess, agents: Agents, store_env: dict[str, str]
) -> None:
    """Malformed, then valid with the same requestId: the valid one runs and succeeds."""
    rid = "req-fix-me"
    bad = malformed(rid)
    wire.publish(worker.queue, bad, correlation_id="bad")
    refused = wire.reply()
    assert refused.json["error"]["code"] == "VALIDATION_ERROR"
    assert refused.json["metadata"]["execution_id"] == rejection_id_for(bad)
    assert refused.json["metadata"]["request_id"] == rid
    assert wire.get(f"{worker.queue}.dlq").body == bad
    wire.publish(worker.queue, body_of(envelope(request_id=rid)), correlation_id="good")
    fixed = wire.reply()
    assert fixed.props.correlation_id == "good"
    assert fixed.json["status"] == "success", fixed.json
    assert agents.calls() == [f"alpha {rid}"]
    (executed,) = stored(worker, store_env, execution_id_for(rid))
    assert executed["header"]["kind"] == "execution"
    (rejection,) = stored(worker, store_env, rejection_id_for(bad))
    assert rejection["header"]["kind"] == "rejected"
    assert rejection["header"]["requestId"] == rid
    assert rejection["envelope"] is None
    assert rejection["finalResponse"] == refused.json


def test_malformed_redelivered_is_recorded_once(
    wire: Wire, worker: WorkerProcess, store_env: dict[str, str]
) -> None:
    """The same bad body three times: three error replies, three dead letters, one record."""
    bad = malformed("req-bad-again")
    for i in range(3):
        wire.publish(worker.queue, bad, correlation_id=f"again-{i}")
    replies = wire.replies(3)
    assert {r.json["error"]["code"] for r in replies.values()} == {"VALIDATION_ERROR"}
    assert {r.json["metadata"]["execution_id"] for r in replies.values()} == {rejection_id_for(bad)}
    assert [wire.get(f"{worker.queue}.dlq").body for _ in range(3)] == [bad] * 3
    assert len(stored(worker, store_env, rejection_id_for(bad))) == 1
    assert stored(worker, store_env, execution_id_for("req-bad-again")) == []
    assert worker.wait_until(
        lambda: worker.metric("intentus_messages_rejected_total", reason="VALIDATION_ERROR") == 3
    )


def test_valid_and_malformed_copy_racing(wire: Wire, worker: WorkerProcess, agents: Agents) -> None:
    """30 times, a valid request and a malformed copy back to back: the valid one always
    succeeds, runs once; the copy is always its own VALIDATION_ERROR."""
    rids = [f"req-race-{i}" for i in range(30)]
    for i, rid in enumerate(rids):
        first, second = (malformed(rid), body_of(envelope(request_id=rid)))
        if i % 2:
            first, second = second, first
        wire.publish(worker.queue, first, correlation_id=f"{rid}-{'bad' if i % 2 == 0 else 'ok'}")
        wire.publish(worker.queue, second, correlation_id=f"{rid}-{'ok' if i % 2 == 0 else 'bad'}")
    replies = wire.replies(60, timeout=60)
    for rid in rids:
        assert replies[f"{rid}-ok"].json["status"] == "success", replies[f"{rid}-ok"].json
        assert replies[f"{rid}-bad"].json["error"]["code"] == "VALIDATION_ERROR"
    assert sorted(agents.calls()) == sorted(f"alpha {rid}" for rid in rids)
    for _ in range(30):
        wire.get(f"{worker.queue}.dlq")
