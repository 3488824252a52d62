"""Scenario 6: the records folder fills up, then turns read-only. The worker stops taking
messages, reports not ready, replies to nothing it has not recorded, and resumes."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.load import Collector, Publisher, figures, report, request

pytestmark = pytest.mark.integration


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> Path:
    """Write until ENOSPC; returns the filler file."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        chunk = b"\0" * 65536
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:
                fh.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def record_path(records: Path, eid: str) -> Path:
    return records / eid[5:8] / f"{eid}.json"


def test_records_folder_full_then_read_only(
    start_worker, queue_name, exec_log, agent_env, small_fs, tmp_path
):
    """Fill the tmpfs, then remount it read-only; 0 replies without a record, 0 lost."""
    records = small_fs / "records"
    unrecorded: list[str] = []

    def on_reply(cid: str, reply) -> None:
        eid = reply.headers.get("x-intentus-execution-id")
        if isinstance(eid, bytes):
            eid = eid.decode()
        if not eid or not record_path(records, eid).exists():
            unrecorded.append(cid)

    replies = Collector(f"{queue_name}.replies", on_reply=on_reply)
    publisher = Publisher(queue_name)
    w = start_worker(records_dir=records, env=agent_env)
    try:
        batches = []

        def send(n: int) -> list:
            batch = [request("ProcessIntent", {"n": i}, replies.queue) for i in range(n)]
            publisher.publish_all(batch)
            batches.extend(batch)
            return batch

        first = send(50)
        assert replies.wait_for({m.correlation_id for m in first}, timeout=30)

        # 1. Full.
        filler = fill(small_fs)
        t_full = time.monotonic()
        full_batch = send(100)
        not_ready_full = w.wait_until(lambda: not w.ready(), timeout=15)
        t_not_ready = time.monotonic() - t_full
        _code, body = w.http("/readyz")
        readyz_full = body.decode().strip()
        time.sleep(2.0)
        answered_while_full = replies.count({m.correlation_id for m in full_batch})
        write_errors = w.metric("intentus_record_write_errors_total")
        filler.unlink()
        t_space = time.monotonic()
        resumed_full = w.wait_until(w.ready, timeout=15)
        resume_full_s = time.monotonic() - t_space
        assert replies.wait_for({m.correlation_id for m in full_batch}, timeout=60)

        # 2. Read-only. A remount refuses while files are open for writing, so a read-only
        # bind mount goes over the records folder: every path the worker opens is read-only.
        subprocess.run(["mount", "--bind", str(records), str(records)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(records)], check=True)
            ro_batch = send(50)
            not_ready_ro = w.wait_until(lambda: not w.ready(), timeout=15)
            time.sleep(2.0)
            answered_while_ro = replies.count({m.correlation_id for m in ro_batch})
        finally:
            subprocess.run(["umount", str(records)], check=True)
        t_rw = time.monotonic()
        resumed_ro = w.wait_until(w.ready, timeout=15)
        resume_ro_s = time.monotonic() - t_rw
        complete = replies.wait_for({m.correlation_id for m in batches}, timeout=60)
        alive = w.proc is not None and w.proc.poll() is None
        code = w.stop()
        fig = report(
            figures(
                "6-records-full-and-read-only",
                batches,
                replies,
                exec_log,
                replies_without_record=len(unrecorded),
                not_ready_when_full=not_ready_full,
                seconds_to_not_ready=round(t_not_ready, 2),
                readyz_when_full=readyz_full,
                answered_while_full=answered_while_full,
                record_write_errors=write_errors,
                resumed_after_space=resumed_full,
                resume_after_space_s=round(resume_full_s, 2),
                not_ready_when_read_only=not_ready_ro,
                answered_while_read_only=answered_while_ro,
                resumed_after_rw=resumed_ro,
                resume_after_rw_s=round(resume_ro_s, 2),
                worker_alive=alive,
                exit_code=code,
            )
        )
    finally:
        publisher.close()
        replies.stop()
    assert complete and fig["lost"] == 0, fig
    assert fig["replies_without_record"] == 0, fig
    assert fig["executed_twice"] == 0, fig
    assert not_ready_full and not_ready_ro and resumed_full and resumed_ro, fig
    assert set(fig["codes"]) <= {"success", "EXECUTION_IN_DOUBT"}, fig
