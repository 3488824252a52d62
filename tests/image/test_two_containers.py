"""Two containers of the image share one PostgreSQL store; one is SIGKILLed mid-load and
restarted: nothing lost, nothing executed twice, every reply accounted for.

The agents are the fault suite's side-effect agents (one line per real execution in a file
both containers append to), mounted into /app, which is on the image's PYTHONPATH.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.load import Collector, figures, report
from tests.faults.test_kills import FINAL_CODES, make_messages, publish_in_background
from tests.image.podman import Container
from tests.support import pg
from tests.support.workerproc import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

AGENTS = ROOT / "tests" / "faults" / "sideeffect_agents.py"
REQUESTS = 2000


def test_two_containers_one_store_one_killed(
    containers: Callable[..., Container], queue_name: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the containers' uid 10001 appends the executions file here
    exec_log = shared / "executions.log"
    with pg.temporary_database() as url:
        env = {
            "INTENTUS_RECORDS_URL": url,
            "INTENTUS_AGENTS": "sideeffect_agents:registry",
            "INTENTUS_FAULT_EXEC_LOG": "/faults/executions.log",
            "INTENTUS_SHUTDOWN_GRACE_S": "30",
        }
        volumes = [f"{AGENTS}:/app/sideeffect_agents.py:ro", f"{shared}:/faults"]
        victim, other = (containers(env=env, volumes=volumes) for _ in range(2))
        victim.wait_ready()
        other.wait_ready()
        replies = Collector(f"{queue_name}.replies")
        try:
            messages = make_messages(REQUESTS, replies.queue)
            cids = {m.correlation_id for m in messages}
            started = time.monotonic()
            publisher = publish_in_background(queue_name, messages)
            while replies.count(cids) < REQUESTS * 0.4 and time.monotonic() - started < 300:
                time.sleep(0.01)
            inflight_at_kill = victim.inflight()
            victim.kill()
            replied_at_kill = replies.count(cids)
            t0 = time.monotonic()
            victim.restart().wait_ready()
            restart_s = round(time.monotonic() - t0, 1)
            publisher.join(timeout=300)
            complete = replies.wait_for(cids, timeout=300, idle_timeout=60)
            elapsed = round(time.monotonic() - started, 1)
            exits = [victim.stop(), other.stop()]
            recorded = pg.execute(
                url,
                "SELECT count(DISTINCT request_id) FROM intentus_executions"
                " WHERE record IS NOT NULL AND request_id = ANY(%s)",
                ([m.request_id for m in messages],),
            )[0][0]
            fig = report(
                figures(
                    "image-two-containers-one-killed",
                    messages,
                    replies,
                    exec_log,
                    containers=2,
                    store="postgresql",
                    replied_at_kill=replied_at_kill,
                    victim_inflight_at_kill=inflight_at_kill,
                    restart_to_ready_s=restart_s,
                    seconds=elapsed,
                    requests_recorded=recorded,
                    exit_codes=exits,
                )
            )
        finally:
            replies.stop()
    assert replied_at_kill < REQUESTS, fig  # the kill came mid-load
    assert complete and fig["lost"] == 0 and fig["replied"] == REQUESTS, fig
    assert fig["executed_twice"] == 0, fig
    assert fig["inconsistent_replies"] == 0, fig
    assert set(fig["codes"]) <= FINAL_CODES, fig
    assert fig["executed"] >= REQUESTS - fig["in_doubt"], fig
    assert recorded == REQUESTS, fig
    assert exits == [0, 0], (victim.logs(), other.logs())
