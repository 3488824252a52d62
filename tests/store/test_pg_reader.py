"""The PostgreSQL reader: creates no schema, claims or liveness session; refuses writes."""

from __future__ import annotations

import psycopg
import pytest

from runtime.errors import RecordStoreError
from runtime.query import RecordFilter
from runtime.stores.postgres import PostgresRecordReader, PostgresRecordStore
from tests.support import pg

EXECUTION_ID = "exec-" + "c" * 24
RECORD = (
    b'{"header": {"createdAt": "2024-01-15T10:30:00.000Z"}, "envelope": {"intent": {"name": "I"}}}'
)


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'intentus%'")
        return {str(name) for (name,) in rows.fetchall()}


def test_reader_on_an_empty_database_creates_nothing() -> None:
    """No schema yet: an error, and still no table."""
    with pg.temporary_database() as url:
        with pytest.raises(RecordStoreError, match="no execution records"):
            PostgresRecordReader(url)
        assert tables(url) == set()


def test_reader_reads_searches_and_refuses_writes() -> None:
    """Reads and indexed search work; put, claim and delete are refused."""
    with pg.temporary_database() as url:
        store = PostgresRecordStore(url, pool_size=2)
        store.put(EXECUTION_ID, RECORD)
        store.close()
        reader = PostgresRecordReader(url)
        try:
            assert reader.get(EXECUTION_ID) == RECORD
            assert reader.search(RecordFilter(intent="I"), limit=None) == (
                [(EXECUTION_ID, RECORD)],
                1,
            )
            assert reader.search(RecordFilter(intent="other"), limit=10) == ([], 0)
            with pytest.raises(RecordStoreError, match="read-only"):
                reader.put("exec-" + "d" * 24, RECORD)
            with pytest.raises(RecordStoreError, match="read-only"):
                reader.claim(EXECUTION_ID, user_id="", fingerprint=None)
            with pytest.raises(RecordStoreError, match="read-only"):
                reader.delete(EXECUTION_ID)
            assert reader.get(EXECUTION_ID) == RECORD
        finally:
            reader.close()
