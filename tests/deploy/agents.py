"""The agents of the live deploy check: the built-in demo agents, plus two async agents that
give the async metrics (and the dashboard panels and alerts reading them) something to show:
one that misses its deadline and is cancelled, one that blocks the event loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from runtime import demo
from runtime.registry import AgentRegistry

registry = AgentRegistry()

for _agent in demo.registry:
    registry.register(
        _agent.name,
        _agent.handler,
        intents=[str(c) for c in _agent.capabilities],
        node_id=_agent.node_id,
        node_priority=_agent.node_priority,
        timeout_s=_agent.timeout_s,
    )


@registry.agent("late-async", intents=["LateIntent"], timeout_s=0.3)
async def late_async(envelope: Any) -> dict[str, Any]:
    """Never answers in time: cancelled at its 0.3 s deadline (AGENT_TIMEOUT)."""
    await asyncio.sleep(3600)
    return {"late": True}


@registry.agent("blocking-async", intents=["BlockingIntent"], timeout_s=10)
async def blocking_async(envelope: Any) -> dict[str, Any]:
    """Calls blocking code in `async def` (the mistake the stall alert is for)."""
    time.sleep(float(envelope.payload.get("block_s", 1.0)))
    return {"blocked_s": envelope.payload.get("block_s", 1.0)}
