"""Scenarios 1 and 2: SIGKILL workers mid-run; nothing lost, nothing silently run twice."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.load import (
    Collector,
    Message,
    Publisher,
    figures,
    record_files,
    report,
    request,
    temp_files,
)
from tests.support.workerproc import WorkerProcess

pytestmark = pytest.mark.integration

FINAL_CODES = {"success", "EXECUTION_IN_DOUBT"}


def make_messages(n: int, reply_to: str) -> list[Message]:
    rng = random.Random(n)
    return [
        request("ProcessIntent", {"n": i, "sleep_ms": rng.choice((0, 0, 1, 2, 5))}, reply_to)
        for i in range(n)
    ]


def publish_in_background(queue: str, messages: list[Message]) -> threading.Thread:
    def run() -> None:
        p = Publisher(queue)
        try:
            p.publish_all(messages)
        finally:
            p.close()

    t = threading.Thread(target=run, name="fault-publisher", daemon=True)
    t.start()
    return t


def assert_promise_kept(fig: dict[str, Any], complete: bool, store: dict[str, int]) -> None:
    """Nothing lost, nothing run twice, one consistent final answer each, records sound."""
    assert complete and fig["lost"] == 0, fig
    assert fig["executed_twice"] == 0, fig
    assert fig["inconsistent_replies"] == 0, fig
    assert set(fig["codes"]) <= FINAL_CODES, fig
    assert store["unparsable_records"] == 0, store
    assert store["requests_without_record"] == 0, store
    assert store["temp_files_left"] == 0, store


def check_store(records_dir: Path, messages: list[Message]) -> dict[str, int]:
    """Every record parses; every request has exactly one; no temp file is left."""
    files = record_files(records_dir)
    bad = 0
    rids: set[str] = set()
    for f in files:
        try:
            rids.add(json.loads(f.read_bytes())["header"]["requestId"])
        except (ValueError, KeyError):
            bad += 1
    missing = sum(1 for m in messages if m.request_id not in rids)
    return {
        "record_files": len(files),
        "unparsable_records": bad,
        "requests_without_record": missing,
        "temp_files_left": len(temp_files(records_dir)),
    }


def run_kills(
    scenario: str,
    start_worker: Callable[..., WorkerProcess],
    replies: Collector,
    exec_log: Path,
    agent_env: dict[str, str],
    tmp_path: Path,
    queue_name: str,
    *,
    n: int,
    kills: int,
    workers: int,
    restart: bool,
) -> None:
    records = tmp_path / "records"
    env = {**agent_env, "INTENTUS_SHUTDOWN_GRACE_S": "30"}
    live = [start_worker(records_dir=records, env=env) for _ in range(workers)]
    messages = make_messages(n, replies.queue)
    cids = {m.correlation_id for m in messages}
    rng = random.Random(7 * n + kills)
    started = time.monotonic()
    publisher = publish_in_background(queue_name, messages)
    points = sorted(rng.uniform(0.1, 0.85) for _ in range(kills))
    kill_log = []
    restart_s = []
    for frac in points:
        target = int(frac * n)
        while replies.count(cids) < target and time.monotonic() - started < 300:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        victim = live[0]
        victim.kill()
        kill_log.append(replies.count(cids))
        live.remove(victim)
        if restart:
            t0 = time.monotonic()
            live.insert(0, start_worker(records_dir=records, env=env))
            restart_s.append(round(time.monotonic() - t0, 2))
    publisher.join(timeout=300)
    complete = replies.wait_for(cids, timeout=300, idle_timeout=60)
    elapsed = time.monotonic() - started
    temps_before_restart = len(temp_files(records))
    for w in live:
        assert w.stop() == 0, w.logs()[-3000:]
    # A worker start removes the temp files of writers that died (none is left after it).
    start_worker(records_dir=records, env=env).stop()
    store = check_store(records, messages)
    fig = figures(
        scenario,
        messages,
        replies,
        exec_log,
        kills=len(kill_log),
        replied_at_kills=kill_log,
        restart_to_ready_s=restart_s,
        workers=workers,
        seconds=round(elapsed, 1),
        temp_files_before_final_restart=temps_before_restart,
        **store,
    )
    assert_promise_kept(report(fig), complete, store)


def test_sigkill_during_run_fast(start_worker, replies, exec_log, agent_env, tmp_path, queue_name):
    """2000 requests, the worker SIGKILLed twice at random moments and restarted."""
    run_kills(
        "1-sigkill-fast",
        start_worker,
        replies,
        exec_log,
        agent_env,
        tmp_path,
        queue_name,
        n=2000,
        kills=2,
        workers=1,
        restart=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sigkill_during_run_full(start_worker, replies, exec_log, agent_env, tmp_path, queue_name):
    """10 000 requests, the worker SIGKILLed 5 times at random moments and restarted."""
    run_kills(
        "1-sigkill-full",
        start_worker,
        replies,
        exec_log,
        agent_env,
        tmp_path,
        queue_name,
        n=10_000,
        kills=5,
        workers=1,
        restart=True,
    )


def test_three_workers_one_killed_fast(
    start_worker, replies, exec_log, agent_env, tmp_path, queue_name
):
    """Three workers share one records folder and queue; one is SIGKILLed mid-run."""
    run_kills(
        "2-three-workers-fast",
        start_worker,
        replies,
        exec_log,
        agent_env,
        tmp_path,
        queue_name,
        n=1500,
        kills=1,
        workers=3,
        restart=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_three_workers_one_killed_full(
    start_worker, replies, exec_log, agent_env, tmp_path, queue_name
):
    """10 000 requests over three workers; one SIGKILLed, restarted, then another killed."""
    run_kills(
        "2-three-workers-full",
        start_worker,
        replies,
        exec_log,
        agent_env,
        tmp_path,
        queue_name,
        n=10_000,
        kills=2,
        workers=3,
        restart=True,
    )
