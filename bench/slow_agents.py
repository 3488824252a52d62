"""Slow agents for bench/slow.py: each waits a simulated backend call, async or blocking.

`BENCH_AGENT_LATENCY` is the wait: `1.0` (seconds), or `0.2-3.0`, a spread: each request's wait
drawn uniformly from the range by a hash of its requestId (the same request waits the same).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

from runtime.registry import AgentRegistry


def latency(request_id: str) -> float:
    spec = os.environ.get("BENCH_AGENT_LATENCY", "1.0")
    low, _, high = spec.partition("-")
    if not high:
        return float(low)
    fraction = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:4], "big") / 2**32
    return float(low) + fraction * (float(high) - float(low))


async_registry = AgentRegistry()
sync_registry = AgentRegistry()


@async_registry.agent("slow-async", intents=["BenchIntent"], timeout_s=60)
async def slow_async(envelope: Any) -> dict[str, Any]:
    await asyncio.sleep(latency(envelope.metadata.requestId))
    return {"ok": True}


@sync_registry.agent("slow-sync", intents=["BenchIntent"], timeout_s=60)
def slow_sync(envelope: Any) -> dict[str, Any]:
    time.sleep(latency(envelope.metadata.requestId))
    return {"ok": True}
