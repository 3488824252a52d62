"""In-flight tracking: local claims, per-process journals, dead vs live owners."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runtime.canonical import execution_id_for
from runtime.inflight import DuplicateWorkerId, InflightTracker

EID = execution_id_for("one")


def tracker(folder: Path | None, owner: str, recorded: set[str] | None = None) -> InflightTracker:
    done = recorded if recorded is not None else set()
    return InflightTracker(folder, owner, time.monotonic, done.__contains__)


class TestLocal:
    def test_claim_once(self) -> None:
        """A second claim of a running id gets the first run; release wakes waiters."""
        t = tracker(None, "w")
        assert t.claim(EID, 1.0) is None
        run = t.claim(EID, 1.0)
        assert run is not None and not run.done.is_set()
        t.release(EID)
        assert run.done.is_set()
        assert t.claim(EID, 1.0) is None

    def test_no_folder_no_foreign(self) -> None:
        """Without a folder there are no other processes to ask."""
        assert tracker(None, "w").foreign(EID, thorough=True) is None


class TestJournal:
    def test_journal_lines(self, tmp_path: Path) -> None:
        """S is appended when the first agent starts, E once the record is durable."""
        t = tracker(tmp_path, "w1")
        t.claim(EID, 2.5)
        t.journal_start(EID, 2.5)
        t.release(EID, recorded=True)
        assert (tmp_path / "w1.journal").read_text() == f"S {EID} 2500\nE {EID}\n"
        t.close()
        assert not (tmp_path / "w1.journal").exists()

    def test_live_journal_is_running(self, tmp_path: Path) -> None:
        """Another live process's started id is 'running' with its bound (thorough lookups)."""
        a = tracker(tmp_path, "a")
        b = tracker(tmp_path, "b")
        a.claim(EID, 3.0)
        a.journal_start(EID, 3.0)
        assert b.foreign(EID, thorough=True) == ("running", 3.0)
        assert b.foreign(execution_id_for("other"), thorough=True) is None
        assert "a" in b.live_owners()
        a.release(EID)
        assert b.foreign(EID, thorough=True) is None
        a.close()
        b.close()

    def test_dead_journal_is_in_doubt_until_recorded(self, tmp_path: Path) -> None:
        """An unlocked journal is dead; its unrecorded ids are in doubt, recorded ones are not."""
        recorded = {execution_id_for("done")}
        (tmp_path / "gone.journal").write_text(
            f"S {EID} 1000\nS {execution_id_for('done')} 1000\nS {execution_id_for('fin')} 5\n"
            f"E {execution_id_for('fin')}\nS {execution_id_for('torn')} 10"
        )
        t = tracker(tmp_path, "me", recorded)
        assert t.foreign(EID, thorough=False) == ("dead", 0.0)
        assert t.foreign(execution_id_for("done"), thorough=True) is None
        assert t.foreign(execution_id_for("fin"), thorough=True) is None
        assert t.foreign(execution_id_for("torn"), thorough=True) is None
        recorded.add(EID)
        t.resolved(EID)
        t.live_owners()
        assert not (tmp_path / "gone.journal").exists()
        t.close()

    def test_same_live_worker_id_is_refused(self, tmp_path: Path) -> None:
        """Two live trackers may not share a worker id."""
        a = tracker(tmp_path, "same")
        with pytest.raises(DuplicateWorkerId):
            tracker(tmp_path, "same")
        a.close()

    def test_restart_keeps_predecessor_journal(self, tmp_path: Path) -> None:
        """A restart under the same id sets the dead predecessor's journal aside, still readable."""
        (tmp_path / "w.journal").write_text(f"S {EID} 1000\n")
        t = tracker(tmp_path, "w")
        assert t.foreign(EID, thorough=True) == ("dead", 0.0)
        assert any(p.name.startswith("w.prev-") for p in tmp_path.iterdir())
        t.close()


HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, sys.argv[2].encode())
    print("LOCKED", flush=True)
    time.sleep(60)
    """
)


class TestAcrossProcesses:
    def test_lock_vanishes_with_the_process(self, tmp_path: Path) -> None:
        """A journal locked by a live process is running; after SIGKILL it is dead."""
        path = tmp_path / "other.journal"
        with subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path), f"S {EID} 4000\n"],
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "LOCKED"
            t = tracker(tmp_path, "me")
            assert t.foreign(EID, thorough=True) == ("running", 4.0)
            proc.kill()
            proc.wait(10)
        assert t.foreign(EID, thorough=True) == ("dead", 0.0)
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it any more
        finally:
            os.close(fd)
        t.close()


class TestRotation:
    def test_rotation_keeps_running_executions(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A rotated journal still lists what is running, and drops what ended or never ran."""
        import runtime.inflight as inflight

        monkeypatch.setattr(inflight, "ROTATE_BYTES", 200)
        t = tracker(tmp_path, "w")
        running, never_ran = execution_id_for("running"), execution_id_for("claimed-only")
        t.claim(running, 1.0)
        t.journal_start(running, 1.0)
        t.claim(never_ran, 1.0)
        for i in range(20):
            eid = execution_id_for(f"done-{i}")
            t.claim(eid, 1.0)
            t.journal_start(eid, 1.0)
            t.release(eid)
        lines = (tmp_path / "w.journal").read_text().splitlines()
        assert len(lines) < 12  # rotated at least once
        started = {line.split()[1] for line in lines if line.startswith("S ")}
        ended = {line.split()[1] for line in lines if line.startswith("E ")}
        assert running in started and running not in ended
        assert never_ran not in started


class TestUnrecorded:
    def test_unrecorded_execution_is_in_doubt_here(self) -> None:
        """An execution whose record could not be written is never run again by this process."""
        t = tracker(None, "w")
        assert t.claim(EID, 1.0) is None
        t.journal_start(EID, 1.0)
        t.unrecorded(EID)
        assert t.foreign(EID, thorough=False) == ("dead", 0.0)
        t.resolved(EID)
        assert t.foreign(EID, thorough=False) is None
