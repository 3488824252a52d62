"""Record stores: where ExecutionRecords live, one immutable JSON document per executionId.

`RecordStore` is the protocol every store keeps (claims and records; runtime/claims.py has the
claim protocol), and `ReadOnly` what a store opened for reading refuses. The backends are
beside this module: memory.py, files/, postgres/; reader.py opens one read-only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import NoReturn, Protocol

from runtime.claims import Claim, ClaimState
from runtime.errors import RecordStoreError
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
