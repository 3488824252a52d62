"""Scenario 11: several workers race on one requestId, for each execution store.

Three real worker processes consume one queue and share one store (a records folder on this
host, or a PostgreSQL database). Each requestId is sent twice at once as two fresh messages
(what a client does when it re-sends after a timeout). Counted from the agents' side
effects: executed twice; from the replies: lost, and callers of one requestId answered
differently; from the records: valid executions taken over by a malformed twin; with two
broker users: another user's stored answer read by re-sending its requestId.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.canonical import execution_id_for
from tests.faults.brokerctl import TempUser, require_rabbitmqctl
from tests.faults.load import (
    Collector,
    Message,
    Publisher,
    body_of,
    envelope,
    executions,
    report,
)
from tests.support import pg
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration

WORKERS = 3


@pytest.fixture(params=["files", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Worker environment selecting the store all the workers share."""
    if request.param == "postgres":
        with pg.temporary_database() as url:
            yield {"INTENTUS_RECORDS_URL": url}
        return
    yield {"INTENTUS_RECORDS_DIR": str(tmp_path / "records")}


@pytest.fixture
def workers(
    start_worker: Callable[..., WorkerProcess],
    agent_env: dict[str, str],
    store_env: dict[str, str],
    tmp_path: Path,
) -> Callable[..., list[WorkerProcess]]:
    def start(n: int = WORKERS, **env: str) -> list[WorkerProcess]:
        return [
            start_worker(records_dir=tmp_path / "records", env={**agent_env, **store_env, **env})
            for _ in range(n)
        ]

    return start


def twins(n: int, reply_to: str, *, sleep_ms: int = 30) -> list[Message]:
    """Each requestId twice, as two messages with their own correlation ids."""
    out = []
    for i in range(n):
        rid = f"race-{uuid.uuid4().hex[:12]}"
        body = body_of(envelope("ProcessIntent", {"n": i, "sleep_ms": sleep_ms}, request_id=rid))
        for _ in range(2):
            out.append(Message(body, uuid.uuid4().hex, request_id=rid, reply_to=reply_to))
    return out


def publish(queue: str, messages: list[Message], url: str | None = None) -> None:
    p = Publisher(queue) if url is None else Publisher(queue, url=url, retry_for_s=0)
    try:
        p.publish_all(messages)
    finally:
        p.close()


def by_request(messages: list[Message], replies: Collector) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = {}
    for m in messages:
        reply = replies.first(m.correlation_id)
        if reply is not None and m.request_id is not None:
            out.setdefault(m.request_id, set()).add(reply.body)
    return out


def test_each_request_sent_twice_at_once_runs_once(
    workers: Callable[..., list[WorkerProcess]],
    replies: Collector,
    queue_name: str,
    exec_log: Path,
    store_env: dict[str, str],
) -> None:
    """Three workers, every requestId twice at once: one execution, one answer for both."""
    started = workers()
    messages = twins(120, replies.queue)
    publish(queue_name, messages)
    complete = replies.wait_for({m.correlation_id for m in messages}, timeout=120)
    runs = executions(exec_log)
    answers = by_request(messages, replies)
    fig = report(
        {
            "scenario": f"race-twins-{_kind(store_env)}",
            "workers": len(started),
            "requests": 120,
            "sent": len(messages),
            "replied": replies.count({m.correlation_id for m in messages}),
            "executed_twice": sum(1 for n in runs.values() if n > 1),
            "answered_differently": sum(1 for bodies in answers.values() if len(bodies) > 1),
            "replayed": sum(
                w.metric("intentus_duplicates_total", kind="replayed") for w in started
            ),
        }
    )
    assert complete, fig
    assert fig["executed_twice"] == 0, fig
    assert fig["answered_differently"] == 0, fig
    assert len(runs) == 120, fig
    assert fig["replayed"] == 120, fig


