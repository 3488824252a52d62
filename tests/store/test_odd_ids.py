"""Ids the store must hold whatever they contain, and one record's fault failing that record
alone: part of the conformance suite (same backends, same fixtures), against the real stores.

PostgreSQL's text columns refuse NUL and its btree indexes refuse long values; the record
itself is kept byte for byte whatever its ids hold, and finding it by its ids still works.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.canonical import execution_id_for
from runtime.errors import RecordExists, RecordStoreError, RecordUnstorable
from runtime.query import RecordFilter, search
from runtime.replay import find
from tests.store.test_conformance import (
    BACKENDS,
    SHARED,
    Backend,
    Calls,
    _backend,
    as_user,
    runtime,
)
from tests.support import pg


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, tmp_path)


@pytest.fixture(params=SHARED)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, tmp_path)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Backend]:
    """A per-row refusal is PostgreSQL's: its constraints and triggers refuse single rows."""
    yield from _backend("postgres", tmp_path)


ODD_IDS = {
    "nul": "req-\x00-nul",
    "only_nul": "\x00",
    "control": "req-\x01\x1f\x7f",
    "long_ascii": "r" * 1024,
    "long_two_byte": "é" * 1024,
    # 4 KiB of UTF-8 that does not compress: over what a btree index entry may hold
    "long_four_byte": "".join(chr(0x10000 + (i * 7919) % 0xFFFF) for i in range(1024)),
    "backslash": "req\\x00\\",
    "marker_lookalike": "~sha256:" + "0" * 64,
}


def odd_envelope(request_id: str, intent: str = "ProcessIntent") -> bytes:
    return json.dumps(
        {
            "version": "1.0",
            "intent": {"name": intent},
            "payload": {"document_id": "doc-1"},
            "metadata": {"requestId": request_id},
        }
    ).encode()


@pytest.mark.parametrize("name", list(ODD_IDS))
def test_odd_request_id_is_stored_byte_exact_and_found(backend: Backend, name: str) -> None:
    rid = ODD_IDS[name]
    calls = Calls()
    store = backend.open()
    rt = runtime(store, calls)
    out = rt.commit_sync(rt.process(odd_envelope(rid), as_user("u")))
    assert out.kind == "executed", out.response
    assert store.get(out.execution_id) == out.record  # byte for byte
    again = rt.commit_sync(rt.process(odd_envelope(rid), as_user("u")))
    assert again.kind == "replayed" and again.body == out.body
    assert calls.names == [rid]
    assert find(store, rid)[0] == out.execution_id
    rows, total = search(store, RecordFilter(text=rid), limit=10)
    if backend.kind != "memory":  # a scan matches parts; an index the whole id
        assert total == 1 and rows[0]["executionId"] == out.execution_id, rows


def test_odd_correlation_id_and_intent_are_found(backend: Backend) -> None:
    from runtime.envelope import RequestContext

    calls = Calls()
    store = backend.open()
    rt = runtime(store, calls)
    cid = "cid-\x00-" + ODD_IDS["long_four_byte"][:700]
    out = rt.process(odd_envelope("req-odd-cid"), RequestContext(user_id="u"), correlation_id=cid)
    rt.commit_sync(out)
    assert store.get(out.execution_id) == out.record
    assert find(store, cid)[0] == out.execution_id
    unknown = rt.commit_sync(rt.process(odd_envelope("req-odd-intent", intent="a\x00b")))
    assert unknown.response["error"]["code"] == "CAPABILITY_NOT_FOUND"  # recorded all the same
    assert store.get(unknown.execution_id) == unknown.record
    store.check_writable()


def test_rejected_message_with_a_nul_request_id_is_recorded(backend: Backend) -> None:
    calls = Calls()
    store = backend.open()
    rt = runtime(store, calls)
    body = json.dumps({"version": "9", "metadata": {"requestId": "bad-\x00"}}).encode()
    out = rt.commit_sync(rt.process(body, as_user("u")))
    assert out.kind == "rejected"
    assert out.record is not None and store.get(out.execution_id) == out.record
    assert calls.names == []


