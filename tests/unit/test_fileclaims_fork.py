"""Files store liveness is the worker process's own: a child it forks does not inherit it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from runtime.canonical import execution_id_for
from runtime.claims import ClaimState
from runtime.stores.files.store import FileRecordStore

ROOT = Path(__file__).resolve().parents[2]

OWNER = textwrap.dedent(
    """
    import os, sys, time
    from runtime.canonical import execution_id_for
    from runtime.stores.files.store import FileRecordStore

    store = FileRecordStore(sys.argv[1], owner="victim")
    assert store.claim(execution_id_for("forked"), user_id="", fingerprint="f").won
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    print(child, flush=True)
    time.sleep(600)
    """
)


def test_forked_child_does_not_keep_a_killed_owner_alive(tmp_path: Path) -> None:
    """The owner forks a child and is SIGKILLed: its claim is orphaned while the child lives."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path)],
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
    )
    assert owner.stdout is not None
    child = int(owner.stdout.readline())
    try:
        owner.kill()
        owner.wait(10)
        os.kill(child, 0)  # still running, with copies of the owner's descriptors
        store = FileRecordStore(tmp_path, owner="me")
        try:
            seen = store.claim(execution_id_for("forked"), user_id="", fingerprint="f")
            assert seen.state is ClaimState.ORPHANED
            assert "victim" not in store.claims.live_owners()
        finally:
            store.close()
    finally:
        owner.stdout.close()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


PROBE = textwrap.dedent(
    """
    import sys
    from runtime.canonical import execution_id_for
    from runtime.stores.files.store import FileRecordStore

    store = FileRecordStore(sys.argv[1], owner="probe")
    print(store.claim(execution_id_for("mine"), user_id="", fingerprint="f").state.value)
    store.close()
    """
)


def test_looking_at_own_claims_keeps_the_lock(tmp_path: Path) -> None:
    """A record lock is dropped when its process closes any descriptor of the file: looking
    at our own claims (as a duplicate, a second store of this process, or the owners scan)
    must never open one. Another process still sees the owner alive afterwards."""
    mine = FileRecordStore(tmp_path, owner="mine")
    other = FileRecordStore(tmp_path, owner="other")
    try:
        eid = execution_id_for("mine")
        assert mine.claim(eid, user_id="", fingerprint="f").won
        assert mine.claim(eid, user_id="", fingerprint="f").state is ClaimState.RUNNING
        assert other.claim(eid, user_id="", fingerprint="f").state is ClaimState.RUNNING
        assert other.probe([eid]) == {eid: ClaimState.RUNNING}
        assert {"mine", "other"} <= other.claims.live_owners()
        assert {"mine", "other"} <= mine.claims.live_owners()
        seen = subprocess.run(
            [sys.executable, "-c", PROBE, str(tmp_path)],
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert seen.stdout.strip() == "running"
    finally:
        mine.close()
        other.close()
