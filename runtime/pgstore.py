"""The PostgreSQL execution store: claims and records shared by workers on many hosts.

One row per executionId in `intentus_executions`. A claim is the row's insertion
(`INSERT ... ON CONFLICT DO NOTHING`: one round trip, atomic across every worker); the record
is written into the same row, which also releases the claim, in one statement. Records are
kept byte for byte in a `bytea` column (replay stays byte-identical), beside indexed columns
(requestId, correlationId, intent, status, error code, agent, createdAt) for lookups, lists,
stats and gc.

Owner liveness needs no clock agreement between hosts: each worker holds a session advisory
lock on a connection of its own for its whole life. The server releases it when that session
ends (process killed, host gone, network cut), and every other worker sees it in `pg_locks`.
A worker whose session lapsed is fenced: its record write names the owner it claimed as, so
after another worker took the claim over (and recorded the request as in doubt) the late
write matches no row and is refused.

Records of concurrent requests are committed together (group commit): a committer thread
writes everything queued since its last round in one transaction. The caller is told only
after the transaction committed, so nothing is replied before its record is durable.

Requires the `postgres` extra (psycopg 3 and psycopg-pool).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from runtime.claims import Claim, ClaimError, ClaimState, Holder, new_owner_token
from runtime.errors import RecordExists, RecordStoreError
from runtime.store import check_execution_id, put_and_wait

log = logging.getLogger("intentus.runtime.pgstore")

Callback = Callable[[BaseException | None], None]

TABLE = "intentus_executions"
SCHEMA_VERSION = 1
_MIGRATION_LOCK = 0x1D7E57  # serialises schema set-up between workers starting together
_LIVENESS_S = 1.0
_MAX_BATCH = 512

# Each migration brings the schema from version i to i + 1; never edit one that shipped.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE {TABLE} (
        execution_id   text PRIMARY KEY,
        owner          text,
        owner_key      bigint,
        user_id        text NOT NULL DEFAULT '',
        fingerprint    text,
        claimed_at     timestamptz NOT NULL DEFAULT now(),
        record         bytea,
        request_id     text,
        correlation_id text,
        intent         text,
        status         text,
        error_code     text,
        agent          text,
        kind           text,
        created_at     timestamptz
    );
    CREATE INDEX {TABLE}_request_id ON {TABLE} (request_id);
    CREATE INDEX {TABLE}_correlation_id ON {TABLE} (correlation_id);
    CREATE INDEX {TABLE}_created_at ON {TABLE} (created_at DESC, execution_id DESC)
        WHERE record IS NOT NULL;
    CREATE INDEX {TABLE}_intent ON {TABLE} (intent, created_at DESC);
    CREATE INDEX {TABLE}_status ON {TABLE} (status, created_at DESC);
    CREATE INDEX {TABLE}_agent ON {TABLE} (agent, created_at DESC);
    CREATE INDEX {TABLE}_error_code ON {TABLE} (error_code, created_at DESC);
    CREATE INDEX {TABLE}_claims ON {TABLE} (owner) WHERE record IS NULL;
    """,
)

# Whether the owner of row `e` still holds its session advisory lock (bigint key: classid is
# the high 32 bits, objid the low 32 bits, objsubid 1).
_ALIVE = """EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = (e.owner_key >> 32)
      AND l.objid::bigint = (e.owner_key & 4294967295))"""

_COMMIT_CLAIMED = f"""
    UPDATE {TABLE} SET record = %s, owner = NULL, owner_key = NULL, request_id = %s,
        correlation_id = %s, intent = %s, status = %s, error_code = %s, agent = %s, kind = %s,
        created_at = %s
    WHERE execution_id = %s AND owner = %s AND record IS NULL
    RETURNING execution_id"""

_INSERT_RECORD = f"""
    INSERT INTO {TABLE} (record, request_id, correlation_id, intent, status, error_code, agent,
        kind, created_at, execution_id)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (execution_id) DO NOTHING
    RETURNING execution_id"""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise RecordStoreError(
            "the PostgreSQL store needs psycopg: pip install 'intentusnet-worker[postgres]'"
        ) from None
    return psycopg


