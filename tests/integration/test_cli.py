"""Every CLI command as a subprocess: `intentus worker|send|records ...` and `python -m worker`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import AGENTS_MODULE, AGENTS_SOURCE
from tests.integration.wire import (
    Wire,
    envelope,
    execution_id,
    load_record,
    record_files,
    record_path,
    wait_for,
)
from tests.support.broker import delete_topology, require_broker, unique
from tests.support.workerproc import ROOT, WorkerProcess, free_port

pytestmark = pytest.mark.integration

INTENTUS = str(Path(sys.executable).parent / "intentus")


@dataclass
class Run:
    code: int
    out: str
    err: str
    raw: bytes = b""


@dataclass
class Session:
    """One `intentus worker` for the module, and the records it wrote."""

    worker: WorkerProcess
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    replies: dict[str, bytes] = field(default_factory=dict)  # requestId → reply body as sent
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # requestId → send's output

    @property
    def records_dir(self) -> Path:
        return self.worker.records_dir

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
        return cli([INTENTUS, *args], {**self.env, **(env or {})}, timeout)


def cli(argv: list[str], env: dict[str, str], timeout: float = 60) -> Run:
    done = subprocess.run(argv, env=env, cwd=str(ROOT), capture_output=True, timeout=timeout)
    return Run(
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
        done.stdout,
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("INTENTUS_")}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    require_broker()
    assert Path(INTENTUS).exists(), (
        f"the intentus command is not installed next to {sys.executable}"
    )
    folder = tmp_path_factory.mktemp("cli")
    (folder / "agents").mkdir()
    (folder / "agents" / f"{AGENTS_MODULE}.py").write_text(AGENTS_SOURCE)
    queue = unique("it-cli")
    agents_env = {
        "INTENTUS_AGENTS": f"{AGENTS_MODULE}:registry",
        "PYTHONPATH": os.pathsep.join([str(folder / "agents"), str(ROOT)]),
        "IT_CALLS_FILE": str(folder / "calls.log"),
    }
    worker = WorkerProcess(
        queue, folder / "records", env=agents_env, log_path=folder / "worker.log"
    )
    env = {**_clean_env(), **{k: v for k, v in worker.env.items() if k.startswith("INTENTUS_")}}
    env.update(agents_env)
    log = open(worker.log_path, "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([INTENTUS, "worker"], env=env, cwd=str(ROOT), stdout=log, stderr=log)
    worker.proc = proc
    worker._log = log
    try:
        if not wait_for(lambda: worker.ready() or proc.poll() is not None, timeout=30):
            raise TimeoutError(worker.logs())
        assert proc.poll() is None, worker.logs()
        s = Session(worker, proc, env)
        _populate(s)
        yield s
    finally:
        worker.stop()
        delete_topology(queue, f"{queue}.replies")


def _populate(s: Session) -> None:
    """The records every test of the module reads."""
    payload_file = s.records_dir.parent / "payload.json"
    payload_file.write_text(json.dumps({"text": "hello"}))
    for rid, args, code in [
        ("req-cli-1", ["ProcessIntent", "--payload", '{"document_id": "d-cli"}'], 0),
        ("req-cli-2", ["NobodyIntent"], 1),
        (
            "req-cli-3",
            ["SummarizeIntent", "--strategy", "fallback", "--payload", f"@{payload_file}"],
            0,
        ),
        (
            "req-cli-6",
            ["ProcessIntent", "--target", "beta", "--tag", "cli", "--priority", "high"],
            0,
        ),
    ]:
        r = s.run("send", *args, "--request-id", rid, "--timeout", "15")
        assert r.code == code, (r.out, r.err)
        s.sent[rid] = json.loads(r.out)
    wire = Wire()
    try:
        reply = wire.request(
            s.worker.queue, envelope(request_id="req-cli-5"), correlation_id="corr-cli-5"
        )
        s.replies["req-cli-5"] = reply.body
    finally:
        wire.close()


RIDS = ["req-cli-1", "req-cli-2", "req-cli-3", "req-cli-5", "req-cli-6"]


class TestSend:
    def test_success_prints_the_response(self, session: Session) -> None:
        """`intentus send` prints the AgentResponse and exits 0 on success."""
        out = session.sent["req-cli-1"]
        assert out["status"] == "success"
        assert out["payload"] == {"by": "alpha", "doc": "d-cli"}
        assert out["error"] is None
        assert out["metadata"]["request_id"] == "req-cli-1"
        assert out["metadata"]["execution_id"] == execution_id("req-cli-1")
        assert out["metadata"]["agent"] == "alpha"

    def test_error_reply_exits_1(self, session: Session) -> None:
        """An error reply is printed and the exit code is 1."""
        out = session.sent["req-cli-2"]
        assert out["status"] == "error"
        assert out["error"]["code"] == "CAPABILITY_NOT_FOUND"

    def test_strategy_and_payload_file(self, session: Session) -> None:
        """--strategy (any case) and --payload @file reach the worker."""
        out = session.sent["req-cli-3"]
        assert out["metadata"]["strategy"] == "FALLBACK"
        assert out["metadata"]["agent"] == "up"
        record = load_record(session.records_dir, execution_id("req-cli-3"))
        assert record["envelope"]["payload"] == {"text": "hello"}

    def test_target_tag_priority(self, session: Session) -> None:
        """--target, --tag and --priority end up in the routed envelope."""
        assert session.sent["req-cli-6"]["metadata"]["agent"] == "beta"
        env = load_record(session.records_dir, execution_id("req-cli-6"))["envelope"]
        assert env["routing"]["targetAgent"] == "beta"
        assert env["context"]["tags"] == ["cli"]
        assert env["context"]["priority"] == "HIGH"

    def test_no_wait(self, session: Session) -> None:
        """--no-wait exits once the broker confirmed, printing the requestId; the worker records it."""
        r = session.run("send", "ProcessIntent", "--no-wait", "--request-id", "req-cli-nowait")
        assert r.code == 0, r.err
        assert json.loads(r.out)["requestId"] == "req-cli-nowait"
        assert record_path(session.records_dir, execution_id("req-cli-nowait"), timeout=10)

    def test_priority_and_traceparent_on_the_wire(self, session: Session) -> None:
        """--priority becomes the AMQP priority and --traceparent the header."""
        queue = unique("plain")
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        wire = Wire()
        try:
            wire.ch.queue_declare(queue, arguments={"x-max-priority": 9})
            r = session.run(
                "send", "ProcessIntent", "--queue", queue, "--no-wait",
                "--priority", "critical", "--traceparent", tp,
            )  # fmt: skip
            assert r.code == 0, r.err
            _method, props, body = wire.ch.basic_get(queue, auto_ack=True)
            assert props.priority == 9
            assert props.headers["traceparent"] == tp
            assert json.loads(body)["context"]["priority"] == "CRITICAL"
            bad = session.run("send", "ProcessIntent", "--queue", queue, "--traceparent", "x")
            assert bad.code == 2, (bad.out, bad.err)
            assert "traceparent" in bad.err
        finally:
            wire.ch.queue_delete(queue)
            wire.close()

    def test_timeout(self, session: Session) -> None:
        """No reply within --timeout: a clear message and exit 1."""
        started = time.monotonic()
        r = session.run(
            "send", "SleepIntent", "--payload", '{"seconds": 2}', "--timeout", "0.5",
            "--request-id", "req-cli-timeout",
        )  # fmt: skip
        assert r.code == 1, (r.out, r.err)
        assert time.monotonic() - started < 10
        assert "no reply" in r.err or "no publisher confirm" in r.err
        assert "Traceback" not in r.err

    def test_bad_payload(self, session: Session) -> None:
        """--payload that is not a JSON object is a usage error (exit 2)."""
        for bad in ("not json", "[1, 2]"):
            r = session.run("send", "ProcessIntent", "--payload", bad)
            assert r.code == 2, (bad, r.out, r.err)
            assert "--payload" in r.err

    def test_broker_unreachable(self, session: Session) -> None:
        """A closed port: a clear message, non-zero exit, no traceback."""
        url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
        r = session.run("send", "ProcessIntent", env={"INTENTUS_AMQP_URL": url})
        assert r.code == 3, (r.out, r.err)
        assert "127.0.0.1" in r.err
        assert "Connection refused" in r.err
        assert "Traceback" not in r.err


class TestRecordsList:
    def rows(self, session: Session, *args: str) -> list[dict[str, Any]]:
        r = session.run("records", "list", "--json", *args)
        assert r.code == 0, r.err
        rows = json.loads(r.out)
        assert isinstance(rows, list)
        return rows

    def test_table(self, session: Session) -> None:
        """The human table names every record."""
        r = session.run("records", "list", "--limit", "0")
        assert r.code == 0, r.err
        for rid in RIDS:
            assert execution_id(rid) in r.out
            assert rid in r.out

    def test_json_newest_first(self, session: Session) -> None:
        """--json: one row per record, newest first."""
        rows = self.rows(session, "--limit", "0")
        ids = {row["requestId"] for row in rows}
        assert set(RIDS) <= ids
        for row in rows:
            assert row["executionId"] == execution_id(row["requestId"])
        created = [row["createdAt"] for row in rows]
        assert created == sorted(created, reverse=True)

    def test_filters(self, session: Session) -> None:
        """--intent, --status, --agent, --since and --limit filter the rows."""
        by_intent = self.rows(session, "--intent", "SummarizeIntent")
        assert [row["requestId"] for row in by_intent] == ["req-cli-3"]
        errors = {row["requestId"] for row in self.rows(session, "--status", "error")}
        assert "req-cli-2" in errors and "req-cli-1" not in errors
        assert [row["requestId"] for row in self.rows(session, "--agent", "beta")] == ["req-cli-6"]
        assert len(self.rows(session, "--limit", "1")) == 1
        assert set(RIDS) <= {row["requestId"] for row in self.rows(session, "--since", "1h")}
        assert self.rows(session, "--since", "2999-01-01T00:00:00+00:00") == []

    def test_bad_since(self, session: Session) -> None:
        r = session.run("records", "list", "--since", "yesterday-ish")
        assert r.code == 2, (r.out, r.err)

    def test_python_m_worker_records_is_the_same(self, session: Session) -> None:
        """`python -m worker records …` is `intentus records …`."""
        a = session.run("records", "list", "--json", "--limit", "0")
        b = cli(
            [sys.executable, "-m", "worker", "records", "list", "--json", "--limit", "0"],
            session.env,
        )
        assert a.code == b.code == 0
        assert json.loads(a.out) == json.loads(b.out)
        c = cli([sys.executable, "-m", "worker", "records", "replay", "req-cli-5"], session.env)
        assert c.code == 0
        assert c.raw == session.replies["req-cli-5"] + b"\n"


class TestRecordsShowReplay:
    @pytest.mark.parametrize("ident", ["exec", "request", "correlation"])
    def test_show(self, session: Session, ident: str) -> None:
        """`records show` finds a record by executionId, requestId or correlationId."""
        key = {
            "exec": execution_id("req-cli-5"),
            "request": "req-cli-5",
            "correlation": "corr-cli-5",
        }[ident]
        r = session.run("records", "show", key)
        assert r.code == 0, r.err
        assert json.loads(r.out) == load_record(session.records_dir, execution_id("req-cli-5"))

    def test_show_unknown(self, session: Session) -> None:
        r = session.run("records", "show", "req-never-sent")
        assert r.code == 1
        assert "req-never-sent" in r.err

    def test_replay_is_byte_identical(self, session: Session) -> None:
        """`records replay` prints the reply exactly as it was sent, then a newline."""
        for ident in ("req-cli-5", execution_id("req-cli-5"), "corr-cli-5"):
            r = session.run("records", "replay", ident)
            assert r.code == 0, r.err
            assert r.raw == session.replies["req-cli-5"] + b"\n"

    def test_replay_runs_no_agent(self, session: Session) -> None:
        calls = Path(session.env["IT_CALLS_FILE"]).read_text()
        r = session.run("records", "replay", "req-cli-1")
        assert r.code == 0
        assert (
            json.loads(r.out)
            == load_record(session.records_dir, execution_id("req-cli-1"))["finalResponse"]
        )
        assert Path(session.env["IT_CALLS_FILE"]).read_text() == calls


class TestRecordsVerify:
    def test_one_and_all(self, session: Session) -> None:
        """Every record verifies against the agents and policy that produced it."""
        r = session.run("records", "verify", "req-cli-1")
        assert r.code == 0, (r.out, r.err)
        assert execution_id("req-cli-1") in r.out and "ok" in r.out
        count = len(record_files(session.records_dir))
        r = session.run("records", "verify", "--all", "--json")
        assert r.code == 0, (r.out, r.err)
        report = json.loads(r.out)
        assert report["checked"] == count
        assert report["failed"] == 0
        r = session.run("records", "verify", "--all")
        assert r.code == 0
        assert str(count) in r.out

    def test_tampered_record_fails(self, session: Session, tmp_path: Path) -> None:
        """A record whose envelope was edited no longer matches its envelopeHash."""
        copy = tmp_path / "records"
        shutil.copytree(session.records_dir, copy)
        path = record_path(copy, execution_id("req-cli-1"))
        record = json.loads(path.read_text())
        record["envelope"]["payload"]["document_id"] = "forged"
        path.write_text(json.dumps(record))
        r = session.run("records", "verify", "req-cli-1", env={"INTENTUS_RECORDS_DIR": str(copy)})
        assert r.code == 1, r.out
        assert "envelopeHash" in r.out
        r = session.run("records", "verify", "--all", env={"INTENTUS_RECORDS_DIR": str(copy)})
        assert r.code == 1
        assert execution_id("req-cli-1") in r.out

    def test_routing_determinism_against_reordered_agents(
        self, session: Session, tmp_path: Path
    ) -> None:
        """The same agents with other priorities do not reproduce the recorded try order."""
        (tmp_path / "reordered.py").write_text(
            AGENTS_SOURCE.replace("node_priority=10)", "node_priority=30)")
        )
        env = {
            "INTENTUS_AGENTS": "reordered:registry",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        }
        r = session.run("records", "verify", "req-cli-1", env=env)
        assert r.code == 1, r.out
        assert "not reproducible" in r.out and "alpha" in r.out
        assert "routing checked against reordered:registry" in r.out

    def test_without_the_recording_agents_routing_is_not_checked(self, session: Session) -> None:
        """With the demo agents, verify says it cannot check routing instead of failing."""
        env = {k: v for k, v in session.env.items() if k != "INTENTUS_AGENTS"}
        r = cli([INTENTUS, "records", "verify", "req-cli-1"], env)
        assert r.code == 0, r.out
        assert "routing checked against the built-in demo agents" in r.out
        assert (
            "cannot check routing without the agents that recorded it "
            "(use --agents or INTENTUS_AGENTS)" in r.out
        )
        assert "not reproducible" not in r.out
        r = cli([INTENTUS, "records", "verify", "--all"], env)
        assert r.code == 0, r.out
        assert "integrity only: cannot check routing" in r.out
        r = cli([INTENTUS, "records", "verify", "--all", "--json"], env)
        report = json.loads(r.out)
        assert report["agents"] == "runtime.demo:registry"
        assert report["failed"] == 0
        assert execution_id("req-cli-1") in report["routingUnchecked"]
        assert execution_id("req-cli-2") not in report["routingUnchecked"]  # no agents to know

    def test_with_the_recording_agents_routing_is_checked(self, session: Session) -> None:
        """Given the agents that recorded them, every record's routing is checked."""
        r = session.run("records", "verify", "--all", "--json")
        assert r.code == 0, r.out
        report = json.loads(r.out)
        assert report["agents"] == "it_agents:registry"
        assert report["routingUnchecked"] == []

    def test_verify_needs_an_id_or_all(self, session: Session) -> None:
        """Neither an ID nor --all is a usage error."""
        r = session.run("records", "verify")
        assert r.code == 2


