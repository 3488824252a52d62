"""Helpers of the worker unit tests: a registry, request bodies, a worker on a memory transport."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import AgentRegistry
from runtime.errors import RecordStoreError
from runtime.stores.base import Callback, RecordStore
from worker.config import Config
from worker.service import Worker
from worker.testing import MemoryTransport


def request(request_id: str = "req-1", intent: str = "ProcessIntent", **payload: Any) -> bytes:
    return json.dumps(
        {
            "version": "1.0",
            "intent": {"name": intent, "version": "1.0"},
            "payload": payload or {"document_id": "doc-1"},
            "routing": {"strategy": "DIRECT"},
            "metadata": {"requestId": request_id},
        }
    ).encode()


def unit_config(records: Path, **overrides: Any) -> Config:
    """A worker's settings for a unit test: records in `records`, any free metrics port."""
    settings: dict[str, Any] = {
        "records_dir": str(records),
        "metrics_addr": "127.0.0.1:0",
        "reply_queue": "default.replies",
        "worker_id": "unit",
        "concurrency": 2,
        "shutdown_grace_s": 10.0,
        **overrides,
    }
    return Config(**settings)


@pytest.fixture
def registry() -> AgentRegistry:
    reg = AgentRegistry()

    @reg.agent("alpha", intents=["ProcessIntent"])
    def alpha(env: Any) -> dict[str, Any]:
        return {"by": "alpha"}

    @reg.agent("sleeper", intents=["SleepIntent"])
    def sleeper(env: Any) -> dict[str, Any]:
        time.sleep(float(env.payload.get("seconds", 0.3)))
        return {"slept": True}

    return reg


class FlakyStore:
    """The worker's real record store, with record writes that fail while `failing` is set.

    A disk that refuses writes cannot be produced here (the tests run as root), so the fault
    is injected at the store's write path; `check_writable()` still probes the real folder,
    as when one shard folder fails and the probe's folder does not."""

    def __init__(self, inner: RecordStore) -> None:
        self.inner = inner
        self.failing = False
        self.attempts = 0

    def put_async(self, execution_id: str, data: bytes, done: Callback) -> None:
        self.attempts += 1
        if self.failing:
            done(RecordStoreError("disk refuses the write"))
            return
        self.inner.put_async(execution_id, data, done)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Running:
    """A started Worker with its memory transport."""

    def __init__(self, worker: Worker, transport: MemoryTransport) -> None:
        self.worker = worker
        self.transport = transport
        self.exit_code: int | None = None

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> int | None:
        self.exit_code = self.worker.stop()
        return self.exit_code

    def reasons(self) -> list[str]:
        return self.worker.readiness()[1]


@pytest.fixture
def start(registry: AgentRegistry, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start a Worker on a MemoryTransport; it is stopped at teardown."""
    started: list[Running] = []

    def make(**overrides: Any) -> Running:
        cfg = unit_config(
            tmp_path / f"records-{len(started)}", worker_id=f"unit-{len(started)}", **overrides
        )
        transport = MemoryTransport()
        worker = Worker(cfg, registry, transport=transport)
        running = Running(worker, transport)
        running.start()
        assert transport.wait_for(lambda: transport.consuming), "worker did not start consuming"
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()
