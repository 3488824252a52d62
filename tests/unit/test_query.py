"""Listing records: RecordFilter, search, counts_by_status, page, and indexed delegation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runtime import AgentRegistry, FixedClock
from runtime.query import (
    ROW_FIELDS,
    IndexedRecordStore,
    RecordFilter,
    counts_by_status,
    is_indexed,
    page,
    row,
    search,
)
from runtime.stores.memory import MemoryRecordStore

from .conftest import Calls, body, envelope, fail, ok


@pytest.fixture
def rt(make_runtime, calls: Calls, clock: FixedClock) -> Any:
    """Six records a minute apart: three successes, two agent errors, one rejected body."""
    reg = AgentRegistry()
    reg.register("good", ok(calls, "good"), intents=["ProcessIntent"])
    reg.register("bad", fail(calls, "bad"), intents=["FailIntent"])
    runtime = make_runtime(reg)
    for i, intent in enumerate(["ProcessIntent", "FailIntent", "ProcessIntent", "FailIntent"]):
        out = runtime.process(
            body(envelope(intent, request_id=f"req-{i}")), correlation_id=f"Corr-{i}"
        )
        runtime.commit_sync(out)
        clock.advance(60)
    out = runtime.process(body(envelope(request_id="req-4")))
    runtime.commit_sync(out)
    clock.advance(60)
    runtime.commit_sync(runtime.process(b"not json"))
    return runtime


def rids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["requestId"] for r in rows]


class TestRecordFilter:
    ROW = {
        "executionId": "exec-00aa",
        "requestId": "req-Upper",
        "correlationId": "corr-1",
        "createdAt": "2024-01-15T10:30:00.000Z",
        "intent": "I",
        "status": "error",
        "errorCode": "AGENT_ERROR",
        "agent": "a",
    }

    def test_empty_matches_all(self) -> None:
        """An empty filter keeps every row, even one without a readable time."""
        assert RecordFilter().is_empty()
        assert RecordFilter().matches(self.ROW)
        assert RecordFilter().matches({**self.ROW, "createdAt": None})

    def test_each_field(self) -> None:
        """intent, status, error code and agent must equal the row's."""
        for field, key in (
            ("intent", "intent"),
            ("status", "status"),
            ("error_code", "errorCode"),
            ("agent", "agent"),
        ):
            assert RecordFilter(**{field: self.ROW[key]}).matches(self.ROW)
            assert not RecordFilter(**{field: "other"}).matches(self.ROW)

    def test_time_window(self) -> None:
        """since is inclusive, until exclusive; a row without a time never matches a window."""
        t = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
        assert RecordFilter(since=t).matches(self.ROW)
        assert not RecordFilter(until=t).matches(self.ROW)
        assert RecordFilter(until=t + timedelta(milliseconds=1)).matches(self.ROW)
        assert not RecordFilter(since=t + timedelta(milliseconds=1)).matches(self.ROW)
        assert not RecordFilter(since=t).matches({**self.ROW, "createdAt": "garbage"})

    def test_text_searches_three_ids(self) -> None:
        """text is a case-insensitive substring of the execution, request or correlation id."""
        for needle in ("00AA", "upper", "CORR-1"):
            assert RecordFilter(text=needle).matches(self.ROW)
        assert not RecordFilter(text="error").matches(self.ROW)  # other fields are not searched


