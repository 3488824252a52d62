"""Writing records to the PostgreSQL store, group-committed.

Records of concurrent requests are committed together: a committer thread writes everything
queued since its last round in one transaction. The caller is told only after the transaction
committed, so nothing is replied before its record is durable. A worker whose liveness session
lapsed is fenced: its record write names the owner it claimed as, so after another worker took
the claim over the late write matches no row and is refused.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from runtime.errors import RecordExists, RecordStoreError, RecordUnstorable
from runtime.stores.base import check_execution_id, put_and_wait
from runtime.stores.postgres import wire
from runtime.stores.postgres.connection import Connected
from runtime.stores.postgres.schema import TABLE, index_columns

log = logging.getLogger("intentus.runtime.stores.postgres")

Callback = Callable[[BaseException | None], None]

_MAX_BATCH = 512


def _statements(
    items: list[_Pending], encoding: str
) -> list[tuple[wire.Statement, list[bytes | None], list[_Pending]]]:
    """The statements that write `items`: (statement, parameters, the items it writes).

    One for the claimed records and one for the others. By item, not by executionId: of two
    writes of one id in a batch only the first can be stored, and the second must hear
    RecordExists (and answer from the stored record), never that its own record was written;
    so a second write of an id goes in a statement after the first's."""
    out: list[tuple[wire.Statement, list[bytes | None], list[_Pending]]] = []
    for part, statement in (
        ([p for p in items if p.owner is not None], wire.COMMIT_CLAIMED),
        ([p for p in items if p.owner is None], wire.INSERT_RECORDS),
    ):
        while part:
            now: list[_Pending] = []
            later: list[_Pending] = []
            seen: set[str] = set()
            for p in part:
                (later if p.execution_id in seen else now).append(p)
                seen.add(p.execution_id)
            params = _record_params(now, encoding)
            if statement is wire.COMMIT_CLAIMED:
                params.append(wire.text_array([p.owner for p in now], encoding))
            out.append((statement, params, now))
            part = later
    return out


def _record_params(items: list[_Pending], encoding: str) -> list[bytes | None]:
    """The record statements' arrays: the records, their indexed columns, the ids."""
    columns = list(zip(*(index_columns(p.data) for p in items), strict=True))
    created = [None if c is None else c.isoformat() for c in columns[-1]]
    return [
        wire.bytea_array([p.data for p in items]),
        *(wire.text_array(column, encoding) for column in columns[:-1]),
        wire.text_array(created, encoding),
        wire.text_array([p.execution_id for p in items], encoding),
    ]


def _run(
    conn: Any, statements: list[tuple[wire.Statement, list[bytes | None], list[_Pending]]]
) -> set[_Pending]:
    """Execute `statements`; the items they stored (their rows returned)."""
    stored: set[_Pending] = set()
    for statement, params, items in statements:
        written = set(statement.run(conn, params))
        stored.update(p for p in items if p.execution_id in written)
    return stored


class _Pending:
    __slots__ = ("data", "done", "execution_id", "owner")

    def __init__(
        self, execution_id: str, *, data: bytes, owner: str | None, done: Callback
    ) -> None:
        self.execution_id = execution_id
        self.data = data
        self.owner = owner
        self.done = done


