"""The driver over the in-memory transport: the `Worker` on a thread of the test's process."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from runtime.registry import AgentRegistry
from tests.behaviour.driver import Driver, Message, wait_until
from tests.integration.conftest import Agents
from tests.integration.wire import OWN
from tests.support.broker import unique
from worker.config import Config
from worker.loader import load_policy_file
from worker.service import Worker
from worker.testing import MemoryTransport, Published


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
        self.worker = InProcessWorker(cfg, registry, self.memory)

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
        return generate_latest(self.worker.worker.metrics.registry).decode()

    def alive(self) -> bool:
        return self.worker.alive()

    def stop(self) -> int | None:
        return self.worker.stop()

    def left_in_queue(self) -> int:
        return self.memory.queued + self.memory.unsettled

    def logs(self) -> str:
        return "\n".join(self._log.lines)

    def close(self) -> None:
        self.stop()
        logging.getLogger().removeHandler(self._log)


class InProcessWorker:
    """The worker's lifecycle in this process: the one place that knows how a `Worker` is
    built, started and stopped."""

    def __init__(self, cfg: Config, registry: AgentRegistry, memory: MemoryTransport) -> None:
        self.worker = Worker(cfg, registry, load_policy_file(cfg.policy_file), transport=memory)
        self.worker.start()
        assert wait_until(lambda: memory.consuming), "the worker did not start consuming"

    def alive(self) -> bool:
        return not self.worker.wait(timeout=0)

    def stop(self) -> int | None:
        return self.worker.stop()
