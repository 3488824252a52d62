"""Logs: JSON on request, ids on lines about a message, no password."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

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