class RecordWrites(Connected):
    """`put`/`put_async` through one committer thread, and the writability probe."""

    owner: str
    _mine: dict[str, str]
    _mine_lock: threading.Lock
    _live: threading.Event
    _closed: threading.Event
    _queue: list[_Pending]
    _wake: threading.Condition
    _committer: threading.Thread | None
    counts: dict[str, int]

    def put(self, execution_id: str, data: bytes) -> None:
        put_and_wait(self.put_async, execution_id, data)

    def put_async(self, execution_id: str, data: bytes, done: Callback) -> None:
        """Queue the record; `done(None)` once its transaction committed (or `done(exc)`)."""
        try:
            check_execution_id(execution_id)
        except RecordStoreError as exc:
            done(exc)
            return
        with self._mine_lock:
            owner = self._mine.get(execution_id)
        with self._wake:
            if self._committer is None or self._closed.is_set():
                closed = True
            else:
                closed = False
                self._queue.append(_Pending(execution_id, data=data, owner=owner, done=done))
                self._wake.notify()
        if closed:
            done(RecordStoreError("record store is closed or read-only"))

    def _commit_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed.is_set():
                    self._wake.wait()
                batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
                if not batch and self._closed.is_set():
                    return
            try:
                results = self._commit(batch)
            except Exception as exc:
                # Database down, or a bug: fail this batch (the worker pauses and keeps the
                # records to write again); the next batch tries a fresh connection.
                error = (
                    exc
                    if isinstance(exc, RecordStoreError)
                    else self._error("cannot commit records", exc)
                )
                results = [error] * len(batch)
            for item, result in zip(batch, results, strict=True):
                if result is None and item.owner is not None:
                    with self._mine_lock:
                        if self._mine.get(item.execution_id) == item.owner:
                            del self._mine[item.execution_id]
                try:
                    item.done(result)
                except Exception:
                    log.exception("record commit callback failed")

    def _commit(self, batch: list[_Pending]) -> list[BaseException | None]:
        try:
            with self.pool.connection() as conn:
                stored = self._write_rows(conn, batch)
        except Exception as exc:
            if not self._answered(exc):
                raise
            # The database refused the batch, maybe for a value one record holds: write each
            # alone, so such a record fails by itself and its batch-mates are kept.
            log.warning(
                "a batch of %d records was refused (%s); writing each alone", len(batch), exc
            )
            return self._commit_each(batch)
        # Not stored: the claim is no longer ours (taken over while our liveness lapsed) or
        # a record exists already. Write-once either way: answer from the stored record.
        return [None if p in stored else RecordExists(p.execution_id) for p in batch]

    def _commit_each(self, batch: list[_Pending]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        with self.pool.connection() as conn:
            for index, item in enumerate(batch):
                try:
                    stored = self._write_rows(conn, [item])
                except Exception as exc:
                    if not self._refused_record(exc) and not (
                        self._answered(exc) and self._probe(conn)
                    ):
                        # The store itself fails: the rest fail with it (held, retried).
                        error = self._error("cannot commit records", exc)
                        return results + [error] * (len(batch) - index)
                    results.append(
                        RecordUnstorable(
                            f"the PostgreSQL store refuses record {item.execution_id}: "
                            + (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                        )
                    )
                    continue
                results.append(None if item in stored else RecordExists(item.execution_id))
        return results

    def _write_rows(self, conn: Any, items: list[_Pending]) -> set[_Pending]:
        """Write `items` and commit them, all or none; the items stored.

        Usually one statement, committed by itself (autocommit: one round trip); several in
        one transaction otherwise."""
        statements = _statements(items, conn.info.encoding)
        self.counts["records"] += len(items)
        self.counts["record_statements"] += len(statements)
        if len(statements) == 1:
            return _run(conn, statements)
        with conn.transaction():
            return _run(conn, statements)

    def _refused_record(self, exc: BaseException) -> bool:
        """Whether `exc` is the database refusing a value (of one record), not failing itself:
        a data exception, a violated constraint, a value over a limit, or text that cannot be
        encoded for it."""
        errors = self._psycopg.errors
        return isinstance(
            exc,
            (
                self._psycopg.DataError,
                self._psycopg.IntegrityError,
                errors.ProgramLimitExceeded,
                UnicodeError,
            ),
        )

    def _probe(self, conn: Any) -> bool:
        """Whether a row can be written to the table now: when it can, a record the database
        refused for no stated reason of its data is refused for something it holds."""
        try:
            with conn.transaction():
                conn.execute(
                    f"INSERT INTO {TABLE} (execution_id, owner) VALUES (%s, %s)"
                    " ON CONFLICT (execution_id) DO NOTHING",
                    (f"probe-{self.owner}", self.owner),
                )
                conn.execute(
                    f"DELETE FROM {TABLE} WHERE execution_id = %s", (f"probe-{self.owner}",)
                )
        except Exception:
            return False
        return True

    def check_writable(self) -> None:
        """Raise RecordStoreError unless a row can be written and committed now, and our
        liveness session holds its lock (what claims and records need)."""
        if self._committer is not None and not self._live.is_set():
            raise RecordStoreError("the PostgreSQL liveness session is down")
        probe = f"probe-{self.owner}"
        try:
            with self.pool.connection() as conn, conn.transaction():
                conn.execute(
                    f"INSERT INTO {TABLE} (execution_id, owner) VALUES (%s, %s)"
                    " ON CONFLICT (execution_id) DO NOTHING",
                    (probe, self.owner),
                )
                conn.execute(f"DELETE FROM {TABLE} WHERE execution_id = %s", (probe,))
        except self._psycopg.Error as exc:
            raise self._error("PostgreSQL store is not writable", exc) from None
