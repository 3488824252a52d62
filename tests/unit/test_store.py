"""Record stores: atomic durable files, sharding, safety of ids, modes, crash leftovers."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from runtime import FileRecordStore, MemoryRecordStore, RecordExists, RecordStoreError
from runtime.canonical import execution_id_for
from runtime.stores.files.store import TMP_DIR

EID = execution_id_for("req-1")


def all_records(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("exec-*.json"))


class TestMemoryStore:
    def test_put_get_exists(self) -> None:
        """A stored record reads back as the same bytes."""
        store = MemoryRecordStore()
        store.put(EID, b'{"a":1}')
        assert store.get(EID) == b'{"a":1}'
        assert store.exists(EID)
        assert list(store.ids()) == [EID]

    def test_never_rewrites(self) -> None:
        """A second put of the same id raises RecordExists and keeps the first."""
        store = MemoryRecordStore()
        store.put(EID, b"1")
        with pytest.raises(RecordExists):
            store.put(EID, b"2")
        assert store.get(EID) == b"1"

    def test_rejects_bad_ids(self) -> None:
        """Only exec-<24 hex> ids are accepted."""
        with pytest.raises(RecordStoreError):
            MemoryRecordStore().put("../x", b"1")

    def test_put_async_reports_through_callback(self) -> None:
        """put_async calls done(None), then done(RecordExists) for a rewrite."""
        store = MemoryRecordStore()
        results: list[BaseException | None] = []
        store.put_async(EID, b"1", results.append)
        store.put_async(EID, b"2", results.append)
        assert results[0] is None and isinstance(results[1], RecordExists)


class TestFileStore:
    def test_sharded_path_and_round_trip(self, tmp_path: Path) -> None:
        """A record lives in <root>/<first 3 hex>/<id>.json and reads back byte for byte."""
        store = FileRecordStore(tmp_path, owner="w1")
        try:
            store.put(EID, b'{"x":1}')
            path = tmp_path / EID[5:8] / f"{EID}.json"
            assert path.read_bytes() == b'{"x":1}'
            assert store.get(EID) == b'{"x":1}'
            assert store.exists(EID)
            assert list(store.ids()) == [EID]
            assert store.get(execution_id_for("other")) is None
        finally:
            store.close()

    def test_modes(self, tmp_path: Path) -> None:
        """Files are 0640 and folders 0750, whatever the umask."""
        old = os.umask(0)
        try:
            store = FileRecordStore(tmp_path / "records", owner="w1")
            store.put(EID, b"{}")
            store.close()
        finally:
            os.umask(old)
        root = tmp_path / "records"
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o750
        assert stat.S_IMODE(os.stat(root / EID[5:8]).st_mode) == 0o750
        assert stat.S_IMODE(os.stat(root / EID[5:8] / f"{EID}.json").st_mode) == 0o640

    def test_never_rewrites(self, tmp_path: Path) -> None:
        """RecordExists on a rewrite, also from a second store instance; the first stays."""
        a = FileRecordStore(tmp_path, owner="a")
        b = FileRecordStore(tmp_path, owner="b")
        try:
            a.put(EID, b"first")
            with pytest.raises(RecordExists):
                a.put(EID, b"second")
            with pytest.raises(RecordExists):
                b.put(EID, b"third")
            assert a.get(EID) == b"first"
        finally:
            a.close()
            b.close()

    def test_concurrent_writers_of_one_id(self, tmp_path: Path) -> None:
        """Of many threads writing one id, exactly one wins and the file is whole."""
        store = FileRecordStore(tmp_path, owner="w")
        wins: list[int] = []
        errors: list[BaseException] = []

        def write(i: int) -> None:
            try:
                store.put(EID, json.dumps({"writer": i}).encode())
                wins.append(i)
            except RecordExists as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store.close()
        assert len(wins) == 1 and len(errors) == 7
        assert json.loads((tmp_path / EID[5:8] / f"{EID}.json").read_bytes()) == {"writer": wins[0]}

    def test_survives_reopen(self, tmp_path: Path) -> None:
        """Records written by one store are found by a new one on the same folder."""
        ids = [execution_id_for(f"r{i}") for i in range(20)]
        store = FileRecordStore(tmp_path, owner="w")
        for i, eid in enumerate(ids):
            store.put(eid, str(i).encode())
        store.close()
        again = FileRecordStore(tmp_path, owner="w")
        try:
            assert sorted(again.ids()) == sorted(ids)
            assert [again.get(eid) for eid in ids] == [str(i).encode() for i in range(20)]
        finally:
            again.close()

    @pytest.mark.parametrize(
        "bad",
        ["../exec-000000000000000000000000", "exec-../../etc/passwd", "exec-0000\x00", "", "exec-"],
    )
    def test_ids_cannot_escape_the_folder(self, tmp_path: Path, bad: str) -> None:
        """Ids with ../, NUL or the wrong shape are refused before any path is built."""
        root = tmp_path / "records"
        store = FileRecordStore(root, owner="w")
        try:
            with pytest.raises(RecordStoreError):
                store.put(bad, b"{}")
            with pytest.raises(RecordStoreError):
                store.get(bad)
            with pytest.raises(RecordStoreError):
                store.exists(bad)
        finally:
            store.close()
        outside = [p for p in tmp_path.rglob("*") if root not in p.parents and p != root]
        assert outside == []

    def test_check_writable(self, tmp_path: Path) -> None:
        """check_writable passes on a usable folder and fails once files cannot be made there."""
        store = FileRecordStore(tmp_path / "r", owner="w")
        own_tmp = tmp_path / "r" / TMP_DIR / "w"
        try:
            store.check_writable()
            # A file where the store writes its temp files stops every write, even for root
            # (which folder permissions would not stop).
            for leftover in own_tmp.iterdir():
                leftover.unlink()
            own_tmp.rmdir()
            own_tmp.write_text("in the way")
            with pytest.raises(RecordStoreError):
                store.check_writable()
            own_tmp.unlink()
            store.check_writable()
        finally:
            if own_tmp.is_file():
                own_tmp.unlink()
            store.close()

    def test_unusable_root(self, tmp_path: Path) -> None:
        """A root that is a file is a RecordStoreError at start."""
        (tmp_path / "file").write_text("x")
        with pytest.raises(RecordStoreError):
            FileRecordStore(tmp_path / "file" / "records")

    def test_stale_temp_files_of_dead_owners_are_removed(self, tmp_path: Path) -> None:
        """Temp files of owners not alive are removed; live owners' are kept."""
        store = FileRecordStore(tmp_path, owner="me")
        for owner in ("dead", "alive"):
            (tmp_path / TMP_DIR / owner).mkdir(parents=True)
            (tmp_path / TMP_DIR / owner / f"{EID}.1.tmp").write_bytes(b"{partial")
        try:
            assert store.remove_stale_temp({"alive"}) == 1
            assert not (tmp_path / TMP_DIR / "dead").exists()
            assert (tmp_path / TMP_DIR / "alive" / f"{EID}.1.tmp").exists()
        finally:
            store.close()

    def test_group_commit_many_threads(self, tmp_path: Path) -> None:
        """Concurrent writers all get durable, complete records."""
        store = FileRecordStore(tmp_path, owner="w")
        ids = [execution_id_for(f"g{i}") for i in range(200)]

        def write(chunk: list[str]) -> None:
            for eid in chunk:
                store.put(eid, json.dumps({"id": eid}).encode())

        threads = [threading.Thread(target=write, args=(ids[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store.close()
        assert sorted(p.stem for p in all_records(tmp_path)) == sorted(ids)
        assert list((tmp_path / TMP_DIR).iterdir()) == []


WRITER = textwrap.dedent(
    """
    import json, sys
    from runtime.canonical import execution_id_for
    from runtime.stores.files.store import FileRecordStore
    store = FileRecordStore(sys.argv[1], owner="victim")
    blob = "x" * (512 * 1024)
    i = 0
    while True:
        eid = execution_id_for(f"k{i}")
        store.put(eid, json.dumps({"i": i, "blob": blob}).encode())
        if i == 3:
            print("WRITING", flush=True)
        i += 1
    """
)


class TestCrash:
    def test_killed_writer_leaves_no_partial_record(self, tmp_path: Path) -> None:
        """SIGKILL during writes: every exec-*.json is complete; a new runtime cleans up temps."""
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "WRITING"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        records = all_records(tmp_path)
        assert len(records) >= 4
        for path in records:
            data = json.loads(path.read_bytes())  # raises on a torn file
            assert len(data["blob"]) == 512 * 1024
            assert path.stem == execution_id_for(f"k{data['i']}")
        # Whatever was mid-write stays a temp file, never an exec-*.json of its own.
        assert not list(tmp_path.glob("*/exec-*.json.*"))
        from runtime import AgentRegistry, IntentusRuntime

        rt = IntentusRuntime(AgentRegistry(), tmp_path, worker_id="next")
        try:
            assert not (tmp_path / TMP_DIR / "victim").exists()
        finally:
            rt.close()
