"""Opening an execution store for reading: what `intentus records` and the record browser use.

A reader creates nothing: no records folder, temp folder, claim, owner lock, log file,
database schema or committer thread; every write is refused. Opened with `deletes=True` it
may delete records too (garbage collection), and still creates nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.errors import RecordStoreError
from runtime.stores.base import ReadOnly, RecordStore
from runtime.stores.files.store import FileRecordStore


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
        from runtime.stores.postgres import PostgresRecordReader

        return PostgresRecordReader(records_url, deletes=deletes)
    return FileRecordReader(records_dir, deletes=deletes)


__all__ = ["FileRecordReader", "ReadOnly", "open_reader"]
