"""The agent the end-to-end benchmark routes to: does nothing, so the worker's own cost shows."""

from __future__ import annotations

from typing import Any

from runtime.registry import AgentRegistry

registry = AgentRegistry()


@registry.agent("noop", intents=["BenchIntent"])
def noop(envelope: Any) -> dict[str, Any]:
    return {"ok": True}
