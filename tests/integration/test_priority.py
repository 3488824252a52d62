"""Request priorities: INTENTUS_QUEUE_MAX_PRIORITY with the real worker and broker."""

from __future__ import annotations

import json
from collections.abc import Callable

import pika.exceptions
import pytest

from tests.integration.conftest import Agents
from tests.integration.wire import wait_for
from tests.support.broker import AMQP_URL, connection, get_all, queue_depth
from tests.support.workerproc import WorkerProcess
from worker.clients.blocking import IntentusClient

pytestmark = pytest.mark.integration

BACKLOG = 30
URGENT = 5


class TestClassicQueue:
    def test_high_requests_overtake_a_low_backlog(
        self, start_worker: Callable[..., WorkerProcess], agents: Agents
    ) -> None:
        """With one routing thread, HIGH requests published after a LOW backlog are answered first."""
        worker = start_worker(
            env={
                **agents.env,
                "INTENTUS_QUEUE_TYPE": "classic",
                "INTENTUS_QUEUE_MAX_PRIORITY": "9",
                "INTENTUS_CONCURRENCY": "1",
                "INTENTUS_PREFETCH": "1",
            }
        )
        with IntentusClient(AMQP_URL, queue=worker.queue) as client:
            for i in range(BACKLOG):
                client.send_intent(
                    "SleepIntent",
                    {"seconds": 0.05},
                    priority="LOW",
                    request_id=f"req-low-{i}",
                    wait=False,
                )
            for i in range(URGENT):
                client.send_intent(
                    "SleepIntent",
                    {"seconds": 0.05},
                    priority="HIGH",
                    request_id=f"req-high-{i}",
                    wait=False,
                )
        # Without a reply queue of their own, replies land on the default one, in answer order.
        total = BACKLOG + URGENT
        assert wait_for(lambda: queue_depth(worker.reply_queue) == total, 60)
        order = [
            json.loads(body)["metadata"]["request_id"]
            for _m, _p, body in get_all(worker.reply_queue)
        ]
        assert len(order) == total
        high = [i for i, rid in enumerate(order) if rid.startswith("req-high-")]
        assert len(high) == URGENT
        # Those already taken by the worker when HIGH arrived finish first; then HIGH overtakes.
        assert max(high) < BACKLOG // 3, order
        low = [rid for rid in order if rid.startswith("req-low-")]
        assert low == [f"req-low-{i}" for i in range(BACKLOG)]  # FIFO within a priority

    def test_existing_queue_without_priorities_is_a_conflict(
        self, start_worker: Callable[..., WorkerProcess], queue_name: str
    ) -> None:
        """Turning priorities on for an existing classic queue stops the start with exit 3."""
        first = start_worker(env={"INTENTUS_QUEUE_TYPE": "classic"})
        first.stop()
        second = start_worker(
            env={"INTENTUS_QUEUE_TYPE": "classic", "INTENTUS_QUEUE_MAX_PRIORITY": "9"}, wait=False
        )
        assert second.wait(30) == 3
        assert "x-max-priority" in second.logs()


class TestQuorumQueue:
    def test_warns_and_declares_no_priority(
        self, start_worker: Callable[..., WorkerProcess], queue_name: str
    ) -> None:
        """A quorum queue takes no x-max-priority: the worker says so and starts without it."""
        worker = start_worker(env={"INTENTUS_QUEUE_MAX_PRIORITY": "9"})
        assert "INTENTUS_QUEUE_MAX_PRIORITY=9 ignored: quorum queues" in worker.logs()
        conn = connection()
        try:
            # Re-declaring with the priority-less arguments succeeds only if they are the queue's.
            conn.channel().queue_declare(
                queue_name,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-dead-letter-exchange": f"{queue_name}.dlx",
                    "x-delivery-limit": 20,
                },
            )
        except pika.exceptions.ChannelClosedByBroker as exc:  # pragma: no cover - the failure
            pytest.fail(f"queue declared with other arguments: {exc}")
        finally:
            conn.close()
