"""Listing records: filter, count by status, page through them newest first.

A store with its own `search` (an indexed backend such as the PostgreSQL store, see
`IndexedRecordStore`) filters, orders, pages and counts in its indexes; it may also count by
status itself (`counts_by_status`). Any other store is scanned record by record with
`replay.iter_records`, which reads every record on each call: fine for thousands, slow for
hundreds of thousands.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from runtime.replay import iter_records, summary
from runtime.stores.base import RecordStore

#: The keys of one row: `replay.summary` plus the correlationId searched by `RecordFilter.text`.
ROW_FIELDS = (
    "executionId",
    "requestId",
    "correlationId",
    "createdAt",
    "kind",
    "intent",
    "status",
    "errorCode",
    "agent",
    "strategy",
    "latencyMs",
)


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """What a listing keeps; empty fields match everything.

    `since` is inclusive, `until` exclusive. `text` finds an executionId, requestId or
    correlationId: a scan matches any part of one (case-insensitive), an indexed store the
    whole id (an index lookup).
    """

    intent: str | None = None
    status: str | None = None
    error_code: str | None = None
    agent: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) in (None, "") for f in fields(self))

    def without_status(self) -> RecordFilter:
        return replace(self, status=None)

    def matches(self, row: dict[str, Any]) -> bool:
        """Whether one row (see `ROW_FIELDS`) passes every given field."""
        for name, key in (
            ("intent", "intent"),
            ("status", "status"),
            ("error_code", "errorCode"),
            ("agent", "agent"),
        ):
            wanted = getattr(self, name)
            if wanted and row.get(key) != wanted:
                return False
        if self.since is not None or self.until is not None:
            created = parse_time(row.get("createdAt"))
            if created is None:
                return False
            if self.since is not None and created < self.since:
                return False
            if self.until is not None and created >= self.until:
                return False
        if self.text:
            needle = self.text.casefold()
            if not any(
                needle in str(row.get(key) or "").casefold()
                for key in ("executionId", "requestId", "correlationId")
            ):
                return False
        return True


#: The statuses a record can have (its finalResponse's); counted one by one on indexed stores.
STATUSES = ("success", "error")


@runtime_checkable
class IndexedRecordStore(Protocol):
    """A store that filters, orders and pages records itself (e.g. with database indexes).

    `search` returns `(executionId, record bytes)` newest first (createdAt descending, then
    executionId descending), at most `limit` of them (None: all), and how many match in all;
    its `text` matches a whole id (an index lookup). A store may also offer
    `counts_by_status(record_filter)`, with every field of the filter applied but status.
    """

    def search(
        self, record_filter: RecordFilter, *, limit: int | None, offset: int
    ) -> tuple[list[tuple[str, bytes]], int]: ...


@dataclass(slots=True)
class Page:
    """One page of a listing, with the total it was cut from and the counts by status."""

    rows: list[dict[str, Any]]
    total: int
    counts: dict[str, int]
    indexed: bool


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (naive means UTC), or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_indexed(store: RecordStore | IndexedRecordStore) -> bool:
    return isinstance(store, IndexedRecordStore)


def row(record: dict[str, Any]) -> dict[str, Any]:
    """One listing row of a record."""
    out = summary(record)
    out["correlationId"] = (record.get("header") or {}).get("correlationId")
    return {key: out.get(key) for key in ROW_FIELDS}


def _newest_first(r: dict[str, Any]) -> tuple[str, str]:
    return (str(r.get("createdAt") or ""), str(r.get("executionId") or ""))


def _check_window(limit: int | None, offset: int) -> None:
    if (limit is not None and limit < 0) or offset < 0:
        raise ValueError("limit and offset must not be negative")


def _scan(store: RecordStore) -> list[dict[str, Any]]:
    # Unreadable records have no fields to filter on; `replay.stats` and verify report them.
    return [row(record) for _eid, record in iter_records(store) if record is not None]


def _window(rows: list[dict[str, Any]], limit: int | None, offset: int) -> list[dict[str, Any]]:
    if limit is None:
        return sorted(rows, key=_newest_first, reverse=True)[offset:]
    # nlargest keeps only offset+limit rows sorted instead of sorting every match.
    return heapq.nlargest(offset + limit, rows, key=_newest_first)[offset:]


def _indexed_search(
    store: IndexedRecordStore, record_filter: RecordFilter, *, limit: int | None, offset: int
) -> tuple[list[dict[str, Any]], int]:
    found, total = store.search(record_filter, limit=limit, offset=offset)
    return [_row_of_bytes(eid, data) for eid, data in found], total


def _row_of_bytes(execution_id: str, data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return {**dict.fromkeys(ROW_FIELDS), "executionId": execution_id}
    return row(record)


def _indexed_counts(store: IndexedRecordStore, record_filter: RecordFilter) -> dict[str, int]:
    own = getattr(store, "counts_by_status", None)
    if own is not None:
        return dict(own(record_filter))
    counts = {}
    for status in STATUSES:
        # limit 0: only the count, which the store takes from its indexes.
        _rows, n = store.search(replace(record_filter, status=status), limit=0, offset=0)
        if n:
            counts[status] = n
    return counts


def search(
    store: RecordStore | IndexedRecordStore,
    record_filter: RecordFilter,
    *,
    limit: int | None,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Rows matching `record_filter`, newest first, `limit` (None: all) from `offset`; and how many
    match in all."""
    _check_window(limit, offset)
    if isinstance(store, IndexedRecordStore):
        return _indexed_search(store, record_filter, limit=limit, offset=offset)
    matched = [r for r in _scan(store) if record_filter.matches(r)]
    return _window(matched, limit, offset), len(matched)


