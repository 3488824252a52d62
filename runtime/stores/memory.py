"""The memory store: records and claims in process memory, for tests and benchmarks."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from runtime.claims import Claim, ClaimState, MemoryClaims, new_owner_token
from runtime.errors import RecordExists, RecordStoreError
from runtime.stores.base import Callback, check_execution_id


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
