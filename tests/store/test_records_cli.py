"""`intentus records ...` against both execution stores: the same commands, the same answers.

Records are made by the real runtime (including a FALLBACK request and a rejected message),
stored in a records folder or a PostgreSQL database, then read back by the real CLI as a
subprocess with `--records-dir` or `--records-url`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import AgentError, AgentRegistry, ErrorCode, FixedClock, IntentusRuntime
from runtime.canonical import execution_id_for
from runtime.envelope import RequestContext
from runtime.stores.base import RecordStore
from runtime.stores.files.store import FileRecordStore
from tests.support import pg
from tests.support.workerproc import ROOT

AGENTS = "tests.store.test_records_cli:registry"

registry = AgentRegistry()


@registry.agent("primary", intents=["ProcessIntent"], node_priority=10)
def primary(envelope: Any) -> dict[str, Any]:
    if envelope.payload.get("fail"):
        raise AgentError(ErrorCode.AGENT_UNAVAILABLE, "primary is down")
    return {"by": "primary"}


@registry.agent("backup", intents=["ProcessIntent"], node_priority=20)
def backup(envelope: Any) -> dict[str, Any]:
    return {"by": "backup"}


def request(request_id: str, **payload: Any) -> bytes:
    strategy = "FALLBACK" if payload.get("fail") else "DIRECT"
    return json.dumps(
        {
            "version": "1.0",
            "intent": {"name": "ProcessIntent"},
            "payload": payload,
            "metadata": {"requestId": request_id},
            "routing": {"strategy": strategy},
        }
    ).encode()


@pytest.fixture(params=["files", "postgres"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """CLI arguments naming a store filled with the same five records."""
    if request.param == "postgres":
        from runtime.stores.postgres import PostgresRecordStore

        with pg.temporary_database() as url:
            store: RecordStore = PostgresRecordStore(url, pool_size=2)
            fill(store)
            yield ["--records-url", url]
        return
    folder = tmp_path / "records"
    fill(FileRecordStore(folder))
    yield ["--records-dir", str(folder)]


def fill(store: RecordStore) -> None:
    rt = IntentusRuntime(registry, store=store, clock=FixedClock())
    try:
        rt.route_intent(request("cli-ok"), RequestContext(correlation_id="corr-ok"))
        rt.route_intent(request("cli-fallback", fail=True))
        rt.route_intent(request("cli-two"))
        rt.commit_sync(rt.process(b"not json", RequestContext(message_id="cli-bad")))
        old = rt.process(request("cli-old"))
        rt.commit_sync(old)
    finally:
        rt.close()


def intentus(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INTENTUS_AGENTS": AGENTS}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], env=env, cwd=ROOT, capture_output=True, timeout=60
    )


class TestRecordsCommands:
    def test_list_filters_and_orders(self, store_args: list[str]) -> None:
        """`records list --json` lists every record; filters by intent, status and agent."""
        rows = json.loads(intentus("records", "list", "--json", *store_args).stdout)
        assert len(rows) == 5
        by_agent = json.loads(
            intentus("records", "list", "--json", "--agent", "backup", *store_args).stdout
        )
        assert [r["requestId"] for r in by_agent] == ["cli-fallback"]
        errors = json.loads(
            intentus("records", "list", "--json", "--status", "error", *store_args).stdout
        )
        assert [r["requestId"] for r in errors] == ["cli-bad"]

    def test_show_by_any_id(self, store_args: list[str]) -> None:
        """`records show` finds a record by executionId, requestId or correlationId."""
        eid = execution_id_for("cli-ok")
        for ident in (eid, "cli-ok", "corr-ok"):
            done = intentus("records", "show", ident, *store_args)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["header"]["executionId"] == eid

    def test_replay_is_byte_identical(self, store_args: list[str]) -> None:
        """`records replay` prints the stored reply exactly, then a newline."""
        shown = json.loads(intentus("records", "show", "cli-fallback", *store_args).stdout)
        replayed = intentus("records", "replay", "cli-fallback", *store_args).stdout
        reply = json.loads(replayed)
        assert replayed.endswith(b"\n")
        assert reply == shown["finalResponse"]
        assert reply["metadata"]["agent"] == "backup"

    def test_verify_all_and_diff(self, store_args: list[str]) -> None:
        """`records verify --all` passes with the agents that made them; diff tells two apart."""
        done = intentus("records", "verify", "--all", *store_args)
        assert done.returncode == 0, done.stdout + done.stderr
        same = intentus("records", "diff", "cli-ok", "cli-ok", *store_args)
        assert same.returncode == 0
        differ = intentus("records", "diff", "cli-ok", "cli-two", *store_args)
        assert differ.returncode == 1
        assert b"requestId" in differ.stdout

    def test_stats_and_gc(self, store_args: list[str]) -> None:
        """`records stats` counts by status; `records gc` prunes only what is old enough."""
        stats = json.loads(intentus("records", "stats", "--json", *store_args).stdout)
        assert stats["records"] == 5
        assert stats["by_status"] == {"success": 4, "error": 1}
        kept = intentus("records", "gc", "--older-than", "3650d", *store_args)
        assert kept.returncode == 0 and b"deleted 0" in kept.stdout, kept.stdout
        gone = intentus("records", "gc", "--older-than", "1s", *store_args)
        assert b"deleted 5" in gone.stdout, gone.stdout
        after = json.loads(intentus("records", "stats", "--json", *store_args).stdout)
        assert after["records"] == 0
