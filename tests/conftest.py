"""Fixtures shared by the broker-backed suites (integration, faults, deploy)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import delete_topology, require_broker, unique
from tests.support.workerproc import WorkerProcess


@pytest.fixture
def broker() -> None:
    """A reachable RabbitMQ (skip locally without one; fail under CI)."""
    require_broker()


@pytest.fixture
def queue_name(broker: None) -> Iterator[str]:
    """A unique request queue; it, its DLQ/DLX and its reply queue are deleted afterwards."""
    name = unique("it")
    yield name
    delete_topology(name, f"{name}.replies")


@pytest.fixture
def start_worker(queue_name: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes on the test's queue; all are stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(
        *, records_dir: Path | None = None, wait: bool = True, **kwargs: Any
    ) -> WorkerProcess:
        w = WorkerProcess(queue_name, records_dir or tmp_path / "records", **kwargs)
        w.log_path = tmp_path / f"worker-{len(started)}.log"
        started.append(w.start())
        return w.wait_ready() if wait else w

    yield start
    for w in started:
        w.stop()
