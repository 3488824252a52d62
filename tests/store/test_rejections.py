"""A message rejected before routing does not consume its requestId (on every store).

Its record is kept under a rejection id derived from its raw body, so that its own redeliveries
are recorded once, and the client can fix the message and re-send the same requestId, which
then runs normally. A valid request and a malformed copy racing: the valid one is never refused.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import IntentusRuntime
from runtime.canonical import execution_id_for, rejection_id_for
from runtime.envelope import RequestContext
from runtime.errors import RecordNotFound
from runtime.replay import find, verify
from tests.store.test_conformance import (
    BACKENDS,
    SHARED,
    Backend,
    Calls,
    _backend,
    envelope,
    runtime,
)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, tmp_path)


@pytest.fixture(params=SHARED)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, tmp_path)


def malformed(request_id: str, **extra: Any) -> bytes:
    bad = json.loads(envelope(request_id))
    bad["surprise"] = extra or True
    return json.dumps(bad).encode()


def record_of(rt: IntentusRuntime, execution_id: str) -> dict[str, Any] | None:
    raw = rt.store.get(execution_id)
    return None if raw is None else json.loads(raw)


def test_rejection_id_is_from_the_body_and_apart_from_execution_ids() -> None:
    """`exec-` + 24 hex of sha256(0xFF, a domain tag, sha256(body)): 0xFF is never in UTF-8, so
    no requestId's executionId can be a rejection id."""
    body = b"not json"
    inner = hashlib.sha256(body).digest()
    expected = "exec-" + hashlib.sha256(b"\xffintentus:rejected:" + inner).hexdigest()[:24]
    assert rejection_id_for(body) == expected
    assert rejection_id_for(body) != execution_id_for(body.decode())
    assert rejection_id_for(body) != rejection_id_for(body + b" ")


def test_malformed_then_fixed_same_request_id_runs(backend: Backend) -> None:
    """The fixed re-send of a rejected message runs normally (no IDEMPOTENCY_CONFLICT)."""
    calls = Calls()
    rt = runtime(backend.open(), calls)
    bad = malformed("fix-1")
    refused = rt.commit_sync(rt.process(bad, RequestContext(user_id="u")))
    assert refused.kind == "rejected"
    assert refused.execution_id == rejection_id_for(bad)
    assert refused.response["metadata"]["request_id"] == "fix-1"
    fixed = rt.commit_sync(rt.process(envelope("fix-1"), RequestContext(user_id="u")))
    assert fixed.kind == "executed"
    assert fixed.status == "success"
    assert calls.names == ["fix-1"]
    executed = record_of(rt, execution_id_for("fix-1"))
    assert executed is not None and executed["header"]["kind"] == "execution"
    rejection = record_of(rt, rejection_id_for(bad))
    assert rejection is not None
    assert rejection["header"]["kind"] == "rejected"
    assert rejection["header"]["requestId"] == "fix-1"
    assert rejection["header"]["executionId"] == rejection_id_for(bad)
    assert rejection["envelope"] is None
    assert rejection["rawBodySha256"] == hashlib.sha256(bad).hexdigest()
    assert rejection["finalResponse"] == refused.response
    # A requestId lookup finds the executed record; the rejection by its own id.
    assert find(rt.store, "fix-1") == (execution_id_for("fix-1"), executed)
    assert find(rt.store, rejection_id_for(bad)) == (rejection_id_for(bad), rejection)
    assert verify(rejection_id_for(bad), rejection).ok, verify(rejection_id_for(bad), rejection)
    rt.close()


def test_only_a_rejection_is_found_by_its_request_id(backend: Backend) -> None:
    """With no execution under a requestId, a lookup by it finds its rejection record."""
    calls = Calls()
    rt = runtime(backend.open(), calls)
    bad = malformed("only-bad")
    rt.commit_sync(rt.process(bad))
    eid, record = find(rt.store, "only-bad")
    assert eid == rejection_id_for(bad)
    assert record["header"]["kind"] == "rejected"
    with pytest.raises(RecordNotFound):
        find(rt.store, "never-sent")
    rt.close()


def test_malformed_redelivered_is_recorded_once(backend: Backend) -> None:
    """The same bad body three times: three error answers, one rejection record, no claim."""
    calls = Calls()
    rt = runtime(backend.open(), calls)
    bad = malformed("redelivered")
    answers = [rt.commit_sync(rt.process(bad)) for _ in range(3)]
    assert {a.error_code for a in answers} == {"VALIDATION_ERROR"}
    assert {a.execution_id for a in answers} == {rejection_id_for(bad)}
    assert sum(1 for eid in rt.store.ids() if eid == rejection_id_for(bad)) == 1
    assert [eid for eid in rt.store.ids()] == [rejection_id_for(bad)]
    assert rt.store.get(execution_id_for("redelivered")) is None
    # Nothing holds the requestId: the valid request is claimed and run.
    ok = rt.commit_sync(rt.process(envelope("redelivered")))
    assert ok.status == "success"
    assert calls.names == ["redelivered"]
    rt.close()


def test_same_body_refused_for_another_reason_is_answered_from_its_record(
    backend: Backend,
) -> None:
    """One body, refused first for its content type, then as not JSON: one rejection record,
    and both answers are that record's response, byte for byte."""
    rt = runtime(backend.open(), Calls())
    body = b"not json at all"
    first = rt.commit_sync(rt.process(body, content_type="text/plain"))
    second = rt.commit_sync(rt.process(body))
    again = rt.commit_sync(rt.process(body))
    recorded = record_of(rt, rejection_id_for(body))
    assert recorded is not None
    assert first.body == second.body == again.body
    assert json.loads(second.body) == recorded["finalResponse"]
    assert "content type" in recorded["finalResponse"]["error"]["message"]
    assert second.kind == "rejected"
    assert second.reject_reason is not None and "content type" in second.reject_reason
    rt.close()


def test_valid_and_malformed_racing_valid_never_refused(shared: Backend) -> None:
    """30 times, a valid request and a malformed copy at once, on two workers: the valid one
    always runs (once) and succeeds; the malformed one is always its own rejection."""
    calls = Calls()
    one, two = runtime(shared.open(), calls), runtime(shared.open(), calls)
    valid_codes: list[str | None] = []
    bad_codes: list[str | None] = []
    lock = threading.Lock()
    try:
        for i in range(30):
            rid = f"race-{i}"
            start = threading.Barrier(2)

            def send(
                rt: IntentusRuntime,
                body: bytes,
                out: list[str | None],
                start: threading.Barrier = start,
            ) -> None:
                start.wait(5)
                response = rt.route_intent(body, RequestContext(user_id="u"))
                with lock:
                    out.append(None if response.error is None else response.error.code)

            threads = [
                threading.Thread(target=send, args=(one, envelope(rid), valid_codes)),
                threading.Thread(target=send, args=(two, malformed(rid), bad_codes)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        assert valid_codes == [None] * 30
        assert bad_codes == ["VALIDATION_ERROR"] * 30
        assert sorted(calls.names) == sorted(f"race-{i}" for i in range(30))
    finally:
        one.close()
        two.close()