def test_malformed_twin_cannot_take_over(
    workers: Callable[..., list[WorkerProcess]],
    replies: Collector,
    queue_name: str,
    exec_log: Path,
    store_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A valid request and a malformed twin with its requestId at once: the valid one's
    caller gets its agent's answer and the record stays the execution's."""
    started = workers()
    messages = []
    for i in range(30):
        rid = f"twin-{uuid.uuid4().hex[:12]}"
        good = envelope("ProcessIntent", {"n": i, "sleep_ms": 30}, request_id=rid)
        bad = {**good, "surprise": True}
        messages.append(Message(body_of(good), uuid.uuid4().hex, rid, reply_to=replies.queue))
        messages.append(Message(body_of(bad), uuid.uuid4().hex, rid, reply_to=replies.queue))
    publish(queue_name, messages)
    complete = replies.wait_for({m.correlation_id for m in messages}, timeout=90)
    runs = executions(exec_log)
    taken_over = 0
    for good in messages[0::2]:
        reply = replies.first(good.correlation_id)
        ran = (good.request_id, "work") in runs
        if ran and (reply is None or reply.code is not None):
            taken_over += 1
    fig = report(
        {
            "scenario": f"race-malformed-twin-{_kind(store_env)}",
            "requests": 30,
            "sent": len(messages),
            "replied": replies.count({m.correlation_id for m in messages}),
            "executed": len(runs),
            "taken_over": taken_over,
        }
    )
    assert complete, fig
    assert taken_over == 0, fig
    for good in messages[0::2]:
        reply = replies.first(good.correlation_id)
        assert reply is not None
        if reply.code is None:
            record = _record(store_env, tmp_path, str(good.request_id))
            assert record is not None and record["header"]["kind"] == "execution"
            continue
        # The malformed twin won the claim first: the valid request is then a conflict with
        # its record, and its agent never ran.
        assert reply.code == "IDEMPOTENCY_CONFLICT", reply.json
        assert (good.request_id, "work") not in runs
    for w in started:
        assert w.stop() == 0


def test_cross_user_resend_cannot_read(
    workers: Callable[..., list[WorkerProcess]],
    replies: Collector,
    queue_name: str,
    exec_log: Path,
    store_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Bob, denied SecretIntent, re-sends Alice's requestId: a conflict, never her answer."""
    require_rabbitmqctl()
    suffix = uuid.uuid4().hex[:8]
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "default": "allow",
                "rules": [
                    {
                        "id": "alice",
                        "action": "allow",
                        "intents": ["SecretIntent"],
                        "users": ["alice-*"],
                    },
                    {"id": "nobody-else", "action": "deny", "intents": ["SecretIntent"]},
                ],
            }
        )
    )
    workers(2, INTENTUS_POLICY_FILE=str(policy))
    leaked = 0
    with (
        TempUser(f"alice-{suffix}", uuid.uuid4().hex) as alice,
        TempUser(f"bob-{suffix}", uuid.uuid4().hex) as bob,
    ):
        mine, theirs = [], []
        for _ in range(10):
            rid = f"secret-{uuid.uuid4().hex[:12]}"
            body = body_of(envelope("SecretIntent", {}, request_id=rid))
            a = Message(body, uuid.uuid4().hex, rid, reply_to=replies.queue, user_id=alice.name)
            b = Message(body, uuid.uuid4().hex, rid, reply_to=replies.queue, user_id=bob.name)
            mine.append(a)
            theirs.append(b)
        publish(queue_name, mine, alice.url)
        assert replies.wait_for({m.correlation_id for m in mine}, timeout=30)
        publish(queue_name, theirs, bob.url)
        complete = replies.wait_for({m.correlation_id for m in theirs}, timeout=30)
    codes = []
    for m in theirs:
        reply = replies.first(m.correlation_id)
        assert reply is not None
        codes.append(reply.code)
        if b"granted" in reply.body:
            leaked += 1
    fig = report(
        {
            "scenario": f"race-cross-user-{_kind(store_env)}",
            "alice_requests": len(mine),
            "bob_resends": len(theirs),
            "cross_user_reads": leaked,
            "bob_codes": sorted({str(c) for c in codes}),
        }
    )
    assert complete, fig
    assert leaked == 0, fig
    assert set(codes) == {"IDEMPOTENCY_CONFLICT"}, fig
    assert len(executions(exec_log)) == len(mine)


def test_kill_one_worker_mid_run(
    workers: Callable[..., list[WorkerProcess]],
    replies: Collector,
    queue_name: str,
    exec_log: Path,
    store_env: dict[str, str],
) -> None:
    """SIGKILL one of three workers while requests run: 0 lost, 0 run twice, orphans in doubt."""
    started = workers()
    messages: list[Message] = []
    for i in range(300):
        rid = f"kill-{uuid.uuid4().hex[:12]}"
        body = body_of(envelope("ProcessIntent", {"n": i, "sleep_ms": 20}, request_id=rid))
        messages.append(Message(body, uuid.uuid4().hex, rid, reply_to=replies.queue))
    publish(queue_name, messages)
    victim = started[0]
    victim.wait_until(lambda: len(executions(exec_log)) >= 60, timeout=60)
    victim.kill()
    complete = replies.wait_for({m.correlation_id for m in messages}, timeout=120)
    runs = executions(exec_log)
    codes: dict[str, int] = {}
    for m in messages:
        reply = replies.first(m.correlation_id)
        if reply is not None:
            code = reply.code or "success"
            codes[code] = codes.get(code, 0) + 1
    fig = report(
        {
            "scenario": f"race-kill-one-of-three-{_kind(store_env)}",
            "sent": len(messages),
            "replied": replies.count({m.correlation_id for m in messages}),
            "lost": len(messages) - replies.count({m.correlation_id for m in messages}),
            "executed_twice": sum(1 for n in runs.values() if n > 1),
            "codes": codes,
        }
    )
    assert complete and fig["lost"] == 0, fig
    assert fig["executed_twice"] == 0, fig
    assert set(codes) <= {"success", "EXECUTION_IN_DOUBT"}, fig
    for m in messages:
        reply = replies.first(m.correlation_id)
        assert reply is not None
        # A success ran exactly once; an in-doubt answer may or may not have started (the
        # claim is taken before the agent starts: a kill in between is in doubt too).
        if reply.code is None:
            assert runs[(m.request_id, "work")] == 1, m.request_id


def _kind(store_env: dict[str, str]) -> str:
    return "postgres" if "INTENTUS_RECORDS_URL" in store_env else "files"


def _record(store_env: dict[str, str], tmp_path: Path, rid: str) -> dict[str, Any] | None:
    eid = execution_id_for(rid)
    if "INTENTUS_RECORDS_URL" in store_env:
        rows = pg.execute(
            store_env["INTENTUS_RECORDS_URL"],
            "SELECT record FROM intentus_executions WHERE execution_id = %s",
            (eid,),
        )
        return json.loads(bytes(rows[0][0])) if rows and rows[0][0] is not None else None
    path = tmp_path / "records" / eid[5:8] / f"{eid}.json"
    return json.loads(path.read_text()) if path.exists() else None
