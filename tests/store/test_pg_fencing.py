"""The embedding API under PostgreSQL fencing: a refused record is never answered as a result."""

from __future__ import annotations

import pytest

from runtime import IntentusRuntime
from runtime.canonical import execution_id_for
from runtime.errors import RecordStoreError
from tests.store.test_conformance import Calls, as_user, envelope, registry
from tests.support import pg


def test_fenced_commit_without_a_record_answers_nothing() -> None:
    """The agent ran, then another worker took the request over (this one looked dead) and
    has not recorded it yet: commit_sync raises instead of returning the unrecorded result."""
    from runtime.stores.postgres import PostgresRecordStore

    with pg.temporary_database() as url:
        one = PostgresRecordStore(url, pool_size=4)
        two = PostgresRecordStore(url, pool_size=4)
        try:
            calls = Calls()
            rt = IntentusRuntime(registry(calls), store=one)
            eid = execution_id_for("fenced")
            ran = rt.process(envelope("fenced"), as_user("u"))
            assert ran.status == "success" and calls.names == ["fenced"]
            pg.execute(
                url,
                "UPDATE intentus_executions SET owner = %s, owner_key = %s WHERE execution_id = %s",
                (two.owner, two.owner_key, eid),
            )
            with pytest.raises(RecordStoreError, match="taken over"):
                rt.commit_sync(ran)
            assert one.get(eid) is None
        finally:
            one.close()
            two.close()
