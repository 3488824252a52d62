"""Claims: who may execute a request, decided atomically before any agent runs.

Every valid request claims its executionId before anything is executed or recorded (a message
rejected at intake claims nothing: it is recorded under its body's rejection id). The claim is
atomic across every worker sharing the store, and has exactly one outcome:

- ``WON``: nobody holds it and no record exists: this worker executes, records, releases.
- ``RECORDED``: a record exists: answer from it (after checking the caller).
- ``RUNNING``: a live owner holds it: wait (parked) until its record appears.
- ``ORPHANED``: the owner is dead and left no record: the request is in doubt; take the claim
  over and record that, so every later duplicate gets the same answer. Never run it again.

Owner liveness needs no clock: an owner is alive while it holds a lock that the operating
system (files) or the database server (PostgreSQL) releases when the owner's process or
session ends. Records are write-once, which fences a worker whose liveness lapsed: it cannot
write over the record that another worker wrote meanwhile.

The claim methods are part of the `RecordStore` protocol (runtime/stores/base.py). This module
holds the shared types and the in-memory claims; the file claims live beside the file store
(`runtime/stores/files/claims.py`), the PostgreSQL ones in `runtime/stores/postgres/claims.py`.
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from runtime.errors import RecordStoreError


class ClaimState(StrEnum):
    WON = "won"
    RECORDED = "recorded"
    RUNNING = "running"
    ORPHANED = "orphaned"


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a claim: the owner token, and the caller it runs for."""

    owner: str
    user_id: str
    fingerprint: str | None
    known: bool = True  # False: the backend keeps no caller with the claim (files)


@dataclass(slots=True)
class Claim:
    """The outcome of claiming one executionId."""

    state: ClaimState
    execution_id: str
    holder: Holder | None = None  # WON: us; RUNNING/ORPHANED: the current holder
    record: bytes | None = None  # RECORDED: the stored record

    @property
    def won(self) -> bool:
        return self.state is ClaimState.WON


def new_owner_token(worker_id: str) -> str:
    """A token unique to this process's lifetime: a restarted worker keeping its worker id
    (same hostname, pid 1) is still a different owner, so its predecessor's claims read dead."""
    return f"{worker_id}.{os.getpid()}.{secrets.token_hex(6)}"


class MemoryClaims:
    """Claims within one process: the owner is always alive while the process is."""

    def __init__(self, owner: str, recorded: _HasRecord) -> None:
        self.owner = owner
        self._held: dict[str, Holder] = {}
        self._lock = threading.Lock()
        self._recorded = recorded

    def claim(self, execution_id: str, *, user_id: str, fingerprint: str | None) -> Claim:
        with self._lock:
            holder = self._held.get(execution_id)
            if holder is None:
                record = self._recorded.get(execution_id)
                if record is not None:
                    return Claim(ClaimState.RECORDED, execution_id, record=record)
                mine = Holder(self.owner, user_id, fingerprint)
                self._held[execution_id] = mine
                return Claim(ClaimState.WON, execution_id, holder=mine)
        record = self._recorded.get(execution_id)
        if record is not None:
            return Claim(ClaimState.RECORDED, execution_id, record=record)
        return Claim(ClaimState.RUNNING, execution_id, holder=holder)

    def take_over(self, claim: Claim, *, user_id: str, fingerprint: str | None) -> Claim:
        # In memory the owner is this process: a claim is orphaned only when the runtime knows
        # it abandoned it (an execution whose record could not be written).
        mine = Holder(self.owner, user_id, fingerprint)
        with self._lock:
            record = self._recorded.get(claim.execution_id)
            if record is not None:
                return Claim(ClaimState.RECORDED, claim.execution_id, record=record)
            self._held[claim.execution_id] = mine
        return Claim(ClaimState.WON, claim.execution_id, holder=mine)

    def release(self, claim: Claim) -> None:
        with self._lock:
            if self._held.get(claim.execution_id) == claim.holder:
                del self._held[claim.execution_id]

    def probe(self, execution_ids: list[str]) -> dict[str, ClaimState]:
        out = {}
        for eid in execution_ids:
            if self._recorded.get(eid) is not None:
                out[eid] = ClaimState.RECORDED
            elif eid in self._held:
                out[eid] = ClaimState.RUNNING
            else:
                out[eid] = ClaimState.ORPHANED
        return out


class _HasRecord(Protocol):
    def get(self, execution_id: str) -> bytes | None: ...


class ClaimError(RecordStoreError):
    """A claim could not be taken or checked (the store is failing): nothing was executed."""


__all__ = [
    "Claim",
    "ClaimError",
    "ClaimState",
    "Holder",
    "MemoryClaims",
    "new_owner_token",
]
