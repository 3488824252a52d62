"""Shared helpers for the runtime unit tests: registries, envelopes, runtimes on a fixed clock."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import AgentRegistry, FixedClock, IntentusRuntime


def envelope(
    intent: str = "ProcessIntent",
    payload: dict[str, Any] | None = None,
    *,
    request_id: str | None = "req-1",
    strategy: str = "DIRECT",
    target: str | None = None,
    fallbacks: list[str] | None = None,
    version: str = "1.0",
    **extra: Any,
) -> dict[str, Any]:
    """A valid request as a dict (the wire shape)."""
    routing: dict[str, Any] = {"strategy": strategy}
    if target is not None:
        routing["targetAgent"] = target
    if fallbacks is not None:
        routing["fallbackAgents"] = fallbacks
    data: dict[str, Any] = {
        "version": "1.0",
        "intent": {"name": intent, "version": version},
        "payload": payload if payload is not None else {"document_id": "doc-123"},
        "routing": routing,
    }
    if request_id is not None:
        data["metadata"] = {"requestId": request_id}
    data.update(extra)
    return data


def body(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode("utf-8")


def event_types(record: dict[str, Any]) -> list[str]:
    return [e["type"] for e in record["events"]]


def stored(rt: IntentusRuntime, execution_id: str) -> dict[str, Any]:
    data = rt.store.get(execution_id)
    assert data is not None, f"no record {execution_id}"
    result: dict[str, Any] = json.loads(data)
    return result


class Calls:
    """Thread-safe log of which agents ran, in call order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.names: list[str] = []

    def add(self, name: str) -> None:
        with self._lock:
            self.names.append(name)


def ok(calls: Calls, name: str, result: dict[str, Any] | None = None) -> Callable[[Any], Any]:
    def handler(env: Any) -> dict[str, Any]:
        calls.add(name)
        return dict(result) if result is not None else {"by": name}

    return handler


def fail(calls: Calls, name: str, code: str = "AGENT_UNAVAILABLE") -> Callable[[Any], Any]:
    from runtime import AgentError

    def handler(env: Any) -> dict[str, Any]:
        calls.add(name)
        raise AgentError(code, f"{name} failed", {"agent": name})

    return handler


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event that blocked handlers wait on; set at teardown so no thread stays stuck."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def make_runtime(
    clock: FixedClock,
) -> Iterator[Callable[..., IntentusRuntime]]:
    made: list[IntentusRuntime] = []

    def make(
        registry: AgentRegistry, records_dir: Path | None = None, **kwargs: Any
    ) -> IntentusRuntime:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("worker_id", f"test-{len(made)}")
        rt = IntentusRuntime(registry, records_dir, **kwargs)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()
