"""The PostgreSQL store's schema: the table, its migrations, and what every part shares."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from runtime.errors import RecordStoreError

log = logging.getLogger("intentus.runtime.stores.postgres")

TABLE = "intentus_executions"
VERSION_TABLE = "intentus_schema_version"
SCHEMA_VERSION = 1
_MIGRATION_LOCK = 0x1D7E57  # serialises schema set-up between workers starting together
# The most UTF-8 bytes an indexed text column holds as is: every id of ASCII the contract
# allows (1024 characters) fits whole, and any value fits a btree entry (at most 2704 bytes).
MAX_INDEXED_BYTES = 1024
HASHED = "~sha256:"  # starts an indexed value that stands for a longer or odd one

# Each migration brings the schema from version i to i + 1; never edit one that shipped.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE {TABLE} (
        execution_id   text PRIMARY KEY,
        owner          text,
        owner_key      bigint,
        user_id        text NOT NULL DEFAULT '',
        fingerprint    text,
        claimed_at     timestamptz NOT NULL DEFAULT now(),
        record         bytea,
        request_id     text,
        correlation_id text,
        intent         text,
        status         text,
        error_code     text,
        agent          text,
        kind           text,
        created_at     timestamptz
    );
    CREATE INDEX {TABLE}_request_id ON {TABLE} (request_id);
    CREATE INDEX {TABLE}_correlation_id ON {TABLE} (correlation_id);
    CREATE INDEX {TABLE}_created_at ON {TABLE} (created_at DESC, execution_id DESC)
        WHERE record IS NOT NULL;
    CREATE INDEX {TABLE}_intent ON {TABLE} (intent, created_at DESC);
    CREATE INDEX {TABLE}_status ON {TABLE} (status, created_at DESC);
    CREATE INDEX {TABLE}_agent ON {TABLE} (agent, created_at DESC);
    CREATE INDEX {TABLE}_error_code ON {TABLE} (error_code, created_at DESC);
    CREATE INDEX {TABLE}_claims ON {TABLE} (owner) WHERE record IS NULL;
    """,
)

# Whether the owner of row `e` still holds its session advisory lock (bigint key: classid is
# the high 32 bits, objid the low 32 bits, objsubid 1).
ALIVE = """EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = (e.owner_key >> 32)
      AND l.objid::bigint = (e.owner_key & 4294967295))"""


def psycopg_module() -> Any:
    """psycopg, or a RecordStoreError saying which extra to install."""
    try:
        import psycopg
    except ImportError:
        raise RecordStoreError(
            "the PostgreSQL store needs psycopg: pip install 'intentusnet-worker[postgres]'"
        ) from None
    return psycopg


def mask(url: str, text: str) -> str:
    """`text` with the URL's password, if any, replaced by ***."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password)} if password else set():
        text = text.replace(secret, "***")
    return text


def index_text(value: Any) -> str | None:
    """A value as its indexed text column holds it, and as a lookup must name it.

    PostgreSQL's text refuses NUL (and text that is not UTF-8), and a btree entry holds at most
    2704 bytes; the record itself is kept byte for byte beside it. So a value PostgreSQL cannot
    index as is (or that starts like the stand-in, which keeps the mapping one-to-one) is
    indexed as `~sha256:` and the hex digest of its UTF-8 bytes: still found by its whole value.
    """
    if not isinstance(value, str):
        return None
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        encoded = b""
        plain = False
    else:
        plain = len(encoded) <= MAX_INDEXED_BYTES and b"\x00" not in encoded
    if plain and not value.startswith(HASHED):
        return value
    raw = encoded or value.encode("utf-8", "surrogatepass")
    return HASHED + hashlib.sha256(raw).hexdigest()


def index_columns(data: bytes) -> tuple[Any, ...]:
    """The indexed columns of a record (requestId ... createdAt), read from its bytes."""
    try:
        record = json.loads(data)
    except ValueError:
        record = {}
    header = record.get("header") or {}
    response = record.get("finalResponse") or {}
    envelope = record.get("envelope") or {}
    intent = (envelope.get("intent") or {}).get("name") or (record.get("routerDecision") or {}).get(
        "intent"
    )
    created: Any = header.get("createdAt")
    try:
        created = datetime.fromisoformat(created) if isinstance(created, str) else None
    except ValueError:
        created = None
    return (
        index_text(header.get("requestId")),
        index_text(header.get("correlationId")),
        index_text(intent),
        index_text(response.get("status")),
        index_text((response.get("error") or {}).get("code")),
        index_text((response.get("metadata") or {}).get("agent")),
        index_text(header.get("kind")),
        created,
    )


def one_row(cursor: Any) -> tuple[Any, ...]:
    """The one row an aggregate query returns."""
    row = cursor.fetchone()
    if row is None:  # pragma: no cover - aggregates always return a row
        raise RecordStoreError("the database returned no row")
    return tuple(row)


def migrate(conn: Any) -> None:
    """Create or upgrade the schema, once, whoever starts first."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        # Only when missing: CREATE ... IF NOT EXISTS needs the CREATE privilege even when
        # the table exists, and a role that only reads and writes must be able to start.
        if not _has_version_table(conn):
            conn.execute(
                f"CREATE TABLE {VERSION_TABLE} ("
                " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        current = check_version(conn)
        for version in range(current, SCHEMA_VERSION):
            conn.execute(MIGRATIONS[version])
            conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)", (version + 1,))
            log.info("records schema migrated to version %d", version + 1)


def check_version(conn: Any) -> int:
    """The schema version in the database (0: none), refused when newer than this code's."""
    if not _has_version_table(conn):
        return 0
    current = one_row(conn.execute(f"SELECT max(version) FROM {VERSION_TABLE}"))[0] or 0
    if current > SCHEMA_VERSION:
        raise RecordStoreError(
            f"the database schema is version {current}, newer than this worker's "
            f"{SCHEMA_VERSION}: upgrade the worker"
        )
    return int(current)


def _has_version_table(conn: Any) -> bool:
    return one_row(conn.execute(f"SELECT to_regclass('{VERSION_TABLE}')"))[0] is not None
