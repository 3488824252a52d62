"""One conformance suite for the execution store, run against every backend.

Each backend (memory, files, PostgreSQL) must give the same claim outcomes and the same
answers through the runtime: user scoping, fingerprint conflicts, parked waits, orphans in
doubt, malformed twins, failure and recovery. "Another worker" is a second store instance on
the same records folder or database, with its own owner; it "dies" when it is closed without
recording (its lock or session is gone, its claim stays).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import AgentRegistry, IntentusRuntime
from runtime.canonical import execution_id_for, rejection_id_for
from runtime.claims import ClaimState
from runtime.envelope import RequestContext
from runtime.errors import RecordStoreError
from runtime.stores.base import RecordStore
from runtime.stores.files.store import FileRecordStore
from runtime.stores.memory import MemoryRecordStore
from tests.support import pg

BACKENDS = ["memory", "files", "postgres"]
SHARED = ["files", "postgres"]  # backends more than one worker can share


def envelope(request_id: str, payload: dict[str, Any] | None = None) -> bytes:
    return json.dumps(
        {
            "version": "1.0",
            "intent": {"name": "ProcessIntent"},
            "payload": payload if payload is not None else {"document_id": "doc-1"},
            "metadata": {"requestId": request_id},
        }
    ).encode()


class Backend:
    """Opens stores of one kind on one shared place; closes them all at the end."""

    def __init__(self, kind: str, place: str) -> None:
        self.kind = kind
        self.place = place
        self.opened: list[RecordStore] = []

    def open(self) -> RecordStore:
        store: RecordStore
        if self.kind == "memory":
            store = MemoryRecordStore()
        elif self.kind == "files":
            store = FileRecordStore(self.place)
        else:
            from runtime.stores.postgres import PostgresRecordStore

            store = PostgresRecordStore(self.place, pool_size=4)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            try:
                store.close()
            except Exception:
                pass


def _backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    if kind == "postgres":
        with pg.temporary_database() as url:
            b = Backend("postgres", url)
            yield b
            b.close_all()
        return
    b = Backend(kind, str(tmp_path / "records"))
    yield b
    b.close_all()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, tmp_path)


@pytest.fixture(params=SHARED)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend that several workers share (memory is one process's own)."""
    yield from _backend(request.param, tmp_path)


class Calls:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.lock = threading.Lock()


def registry(calls: Calls, gate: threading.Event | None = None) -> AgentRegistry:
    reg = AgentRegistry()

    @reg.agent("a", intents=["ProcessIntent"])
    def handle(env: Any) -> dict[str, Any]:
        with calls.lock:
            calls.names.append(env.metadata.requestId)
        if gate is not None:
            gate.wait(10)
        return {"doc": env.payload.get("document_id"), "n": len(calls.names)}

    return reg


def runtime(store: RecordStore, calls: Calls, **kw: Any) -> IntentusRuntime:
    return IntentusRuntime(registry(calls, kw.pop("gate", None)), store=store, **kw)


def as_user(user: str | None) -> RequestContext:
    return RequestContext(user_id=user)


