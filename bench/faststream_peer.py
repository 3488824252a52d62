"""The asyncio-native peer of bench/slow.py: a FastStream RabbitMQ subscriber whose handler
awaits the same simulated call and answers the request's `reply_to` with its correlation id.
No validation, no routing, no records. Needs `pip install 'faststream[rabbit]'` (not a
dependency of the project). Prints "ready" once consuming.

    python -m bench.faststream_peer --queue Q [--prefetch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

from bench.loadgen import URL
from bench.slow_agents import latency


async def main(queue: str, prefetch: int) -> None:
    broker = RabbitBroker(URL, logger=None)  # no log line per message
    channel = Channel(prefetch_count=prefetch)

    @broker.subscriber(
        RabbitQueue(queue, durable=True, arguments={"x-queue-type": "quorum"}), channel=channel
    )
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(latency(body["metadata"]["requestId"]))
        return body  # the request back, as the echo baseline does

    await broker.start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await broker.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--prefetch", type=int, default=1000)
    a = ap.parse_args()
    try:
        asyncio.run(main(a.queue, a.prefetch))
    except KeyboardInterrupt:
        pass