def _poison(url: str, how: str) -> None:
    """A value this database refuses for one row only, as a server-side limit would: with a
    constraint violation (a data error), or with an internal error that says nothing of the
    data (as a value over some server limit may give)."""
    if how == "constraint":
        pg.execute(
            url,
            "ALTER TABLE intentus_executions ADD CONSTRAINT poison"
            " CHECK (request_id IS DISTINCT FROM 'poison')",
        )
        return
    pg.execute(
        url,
        """CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.request_id = 'poison' THEN
            RAISE EXCEPTION 'cannot hold this one' USING ERRCODE = 'XX000';
          END IF;
          RETURN NEW;
        END $$""",
    )
    pg.execute(
        url,
        "CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON intentus_executions"
        " FOR EACH ROW EXECUTE FUNCTION poison()",
    )


@pytest.mark.parametrize("how", ["constraint", "internal"])
@pytest.mark.parametrize("together", [1, 8, 40])
def test_one_refused_record_fails_alone_not_its_batch(
    postgres: Backend, together: int, how: str
) -> None:
    """The committer writes records together; the one the database refuses fails alone (as
    unstorable, not as the store being down), the others in its batch are durable."""
    shared = postgres
    store = shared.open()
    _poison(shared.place, how)
    records = {}
    for i in range(together):
        rid = "poison" if i == together // 2 else f"req-batch-{i}-{how}"
        records[execution_id_for(rid)] = json.dumps(
            {"header": {"requestId": rid, "executionId": execution_id_for(rid)}}
        ).encode()
    results: dict[str, BaseException | None] = {}
    done = threading.Semaphore(0)
    # Hold the table so the committer's first round waits and the rest queue up behind it.
    import psycopg

    blocker = psycopg.connect(shared.place)
    blocker.execute("LOCK TABLE intentus_executions IN SHARE MODE")

    def callback(eid: str) -> Any:
        def cb(exc: BaseException | None) -> None:
            results[eid] = exc
            done.release()

        return cb

    for eid, data in records.items():
        store.put_async(eid, data, callback(eid))
    blocker.rollback()
    blocker.close()
    for _ in records:
        assert done.acquire(timeout=30)
    poisoned = execution_id_for("poison")
    assert isinstance(results[poisoned], RecordUnstorable), results[poisoned]
    assert store.get(poisoned) is None
    for eid, data in records.items():
        if eid != poisoned:
            assert results[eid] is None, results[eid]
            assert store.get(eid) == data
    store.check_writable()  # one record's fault is not the store's
    store.put(execution_id_for("req-after"), b'{"header": {"requestId": "req-after"}}')
    with pytest.raises(RecordExists):
        store.put(execution_id_for("req-after"), b"{}")


def test_unstorable_is_a_record_store_error() -> None:
    """Callers that only know RecordStoreError still see a failure."""
    assert issubclass(RecordUnstorable, RecordStoreError)
    assert not issubclass(RecordUnstorable, RecordExists)


_OVER_THE_FILE_LIMIT = r"""
import resource, signal, sys
from runtime.errors import RecordUnstorable
from runtime.stores.files.store import FileRecordStore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
store = FileRecordStore(sys.argv[1])
big, small = "exec-" + "a" * 24, "exec-" + "b" * 24
try:
    store.put(big, b"{" + b" " * (2 << 20) + b"}")
except RecordUnstorable as exc:
    print("unstorable:", exc)
store.put(small, b"{}")
store.check_writable()
print("small:", store.get(small), "big:", store.get(big))
store.close()
"""


def test_files_record_over_the_file_size_limit_fails_alone(tmp_path: Path) -> None:
    """A record larger than the file system lets a file grow (EFBIG) is its own fault."""
    out = subprocess.run(
        [sys.executable, "-c", _OVER_THE_FILE_LIMIT, str(tmp_path / "records")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert "unstorable:" in out.stdout, out.stdout
    assert "small: b'{}' big: None" in out.stdout, out.stdout
