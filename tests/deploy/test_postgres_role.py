"""docs/operations.md's PostgreSQL set-up, run for real: the "Database role" SQL through psql
on a real server, a worker's store opened as that role, and the backup command of "Backup and
restore" dumping and restoring the tables."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from runtime.claims import ClaimState
from runtime.stores.postgres import PostgresRecordStore
from tests.deploy.common import DATABASE_TABLES, OPERATIONS_DOC
from tests.support.broker import IN_CI
from tests.support.pg import PG_URL

try:
    import psycopg
except ImportError:  # the postgres extra is not installed
    if IN_CI:
        raise
    pytest.skip("psycopg is not installed (pip install -e '.[postgres]')", allow_module_level=True)

PASSWORD = "change-me"  # the placeholder in the documented SQL
RECORD = b'{"header": {"createdAt": "2026-01-01T00:00:00+00:00", "requestId": "r-1"}}'
EXECUTION_ID = "exec-" + "d" * 24


def doc_section(title: str) -> str:
    text = OPERATIONS_DOC.read_text()
    start = text.index(f"\n### {title}\n")
    end = text.find("\n### ", start + 1)
    return text[start : end if end != -1 else None]


def role_sql() -> str:
    """The SQL block of the "Database role" section."""
    (block,) = re.findall(r"```sql\n(.*?)```", doc_section("Database role"), flags=re.S)
    return block


def backup_commands() -> tuple[list[str], list[str]]:
    """The pg_dump and pg_restore options shown in "Backup and restore"."""
    (block,) = re.findall(r"```bash\n(.*?)```", doc_section("Backup and restore"), flags=re.S)
    dump = next(line for line in block.splitlines() if line.startswith("pg_dump "))
    restore = next(line for line in block.splitlines() if line.startswith("pg_restore "))
    return (
        shlex.split(dump.split('"$URL"')[0])[1:],
        shlex.split(restore.split('--dbname "$URL"')[0])[1:],
    )


def program(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (bash deploy/local/ensure-postgres installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def admin_sql(sql: str, database: str | None = None) -> None:
    url = PG_URL if database is None else role_url("postgres", database, admin=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def role_url(user: str, database: str, *, admin: bool = False) -> str:
    parts = urlsplit(PG_URL)
    auth = parts.netloc.rpartition("@")[0] if admin else f"{user}:{PASSWORD}"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}", path=f"/{database}"))


def run(args: list[str]) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def role() -> Iterator[str]:
    """The documented SQL run as a superuser, with a unique name for role, database and schema."""
    psql = program("psql")
    try:
        admin_sql("SELECT 1")
    except psycopg.Error as exc:
        message = f"PostgreSQL is not reachable at {PG_URL}: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    name = f"intentus_role_{uuid.uuid4().hex[:10]}"
    sql = re.sub(r"\bintentus\b", name, role_sql())
    try:
        subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", PG_URL],
            input=sql,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        yield name
    finally:
        for database in (name, f"{name}_restored"):
            admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin_sql(f'DROP ROLE IF EXISTS "{name}"')


def record_one(url: str) -> None:
    store = PostgresRecordStore(url, owner=f"test.{uuid.uuid4().hex[:8]}")
    try:
        claim = store.claim(EXECUTION_ID, user_id="", fingerprint=None)
        assert claim.state is ClaimState.WON
        store.put(EXECUTION_ID, RECORD)
        store.check_writable()
    finally:
        store.close()


class TestDatabaseRole:
    """The documented role runs a worker's store, and nothing more."""

    def test_store_works_as_the_role(self, role: str) -> None:
        """First start creates the tables in the role's own schema; it claims, records, reads."""
        url = role_url(role, role)
        record_one(url)
        reader = PostgresRecordStore(url, claims=False, pool_size=2)
        try:
            assert reader.get(EXECUTION_ID) == RECORD
        finally:
            reader.close()
        with psycopg.connect(url) as conn:
            tables = conn.execute(
                "SELECT schemaname, tablename FROM pg_tables WHERE tablename LIKE 'intentus%'"
            ).fetchall()
        assert {schema for schema, _table in tables} == {role}
        assert {table for _schema, table in tables} == DATABASE_TABLES

    def test_restart_works_as_the_role(self, role: str) -> None:
        """A second start, on existing tables, opens the store too (what every restart does)."""
        url = role_url(role, role)
        record_one(url)
        again = PostgresRecordStore(url, owner="test.again")
        try:
            claim = again.claim(EXECUTION_ID, user_id="", fingerprint=None)
            assert claim.state is ClaimState.RECORDED
            assert claim.record == RECORD
        finally:
            again.close()

    def test_role_is_confined(self, role: str) -> None:
        """Neither superuser nor creator of roles or databases; nothing created in public."""
        url = role_url(role, role)
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles"
                " WHERE rolname = current_user"
            ).fetchone()
            assert row == (False, False, False)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("CREATE TABLE public.intentus_probe (i int)")


class TestBackup:
    """The documented pg_dump and pg_restore commands keep records byte for byte."""

    def test_dump_and_restore(self, role: str, tmp_path: Path) -> None:
        """Both tables dumped as the role; restored into a database prepared the same way."""
        url = role_url(role, role)
        record_one(url)
        dump_options, restore_options = backup_commands()
        dump = tmp_path / "intentus-records.dump"
        run([program("pg_dump"), *dump_options, url, "-f", str(dump)])
        listing = run([program("pg_restore"), "-l", str(dump)])
        assert re.search(r"TABLE \S+ intentus_executions ", listing)
        assert re.search(r"TABLE \S+ intentus_schema_version ", listing)
        restored = f"{role}_restored"
        admin_sql(f'CREATE DATABASE "{restored}"')
        admin_sql(f'GRANT CONNECT ON DATABASE "{restored}" TO "{role}"')
        admin_sql(f'CREATE SCHEMA "{role}" AUTHORIZATION "{role}"', database=restored)
        admin_sql(f'ALTER ROLE "{role}" IN DATABASE "{restored}" SET search_path = "{role}"')
        target = role_url(role, restored)
        run([program("pg_restore"), *restore_options, "--dbname", target, str(dump)])
        reader = PostgresRecordStore(target, claims=False, pool_size=2)
        try:
            assert reader.get(EXECUTION_ID) == RECORD
        finally:
            reader.close()
