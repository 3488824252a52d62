"""Fixtures of the record browser's tests: a store of real records, per backend, and a server.

Each execution store backend is an entry in BACKENDS (files, PostgreSQL): how the runtime
writes to it, and how `intentus records serve` opens it. Every test runs on each.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime.stores.base import RecordStore
from tests.browser.corpus import Corpus, make_runtime, populate, registry
from tests.support.pg import temporary_database
from worker.browser.server import RecordBrowser
from worker.cli.output import parse_since
from worker.cli.records import open_store


@dataclass
class Backend:
    """How the runtime writes records to a store, and how the browser reads them back."""

    runtime_kwargs: Callable[[], dict[str, Any]]
    reader: Callable[[], RecordStore]
    #: The `intentus records serve` options that open the same store.
    cli_args: list[str]
    #: The CLI's read-only file store has nothing to close (and no working close()).
    close_reader: Callable[[RecordStore], None] = lambda store: None


@contextmanager
def files(folder: Path) -> Iterator[Backend]:
    yield Backend(
        runtime_kwargs=lambda: {"records_dir": folder},
        reader=lambda: open_store(argparse.Namespace(records_dir=str(folder))),
        cli_args=["--records-dir", str(folder)],
    )


@contextmanager
def postgres(folder: Path) -> Iterator[Backend]:
    from runtime.stores.postgres import PostgresRecordStore

    with temporary_database() as url:
        yield Backend(
            runtime_kwargs=lambda: {"store": PostgresRecordStore(url, owner="browser-test")},
            reader=lambda: open_store(argparse.Namespace(records_dir=str(folder), records_url=url)),
            cli_args=["--records-dir", str(folder), "--records-url", url],
            close_reader=lambda store: store.close(),
        )


BACKENDS: dict[str, Callable[[Path], AbstractContextManager[Backend]]] = {
    "files": files,
    "postgres": postgres,
}


@dataclass
class Recorded:
    backend: str
    store: RecordStore
    corpus: Corpus
    registry: Any
    cli_args: list[str]


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def recorded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recorded]:
    """The corpus routed by the real runtime into one backend, opened as the CLI opens it."""
    release = threading.Event()
    with BACKENDS[request.param](tmp_path_factory.mktemp(request.param)) as backend:
        reg = registry(release)
        runtime, clock = make_runtime(reg, **backend.runtime_kwargs())
        try:
            corpus = populate(runtime, clock)
        finally:
            release.set()  # the stuck and sleepy agents' threads end
            runtime.close()
        store = backend.reader()
        try:
            yield Recorded(
                backend=request.param,
                store=store,
                corpus=corpus,
                registry=reg,
                cli_args=backend.cli_args,
            )
        finally:
            backend.close_reader(store)


@pytest.fixture(scope="module")
def server(recorded: Recorded) -> Iterator[RecordBrowser]:
    """The browser over the recorded store, on a free loopback port, with no token."""
    browser = RecordBrowser(recorded.store, port=0, parse_time=parse_since).start()
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    """One headless Chromium session for the module's page tests."""
    from tests.browser import chrome as chromium

    driver = chromium.start()
    yield driver
    driver.quit()
