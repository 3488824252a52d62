"""One driver interface over two transports, so one set of behaviour tests runs on both.

A driver sends a body with AMQP-like properties to a running worker and reads back what the
worker did: replies by destination, dead letters, records (files under `records_dir`), the
agents' executions, and metric samples. `MemoryDriver` runs the `Worker` in this process over
`worker.testing.MemoryTransport`; `BrokerDriver` runs the real worker process against the real
RabbitMQ. What only a broker can show (publisher confirms from the broker, reconnects, the
dead-letter topology, properties pika sets) stays in tests/integration.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from runtime.registry import AgentRegistry
from tests.behaviour.driver import Driver, Message, metric_in
from tests.behaviour.memory import MemoryDriver
from tests.behaviour.rabbitmq import BrokerDriver
from tests.integration.conftest import AGENTS_MODULE, AGENTS_SOURCE, Agents
from tests.support.broker import delete_topology, require_broker, unique
from tests.support.workerproc import WorkerProcess
from worker.config import Config
from worker.loader import load_agents

__all__ = ["TRANSPORT_PARAMS", "Driver", "Message", "metric_in", "open_driver"]

# Every behaviour case runs once per entry; the broker one is an integration test.
TRANSPORT_PARAMS = [
    pytest.param("memory", id="memory"),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.integration),
]


def _test_agents(folder: Path) -> Agents:
    """The integration suite's agents module, written into `folder`."""
    (folder / "agents").mkdir(parents=True)
    (folder / "agents" / f"{AGENTS_MODULE}.py").write_text(AGENTS_SOURCE, encoding="utf-8")
    return Agents(folder / "agents", folder / "calls.log")


def _import_agents(agents: Agents) -> AgentRegistry:
    """Import this test's copy of the agents module under a name of its own."""
    name = f"{AGENTS_MODULE}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, agents.folder / f"{AGENTS_MODULE}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    registry = module.registry
    assert isinstance(registry, AgentRegistry)
    return registry


@contextmanager
def open_driver(
    transport: str, folder: Path, *, test_agents: bool = True, **settings: Any
) -> Iterator[Driver]:
    """A worker on `transport` with `settings` (Config field names), and its driver.

    `test_agents` loads the integration suite's agents (they log their calls); otherwise the
    built-in demo agents run.
    """
    agents = _test_agents(folder) if test_agents else None
    records_dir = folder / "records"
    driver: Driver
    if transport == "rabbitmq":
        require_broker()
        queue = unique("bh")
        env = {f"INTENTUS_{k.upper()}": str(v) for k, v in settings.items() if k != "reply_queue"}
        worker = WorkerProcess(
            queue,
            records_dir,
            reply_queue=settings.get("reply_queue"),
            env={**(agents.env if agents else {}), **env},
            log_path=folder / "worker.log",
        )
        try:
            driver = BrokerDriver(worker.start().wait_ready(), agents)
            try:
                yield driver
            finally:
                driver.close()
        finally:
            worker.stop()
            delete_topology(queue, f"{queue}.replies")
        return
    assert transport == "memory", transport
    queue = unique("bh")
    cfg = Config(
        queue=queue,
        records_dir=str(records_dir),
        metrics_addr="127.0.0.1:0",
        reply_queue=settings.pop("reply_queue", f"{queue}.replies"),
        shutdown_grace_s=20.0,
        **settings,
    )
    saved = os.environ.get("IT_CALLS_FILE")
    if agents is not None:
        # The agents note their calls in the file this variable names, read at each call.
        os.environ["IT_CALLS_FILE"] = str(agents.calls_file)
    try:
        registry = _import_agents(agents) if agents is not None else load_agents("")
        driver = MemoryDriver(cfg, registry, agents)
        try:
            yield driver
        finally:
            driver.close()
    finally:
        if saved is None:
            os.environ.pop("IT_CALLS_FILE", None)
        else:
            os.environ["IT_CALLS_FILE"] = saved
