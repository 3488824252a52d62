"""Opening an execution store for reading: what `intentus records` and the record browser use.

A reader creates nothing: no records folder, temp folder, claim, owner lock, log file,
database schema or committer thread; every write is refused. Opened with `deletes=True` it
may delete records too (garbage collection), and still creates nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

from runtime.claims import Claim, ClaimState
from runtime.errors import RecordStoreError
from runtime.filestore import FileRecordStore
from runtime.store import Callback, RecordStore


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


class FileRecordReader(ReadOnly, FileRecordStore):
    """The records folder's reading side (and deleting, for gc)."""

    def __init__(self, root: str | os.PathLike[str], *, deletes: bool = False) -> None:
        # FileRecordStore.__init__ is not run: it makes folders, an owner lock and a committer.
        self.root = Path(root)
        self.durable = True
        self._made: set[str] = set()
        self.deletes = deletes
        if not self.root.is_dir():
            raise RecordStoreError(f"no records folder at {self.root}")

    def delete(self, execution_id: str) -> bool:
        self.check_deletes()
        return super().delete(execution_id)

    def close(self) -> None:
        return None  # nothing was opened


def open_reader(*, records_dir: str, records_url: str = "", deletes: bool = False) -> RecordStore:
    """The PostgreSQL store at `records_url` if given, else the records folder, read-only."""
    if records_url:
        from runtime.pgstore import PostgresRecordReader

        return PostgresRecordReader(records_url, deletes=deletes)
    return FileRecordReader(records_dir, deletes=deletes)


__all__ = ["FileRecordReader", "ReadOnly", "open_reader"]
