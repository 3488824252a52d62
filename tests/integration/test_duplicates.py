"""Duplicates only a broker shows: a redelivery after the worker process was killed.

The transport-independent duplicate cases run on both transports in tests/behaviour."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import Agents
from tests.integration.wire import Wire, body_of, envelope, execution_id, load_record
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration


def test_crash_mid_agent_is_execution_in_doubt(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """A worker killed mid-agent: the redelivery is EXECUTION_IN_DOUBT, recorded, never re-run."""
    env = {**agents.env, "INTENTUS_AGENT_TIMEOUT_S": "60"}
    first = start_worker(env=env)
    rid = "req-in-doubt"
    eid = execution_id(rid)
    body = body_of(envelope("SleepIntent", {"seconds": 30}, request_id=rid))
    wire.publish(first.queue, body, correlation_id="doubt-1")
    assert first.wait_until(lambda: agents.calls() == [f"sleeper {rid}"], timeout=10)
    first.kill()

    second = start_worker(env=env)
    reply = wire.reply(timeout=20)
    assert reply.props.correlation_id == "doubt-1"
    answer = reply.json
    assert answer["status"] == "error"
    assert answer["error"]["code"] == "EXECUTION_IN_DOUBT"
    assert answer["metadata"]["execution_id"] == eid
    assert agents.calls() == [f"sleeper {rid}"]
    record = load_record(second.records_dir, eid)
    assert "DUPLICATE_DELIVERY" in [e["type"] for e in record["events"]]
    assert record["finalResponse"] == answer
    assert second.metric("intentus_duplicates_total", kind="in_doubt") == 1

    # later duplicates get the same answer, from the record
    wire.publish(second.queue, body, correlation_id="doubt-2")
    again = wire.reply()
    assert again.props.correlation_id == "doubt-2"
    assert again.body == reply.body
    assert agents.calls() == [f"sleeper {rid}"]
