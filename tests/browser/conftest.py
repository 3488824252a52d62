"""Fixtures of the record browser's tests: a store of real records, per backend, and a server.

Another execution store backend is one more entry in BACKENDS: how the runtime writes to
it, and how `intentus records serve` opens it.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime.store import RecordStore
from tests.browser.corpus import Corpus, make_runtime, populate, registry
from worker.browser import RecordBrowser
from worker.cli import _store, parse_since


@dataclass
class Backend:
    """How the runtime writes records to a store, and how the browser reads them back."""

    runtime_kwargs: dict[str, Any]
    reader: Callable[[], RecordStore]


def files(folder: Path) -> Backend:
    return Backend(
        runtime_kwargs={"records_dir": folder},
        reader=lambda: _store(argparse.Namespace(records_dir=str(folder))),
    )


BACKENDS: dict[str, Callable[[Path], Backend]] = {"files": files}


@dataclass
class Recorded:
    store: RecordStore
    corpus: Corpus
    registry: Any


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def recorded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recorded]:
    """The corpus routed by the real runtime into one backend, opened as the CLI opens it."""
    release = threading.Event()
    backend = BACKENDS[request.param](tmp_path_factory.mktemp(request.param))
    reg = registry(release)
    runtime, clock = make_runtime(reg, **backend.runtime_kwargs)
    try:
        corpus = populate(runtime, clock)
    finally:
        release.set()  # the stuck and sleepy agents' threads end
        runtime.close()
    yield Recorded(store=backend.reader(), corpus=corpus, registry=reg)


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
