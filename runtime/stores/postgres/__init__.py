"""The PostgreSQL execution store: claims and records shared by workers on many hosts.

One row per executionId in `intentus_executions`. A claim is the row's insertion (see
`claims`); the record is written into the same row, which also releases the claim, in one
statement (see `records`). Records are kept byte for byte in a `bytea` column (replay stays
byte-identical), beside indexed columns (requestId, correlationId, intent, status, error code,
agent, createdAt) for lookups, lists, stats and gc (see `queries`). The schema and its
migrations are in `schema`.

`PostgresRecordStore` is the worker's store; `PostgresRecordReader` reads (the CLI, the record
browser) without creating anything. Requires the `postgres` extra (psycopg 3, psycopg-pool).
"""

from __future__ import annotations

import secrets
import threading
from datetime import datetime

from runtime.claims import new_owner_token
from runtime.errors import RecordStoreError
from runtime.forksafe import detach_in_children, fileno_of
from runtime.stores.base import ReadOnly
from runtime.stores.postgres.claims import ClaimGroup, PostgresClaims
from runtime.stores.postgres.queries import RecordQueries
from runtime.stores.postgres.records import RecordWrites, _Pending
from runtime.stores.postgres.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLE,
    check_version,
    index_columns,
    mask,
    migrate,
)
from runtime.supervision import Supervised


class PostgresRecordStore(RecordWrites, PostgresClaims, RecordQueries):
    """Claims and records in PostgreSQL; `claims=False` opens it without claiming or
    writing (no liveness session, no committer), creating or upgrading the schema still."""

    def __init__(
        self,
        url: str,
        *,
        owner: str | None = None,
        claims: bool = True,
        pool_size: int = 10,
    ) -> None:
        super().__init__(url)
        self.owner = owner or new_owner_token("pg")
        self.owner_key = secrets.randbits(63)
        self._mine = {}
        self._mine_lock = threading.Lock()
        self._live = threading.Event()
        self._closed = threading.Event()
        self._liveness_conn = None
        self._claims = ClaimGroup(self._claim_many)
        # Statements sent, and what they carried (for bench/store.py): each is counted by
        # the one thread sending claims, or by the committer.
        self.counts = dict.fromkeys(
            ("claims", "claim_statements", "records", "record_statements"), 0
        )
        self._queue: list[_Pending] = []
        self._wake = threading.Condition()
        self._committer = None
        self._keeper: threading.Thread | None = None
        # A child an agent forks must not keep this worker's liveness session open.
        detach_in_children(self, lambda s: fileno_of(s._liveness_conn, "pgconn", "socket"))
        self._connect(pool_size, lambda: self._set_up(claims=claims))
        if claims:
            self._committer = Supervised(self._commit_loop, name="intentus-pg-commit")
            self._committer.start()
            self._keeper = Supervised(self._keep_alive, name="intentus-pg-liveness")
            self._keeper.start()

    def _set_up(self, *, claims: bool) -> None:
        with self.pool.connection() as conn:
            migrate(conn)
        if claims:
            self._hold_liveness()

    def close(self) -> None:
        self._closed.set()
        with self._wake:
            self._wake.notify()
        if self._committer is not None:
            self._committer.join(timeout=30)
        if self._keeper is not None:
            self._keeper.join(timeout=5)
        if self._liveness_conn is not None:
            try:
                self._liveness_conn.close()
            except Exception:
                pass
            self._liveness_conn = None
        super().close()


class PostgresRecordReader(ReadOnly, RecordQueries):
    """Reads records; creates nothing (no schema, claim, liveness session or committer) and
    refuses writes. `deletes=True` allows `delete` and `prune` too (`intentus records gc`)."""

    kind = "postgresql"  # the record browser's name for the store

    def __init__(self, url: str, *, deletes: bool = False, pool_size: int = 2) -> None:
        super().__init__(url)
        self.deletes = deletes
        self._connect(pool_size, self._check_schema)

    def _check_schema(self) -> None:
        with self.pool.connection() as conn:
            if check_version(conn) == 0:
                raise RecordStoreError("no execution records in this database (no schema yet)")

    def delete(self, execution_id: str) -> bool:
        self.check_deletes()
        return super().delete(execution_id)

    def prune(self, older_than: datetime, *, dry_run: bool = False) -> tuple[int, int]:
        if not dry_run:
            self.check_deletes()
        return super().prune(older_than, dry_run=dry_run)


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLE",
    "PostgresRecordReader",
    "PostgresRecordStore",
    "index_columns",
    "mask",
]
