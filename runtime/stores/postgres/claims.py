"""Claims in the PostgreSQL store, and the liveness session that makes them safe.

A claim is the row's insertion (`INSERT ... ON CONFLICT DO NOTHING`). Owner liveness needs no
clock agreement between hosts: each worker holds a session advisory lock on a connection of
its own for its whole life, which the server releases when that session ends, and every other
worker sees in `pg_locks`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from runtime.claims import Claim, ClaimError, ClaimState, Holder
from runtime.stores.base import check_execution_id
from runtime.stores.postgres import wire
from runtime.stores.postgres.connection import Connected, open_liveness_session
from runtime.stores.postgres.schema import ALIVE, TABLE

log = logging.getLogger("intentus.runtime.stores.postgres")

_LIVENESS_S = 1.0
_MAX_GROUP = 256  # claims in one statement at most


class PostgresClaims(Connected):
    """Claim, take over, release and probe executions; keep the liveness session up."""

    owner: str
    owner_key: int
    _mine: dict[str, str]  # claims we won and have not recorded: executionId -> owner
    _mine_lock: threading.Lock
    _live: threading.Event
    _closed: threading.Event
    _liveness_conn: Any
    _claims: ClaimGroup
    counts: dict[str, int]

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
        """Claim one executionId, in one statement with the claims other threads ask for
        meanwhile (see `ClaimGroup`)."""
        check_execution_id(execution_id)
        self._require_live()
        return self._claims.ask(execution_id, user_id, fingerprint)

    def _claim_many(self, asks: list[_Ask]) -> None:
        """Claim every ask (distinct executionIds) in one INSERT: one round trip and one
        commit for all. Each ask not won gets the row's state, read for all of them in one
        SELECT; one whose row went away meanwhile (released, pruned) is claimed again."""
        todo = asks
        try:
            with self.pool.connection() as conn:
                for _ in range(10):
                    self.counts["claims"] += len(todo)
                    self.counts["claim_statements"] += 1
                    encoding = conn.info.encoding
                    won = set(
                        wire.CLAIM_MANY.run(
                            conn,
                            [
                                wire.text(self.owner, encoding),
                                wire.int8(self.owner_key),
                                wire.text_array([a.execution_id for a in todo], encoding),
                                wire.text_array([a.user_id for a in todo], encoding),
                                wire.text_array([a.fingerprint for a in todo], encoding),
                            ],
                        )
                    )
                    if won:
                        with self._mine_lock:
                            for eid in won:
                                self._mine[eid] = self.owner
                    lost = []
                    for a in todo:
                        if a.execution_id in won:
                            holder = Holder(self.owner, a.user_id, a.fingerprint)
                            a.result = Claim(ClaimState.WON, a.execution_id, holder=holder)
                        else:
                            lost.append(a)
                    states = self._states(conn, [a.execution_id for a in lost]) if lost else {}
                    todo = []
                    for a in lost:
                        state = states.get(a.execution_id)
                        if state is None:
                            todo.append(a)
                        else:
                            a.result = state
                    if not todo:
                        return
        except (self._psycopg.Error, UnicodeError) as exc:
            if len(asks) > 1 and (isinstance(exc, UnicodeError) or self._answered(exc)):
                # Refused for a value one ask holds: claim each alone, so only it fails.
                for a in asks:
                    if a.result is None:
                        self._claim_many([a])
                return
            for a in asks:
                if a.result is None:
                    a.result = ClaimError(str(self._error(f"cannot claim {a.execution_id}", exc)))
            return
        for a in todo:
            a.result = ClaimError(f"cannot claim {a.execution_id}: it keeps changing hands")

    def _states(self, conn: Any, execution_ids: list[str]) -> dict[str, Claim]:
        """The state of the rows of `execution_ids` that exist (one SELECT)."""
        rows = conn.execute(
            f"SELECT execution_id, record, owner, user_id, fingerprint, {ALIVE}"
            f" FROM {TABLE} e WHERE execution_id = ANY(%s)",
            (execution_ids,),
        ).fetchall()
        return {str(row[0]): _claim_of(str(row[0]), *row[1:]) for row in rows}

    def _state(self, conn: Any, execution_id: str) -> Claim | None:
        row = conn.execute(
            f"SELECT record, owner, user_id, fingerprint, {ALIVE}"
            f" FROM {TABLE} e WHERE execution_id = %s",
            (execution_id,),
        ).fetchone()
        if row is None:
            return None  # deleted (released or pruned) meanwhile
        return _claim_of(execution_id, *row)

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


def _claim_of(
    execution_id: str,
    record: bytes | None,
    owner: str | None,
    user_id: str,
    fingerprint: str | None,
    alive: bool,
) -> Claim:
    """A claim not won, from its row."""
    if record is not None:
        return Claim(ClaimState.RECORDED, execution_id, record=bytes(record))
    holder = Holder(owner or "", user_id, fingerprint)
    state = ClaimState.RUNNING if alive else ClaimState.ORPHANED
    return Claim(state, execution_id, holder=holder)


class _Ask:
    """One thread's claim, waiting in a `ClaimGroup`."""

    __slots__ = ("done", "execution_id", "fingerprint", "lead", "result", "user_id")

    def __init__(self, execution_id: str, user_id: str, fingerprint: str | None) -> None:
        self.execution_id = execution_id
        self.user_id = user_id
        self.fingerprint = fingerprint
        self.result: Claim | BaseException | None = None
        self.lead = False  # handed the sending of the next group
        # Held until the ask is answered (or handed the sending): a bare lock is the
        # cheapest wake-up there is, and every waiting thread needs one.
        self.done = threading.Lock()
        self.done.acquire()


