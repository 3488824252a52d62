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
import json
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from runtime.registry import AgentRegistry
from tests.integration.conftest import AGENTS_MODULE, AGENTS_SOURCE, Agents
from tests.integration.wire import OWN, Wire, body_of
from tests.support.broker import delete_topology, queue_depth, require_broker, unique
from tests.support.workerproc import WorkerProcess
from worker.config import Config
from worker.loader import load_agents, load_policy_file
from worker.service import Worker
from worker.testing import MemoryTransport, Published

# Every behaviour case runs once per entry; the broker one is an integration test.
TRANSPORT_PARAMS = [
    pytest.param("memory", id="memory"),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.integration),
]


@dataclass
class Message:
    """A reply or dead letter as the test sees it, whichever transport carried it."""

    body: bytes
    correlation_id: str | None
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    content_type: str | None = None
    reason: str | None = None  # a dead letter's reject reason

    @property
    def json(self) -> dict[str, Any]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


def metric_in(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        series, _, rest = key.partition("{")
        if series != name:
            continue
        got = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
        if all(got.get(k) == json.dumps(v) for k, v in labels.items()):
            total += float(value)
    return total


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


class Driver:
    """What the behaviour tests use; subclasses bind it to one transport."""

    transport: str
    records_dir: Path
    reply_queue: str  # the worker's default reply queue ("" when disabled)

    # -- to implement --------------------------------------------------------------------
    def send(
        self,
        body: bytes,
        *,
        reply_to: Any = OWN,
        correlation_id: str | None = None,
        message_id: str | None = None,
        content_type: str | None = "application/json",
        user_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Put `body` on the worker's queue; `reply_to` defaults to the driver's own queue."""
        raise NotImplementedError

    def get(self, queue: str, timeout: float = 15.0) -> Message:
        """The next message published to `queue`, waiting up to `timeout` seconds."""
        raise NotImplementedError

    def new_reply_queue(self) -> str:
        raise NotImplementedError

    def dead_letter(self, timeout: float = 15.0) -> Message:
        raise NotImplementedError

    def unread_dead_letters(self) -> int:
        """Dead letters not taken with `dead_letter()` yet."""
        raise NotImplementedError

    def metrics_text(self) -> str:
        raise NotImplementedError

    def alive(self) -> bool:
        """The worker still runs and answers its liveness check."""
        raise NotImplementedError

    def stop(self) -> int | None:
        """Stop the worker gracefully; its exit code."""
        raise NotImplementedError

    def left_in_queue(self) -> int:
        """Messages back in (or never taken from) the request queue, after `stop()`."""
        raise NotImplementedError

    def logs(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------
    own_queue: str
    agents: Agents | None = None

    def reply(self, timeout: float = 15.0) -> Message:
        return self.get(self.own_queue, timeout)

    def replies(self, count: int, timeout: float = 15.0) -> dict[str, Message]:
        """`count` replies from the own queue, by correlation id."""
        out: dict[str, Message] = {}
        deadline = time.monotonic() + timeout
        while len(out) < count:
            r = self.reply(max(0.1, deadline - time.monotonic()))
            out[str(r.correlation_id)] = r
        return out

    def nothing_on(self, queue: str, wait: float = 1.0) -> bool:
        try:
            self.get(queue, wait)
        except TimeoutError:
            return True
        return False

    def request(self, env: dict[str, Any], timeout: float = 15.0, **kw: Any) -> Message:
        cid = kw.pop("correlation_id", None) or f"cid-{env['metadata']['requestId']}"
        self.send(body_of(env), correlation_id=cid, **kw)
        reply = self.reply(timeout)
        assert reply.correlation_id == cid
        return reply

    def calls(self) -> list[str]:
        """The agents' executions, in order, as "<agent> <requestId>"."""
        assert self.agents is not None, "this driver runs the built-in demo agents"
        return self.agents.calls()

    def metric(self, name: str, **labels: str) -> float:
        return metric_in(self.metrics_text(), name, **labels)

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 15.0) -> bool:
        return wait_until(predicate, timeout)


class BrokerDriver(Driver):
    """The real worker process on a unique queue of the real RabbitMQ."""

    transport = "rabbitmq"

    def __init__(self, worker: WorkerProcess, agents: Agents | None) -> None:
        self.worker = worker
        self.agents = agents
        self.records_dir = worker.records_dir
        self.reply_queue = worker.reply_queue
        self.wire = Wire()
        self.own_queue = self.wire.reply_queue

    def send(
        self,
        body: bytes,
        *,
        reply_to: Any = OWN,
        correlation_id: str | None = None,
        message_id: str | None = None,
        content_type: str | None = "application/json",
        user_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        self.wire.publish(
            self.worker.queue,
            body,
            reply_to=reply_to,
            correlation_id=correlation_id,
            message_id=message_id,
            content_type=content_type,
            user_id=user_id,
            headers=headers,
        )

    def get(self, queue: str, timeout: float = 15.0) -> Message:
        got = self.wire.get(queue, timeout)
        return Message(
            body=got.body,
            correlation_id=got.props.correlation_id,
            headers=got.headers,
            message_id=got.props.message_id,
            content_type=got.props.content_type,
            reason=got.headers.get("x-intentus-reject-reason"),
        )

    def new_reply_queue(self) -> str:
        return str(self.wire.ch.queue_declare("", exclusive=True).method.queue)

    def dead_letter(self, timeout: float = 15.0) -> Message:
        return self.get(f"{self.worker.queue}.dlq", timeout)

    def unread_dead_letters(self) -> int:
        return queue_depth(f"{self.worker.queue}.dlq")

    def metrics_text(self) -> str:
        return self.worker.http("/metrics")[1].decode()

    def alive(self) -> bool:
        proc = self.worker.proc
        return proc is not None and proc.poll() is None and self.worker.http("/healthz")[0] == 200

    def stop(self) -> int | None:
        return self.worker.stop()

    def left_in_queue(self) -> int:
        return queue_depth(self.worker.queue)

    def logs(self) -> str:
        return self.worker.logs()

    def close(self) -> None:
        self.wire.close()
        self.worker.stop()


class _LogText(logging.Handler):
    """Everything logged while a memory worker runs, formatted as a process log would be."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            self.lines.extend(traceback.format_exception(*record.exc_info))


class MemoryDriver(Driver):
    """The `Worker` on a thread of this process, over a `MemoryTransport`."""

    transport = "memory"

    def __init__(self, cfg: Config, registry: AgentRegistry, agents: Agents | None) -> None:
        self.agents = agents
        self.records_dir = Path(cfg.records_dir)
        self.reply_queue = cfg.reply_queue
        self.own_queue = "own.replies"
        self.memory = MemoryTransport(queue_name=cfg.queue)
        self._read: set[int] = set()  # ids of the events already taken with get()
        self._log = _LogText()
        logging.getLogger().addHandler(self._log)
        self.worker, self.exit_code, self._thread = _start_memory_worker(cfg, registry, self.memory)

    def send(
        self,
        body: bytes,
        *,
        reply_to: Any = OWN,
        correlation_id: str | None = None,
        message_id: str | None = None,
        content_type: str | None = "application/json",
        user_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        self.memory.publish(
            body,
            reply_to=self.own_queue if reply_to is OWN else reply_to,
            correlation_id=correlation_id,
            message_id=message_id,
            content_type=content_type,
            user_id=user_id,
            headers=dict(headers or {}),
        )

    def _take(self, kind: str, routing_key: str, timeout: float) -> Published:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(list(self.memory.events)):
                if event[0] == kind and event[1].routing_key == routing_key and i not in self._read:
                    self._read.add(i)
                    published: Published = event[1]
                    return published
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {kind} to {routing_key} within {timeout} s")
            time.sleep(0.01)

    def get(self, queue: str, timeout: float = 15.0) -> Message:
        got = self._take("reply", queue, timeout)
        return Message(body=got.body, correlation_id=got.correlation_id, headers=got.headers)

    def new_reply_queue(self) -> str:
        return unique("own.replies")

    def dead_letter(self, timeout: float = 15.0) -> Message:
        got = self._take("dead_letter", f"{self.memory.queue_name}.dlq", timeout)
        return Message(
            body=got.body,
            correlation_id=got.correlation_id,
            headers=got.headers,
            message_id=got.message_id,
            content_type=got.content_type,
            reason=got.reason,
        )

    def unread_dead_letters(self) -> int:
        events = list(self.memory.events)
        return sum(1 for i, e in enumerate(events) if e[0] == "dead_letter" and i not in self._read)

    def metrics_text(self) -> str:
        return generate_latest(self.worker.metrics.registry).decode()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> int | None:
        if self._thread.is_alive():
            self.worker.request_stop()
            self._thread.join(30)
        return self.exit_code[0] if self.exit_code else None

    def left_in_queue(self) -> int:
        return self.memory.queued + self.memory.unsettled

    def logs(self) -> str:
        return "\n".join(self._log.lines)

    def close(self) -> None:
        self.stop()
        logging.getLogger().removeHandler(self._log)


def _start_memory_worker(
    cfg: Config, registry: AgentRegistry, memory: MemoryTransport
) -> tuple[Worker, list[int], threading.Thread]:
    """Build and run the in-process worker: the one place that knows how a Worker is made."""
    worker = Worker(
        cfg,
        registry,
        load_policy_file(cfg.policy_file),
        handle_signals=False,
        transport=memory,
    )
    exit_code: list[int] = []
    thread = threading.Thread(
        target=lambda: exit_code.append(worker.run()), name="memory-worker", daemon=True
    )
    thread.start()
    assert wait_until(lambda: memory.consuming), "the worker did not start consuming"
    return worker, exit_code, thread


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