class TestScan:
    def test_newest_first(self, rt) -> None:
        """Rows come newest first, with the total of all matches."""
        rows, total = search(rt.store, RecordFilter(), limit=100)
        assert total == 6
        assert rids(rows)[1:] == ["req-4", "req-3", "req-2", "req-1", "req-0"]
        assert rows[0]["kind"] == "rejected"
        assert set(rows[0]) == set(ROW_FIELDS)

    def test_ties_break_on_execution_id(self, make_runtime, calls: Calls) -> None:
        """Records of the same millisecond are ordered by executionId, descending."""
        reg = AgentRegistry()
        reg.register("good", ok(calls, "good"), intents=["ProcessIntent"])
        runtime = make_runtime(reg)
        for i in range(5):
            runtime.commit_sync(runtime.process(body(envelope(request_id=f"same-{i}"))))
        rows, _ = search(runtime.store, RecordFilter(), limit=10)
        assert len({r["createdAt"] for r in rows}) == 1
        ids = [r["executionId"] for r in rows]
        assert ids == sorted(ids, reverse=True)

    def test_window(self, rt) -> None:
        """limit and offset cut the ordered matches; the total stays that of all matches."""
        whole, _ = search(rt.store, RecordFilter(), limit=100)
        for offset in range(7):
            rows, total = search(rt.store, RecordFilter(), limit=2, offset=offset)
            assert total == 6
            assert rows == whole[offset : offset + 2]
        with pytest.raises(ValueError):
            search(rt.store, RecordFilter(), limit=-1)

    def test_filters_and_counts(self, rt) -> None:
        """Filters narrow the rows; counts apply every field but status."""
        rows, total = search(rt.store, RecordFilter(status="error", intent="FailIntent"), limit=9)
        assert (rids(rows), total) == (["req-3", "req-1"], 2)
        assert counts_by_status(rt.store, RecordFilter()) == {"success": 3, "error": 3}
        assert counts_by_status(rt.store, RecordFilter(status="success")) == {
            "success": 3,
            "error": 3,
        }
        assert counts_by_status(rt.store, RecordFilter(intent="FailIntent")) == {"error": 2}
        rows, _ = search(rt.store, RecordFilter(text="corr-2"), limit=9)
        assert rids(rows) == ["req-2"]

    def test_page_is_search_and_counts(self, rt) -> None:
        """page() gives what search() and counts_by_status() give, from one scan."""
        flt = RecordFilter(status="success")
        result = page(rt.store, flt, limit=2, offset=1)
        assert (result.rows, result.total) == search(rt.store, flt, limit=2, offset=1)
        assert result.counts == counts_by_status(rt.store, flt)
        assert result.indexed is False

    def test_unreadable_records_are_skipped(self) -> None:
        """A record that does not parse is left out of listings (verify reports it)."""
        store = MemoryRecordStore()
        store.put("exec-" + "0" * 24, b"{broken")
        assert search(store, RecordFilter(), limit=5) == ([], 0)
        assert counts_by_status(store, RecordFilter()) == {}

    def test_row_of_a_record(self, rt) -> None:
        """A row carries the correlationId besides the summary."""
        rows, _ = search(rt.store, RecordFilter(text="req-0"), limit=1)
        assert rows[0]["correlationId"] == "Corr-0"
        assert row({"header": {"correlationId": "c"}})["correlationId"] == "c"


class _Indexed(MemoryRecordStore):
    """A store answering listings itself, as a database backend does (with canned answers)."""

    def __init__(self, record: bytes) -> None:
        super().__init__()
        self.record = record
        self.asked: list[dict[str, Any]] = []

    def search(
        self, flt: RecordFilter, *, limit: int | None, offset: int
    ) -> tuple[list[tuple[str, bytes]], int]:
        self.asked.append({"flt": flt, "limit": limit, "offset": offset})
        total = {None: 1234, "success": 1000, "error": 234}[flt.status]
        found = [("exec-" + "1" * 24, self.record), ("exec-" + "2" * 24, b"{broken")]
        return found[:limit], total


class TestIndexed:
    def test_delegates_search(self, rt) -> None:
        """A store with its own search gets the filter and the window, and its rows are parsed."""
        record = rt.store.get(next(iter(rt.store.ids())))
        store = _Indexed(record)
        store.put("exec-" + "0" * 24, b"{broken")  # a scan would skip it and find 0
        since = datetime(2024, 1, 1, tzinfo=UTC)
        flt = RecordFilter(intent="X", agent="a", since=since, text="req-1")
        rows, total = search(store, flt, limit=2, offset=10)
        assert total == 1234
        assert rows[0] == row(json.loads(record))
        assert rows[1] == {**dict.fromkeys(ROW_FIELDS), "executionId": "exec-" + "2" * 24}
        assert store.asked == [{"flt": flt, "limit": 2, "offset": 10}]

    def test_counts_from_the_index(self, rt) -> None:
        """Without counts_by_status of its own, an indexed store counts each status by search."""
        store = _Indexed(b"{}")
        flt = RecordFilter(status="error", intent="X")
        assert counts_by_status(store, flt) == {"success": 1000, "error": 234}
        assert [q["flt"] for q in store.asked] == [
            RecordFilter(intent="X", status="success"),
            RecordFilter(intent="X", status="error"),
        ]
        assert all(q["limit"] == 0 for q in store.asked)
        result = page(store, flt, limit=1, offset=0)
        assert (result.total, result.counts, result.indexed) == (
            234,
            {"success": 1000, "error": 234},
            True,
        )
        assert len(result.rows) == 1

    def test_plain_stores_are_not_indexed(self) -> None:
        """The memory and file stores have no index of their own."""
        assert not isinstance(MemoryRecordStore(), IndexedRecordStore)
        assert not is_indexed(MemoryRecordStore())
