"""Built-in demo agents, loaded when the worker is given no agents.

- `echo` (ProcessIntent@*): returns the payload it was given.
- `uppercase` (TransformIntent): upper-cases every string value of the payload.
- `flaky-primary` / `stable-backup` (SummarizeIntent): the primary fails with AGENT_UNAVAILABLE
  whenever `payload.text` is longer than 20 characters (deterministically, so FALLBACK is easy
  to show); the backup always answers.
- `slow` (SlowIntent): sleeps `payload.seconds` (default 1) before answering.
"""

from __future__ import annotations

import time
from typing import Any

from runtime.errors import AgentError, ErrorCode
from runtime.registry import AgentRegistry

registry = AgentRegistry()


@registry.agent("echo", intents=["ProcessIntent@*"])
def echo(envelope: Any) -> dict[str, Any]:
    return {"echo": envelope.payload, "intent": envelope.intent.name}


def _upper(value: Any) -> Any:
    if isinstance(value, str):
        return value.upper()
    if isinstance(value, dict):
        return {k: _upper(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_upper(v) for v in value]
    return value


@registry.agent("uppercase", intents=["TransformIntent"])
def uppercase(envelope: Any) -> dict[str, Any]:
    return {"result": _upper(envelope.payload)}


@registry.agent("flaky-primary", intents=["SummarizeIntent"], node_priority=10)
def flaky_primary(envelope: Any) -> dict[str, Any]:
    text = str(envelope.payload.get("text", ""))
    if len(text) > 20:
        raise AgentError(
            ErrorCode.AGENT_UNAVAILABLE,
            "primary summariser only handles short texts",
            {"length": len(text)},
        )
    return {"summary": text, "by": "flaky-primary"}


@registry.agent("stable-backup", intents=["SummarizeIntent"], node_priority=50)
def stable_backup(envelope: Any) -> dict[str, Any]:
    text = str(envelope.payload.get("text", ""))
    return {"summary": text[:20] + ("…" if len(text) > 20 else ""), "by": "stable-backup"}


@registry.agent("slow", intents=["SlowIntent"])
def slow(envelope: Any) -> dict[str, Any]:
    seconds = float(envelope.payload.get("seconds", 1.0))
    time.sleep(max(0.0, min(seconds, 3600.0)))
    return {"slept_s": seconds}
