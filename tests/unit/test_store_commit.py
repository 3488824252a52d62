"""Group commit: a batch of records made durable with syncfs, or with an fsync per file."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from runtime import RecordExists
from runtime.stores.files import commit as store_module
from runtime.stores.files.store import FileRecordStore


def _eid(i: int) -> str:
    return f"exec-{i:024x}"


@pytest.mark.parametrize("use_syncfs", [True, False])
def test_batch_is_linked_and_reported(tmp_path: Path, use_syncfs: bool) -> None:
    """Every record of a batch lands in its shard, is reported once, and no temp file stays."""
    if use_syncfs and store_module.SYNCFS is None:
        pytest.skip("no syncfs here")
    store = FileRecordStore(tmp_path, owner="w")
    if not use_syncfs:
        store._syncfs = None
    results: list[tuple[str, BaseException | None]] = []
    done = threading.Event()
    ids = [_eid(i * 0x10001) for i in range(40)] + [_eid(0)]  # the last one is a duplicate

    def report(eid: str) -> store_module.Callback:
        def cb(exc: BaseException | None) -> None:
            results.append((eid, exc))
            if len(results) == len(ids):
                done.set()

        return cb

    gate = threading.Event()
    sizes: list[int] = []
    commit = store._commit

    def gated(batch: list[store_module.PendingRecord]) -> None:
        gate.wait(10)  # hold the committer back so that the rest queue up as one batch
        sizes.append(len(batch))
        commit(batch)

    store._commit = gated  # type: ignore[method-assign]
    for eid in ids:
        store.put_async(eid, json.dumps({"id": eid}).encode(), report(eid))
    gate.set()
    assert done.wait(10)
    assert max(sizes) >= store_module.SYNCFS_MIN_BATCH
    store.close()
    assert sum(1 for _, r in results if r is None) == 40
    first = [r for eid, r in results if eid == _eid(0)]
    assert len(first) == 2 and sum(isinstance(r, RecordExists) for r in first) == 1
    for eid in ids[:40]:
        path = tmp_path / eid[5:8] / f"{eid}.json"
        assert json.loads(path.read_bytes()) == {"id": eid}
        assert oct(os.stat(path).st_mode & 0o777) == "0o640"
    assert not list((tmp_path / ".tmp").rglob("*.tmp"))


def test_idle_committer_makes_every_shard_folder(tmp_path: Path) -> None:
    """While no record waits, the committer makes the shard folders (and syncs the records
    folder), so that records never make one; records written meanwhile land as usual."""
    store = FileRecordStore(tmp_path, owner="w")
    try:
        store.put(_eid(7), b'{"n": 7}')
        shards = {f"{i:03x}" for i in range(store_module.SHARDS)}
        for _ in range(500):
            present = {p.name for p in tmp_path.iterdir() if p.name in shards}
            if present == shards and store._spare_shards == []:
                break
            threading.Event().wait(0.02)
        assert present == shards
        assert all(
            (tmp_path / name).stat().st_mode & 0o777 == 0o750 for name in ("000", "abc", "fff")
        )
        assert str(tmp_path) not in store._unsynced_folders
        store.put(_eid(8), b'{"n": 8}')
        assert store.get(_eid(7)) == b'{"n": 7}' and store.get(_eid(8)) == b'{"n": 8}'
    finally:
        store.close()


def test_shard_folders_are_not_made_when_not_durable(tmp_path: Path) -> None:
    store = FileRecordStore(tmp_path, owner="w", durable=False)
    try:
        store.put(_eid(7), b"{}")
        threading.Event().wait(0.2)
        assert [p.name for p in tmp_path.iterdir() if len(p.name) == 3] == ["000"]
    finally:
        store.close()


def test_records_that_come_as_the_committer_turns_idle_are_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record queued just as the committer's idle wait times out is committed, not dropped
    for the shard folders' turn."""
    monkeypatch.setattr(store_module, "IDLE_BEFORE_SHARDS", 0.00001)
    store = FileRecordStore(tmp_path, owner="w", durable=False)
    store._spare_shards = ["never made"]
    store._make_shards = lambda: None  # type: ignore[method-assign]  # always something to make
    results: list[BaseException | None] = []
    lock = threading.Lock()
    done = threading.Event()
    n = 2000

    def cb(exc: BaseException | None) -> None:
        with lock:
            results.append(exc)
            if len(results) == n:
                done.set()

    def writer(k: int) -> None:
        for i in range(k, n, 4):
            store.put_async(_eid(i), b"{}", cb)
            if i % 64 == k:
                threading.Event().wait(0.001)  # let the committer turn idle now and then

    writers = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    try:
        assert done.wait(10), f"{n - len(results)} records never reported"
        assert results == [None] * n
    finally:
        store.close()