class TestRecordsDiffStatsGc:
    def test_diff(self, session: Session) -> None:
        """`records diff` prints the differing paths; exit 1 when they differ, 0 when not."""
        same = session.run("records", "diff", "req-cli-1", "req-cli-1")
        assert same.code == 0
        assert same.out.strip() == ""
        r = session.run("records", "diff", "req-cli-1", "req-cli-6")
        assert r.code == 1
        assert "requestId" in r.out
        assert "targetAgent" in r.out
        assert "alpha" in r.out and "beta" in r.out

    def test_stats(self, session: Session) -> None:
        """`records stats` counts by status, intent and agent."""
        count = len(record_files(session.records_dir))
        r = session.run("records", "stats", "--json")
        assert r.code == 0, r.err
        stats = json.loads(r.out)
        assert stats["records"] == count
        assert sum(stats["by_status"].values()) == count
        assert stats["by_intent"]["SummarizeIntent"] == 1
        assert stats["by_error_code"]["CAPABILITY_NOT_FOUND"] >= 1
        text = session.run("records", "stats")
        assert text.code == 0
        assert str(count) in text.out and "SummarizeIntent" in text.out

    def test_gc(self, session: Session, tmp_path: Path) -> None:
        """`records gc --older-than` deletes old records (--dry-run deletes none)."""
        copy = tmp_path / "records"
        shutil.copytree(session.records_dir, copy)
        env = {"INTENTUS_RECORDS_DIR": str(copy)}
        count = len(record_files(copy))
        r = session.run("records", "gc", "--older-than", "1d", env=env)
        assert r.code == 0, r.err
        assert len(record_files(copy)) == count
        time.sleep(0.01)
        r = session.run("records", "gc", "--older-than", "0s", "--dry-run", env=env)
        assert r.code == 0, r.err
        assert str(count) in r.out
        assert len(record_files(copy)) == count
        r = session.run("records", "gc", "--older-than", "0s", env=env)
        assert r.code == 0, r.err
        assert str(count) in r.out
        assert record_files(copy) == []
        listed = session.run("records", "list", "--json", env=env)
        assert json.loads(listed.out) == []

    def test_gc_usage_errors(self, session: Session) -> None:
        assert session.run("records", "gc").code == 2
        assert session.run("records", "gc", "--older-than", "soon").code == 2


