"""A real PostgreSQL for the tests: one database per test, dropped afterwards.

The server is the one at INTENTUS_TEST_PG_URL (tests/run points it at the local server on
127.0.0.1:5432, or at a private cluster it starts when there is none). Without a server the
tests skip on a laptop and fail under CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.broker import IN_CI

PG_URL = os.environ.get("INTENTUS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin() -> object:
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[dev]')")
    try:
        return psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        _unavailable(f"PostgreSQL is not reachable at {PG_URL}: {exc}")
    raise AssertionError("unreachable")  # pragma: no cover


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def url_for(database: str) -> str:
    parts = urlsplit(PG_URL)
    return urlunsplit(parts._replace(path=f"/{database}"))


@contextmanager
def temporary_database() -> Iterator[str]:
    """A fresh, empty database; its URL; dropped (connections and all) afterwards."""
    admin = _admin()
    name = f"intentus_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    try:
        yield url_for(name)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[attr-defined]
        admin.close()  # type: ignore[attr-defined]


def execute(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run one statement on its own connection; the rows it returned, if any."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []
