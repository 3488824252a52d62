"""The pika consumer connection in-process over the real broker: ack bookkeeping and a failing
I/O loop."""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest

from tests.integration.wire import wait_for
from tests.support.broker import AMQP_URL, connection, delete_topology, queue_depth, unique
from worker.amqp import ConsumerConnection, declare_topology
from worker.config import Config
from worker.transport import Delivery, Listeners, Reply

pytestmark = pytest.mark.integration


@pytest.fixture
def cfg(broker: None) -> Iterator[Config]:
    name = unique("consumer")
    cfg = Config(
        amqp_url=AMQP_URL,
        queue=name,
        queue_type="classic",
        reply_queue=f"{name}.replies",
        prefetch=64,
        worker_id="consumer-test",
    )
    declare_topology(cfg)
    yield cfg
    delete_topology(name, cfg.reply_queue)


def publish(queue: str, count: int) -> None:
    conn = connection()
    try:
        ch = conn.channel()
        for i in range(count):
            ch.basic_publish("", queue, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()


def test_ack_bookkeeping_bounded_behind_one_long_delivery(cfg: Config) -> None:
    """3000 deliveries acked behind one held open: the tags kept stay within the prefetch."""
    held: list[Delivery] = []
    acked = [0]
    peak = [0]
    conn: ConsumerConnection

    def on_delivery(d: Delivery) -> None:
        if not held:
            held.append(d)
            return
        assert conn.ack(d.generation, d.tag)
        acked[0] += 1
        peak[0] = max(peak[0], conn.tracked)

    conn = ConsumerConnection(cfg, Listeners(on_delivery=on_delivery))
    conn.start()
    try:
        publish(cfg.queue, 3001)
        assert wait_for(lambda: acked[0] == 3000, timeout=60), acked[0]
        assert wait_for(lambda: conn.tracked == 1, timeout=5), conn.tracked
        assert peak[0] <= cfg.prefetch + 1
        first = held[0]
        assert conn.call(lambda: conn.ack(first.generation, first.tag))
        assert wait_for(lambda: conn.tracked == 0, timeout=5)
    finally:
        conn.stop()
    assert queue_depth(cfg.queue) == 0  # every ack reached the broker; nothing came back


def test_failing_io_loop_still_does_the_lost_connection_bookkeeping(cfg: Config) -> None:
    """An exception out of the I/O loop: new generation, pending confirms failed, redelivery."""
    deliveries: list[Delivery] = []
    outcomes: list[str] = []
    conn: ConsumerConnection

    def on_delivery(d: Delivery) -> None:
        deliveries.append(d)
        if len(deliveries) == 1:
            reply = Reply(
                routing_key=cfg.reply_queue,
                body=b"{}",
                correlation_id="c-1",
                headers={"x-intentus-execution-id": "exec-x"},
            )
            conn.publish_reply(reply, outcomes.append)
            # pika contains exceptions of socket callbacks, but one raised by a timer escapes
            # ioloop.start() (as a failing deferred ack flush would).
            assert conn._conn is not None
            conn._conn.ioloop.call_later(0, boom)
            return
        conn.ack(d.generation, d.tag)

    def boom() -> None:
        raise RuntimeError("a bug in a timer callback")

    conn = ConsumerConnection(cfg, Listeners(on_delivery=on_delivery))
    conn.start()
    try:
        publish(cfg.queue, 1)
        assert wait_for(lambda: len(deliveries) == 2, timeout=20), deliveries
        first, second = deliveries
        assert second.generation > first.generation
        assert second.redelivered
        assert outcomes == ["failed"]
        assert not conn.ack(first.generation, first.tag)  # stale: never acked on the new channel
    finally:
        conn.stop()
    assert queue_depth(cfg.queue) == 0
