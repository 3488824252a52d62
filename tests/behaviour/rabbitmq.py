"""The driver over the real broker: the real worker process on a unique queue of RabbitMQ."""

from __future__ import annotations

from typing import Any

from tests.behaviour.driver import Driver, Message
from tests.integration.conftest import Agents
from tests.integration.wire import OWN, Wire
from tests.support.broker import queue_depth
from tests.support.workerproc import WorkerProcess


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
