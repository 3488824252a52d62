"""The record browser's JSON API as plain functions of the query string: a page of rows, one
record and its reply, verify, diff and stats. No HTTP here (worker.browser.handler)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from runtime import query
from runtime import replay as records
from runtime.errors import IntentusError
from runtime.policy import Policy
from runtime.registry import AgentRegistry
from runtime.stores.base import RecordStore
from runtime.stores.files.store import FileRecordStore
from runtime.stores.memory import MemoryRecordStore
from runtime.stores.postgres import PostgresRecordStore
from runtime.version import __version__
from worker.errors import ConfigError

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
_SCAN_NOTE = (
    "this store has no index: every listing reads every record "
    "(seconds per page at hundreds of thousands of records)"
)

Params = dict[str, str]


class BadRequest(Exception):
    """A query the API cannot answer as asked (HTTP 400)."""


class RecordQueries:
    """Answers to the API's questions about one store."""

    def __init__(
        self,
        store: RecordStore,
        *,
        registry: AgentRegistry | None,
        policy: Policy | None,
        agents: str,
        parse_time: Callable[[str], datetime] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.policy = policy
        #: Where `registry` came from, as said to the user.
        self.agents = agents if registry is not None else ""
        self.parse_time = parse_time or iso_time

    def info(self) -> dict[str, Any]:
        indexed = query.is_indexed(self.store)
        return {
            "version": __version__,
            "store": store_kind(self.store),
            "indexed": indexed,
            "note": None if indexed else _SCAN_NOTE,
            "verifiesRouting": self.registry is not None,
            "agents": self.agents or None,
        }

    def records(self, params: Params) -> dict[str, Any]:
        record_filter = query.RecordFilter(
            intent=params.get("intent") or None,
            status=params.get("status") or None,
            error_code=params.get("error_code") or None,
            agent=params.get("agent") or None,
            since=self._time(params, "since"),
            until=self._time(params, "until"),
            text=params.get("q") or None,
        )
        limit = _int(params, "limit", default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
        offset = _int(params, "offset", default=0, low=0, high=None)
        result = query.page(self.store, record_filter, limit=limit, offset=offset)
        return {
            "rows": result.rows,
            "total": result.total,
            "limit": limit,
            "offset": offset,
            "counts": result.counts,
            "indexed": result.indexed,
            "note": None if result.indexed else _SCAN_NOTE,
        }

    def record(self, params: Params) -> dict[str, Any]:
        execution_id, record = records.find(self.store, _required(params, "id"))
        try:
            reply: str | None = records.replay(record).decode("utf-8", errors="replace")
        except IntentusError:
            reply = None
        return {"executionId": execution_id, "record": record, "reply": reply}

    def verify(self, params: Params) -> dict[str, Any]:
        execution_id, record = records.find(self.store, _required(params, "id"))
        result = records.verify(execution_id, record, registry=self.registry, policy=self.policy)
        return {
            "executionId": execution_id,
            "ok": result.ok,
            "problems": result.problems,
            "notes": result.notes,
            "routingChecked": self.registry is not None
            and records.ROUTING_UNCHECKED not in result.notes,
            "agents": self.agents or None,
        }

    def diff(self, params: Params) -> dict[str, Any]:
        first_id, first = records.find(self.store, _required(params, "a"))
        second_id, second = records.find(self.store, _required(params, "b"))
        rows = []
        for path, in_first, in_second in records.differences(first, second):
            row: dict[str, Any] = {"path": path}
            if in_first is not records.MISSING:
                row["a"] = in_first
            if in_second is not records.MISSING:
                row["b"] = in_second
            rows.append(row)
        return {
            "a": {"executionId": first_id, "record": first},
            "b": {"executionId": second_id, "record": second},
            "differences": rows,
        }

    def stats(self, params: Params) -> dict[str, Any]:
        out = records.stats(self.store)
        own = hasattr(self.store, "stats")
        out["indexed"] = own
        out["note"] = "counted in the store's indexes" if own else "counted by reading every record"
        return out

    def _time(self, params: Params, name: str) -> datetime | None:
        text = params.get(name)
        if not text:
            return None
        try:
            return self.parse_time(text)
        except (ConfigError, ValueError) as exc:
            raise BadRequest(f"{name}: {exc}") from None


def store_kind(store: RecordStore) -> str:
    """A name for the page's header: `files`, `memory`, or the store's own `kind`."""
    if isinstance(store, FileRecordStore):
        return "files"
    if isinstance(store, MemoryRecordStore):
        return "memory"
    if isinstance(store, PostgresRecordStore):
        return "postgresql"
    return str(getattr(store, "kind", type(store).__name__))


def iso_time(text: str) -> datetime:
    moment = query.parse_time(text)
    if moment is None:
        raise ValueError(f"expected an ISO 8601 time, got {text!r}")
    return moment


def _required(params: Params, name: str) -> str:
    value = params.get(name, "").strip()
    if not value:
        raise BadRequest(f"missing parameter {name!r}")
    return value


def _int(params: Params, name: str, *, default: int, low: int, high: int | None) -> int:
    text = params.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name}: expected an integer, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name}: must be {bound}")
    return value


ROUTES: dict[str, Callable[[RecordQueries, Params], dict[str, Any]]] = {
    "/api/info": lambda queries, _params: queries.info(),
    "/api/records": RecordQueries.records,
    "/api/record": RecordQueries.record,
    "/api/verify": RecordQueries.verify,
    "/api/diff": RecordQueries.diff,
    "/api/stats": RecordQueries.stats,
}