def counts_by_status(
    store: RecordStore | IndexedRecordStore, record_filter: RecordFilter
) -> dict[str, int]:
    """How many records match each status, with every field of `record_filter` applied but status."""
    if isinstance(store, IndexedRecordStore):
        return _indexed_counts(store, record_filter.without_status())
    others = record_filter.without_status()
    return _count([r for r in _scan(store) if others.matches(r)])


def _count(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(str(r.get("status")) for r in rows))


def page(
    store: RecordStore | IndexedRecordStore,
    record_filter: RecordFilter,
    *,
    limit: int,
    offset: int = 0,
) -> Page:
    """`search` and `counts_by_status` together; a scanned store is read only once."""
    _check_window(limit, offset)
    if isinstance(store, IndexedRecordStore):
        rows, total = _indexed_search(store, record_filter, limit=limit, offset=offset)
        return Page(
            rows=rows,
            total=total,
            counts=_indexed_counts(store, record_filter.without_status()),
            indexed=True,
        )
    others = [r for r in _scan(store) if record_filter.without_status().matches(r)]
    matched = [r for r in others if record_filter.matches(r)]
    return Page(
        rows=_window(matched, limit, offset),
        total=len(matched),
        counts=_count(others),
        indexed=False,
    )


def delete_older_than(
    store: RecordStore, older_than: datetime, *, dry_run: bool = False
) -> tuple[int, int]:
    """Delete the records created before `older_than` (with `dry_run`, only count them);
    returns (deleted, kept). Records whose time is unreadable are kept."""
    prune = getattr(store, "prune", None)
    if prune is not None:  # an indexed backend deletes in one statement
        deleted, kept = prune(older_than, dry_run=dry_run)
        return int(deleted), int(kept)
    deleted = kept = 0
    for execution_id, record in iter_records(store):
        created = parse_time(((record or {}).get("header") or {}).get("createdAt"))
        if created is not None and created < older_than:
            if not dry_run:
                store.delete(execution_id)
            deleted += 1
        else:
            kept += 1
    return deleted, kept


__all__ = [
    "ROW_FIELDS",
    "STATUSES",
    "IndexedRecordStore",
    "Page",
    "RecordFilter",
    "counts_by_status",
    "delete_older_than",
    "is_indexed",
    "page",
    "parse_time",
    "row",
    "search",
]
