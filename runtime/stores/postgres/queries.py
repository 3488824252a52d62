"""Reading the PostgreSQL store: records by id, lists, stats; and deleting them (gc)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from runtime.query import RecordFilter
from runtime.stores.postgres.connection import Connected
from runtime.stores.postgres.schema import TABLE, index_text, one_row

#: The RecordFilter fields compared with indexed columns of the same name.
_INDEXED = ("intent", "status", "error_code", "agent")


class RecordQueries(Connected):
    """Reads, served from the indexed columns wherever a list or count allows it."""

    def get(self, execution_id: str) -> bytes | None:
        try:
            with self.pool.connection() as conn:
                row = conn.execute(
                    f"SELECT record FROM {TABLE} WHERE execution_id = %s AND record IS NOT NULL",
                    (execution_id,),
                ).fetchone()
        except self._psycopg.Error as exc:
            raise self._error(f"cannot read record {execution_id}", exc) from None
        return None if row is None else bytes(row[0])

    def exists(self, execution_id: str) -> bool:
        return self.get(execution_id) is not None

    def find_by_correlation_id(self, correlation_id: str) -> str | None:
        """The newest record with this correlationId (an index lookup)."""
        try:
            with self.pool.connection() as conn:
                row = conn.execute(
                    f"SELECT execution_id FROM {TABLE} WHERE correlation_id = %s"
                    " AND record IS NOT NULL ORDER BY created_at DESC LIMIT 1",
                    (index_text(correlation_id),),
                ).fetchone()
        except self._psycopg.Error as exc:
            raise self._error("cannot look up a correlationId", exc) from None
        return None if row is None else str(row[0])

    def find_rejection_by_request_id(self, request_id: str) -> str | None:
        """The newest rejection record carrying this requestId (an index lookup)."""
        try:
            with self.pool.connection() as conn:
                row = conn.execute(
                    f"SELECT execution_id FROM {TABLE} WHERE request_id = %s"
                    " AND kind = 'rejected' AND record IS NOT NULL"
                    " ORDER BY created_at DESC LIMIT 1",
                    (index_text(request_id),),
                ).fetchone()
        except self._psycopg.Error as exc:
            raise self._error("cannot look up a requestId", exc) from None
        return None if row is None else str(row[0])

    def ids(self) -> Iterator[str]:
        try:
            with (
                self.pool.connection() as conn,
                conn.transaction(),
                conn.cursor(name="intentus_ids") as cur,
            ):
                cur.execute(
                    f"SELECT execution_id FROM {TABLE} WHERE record IS NOT NULL"
                    " ORDER BY execution_id"
                )
                for (eid,) in cur:
                    yield str(eid)
        except self._psycopg.Error as exc:
            raise self._error("cannot list records", exc) from None

    def search(
        self, record_filter: RecordFilter, *, limit: int | None, offset: int = 0
    ) -> tuple[list[tuple[str, bytes]], int]:
        """Records matching `record_filter` (ids compared whole), newest first, at most `limit` (None:
        all), and how many match in all."""
        clauses = ["record IS NOT NULL"]
        params: list[Any] = []
        for column in _INDEXED:
            value = getattr(record_filter, column)
            if value:
                clauses.append(f"{column} = %s")
                params.append(index_text(value))
        if record_filter.since is not None:
            clauses.append("created_at >= %s")
            params.append(record_filter.since)
        if record_filter.until is not None:
            clauses.append("created_at < %s")
            params.append(record_filter.until)
        if record_filter.text:
            clauses.append("(execution_id = %s OR request_id = %s OR correlation_id = %s)")
            text = index_text(record_filter.text)
            params += [text, text, text]
        cond = " AND ".join(clauses)
        try:
            with self.pool.connection() as conn:
                total = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE {cond}", params)
                count = int(one_row(total)[0])
                rows = conn.execute(
                    f"SELECT execution_id, record FROM {TABLE} WHERE {cond}"
                    " ORDER BY created_at DESC, execution_id DESC LIMIT %s OFFSET %s",
                    [*params, limit, offset],
                ).fetchall()
        except self._psycopg.Error as exc:
            raise self._error("cannot search records", exc) from None
        return [(str(eid), bytes(rec)) for eid, rec in rows], count

    def stats(self) -> dict[str, Any]:
        """Counts by status, kind, intent, agent and error code (index scans, no parsing)."""
        from runtime.replay import stat_key  # names a missing intent or agent as files do

        out: dict[str, Any] = {}
        try:
            with self.pool.connection() as conn:
                row = one_row(
                    conn.execute(f"SELECT count(*) FROM {TABLE} WHERE record IS NOT NULL")
                )
                out["records"] = int(row[0])
                out["unreadable"] = 0
                for key, column in (
                    ("by_status", "status"),
                    ("by_kind", "kind"),
                    ("by_intent", "intent"),
                    ("by_agent", "agent"),
                    ("by_error_code", "error_code"),
                ):
                    rows = conn.execute(
                        f"SELECT {column}, count(*) FROM {TABLE} WHERE record IS NOT NULL"
                        + (" AND error_code IS NOT NULL" if column == "error_code" else "")
                        + f" GROUP BY {column}"
                    ).fetchall()
                    out[key] = {stat_key(name): int(n) for name, n in rows}
        except self._psycopg.Error as exc:
            raise self._error("cannot count records", exc) from None
        return out

    def prune(self, older_than: datetime, *, dry_run: bool = False) -> tuple[int, int]:
        """Delete records created before `older_than`; (deleted, kept)."""
        try:
            with self.pool.connection() as conn:
                if dry_run:
                    row = one_row(
                        conn.execute(
                            f"SELECT count(*) FILTER (WHERE created_at < %s), count(*)"
                            f" FROM {TABLE} WHERE record IS NOT NULL",
                            (older_than,),
                        )
                    )
                    return int(row[0]), int(row[1]) - int(row[0])
                deleted = conn.execute(
                    f"DELETE FROM {TABLE} WHERE record IS NOT NULL AND created_at < %s",
                    (older_than,),
                ).rowcount
                row = one_row(
                    conn.execute(f"SELECT count(*) FROM {TABLE} WHERE record IS NOT NULL")
                )
                return int(deleted), int(row[0])
        except self._psycopg.Error as exc:
            raise self._error("cannot prune records", exc) from None

    def delete(self, execution_id: str) -> bool:
        try:
            with self.pool.connection() as conn:
                return bool(
                    conn.execute(
                        f"DELETE FROM {TABLE} WHERE execution_id = %s AND record IS NOT NULL",
                        (execution_id,),
                    ).rowcount
                )
        except self._psycopg.Error as exc:
            raise self._error(f"cannot delete record {execution_id}", exc) from None
