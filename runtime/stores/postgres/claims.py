"""Claims in the PostgreSQL store, and the liveness session that makes them safe.

A claim is the row's insertion (`INSERT ... ON CONFLICT DO NOTHING`). Owner liveness needs no
clock agreement between hosts: each worker holds a session advisory lock on a connection of
its own for its whole life, which the server releases when that session ends, and every other
worker sees in `pg_locks`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from runtime.claims import Claim, ClaimError, ClaimState, Holder
from runtime.stores.base import check_execution_id
from runtime.stores.postgres.connection import Connected, open_liveness_session
from runtime.stores.postgres.schema import ALIVE, TABLE

log = logging.getLogger("intentus.runtime.stores.postgres")

_LIVENESS_S = 1.0


class PostgresClaims(Connected):
    """Claim, take over, release and probe executions; keep the liveness session up."""

    owner: str
    owner_key: int
    _mine: dict[str, str]  # claims we won and have not recorded: executionId -> owner
    _mine_lock: threading.Lock
    _live: threading.Event
    _closed: threading.Event
    _liveness_conn: Any

    def _hold_liveness(self) -> None:
        conn = open_liveness_session(self._psycopg, self.url)
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
            f"SELECT record, owner, user_id, fingerprint, {ALIVE}"
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
                    f" WHERE execution_id = %s AND owner = %s AND record IS NULL AND NOT {ALIVE}"
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
                    f"SELECT execution_id, record IS NOT NULL, {ALIVE}"
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