class ClaimGroup:
    """Group claim: the claims threads ask for while one is in flight go in the next statement.

    No thread of its own: the thread that finds no claim in flight sends the queued claims
    (its own among them) itself, so a lone claim costs no hand-off; the others wait. Once its
    own claim is answered, a sender that finds more queued hands the sending to the first of
    their threads and returns. An executionId asked twice at once goes in separate statements
    (each ask must know whether it won)."""

    def __init__(self, send: Callable[[list[_Ask]], None]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._queue: list[_Ask] = []
        self._sending = False

    def ask(self, execution_id: str, user_id: str, fingerprint: str | None) -> Claim:
        ask = _Ask(execution_id, user_id, fingerprint)
        with self._lock:
            self._queue.append(ask)
            lead = not self._sending
            self._sending = True
        if not lead:
            ask.done.acquire()
            lead = ask.lead
        if lead:
            self._lead(ask)
        result = ask.result
        if isinstance(result, BaseException):
            raise result
        assert result is not None
        return result

    def _lead(self, ask: _Ask) -> None:
        """Send groups until `ask` is answered; then hand over, or stop when none is left."""
        while True:
            with self._lock:
                batch: list[_Ask] = []
                seen: set[str] = set()
                rest: list[_Ask] = []
                for queued in self._queue:
                    if queued.execution_id in seen or len(batch) >= _MAX_GROUP:
                        rest.append(queued)
                    else:
                        seen.add(queued.execution_id)
                        batch.append(queued)
                self._queue = rest
            try:
                self._send(batch)
            except BaseException as exc:  # a bug: every ask of the group hears it
                for a in batch:
                    if a.result is None:
                        a.result = exc
            for a in batch:
                if a.result is None:  # pragma: no cover - _send answers every ask
                    a.result = ClaimError(f"cannot claim {a.execution_id}: no answer")
                if a is not ask:
                    a.done.release()
            if ask.result is None:
                continue  # ours is still queued (a twin, or past the group's size)
            with self._lock:
                if not self._queue:
                    self._sending = False
                    return
                heir = self._queue[0]
            heir.lead = True
            heir.done.release()
            return
