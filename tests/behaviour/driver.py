"""What the behaviour tests see of a running worker, whichever transport carries its messages.

A driver sends a body with AMQP-like properties to a running worker and reads back what the
worker did: replies by destination, dead letters, records (files under `records_dir`), the
agents' executions, and metric samples. Two implementations: `memory.MemoryDriver` and
`rabbitmq.BrokerDriver`; `drivers.open_driver` starts either.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.conftest import Agents
from tests.integration.wire import OWN, body_of


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
