"""Async agents for the fault suite, with the same side-effect file as sideeffect_agents.

A module of their own: a worker whose agents include an async one defaults to a larger
prefetch, which the scenarios of sync agents must not get.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from runtime import AgentError, AgentRegistry, ErrorCode
from tests.faults.sideeffect_agents import _mark

registry = AgentRegistry()


_waiting = 0
_most_waiting = 0


@registry.agent("await", intents=["AwaitIntent"], timeout_s=120)
async def await_(envelope: Any) -> dict[str, Any]:
    """Awaits `sleep_s`; answers with the most awaits seen at once in this process."""
    global _waiting, _most_waiting
    _mark(envelope, "await")
    _waiting += 1  # only ever touched on the event loop's thread
    _most_waiting = max(_most_waiting, _waiting)
    try:
        await asyncio.sleep(float(envelope.payload.get("sleep_s", 1.0)))
    except asyncio.CancelledError:
        _mark(envelope, "await-cancelled")  # the cleanup an agent does when cancelled
        raise
    finally:
        _waiting -= 1
    return {"ok": True, "most_waiting": _most_waiting}


@registry.agent("ahang", intents=["AsyncHangIntent"], timeout_s=1.0, node_priority=10)
async def ahang(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "ahang")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        _mark(envelope, "ahang-cancelled")
        raise
    return {"late": True}


@registry.agent("asave", intents=["AsyncHangIntent"], node_priority=20)
def asave(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "asave")
    return {"ok": True, "by": "asave"}


@registry.agent("amix-a", intents=["AsyncMixIntent"], node_priority=10)
async def amix_a(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "amix-a")
    await asyncio.sleep(0.01)
    raise AgentError(ErrorCode.AGENT_UNAVAILABLE, "amix-a is always down")


@registry.agent("amix-b", intents=["AsyncMixIntent"], node_priority=20)
def amix_b(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "amix-b")
    return {"ok": True, "by": "amix-b"}


@registry.agent("amix-c", intents=["AsyncMixIntent"], node_priority=30)
async def amix_c(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "amix-c")
    await asyncio.sleep(0.01)
    return {"ok": True, "by": "amix-c"}


@registry.agent("ablock", intents=["AsyncBlockIntent"])
async def ablock(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "ablock")
    time.sleep(float(envelope.payload.get("block_s", 1.5)))  # the mistake: blocks the loop
    return {"ok": True}


@registry.agent("pfast", intents=["RaceAsyncIntent"], node_priority=10)
async def pfast(envelope: Any) -> dict[str, Any]:
    """Awaits 1 s, counting (with `await`) how many wait at once."""
    global _waiting, _most_waiting
    _waiting += 1
    _most_waiting = max(_most_waiting, _waiting)
    try:
        await asyncio.sleep(1.0)
    finally:
        _waiting -= 1
    return {"by": "pfast", "most_waiting": _most_waiting}


@registry.agent("pslow", intents=["RaceAsyncIntent"], node_priority=20)
async def pslow(envelope: Any) -> dict[str, Any]:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        _mark(envelope, "pslow-cancelled")
        raise
    return {"by": "pslow"}
