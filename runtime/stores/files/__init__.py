"""The files store: sharded write-once JSON files (store.py), their group commit (commit.py)
and claims on a local file system (claims.py)."""

from runtime.stores.files.store import FileRecordStore

__all__ = ["FileRecordStore"]
