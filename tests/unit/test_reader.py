"""Read-only stores: they create nothing and refuse writes; gc may delete when allowed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from runtime.errors import RecordStoreError
from runtime.query import delete_older_than
from runtime.stores.files.store import FileRecordStore
from runtime.stores.reader import FileRecordReader, open_reader

EXECUTION_ID = "exec-" + "a" * 24
RECORD = b'{"header": {"createdAt": "2024-01-15T10:30:00.000Z"}}'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    store = FileRecordStore(tmp_path / "records")
    store.put(EXECUTION_ID, RECORD)
    store.close()
    return tmp_path / "records"


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


class TestFileRecordReader:
    def test_reads_and_creates_nothing(self, folder: Path) -> None:
        """Reading leaves the folder exactly as it was: no temp folder, claim or lock file."""
        before = tree(folder)
        reader = open_reader(records_dir=str(folder))
        assert reader.get(EXECUTION_ID) == RECORD
        assert list(reader.ids()) == [EXECUTION_ID]
        reader.close()
        assert tree(folder) == before

    def test_refuses_writes(self, folder: Path) -> None:
        """put, claim and delete are refused; put_async reports the refusal."""
        reader = FileRecordReader(folder)
        with pytest.raises(RecordStoreError, match="read-only"):
            reader.put("exec-" + "b" * 24, RECORD)
        with pytest.raises(RecordStoreError, match="read-only"):
            reader.claim(EXECUTION_ID, user_id="", fingerprint=None)
        with pytest.raises(RecordStoreError, match="read-only"):
            reader.delete(EXECUTION_ID)
        errors: list[BaseException | None] = []
        reader.put_async("exec-" + "b" * 24, RECORD, errors.append)
        assert isinstance(errors[0], RecordStoreError)
        assert reader.get(EXECUTION_ID) == RECORD

    def test_missing_folder_is_not_created(self, tmp_path: Path) -> None:
        """A folder that does not exist is an error, and stays absent."""
        with pytest.raises(RecordStoreError, match="no records folder"):
            open_reader(records_dir=str(tmp_path / "absent"))
        assert not (tmp_path / "absent").exists()

    def test_gc_deletes_only_when_opened_for_it(self, folder: Path) -> None:
        """delete_older_than counts on a reader, deletes on one opened with deletes=True."""
        cutoff = datetime(2025, 1, 1, tzinfo=UTC)
        reader = FileRecordReader(folder)
        assert delete_older_than(reader, cutoff, dry_run=True) == (1, 0)
        with pytest.raises(RecordStoreError):
            delete_older_than(reader, cutoff)
        deleting = FileRecordReader(folder, deletes=True)
        assert delete_older_than(deleting, datetime(2020, 1, 1, tzinfo=UTC)) == (0, 1)
        assert delete_older_than(deleting, cutoff) == (1, 0)
        assert deleting.get(EXECUTION_ID) is None