class TestClaims:
    def test_first_claim_wins_then_record_answers(self, backend: Backend) -> None:
        """WON for the first claimant; once recorded, every claim is RECORDED with the bytes."""
        store = backend.open()
        eid = execution_id_for("r1")
        first = store.claim(eid, user_id="", fingerprint="f")
        assert first.state is ClaimState.WON
        store.put(eid, b'{"x": 1}')
        store.release(first)
        again = store.claim(eid, user_id="", fingerprint="f")
        assert again.state is ClaimState.RECORDED
        assert again.record == b'{"x": 1}'

    def test_record_without_claim_is_written_once(self, backend: Backend) -> None:
        """A record put without a claim (an import) is stored once; a second put is refused."""
        from runtime.errors import RecordExists

        store = backend.open()
        eid = execution_id_for("unclaimed")
        store.put(eid, b'{"a": 1}')
        with pytest.raises(RecordExists):
            store.put(eid, b'{"a": 2}')
        store.put(execution_id_for("unclaimed-2"), b'{"b": 1}')  # the committer still runs
        assert store.get(eid) == b'{"a": 1}'

    def test_second_claimant_sees_running_with_its_holder(self, shared: Backend) -> None:
        """A live owner's claim: RUNNING, naming the owner, user and fingerprint."""
        one, two = shared.open(), shared.open()
        eid = execution_id_for("r2")
        assert one.claim(eid, user_id="alice", fingerprint="f1").won
        seen = two.claim(eid, user_id="bob", fingerprint="f2")
        assert seen.state is ClaimState.RUNNING
        assert seen.holder is not None
        assert seen.holder.owner == one.owner
        if seen.holder.known:  # PostgreSQL keeps the caller with the claim; files do not
            assert (seen.holder.user_id, seen.holder.fingerprint) == ("alice", "f1")
        assert two.probe([eid]) == {eid: ClaimState.RUNNING}

    def test_dead_owner_without_record_is_orphaned(self, shared: Backend) -> None:
        """An owner that died holding a claim: ORPHANED; one taker wins the right to record."""
        doomed, one, two = shared.open(), shared.open(), shared.open()
        eid = execution_id_for("r3")
        assert doomed.claim(eid, user_id="", fingerprint="f").won
        doomed.close()
        seen = one.claim(eid, user_id="", fingerprint="f")
        assert seen.state is ClaimState.ORPHANED
        taken = one.take_over(seen, user_id="", fingerprint="f")
        assert taken.won
        assert two.claim(eid, user_id="", fingerprint="f").state is ClaimState.RUNNING

    def test_concurrent_claims_have_exactly_one_winner(self, shared: Backend) -> None:
        """Many stores claiming the same ids at once: exactly one WON per id."""
        stores = [shared.open() for _ in range(4)]
        ids = [execution_id_for(f"race-{i}") for i in range(40)]
        wins: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(len(stores))

        def race(store: RecordStore) -> None:
            barrier.wait()
            for eid in ids:
                if store.claim(eid, user_id="", fingerprint="f").won:
                    with lock:
                        wins.append(eid)

        threads = [threading.Thread(target=race, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(wins) == sorted(ids)


class TestThroughTheRuntime:
    def test_duplicate_is_answered_from_the_record(self, backend: Backend) -> None:
        """The same caller re-sending: the stored reply, byte for byte, no second run."""
        calls = Calls()
        rt = runtime(backend.open(), calls)
        first = rt.process(envelope("d1"), as_user("alice"))
        rt.commit_sync(first)
        second = rt.process(envelope("d1"), as_user("alice"))
        assert second.kind == "replayed"
        assert second.body == first.body
        assert calls.names == ["d1"]

    def test_another_user_cannot_read_or_run(self, backend: Backend) -> None:
        """Another broker user re-sending the requestId: IDEMPOTENCY_CONFLICT, no payload."""
        calls = Calls()
        rt = runtime(backend.open(), calls)
        rt.commit_sync(rt.process(envelope("u1", {"document_id": "secret"}), as_user("alice")))
        other = rt.process(envelope("u1", {"document_id": "secret"}), as_user("mallory"))
        assert other.kind == "conflict"
        assert other.error_code == "IDEMPOTENCY_CONFLICT"
        assert b"secret" not in other.body
        assert calls.names == ["u1"]

    def test_different_fingerprint_is_a_conflict(self, backend: Backend) -> None:
        """Same user, same requestId, another payload: conflict; the record is untouched."""
        calls = Calls()
        store = backend.open()
        rt = runtime(store, calls)
        rt.commit_sync(rt.process(envelope("f1", {"document_id": "a"}), as_user("alice")))
        before = store.get(execution_id_for("f1"))
        out = rt.process(envelope("f1", {"document_id": "b"}), as_user("alice"))
        assert out.error_code == "IDEMPOTENCY_CONFLICT"
        assert store.get(execution_id_for("f1")) == before

    def test_policy_is_checked_again_for_a_replay(self, backend: Backend) -> None:
        """A stored answer is replayed only while policy still allows its agent to the user."""
        calls = Calls()
        store = backend.open()
        rt = runtime(store, calls)
        rt.commit_sync(rt.process(envelope("p1"), as_user("alice")))
        policy = {"default": "allow", "rules": [{"id": "no-a", "action": "deny", "agents": ["a"]}]}
        strict = IntentusRuntime(registry(calls), store=store, policy=policy)
        out = strict.process(envelope("p1"), as_user("alice"))
        assert out.kind == "denied"
        assert out.error_code == "UNAUTHORIZED"
        assert calls.names == ["p1"]

    def test_running_duplicate_is_parked_then_replayed(self, shared: Backend) -> None:
        """A duplicate at another worker while the first runs: parked, then the same answer."""
        calls = Calls()
        gate = threading.Event()
        owner = runtime(shared.open(), calls, gate=gate)
        other = runtime(shared.open(), calls)
        result: dict[str, Any] = {}
        t = threading.Thread(
            target=lambda: result.update(r=owner.route_intent(envelope("w1"), as_user("u")))
        )
        t.start()
        _wait_for(lambda: calls.names == ["w1"])
        parked = other.process(envelope("w1"), as_user("u"))
        assert parked.kind == "parked"
        assert not other.settled(parked)
        gate.set()
        t.join(10)
        _wait_for(lambda: other.settled(parked))
        answer = other.process(envelope("w1"), as_user("u"))
        assert answer.kind == "replayed"
        assert json.loads(answer.body) == result["r"].model_dump(mode="json")
        assert calls.names == ["w1"]

    def test_orphan_is_recorded_in_doubt_and_never_rerun(self, shared: Backend) -> None:
        """Owner died mid-run: EXECUTION_IN_DOUBT, recorded once, every later duplicate too."""
        calls = Calls()
        doomed = shared.open()
        eid = execution_id_for("o1")
        fp = _fingerprint("o1", calls)
        assert doomed.claim(eid, user_id="u", fingerprint=fp).won
        doomed.close()
        rt = runtime(shared.open(), calls)
        out = rt.commit_sync(rt.process(envelope("o1"), as_user("u")))
        assert out.kind == "in_doubt"
        assert out.error_code == "EXECUTION_IN_DOUBT"
        record = json.loads(rt.store.get(eid) or b"{}")
        assert record["header"]["kind"] == "in_doubt"
        assert "DUPLICATE_DELIVERY" in [e["type"] for e in record["events"]]
        again = runtime(shared.open(), calls).process(envelope("o1"), as_user("u"))
        assert again.kind == "replayed"
        assert again.body == out.body
        assert calls.names == []

    def test_malformed_twin_never_takes_over(self, shared: Backend) -> None:
        """A malformed message with a running request's id: error reply, its own rejection
        record (under its body's id), the running request untouched."""
        calls = Calls()
        gate = threading.Event()
        owner = runtime(shared.open(), calls, gate=gate)
        other = runtime(shared.open(), calls)
        t = threading.Thread(target=lambda: owner.route_intent(envelope("m1"), as_user("u")))
        t.start()
        _wait_for(lambda: calls.names == ["m1"])
        bad = json.loads(envelope("m1"))
        bad["surprise"] = True
        twin = other.process(json.dumps(bad).encode(), as_user("u"))
        assert twin.kind == "rejected"
        assert twin.execution_id == rejection_id_for(json.dumps(bad).encode())
        assert twin.claim is None
        gate.set()
        t.join(10)
        record = json.loads(other.store.get(execution_id_for("m1")) or b"{}")
        assert record["header"]["kind"] == "execution"
        assert record["finalResponse"]["status"] == "success"

    def test_in_process_record_failure_is_in_doubt_not_rerun(self, backend: Backend) -> None:
        """An agent ran but its record could not be written: later duplicates are in doubt."""
        calls = Calls()
        store = backend.open()
        rt = runtime(store, calls)
        out = rt.process(envelope("x1"), as_user("u"))
        original_put = store.put

        def failing_put(execution_id: str, data: bytes) -> None:
            raise RecordStoreError("disk full")

        store.put = failing_put  # type: ignore[method-assign]
        with pytest.raises(RecordStoreError):
            rt.commit_sync(out)
        store.put = original_put  # type: ignore[method-assign]
        again = rt.commit_sync(rt.process(envelope("x1"), as_user("u")))
        assert again.kind == "in_doubt"
        assert calls.names == ["x1"]


class TestFailure:
    def test_store_failure_is_an_error_then_recovers(self, shared: Backend) -> None:
        """Claims fail loudly while the store is broken, and work again once it is back."""
        calls = Calls()
        store = shared.open()
        rt = runtime(store, calls)
        with _broken(shared):
            with pytest.raises(RecordStoreError):
                rt.process(envelope("s1"), as_user("u"))
            with pytest.raises(RecordStoreError):
                store.check_writable()
        store.check_writable()
        assert rt.route_intent(envelope("s1"), as_user("u")).ok
        assert calls.names == ["s1"]


def _fingerprint(request_id: str, calls: Calls) -> str:
    """The fingerprint the runtime computes for `envelope(request_id)`."""
    probe = IntentusRuntime(registry(calls), store=MemoryRecordStore())
    out = probe.process(envelope(request_id))
    record = json.loads(probe.commit_sync(out).record or b"{}")
    calls.names.clear()
    return str(record["header"]["fingerprint"])


class _broken:
    """Break the backend's write path for a while, the way a full disk or a lost table would."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.moved: Path | None = None

    def __enter__(self) -> None:
        if self.backend.kind == "files":
            claims = Path(self.backend.place) / ".claims"
            self.moved = claims.with_name(".claims-away")
            claims.rename(self.moved)
            claims.write_text("not a folder")
        else:
            pg.execute(self.backend.place, "ALTER TABLE intentus_executions RENAME TO away")

    def __exit__(self, *exc: object) -> None:
        if self.backend.kind == "files":
            assert self.moved is not None
            claims = Path(self.backend.place) / ".claims"
            claims.unlink()
            self.moved.rename(claims)
        else:
            pg.execute(self.backend.place, "ALTER TABLE away RENAME TO intentus_executions")


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
