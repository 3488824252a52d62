"""Logs: JSON on request, ids on lines about a message, no password."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.integration.conftest import Agents
from tests.integration.wire import Wire, envelope
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration


def test_json_logs_carry_request_and_trace_ids(
    wire: Wire, start_worker: Callable[..., WorkerProcess]
) -> None:
    """INTENTUS_LOG_FORMAT=json: every line is JSON; a rejected message's line names its ids."""
    worker = start_worker(env={"INTENTUS_LOG_FORMAT": "json"})
    wire.publish(worker.queue, b"junk", message_id="m-log-junk", correlation_id="c-log")
    reply = wire.reply().json
    wire.request(worker.queue, envelope(request_id="req-log-ok"))
    assert worker.stop() == 0
    lines = [json.loads(line) for line in worker.logs().splitlines() if line.strip()]
    assert lines, "no log lines"
    about = [line for line in lines if line.get("request_id") == "m-log-junk"]
    assert about, lines
    assert about[0]["trace_id"] == reply["metadata"]["trace_id"]
    # the password of the default guest URL is masked everywhere
    assert all("guest:guest" not in json.dumps(line) for line in lines)


def test_agent_crash_is_logged_with_its_traceback(
    wire: Wire, start_worker: Callable[..., WorkerProcess], agents: Agents
) -> None:
    """A handler raising ValueError: one JSON line with ids, agent and the whole traceback."""
    worker = start_worker(env={**agents.env, "INTENTUS_LOG_FORMAT": "json"})
    reply = wire.request(worker.queue, envelope("BrokenIntent", request_id="req-log-crash")).json
    assert reply["error"]["code"] == "INTERNAL_AGENT_ERROR"
    recorded = reply["error"]["details"]["traceback"]
    assert recorded["type"] == "ValueError" and recorded["message"] == "boom"
    assert recorded["frames"][-1].startswith("it_agents.py:")
    assert recorded["frames"][-1].endswith(" in broken")
    assert worker.stop() == 0
    lines = [json.loads(line) for line in worker.logs().splitlines() if line.strip()]
    crashes = [line for line in lines if line.get("request_id") == "req-log-crash"]
    assert len(crashes) == 1, crashes
    line = crashes[0]
    assert line["level"] == "error"
    assert line["agent"] == "broken"
    assert line["trace_id"] == reply["metadata"]["trace_id"]
    assert "ValueError: boom" in line["exception"]
    assert 'raise ValueError("boom")' in line["exception"]


@pytest.mark.parametrize(
    ("level", "debug_shown", "info_shown"),
    [("debug", True, True), ("info", False, True), ("warning", False, False)],
)
def test_log_level_takes_effect(
    start_worker: Callable[..., WorkerProcess], level: str, debug_shown: bool, info_shown: bool
) -> None:
    """INTENTUS_LOG_LEVEL: debug shows the agents loaded; warning hides the start-up lines."""
    worker = start_worker(env={"INTENTUS_LOG_FORMAT": "json", "INTENTUS_LOG_LEVEL": level})
    assert worker.stop() == 0
    lines = [json.loads(line) for line in worker.logs().splitlines() if line.strip()]
    levels = {line["level"] for line in lines}
    assert ("debug" in levels) is debug_shown, lines
    assert ("info" in levels) is info_shown, lines
    if debug_shown:
        assert any(line["message"].startswith("agent echo: intents") for line in lines)