def mask(url: str, text: str) -> str:
    """`text` with the URL's password, if any, replaced by ***."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password)} if password else set():
        text = text.replace(secret, "***")
    return text


def index_columns(data: bytes) -> tuple[Any, ...]:
    """The indexed columns of a record (requestId ... createdAt), read from its bytes."""
    try:
        record = json.loads(data)
    except ValueError:
        record = {}
    header = record.get("header") or {}
    response = record.get("finalResponse") or {}
    envelope = record.get("envelope") or {}
    intent = (envelope.get("intent") or {}).get("name") or (record.get("routerDecision") or {}).get(
        "intent"
    )
    created: Any = header.get("createdAt")
    try:
        created = datetime.fromisoformat(created) if isinstance(created, str) else None
    except ValueError:
        created = None
    return (
        header.get("requestId"),
        header.get("correlationId"),
        intent,
        response.get("status"),
        (response.get("error") or {}).get("code"),
        (response.get("metadata") or {}).get("agent"),
        header.get("kind"),
        created,
    )


def _row(cursor: Any) -> tuple[Any, ...]:
    """The one row an aggregate query returns."""
    row = cursor.fetchone()
    if row is None:  # pragma: no cover - aggregates always return a row
        raise RecordStoreError("the database returned no row")
    return tuple(row)


class _Pending:
    __slots__ = ("data", "done", "execution_id", "owner")

    def __init__(self, execution_id: str, data: bytes, owner: str | None, done: Callback) -> None:
        self.execution_id = execution_id
        self.data = data
        self.owner = owner
        self.done = done


class PostgresRecordStore:
    """Claims and records in PostgreSQL; `claims=False` opens it for reading (the CLI)."""

    def __init__(
        self,
        url: str,
        *,
        owner: str | None = None,
        claims: bool = True,
        pool_size: int = 10,
    ) -> None:
        psycopg = _psycopg()
        from psycopg_pool import ConnectionPool

        self.url = url
        self.owner = owner or new_owner_token("pg")
        self.owner_key = secrets.randbits(63)
        self._psycopg = psycopg
        self._mine: dict[str, str] = {}  # claims we won and have not recorded: eid -> owner
        self._mine_lock = threading.Lock()
        self._live = threading.Event()
        self._closed = threading.Event()
        self._liveness_conn: Any = None
        try:
            self.pool = ConnectionPool(
                url,
                min_size=1,
                max_size=max(2, pool_size),
                kwargs={"autocommit": True},
                open=False,
                name="intentus",
            )
            self.pool.open(wait=True, timeout=10)
            self._migrate()
            if claims:
                self._hold_liveness()
        except RecordStoreError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise self._error("cannot open the PostgreSQL store", exc) from None
        self._queue: list[_Pending] = []
        self._wake = threading.Condition()
        self._committer: threading.Thread | None = None
        self._keeper: threading.Thread | None = None
        if claims:
            self._committer = threading.Thread(
                target=self._commit_loop, name="intentus-pg-commit", daemon=True
            )
            self._committer.start()
            self._keeper = threading.Thread(
                target=self._keep_alive, name="intentus-pg-liveness", daemon=True
            )
            self._keeper.start()

    def _error(self, what: str, exc: BaseException) -> RecordStoreError:
        return RecordStoreError(mask(self.url, f"{what}: {str(exc).strip() or type(exc).__name__}"))

    # -- schema --------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Create or upgrade the schema, once, whoever starts first."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            # Only when missing: CREATE ... IF NOT EXISTS needs the CREATE privilege even when
            # the table exists, and a role that only reads and writes must be able to start.
            exists = _row(conn.execute("SELECT to_regclass('intentus_schema_version')"))[0]
            if exists is None:
                conn.execute(
                    "CREATE TABLE intentus_schema_version ("
                    " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
            row = _row(conn.execute("SELECT max(version) FROM intentus_schema_version"))
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise RecordStoreError(
                    f"the database schema is version {current}, newer than this worker's "
                    f"{SCHEMA_VERSION}: upgrade the worker"
                )
            for version in range(current, SCHEMA_VERSION):
                conn.execute(MIGRATIONS[version])
                conn.execute(
                    "INSERT INTO intentus_schema_version (version) VALUES (%s)", (version + 1,)
                )
                log.info("records schema migrated to version %d", version + 1)

    # -- liveness ------------------------------------------------------------------------
    def _hold_liveness(self) -> None:
        conn = self._psycopg.connect(
            self.url, autocommit=True, keepalives=1, keepalives_idle=5, keepalives_interval=2
        )
        conn.execute("SELECT pg_advisory_lock(%s)", (self.owner_key,))
        self._liveness_conn = conn
        self._live.set()

    def _keep_alive(self) -> None:
        while not self._closed.wait(_LIVENESS_S):
            try:
                self._liveness_conn.execute("SELECT 1")
                continue
            except Exception as exc:
                if self._closed.is_set():
                    return
                if self._live.is_set():
                    log.error("%s", self._error("lost the PostgreSQL liveness session", exc))
                self._live.clear()
            try:
                self._liveness_conn.close()
            except Exception:
                pass
            try:
                self._hold_liveness()
                log.info("PostgreSQL liveness session re-established")
            except Exception:
                continue

    @property
    def live(self) -> bool:
        return self._live.is_set()

    # -- claims --------------------------------------------------------------------------
    def _require_live(self) -> None:
        if not self._live.is_set():
            # Others could not see that we are alive: a claim now could be taken over.
            raise ClaimError("the PostgreSQL liveness session is down: not claiming")

    def claim(self, execution_id: str, *, user_id: str, fingerprint: str | None) -> Claim:
        check_execution_id(execution_id)
        self._require_live()
        mine = Holder(self.owner, user_id, fingerprint)
        try:
            with self.pool.connection() as conn:
                for _ in range(10):
                    won = conn.execute(
                        f"INSERT INTO {TABLE} (execution_id, owner, owner_key, user_id,"
                        " fingerprint) VALUES (%s, %s, %s, %s, %s)"
                        " ON CONFLICT (execution_id) DO NOTHING RETURNING 1",
                        (execution_id, self.owner, self.owner_key, user_id, fingerprint),
                    ).fetchone()
                    if won is not None:
                        with self._mine_lock:
                            self._mine[execution_id] = self.owner
                        return Claim(ClaimState.WON, execution_id, holder=mine)
                    state = self._state(conn, execution_id)
                    if state is not None:
                        return state
        except self._psycopg.Error as exc:
            raise ClaimError(str(self._error(f"cannot claim {execution_id}", exc))) from None
        raise ClaimError(f"cannot claim {execution_id}: it keeps changing hands")

    def _state(self, conn: Any, execution_id: str) -> Claim | None:
        row = conn.execute(
            f"SELECT record, owner, user_id, fingerprint, {_ALIVE}"
            f" FROM {TABLE} e WHERE execution_id = %s",
            (execution_id,),
        ).fetchone()
        if row is None:
            return None  # deleted (released or pruned) meanwhile
        record, owner, user_id, fingerprint, alive = row
        if record is not None:
            return Claim(ClaimState.RECORDED, execution_id, record=bytes(record))
        holder = Holder(owner or "", user_id, fingerprint)
        state = ClaimState.RUNNING if alive else ClaimState.ORPHANED
        return Claim(state, execution_id, holder=holder)

    def take_over(self, claim: Claim, *, user_id: str, fingerprint: str | None) -> Claim:
        self._require_live()
        old = claim.holder.owner if claim.holder is not None else ""
        try:
            with self.pool.connection() as conn:
                took = conn.execute(
                    f"UPDATE {TABLE} e SET owner = %s, owner_key = %s, user_id = %s,"
                    " fingerprint = %s, claimed_at = now()"
                    f" WHERE execution_id = %s AND owner = %s AND record IS NULL AND NOT {_ALIVE}"
                    " RETURNING 1",
                    (self.owner, self.owner_key, user_id, fingerprint, claim.execution_id, old),
                ).fetchone()
                if took is not None:
                    with self._mine_lock:
                        self._mine[claim.execution_id] = self.owner
                    holder = Holder(self.owner, user_id, fingerprint)
                    return Claim(ClaimState.WON, claim.execution_id, holder=holder)
                state = self._state(conn, claim.execution_id)
        except self._psycopg.Error as exc:
            raise ClaimError(
                str(self._error(f"cannot take over {claim.execution_id}", exc))
            ) from None
        if state is None:
            return self.claim(claim.execution_id, user_id=user_id, fingerprint=fingerprint)
        return state

    def release(self, claim: Claim) -> None:
        """Give up a claim that got no record (a recorded one was released by its commit)."""
        with self._mine_lock:
            owner = self._mine.pop(claim.execution_id, None)
        if owner is None:
            return
        try:
            with self.pool.connection() as conn:
                conn.execute(
                    f"DELETE FROM {TABLE} WHERE execution_id = %s AND owner = %s"
                    " AND record IS NULL",
                    (claim.execution_id, owner),
                )
        except self._psycopg.Error as exc:
            raise ClaimError(
                str(self._error(f"cannot release {claim.execution_id}", exc))
            ) from None

    def probe(self, execution_ids: list[str]) -> dict[str, ClaimState]:
        try:
            with self.pool.connection() as conn:
                rows = conn.execute(
                    f"SELECT execution_id, record IS NOT NULL, {_ALIVE}"
                    f" FROM {TABLE} e WHERE execution_id = ANY(%s)",
                    (execution_ids,),
                ).fetchall()
        except self._psycopg.Error as exc:
            raise ClaimError(str(self._error("cannot check claims", exc))) from None
        out = dict.fromkeys(execution_ids, ClaimState.ORPHANED)
        for eid, recorded, alive in rows:
            if recorded:
                out[eid] = ClaimState.RECORDED
            elif alive:
                out[eid] = ClaimState.RUNNING
        return out

    # -- records: reads ------------------------------------------------------------------
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
                    (correlation_id,),
                ).fetchone()
        except self._psycopg.Error as exc:
            raise self._error("cannot look up a correlationId", exc) from None
        return None if row is None else str(row[0])

    def ids(self) -> Iterator[str]:
        try:
            with self.pool.connection() as conn, conn.transaction():
                cur = conn.cursor(name="intentus_ids")
                cur.execute(
                    f"SELECT execution_id FROM {TABLE} WHERE record IS NOT NULL"
                    " ORDER BY execution_id"
                )
                for (eid,) in cur:
                    yield str(eid)
        except self._psycopg.Error as exc:
            raise self._error("cannot list records", exc) from None

    def search(
        self,
        *,
        where: dict[str, Any],
        since: datetime | None = None,
        until: datetime | None = None,
        text: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[tuple[str, bytes]], int]:
        """Records matching indexed columns, newest first, and how many match in all."""
        clauses = ["record IS NOT NULL"]
        params: list[Any] = []
        for column, value in where.items():
            if column not in ("intent", "status", "error_code", "agent", "kind"):
                raise ValueError(f"not an indexed column: {column}")
            clauses.append(f"{column} = %s")
            params.append(value)
        if since is not None:
            clauses.append("created_at >= %s")
            params.append(since)
        if until is not None:
            clauses.append("created_at < %s")
            params.append(until)
        if text:
            clauses.append("(execution_id = %s OR request_id = %s OR correlation_id = %s)")
            params += [text, text, text]
        cond = " AND ".join(clauses)
        try:
            with self.pool.connection() as conn:
                total = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE {cond}", params)
                count = int(_row(total)[0])
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
        out: dict[str, Any] = {}
        try:
            with self.pool.connection() as conn:
                row = _row(conn.execute(f"SELECT count(*) FROM {TABLE} WHERE record IS NOT NULL"))
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
                    out[key] = {str(name): int(n) for name, n in rows}
        except self._psycopg.Error as exc:
            raise self._error("cannot count records", exc) from None
        return out

    def prune(self, older_than: datetime, *, dry_run: bool = False) -> tuple[int, int]:
        """Delete records created before `older_than`; (deleted, kept)."""
        try:
            with self.pool.connection() as conn:
                if dry_run:
                    row = _row(
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
                row = _row(conn.execute(f"SELECT count(*) FROM {TABLE} WHERE record IS NOT NULL"))
                return int(deleted), int(row[0])
        except self._psycopg.Error as exc:
            raise self._error("cannot prune records", exc) from None

    # -- records: writes -----------------------------------------------------------------
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
                self._queue.append(_Pending(execution_id, data, owner, done))
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
        claimed = [p for p in batch if p.owner is not None]
        unclaimed = [p for p in batch if p.owner is None]
        stored: set[str] = set()
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            for items, sql, extra in (
                (claimed, _COMMIT_CLAIMED, lambda p: (p.execution_id, p.owner)),
                (unclaimed, _INSERT_RECORD, lambda p: (p.execution_id,)),
            ):
                if not items:
                    continue
                params = [(p.data, *index_columns(p.data), *extra(p)) for p in items]
                cur.executemany(sql, params, returning=True)
                while True:
                    for (eid,) in cur.fetchall():
                        stored.add(eid)
                    if not cur.nextset():
                        break
        # Not stored: the claim is no longer ours (taken over while our liveness lapsed) or
        # a record exists already. Write-once either way: answer from the stored record.
        return [None if p.execution_id in stored else RecordExists(p.execution_id) for p in batch]

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

    def close(self) -> None:
        self._closed.set()
        wake = getattr(self, "_wake", None)
        if wake is not None:
            with wake:
                wake.notify()
        committer = getattr(self, "_committer", None)
        if committer is not None:
            committer.join(timeout=30)
        keeper = getattr(self, "_keeper", None)
        if keeper is not None:
            keeper.join(timeout=5)
        if self._liveness_conn is not None:
            try:
                self._liveness_conn.close()
            except Exception:
                pass
            self._liveness_conn = None
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()
