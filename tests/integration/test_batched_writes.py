"""The worker's connection sends what one I/O-loop turn wrote in one socket write, over the real
broker: frames arrive whole and in order, big bodies intact, and a lone frame is not held back
waiting for company."""

from __future__ import annotations

import threading
import time
from typing import Any

import pika
import pytest

from tests.support.broker import AMQP_URL, connection, unique
from worker.amqp.batched import MAX_JOINED_BYTES, BatchedSelectConnection

pytestmark = pytest.mark.integration


def _publish_in_turns(queue: str, turns: list[list[bytes]]) -> tuple[int, int]:
    """Publish each turn's bodies within one loop callback (persistent, confirmed); returns
    (joined writes, frames written) once every publish is confirmed."""
    box: dict[str, Any] = {"confirmed": 0, "sent": 0, "frames0": 0}
    total = sum(len(t) for t in turns)
    pending = list(turns)

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: Any) -> None:
        box["ch"] = ch
        ch.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda _f: next_turn())

    def next_turn() -> None:
        if not pending:
            return
        box.setdefault("writes0", conn.writes)
        box.setdefault("frames0", conn.frames_sent)
        for i, body in enumerate(pending.pop(0)):
            box["ch"].basic_publish(
                "",
                queue,
                body,
                pika.BasicProperties(
                    delivery_mode=2, correlation_id=f"c-{box['sent']}", headers={"i": i}
                ),
                mandatory=True,
            )
            box["sent"] += 1
        conn.ioloop.call_later(0.05, next_turn)  # the next turn, not this one

    def on_confirm(frame: Any) -> None:
        assert isinstance(frame.method, pika.spec.Basic.Ack)
        tag = frame.method.delivery_tag
        box["confirmed"] = tag if frame.method.multiple else max(box["confirmed"], tag)
        if box["confirmed"] >= total and not pending:
            box["writes"] = conn.writes - box["writes0"]
            box["frames"] = conn.frames_sent - box["frames0"]
            conn.close()

    conn = BatchedSelectConnection(
        pika.URLParameters(AMQP_URL),
        on_open_callback=on_open,
        on_close_callback=lambda c, _r: c.ioloop.stop(),
    )
    timer = threading.Timer(30, lambda: conn.ioloop.add_callback_threadsafe(conn.ioloop.stop))
    timer.start()
    try:
        conn.ioloop.start()
    finally:
        timer.cancel()
        conn.ioloop.close()  # its wake-up socket pair
    assert box["confirmed"] == total, "not every publish was confirmed within 30 s"
    return box["writes"], box["frames"]


def _drain(queue: str, count: int) -> list[tuple[str, bytes]]:
    conn = connection()
    try:
        ch = conn.channel()
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + 10
        while len(got) < count and time.monotonic() < deadline:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.01)
                continue
            got.append((props.correlation_id, body))
        return got
    finally:
        conn.close()


@pytest.fixture
def queue(broker: None) -> Any:
    name = unique("batched")
    conn = connection()
    conn.channel().queue_declare(name, durable=True)
    conn.close()
    yield name
    conn = connection()
    conn.channel().queue_delete(name)
    conn.close()


def test_a_burst_leaves_in_one_write_and_arrives_whole_in_order(queue: str) -> None:
    bodies = [f"reply {i} ".encode() * 40 for i in range(200)]
    writes, frames = _publish_in_turns(queue, [bodies])
    # 600 frames of one burst (method, properties, body per message) in a handful of writes:
    # only the size cap splits them.
    assert frames >= 600
    expected_writes = 1 + sum(len(b) + 200 for b in bodies) // MAX_JOINED_BYTES
    assert writes <= expected_writes + 1, f"{writes} writes for one turn's {frames} frames"
    got = _drain(queue, len(bodies))
    assert got == [(f"c-{i}", body) for i, body in enumerate(bodies)]


def test_big_bodies_and_lone_frames_across_turns(queue: str) -> None:
    big = bytes(range(256)) * 12_000  # ~3 MiB: many body frames, each above half the cap
    turns = [[b"first"], [big], [b"after big", b"and one more"], [b"last, alone"]]
    writes, _frames = _publish_in_turns(queue, turns)
    assert writes >= len(turns), "each turn's frames must leave in that turn"
    got = _drain(queue, 5)
    assert [body for _cid, body in got] == [
        b"first",
        big,
        b"after big",
        b"and one more",
        b"last, alone",
    ]
