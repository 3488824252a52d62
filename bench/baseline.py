"""Two pika echo workers: the ceiling, and the peer with the worker's broker guarantees.

The ceiling (default): one asynchronous connection, a large prefetch, the request body
published back to `reply_to` with the same correlation id (no publisher confirms, no records),
acks batched with `multiple=True` once per burst of deliveries.

The equal-durability echo (`--durable`): the same loop doing the broker work the worker does:
persistent replies, publisher confirms, and each request acked only once its reply is
confirmed (the longest confirmed prefix, with `multiple=True`). What it lacks next to the
worker is everything above the broker: validation, routing, records.

Both print "ready" once consuming.

    python -m bench.baseline --queue Q [--durable]
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections import deque
from typing import Any

import pika

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
ACK_EVERY = 128


class Echo:
    def __init__(self, url: str, queue: str, prefetch: int) -> None:
        self.queue = queue
        self.prefetch = prefetch
        self.last_tag = 0
        self.unacked = 0
        self.flush_scheduled = False
        self.ch: Any = None
        self.conn = pika.SelectConnection(
            pika.URLParameters(url),
            on_open_callback=lambda c: c.channel(on_open_callback=self.on_channel),
            on_close_callback=lambda c, r: c.ioloop.stop(),
        )

    def on_channel(self, ch: Any) -> None:
        self.ch = ch
        ch.basic_qos(prefetch_count=self.prefetch, callback=self.on_qos)

    def on_qos(self, _frame: Any) -> None:
        self.ch.basic_consume(self.queue, self.on_message)
        print("ready", flush=True)

    def on_message(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        ch.basic_publish(
            "", props.reply_to, body, pika.BasicProperties(correlation_id=props.correlation_id)
        )
        self.last_tag = method.delivery_tag
        self.unacked += 1
        if self.unacked >= ACK_EVERY:
            self.flush()
        elif not self.flush_scheduled:
            # Runs after the deliveries already read from the socket are handled.
            self.flush_scheduled = True
            self.conn.ioloop.call_later(0, self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.unacked:
            self.ch.basic_ack(self.last_tag, multiple=True)
            self.unacked = 0

    def stop(self) -> None:
        if self.conn.is_open:
            self.conn.close()


class DurableEcho(Echo):
    """Persistent replies, confirms, and acks only behind confirmed replies."""

    def __init__(self, url: str, queue: str, prefetch: int) -> None:
        super().__init__(url, queue, prefetch)
        self.published = 0  # publish sequence number of the last reply (confirms count from 1)
        self.pending: deque[tuple[int, int]] = deque()  # (publish seq, delivery tag), in order
        self.confirmed_upto = 0  # every seq up to here is confirmed (multiple=True confirms)
        self.confirmed: set[int] = set()  # single confirms beyond that prefix

    def on_qos(self, frame: Any) -> None:
        self.ch.confirm_delivery(self.on_confirm, callback=lambda _f: Echo.on_qos(self, frame))

    def on_message(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        ch.basic_publish(
            "",
            props.reply_to,
            body,
            pika.BasicProperties(correlation_id=props.correlation_id, delivery_mode=2),
        )
        self.published += 1
        self.pending.append((self.published, method.delivery_tag))

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            sys.exit(f"reply {method.delivery_tag} was nacked by the broker")
        if method.multiple:
            self.confirmed_upto = max(self.confirmed_upto, method.delivery_tag)
        else:
            self.confirmed.add(method.delivery_tag)
        last_tag = 0
        while self.pending:
            seq, tag = self.pending[0]
            if seq in self.confirmed:
                self.confirmed.discard(seq)
            elif seq > self.confirmed_upto:
                break
            self.pending.popleft()
            last_tag = tag
        if last_tag:
            self.ch.basic_ack(last_tag, multiple=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--prefetch", type=int, default=1000)
    ap.add_argument("--url", default=URL)
    ap.add_argument("--durable", action="store_true", help="the equal-durability echo")
    a = ap.parse_args()
    echo = (DurableEcho if a.durable else Echo)(a.url, a.queue, a.prefetch)
    signal.signal(signal.SIGTERM, lambda *_: echo.conn.ioloop.add_callback_threadsafe(echo.stop))
    try:
        echo.conn.ioloop.start()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
