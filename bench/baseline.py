"""The ceiling: the fastest plain pika echo worker we could write.

One asynchronous connection, a large prefetch, the request body published back to `reply_to`
with the same correlation id (no publisher confirms, no records), acks batched with
`multiple=True` once per burst of deliveries. Prints "ready" once consuming.

    python -m bench.baseline --queue Q
"""

from __future__ import annotations

import argparse
import signal
import sys
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--prefetch", type=int, default=1000)
    ap.add_argument("--url", default=URL)
    a = ap.parse_args()
    echo = Echo(a.url, a.queue, a.prefetch)
    signal.signal(signal.SIGTERM, lambda *_: echo.conn.ioloop.add_callback_threadsafe(echo.stop))
    try:
        echo.conn.ioloop.start()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