class TestHelpAndWorkerCommand:
    def test_help_lists_every_command(self, session: Session) -> None:
        r = session.run("--help")
        assert r.code == 0
        for command in ("worker", "send", "records"):
            assert command in r.out
        r = session.run("records", "--help")
        assert r.code == 0
        for command in ("list", "show", "replay", "verify", "diff", "stats", "gc"):
            assert command in r.out
        r = session.run("worker", "--help")
        assert r.code == 0
        assert "INTENTUS_AMQP_URL" in r.out and "--concurrency" in r.out

    def test_unknown_command_is_a_usage_error(self, session: Session) -> None:
        assert session.run("launch").code == 2

    def test_intentus_worker_stops_cleanly_on_sigterm(self, tmp_path: Path) -> None:
        """`intentus worker` (not only `python -m worker`) runs and exits 0 on SIGTERM."""
        queue = unique("it-cli-w")
        w = WorkerProcess(queue, tmp_path / "records", log_path=tmp_path / "w.log")
        env = {**_clean_env(), **{k: v for k, v in w.env.items() if k.startswith("INTENTUS_")}}
        env["PYTHONPATH"] = str(ROOT)
        try:
            proc = subprocess.Popen(
                [INTENTUS, "worker"],
                env=env,
                cwd=str(ROOT),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                assert wait_for(lambda: w.ready() or proc.poll() is not None, timeout=30)
                assert proc.poll() is None
                r = cli([INTENTUS, "send", "TransformIntent", "--payload", '{"a": "b"}'], env)
                assert r.code == 0, r.err
                assert json.loads(r.out)["payload"] == {"result": {"a": "B"}}
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=20) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        finally:
            delete_topology(queue, f"{queue}.replies")
