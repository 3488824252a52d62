"""Record stores: where ExecutionRecords live, one immutable JSON document per executionId.

`RecordStore` is the protocol every store keeps (claims and records; runtime/claims.py has the
claim protocol); `MemoryRecordStore` keeps them in process memory. The files store is in
runtime/filestore.py, the PostgreSQL store in runtime/pgstore/.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn, Protocol

from runtime.claims import Claim, ClaimState, MemoryClaims, new_owner_token
from runtime.errors import RecordExists, RecordStoreError
from runtime.oneshot import OneShot

EXECUTION_ID = re.compile(r"^exec-[0-9a-f]{24}$")

Callback = Callable[[BaseException | None], None]


def put_and_wait(
    put_async: Callable[[str, bytes, Callback], None], execution_id: str, data: bytes
) -> None:
    """A group-committed write made synchronous: return once durable, or raise its error."""
    written: OneShot[BaseException | None] = OneShot()
    put_async(execution_id, data, written.set)
    written.wait()
    if written.value is not None:
        raise written.value


def check_execution_id(execution_id: str) -> str:
    """Only well-formed ids ever become paths; anything else is rejected."""
    if not isinstance(execution_id, str) or not EXECUTION_ID.match(execution_id):
        raise RecordStoreError(f"invalid executionId {execution_id!r}")
    return execution_id


class RecordStore(Protocol):
    """Write-once records plus the claims that decide who writes them (runtime/claims.py)."""

    owner: str

    def claim(self, execution_id: str, *, user_id: str, fingerprint: str | None) -> Claim: ...
    def take_over(self, claim: Claim, *, user_id: str, fingerprint: str | None) -> Claim: ...
    def release(self, claim: Claim) -> None: ...
    def probe(self, execution_ids: list[str]) -> dict[str, ClaimState]: ...
    def get(self, execution_id: str) -> bytes | None: ...
    def exists(self, execution_id: str) -> bool: ...
    def put(self, execution_id: str, data: bytes) -> None: ...
    def put_async(self, execution_id: str, data: bytes, done: Callback) -> None: ...
    def delete(self, execution_id: str) -> bool: ...
    def ids(self) -> Iterator[str]: ...
    def check_writable(self) -> None: ...
    def close(self) -> None: ...


class ReadOnly:
    """Refuses every claim and write of a RecordStore; deletes only when opened for them."""

    deletes: bool = False
    owner = ""  # claims nothing, so owns nothing

    def _refuse(self, what: str) -> NoReturn:
        raise RecordStoreError(f"the record store is open read-only: cannot {what}")

    def check_deletes(self) -> None:
        if not self.deletes:
            self._refuse("delete records")

    def claim(self, execution_id: str, *, user_id: str, fingerprint: str | None) -> Claim:
        self._refuse("claim")

    def take_over(self, claim: Claim, *, user_id: str, fingerprint: str | None) -> Claim:
        self._refuse("take over a claim")

    def release(self, claim: Claim) -> None:
        self._refuse("release a claim")

    def probe(self, execution_ids: list[str]) -> dict[str, ClaimState]:
        self._refuse("probe claims")

    def put(self, execution_id: str, data: bytes) -> None:
        self._refuse("write records")

    def put_async(self, execution_id: str, data: bytes, done: Callback) -> None:
        done(RecordStoreError("the record store is open read-only: cannot write records"))

    def check_writable(self) -> None:
        self._refuse("write records")


class MemoryRecordStore:
    """Records in a dict: for embedding and tests (nothing survives the process)."""

    def __init__(self, owner: str | None = None) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.owner = owner or new_owner_token("memory")
        self._claims = MemoryClaims(self.owner, self)

    def claim(self, execution_id: str, *, user_id: str, fingerprint: str | None) -> Claim:
        return self._claims.claim(execution_id, user_id=user_id, fingerprint=fingerprint)

    def take_over(self, claim: Claim, *, user_id: str, fingerprint: str | None) -> Claim:
        return self._claims.take_over(claim, user_id=user_id, fingerprint=fingerprint)

    def release(self, claim: Claim) -> None:
        self._claims.release(claim)

    def probe(self, execution_ids: list[str]) -> dict[str, ClaimState]:
        return self._claims.probe(execution_ids)

    def get(self, execution_id: str) -> bytes | None:
        return self._data.get(execution_id)

    def exists(self, execution_id: str) -> bool:
        return execution_id in self._data

    def put(self, execution_id: str, data: bytes) -> None:
        check_execution_id(execution_id)
        with self._lock:
            if execution_id in self._data:
                raise RecordExists(execution_id)
            self._data[execution_id] = bytes(data)

    def put_async(self, execution_id: str, data: bytes, done: Callback) -> None:
        try:
            self.put(execution_id, data)
        except RecordStoreError as exc:
            done(exc)
        else:
            done(None)

    def delete(self, execution_id: str) -> bool:
        with self._lock:
            return self._data.pop(execution_id, None) is not None

    def ids(self) -> Iterator[str]:
        return iter(sorted(self._data))

    def check_writable(self) -> None:
        return None

    def close(self) -> None:
        return None
