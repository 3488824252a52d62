"""The statements on every request's path, sent through libpq itself.

A claim group and a record group each take a handful of arrays (text and bytea). psycopg's
adaptation layer dumps an array element by element in Python, which costs several times the
CPU of the round trip itself; here the arrays are written in PostgreSQL's binary array format
directly, and each statement is prepared once per connection. Errors are psycopg's own (from
the result), so callers handle them as they do any other.
"""

from __future__ import annotations

import struct
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from runtime.stores.postgres.schema import TABLE

_TEXT, _BYTEA, _INT8 = 25, 17, 20
_TEXT_ARRAY, _BYTEA_ARRAY = 1009, 1001
_HEADER = struct.Struct("!iiIii")  # dimensions, has nulls, element type, length, lower bound
_LENGTH = struct.Struct("!i")
_INT8_VALUE = struct.Struct("!q")
_NULL = _LENGTH.pack(-1)


class Statement:
    """A statement prepared (on first use) on every connection it runs on."""

    def __init__(self, name: str, sql: str, types: Sequence[int]) -> None:
        self.name = name.encode()
        self.sql = sql.encode()
        self.types = list(types)

    def run(self, conn: Any, params: Sequence[bytes | None]) -> list[str]:
        """Execute with `params` (each in binary format); the first column of each row."""
        psycopg = _psycopg()
        pgconn = conn.pgconn
        if not _is_prepared(pgconn, self.name):
            _check(psycopg, pgconn, pgconn.prepare(self.name, self.sql, self.types))
            _set_prepared(pgconn, self.name)
        result = pgconn.exec_prepared(self.name, list(params), [1] * len(params), result_format=0)
        _check(psycopg, pgconn, result)
        encoding = conn.info.encoding
        return [
            bytes(result.get_value(row, 0) or b"").decode(encoding) for row in range(result.ntuples)
        ]


def text(value: str, encoding: str) -> bytes:
    return value.encode(encoding)


def int8(value: int) -> bytes:
    return _INT8_VALUE.pack(value)


def text_array(values: Sequence[str | None], encoding: str) -> bytes:
    """A text[] in binary format (a value the encoding cannot hold raises UnicodeError)."""
    return _array(_TEXT, [None if v is None else v.encode(encoding) for v in values])


def bytea_array(values: Sequence[bytes]) -> bytes:
    return _array(_BYTEA, values)


def _array(oid: int, items: Sequence[bytes | None]) -> bytes:
    if not items:
        return struct.pack("!iiI", 0, 0, oid)
    parts = [_HEADER.pack(1, int(None in items), oid, len(items), 1)]
    for item in items:
        if item is None:
            parts.append(_NULL)
        else:
            parts.append(_LENGTH.pack(len(item)))
            parts.append(item)
    return b"".join(parts)


def _check(psycopg: Any, pgconn: Any, result: Any) -> None:
    status = result.status
    if status in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK):
        return
    if pgconn.status != psycopg.pq.ConnStatus.OK:
        message = bytes(pgconn.error_message or b"").decode("utf-8", "replace").strip()
        raise psycopg.OperationalError(message or "the connection to the server was lost")
    raise psycopg.errors.error_from_result(result, encoding="utf-8")


_prepared: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()
_prepared_lock = threading.Lock()


def _is_prepared(pgconn: Any, name: bytes) -> bool:
    with _prepared_lock:
        return name in _prepared.get(pgconn, ())


def _set_prepared(pgconn: Any, name: bytes) -> None:
    with _prepared_lock:
        _prepared.setdefault(pgconn, set()).add(name)


def _psycopg() -> Any:
    import psycopg

    return psycopg


# -- the statements ----------------------------------------------------------------------

#: Claims every executionId given whose row does not exist yet; returns the ones it claimed.
#: In the order of the ids, as every worker does: two groups sharing ids wait for one another
#: (an insert waits for a concurrent insert of its key to end) but never in a cycle.
CLAIM_MANY = Statement(
    "intentus_claim_many",
    f"""
    INSERT INTO {TABLE} (execution_id, owner, owner_key, user_id, fingerprint)
    SELECT c.execution_id, $1, $2, c.user_id, c.fingerprint
    FROM unnest($3::text[], $4::text[], $5::text[]) AS c(execution_id, user_id, fingerprint)
    ORDER BY c.execution_id
    ON CONFLICT (execution_id) DO NOTHING
    RETURNING execution_id""",
    (_TEXT, _INT8, _TEXT_ARRAY, _TEXT_ARRAY, _TEXT_ARRAY),
)

# A record's columns, as the arrays of the two record statements give them: the record, the
# indexed text columns, createdAt (as text, read as the server reads a timestamp), the id.
_COLUMNS = (
    "record, request_id, correlation_id, intent, status, error_code, agent, kind, created_at,"
    " execution_id"
)
_ARRAYS = (
    "$1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
    " $8::text[], $9::text[]::timestamptz[], $10::text[]"
)
_RECORD_TYPES = (_BYTEA_ARRAY, *[_TEXT_ARRAY] * 9)

#: Records of claims we hold (fenced: the owner we claimed as, no record yet), each ending its
#: claim in the same statement. The rows are found by their key ($10), whatever the number
#: of claims outstanding.
COMMIT_CLAIMED = Statement(
    "intentus_commit_claimed",
    f"""
    UPDATE {TABLE} e SET record = v.record, owner = NULL, owner_key = NULL,
        request_id = v.request_id, correlation_id = v.correlation_id, intent = v.intent,
        status = v.status, error_code = v.error_code, agent = v.agent, kind = v.kind,
        created_at = v.created_at
    FROM unnest({_ARRAYS}, $11::text[]) AS v({_COLUMNS}, owner)
    WHERE e.execution_id = ANY($10::text[]) AND e.execution_id = v.execution_id
        AND e.owner = v.owner AND e.record IS NULL
    RETURNING e.execution_id""",
    (*_RECORD_TYPES, _TEXT_ARRAY),
)

#: Records without a claim (rejections): stored unless the executionId has a row already.
INSERT_RECORDS = Statement(
    "intentus_insert_records",
    f"""
    INSERT INTO {TABLE} ({_COLUMNS})
    SELECT * FROM unnest({_ARRAYS}) AS v({_COLUMNS})
    ORDER BY v.execution_id
    ON CONFLICT (execution_id) DO NOTHING
    RETURNING execution_id""",
    _RECORD_TYPES,
)
