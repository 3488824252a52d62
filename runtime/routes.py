"""A route's models: the plan (try order, or the error that stops the request) and what
running it needs, and how an attempt ends in its log. Below the router and its strategy
helpers, which all use them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.aio import Ending
from runtime.envelope import IntentEnvelope
from runtime.invoker import AttemptResult
from runtime.observer import Observer
from runtime.recorder import ExecutionRecorder, RouteReason, attempt_end_json
from runtime.registry import AgentDefinition


@dataclass(slots=True)
class Plan:
    """The try order, or the error that ends the request before any agent runs."""

    try_order: list[str]
    reason: RouteReason
    error: dict[str, Any] | None = None
    agent: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Route:
    """What running a plan needs: the routed envelope, its agents by name, the plan, the
    request's event log, and how to make each agent's private envelope."""

    envelope: IntentEnvelope
    agents: dict[str, AgentDefinition]
    plan: Plan
    recorder: ExecutionRecorder
    fresh: Callable[[], IntentEnvelope]


def end_attempt(
    observer: Observer,
    rec: ExecutionRecorder,
    name: str,
    *,
    number: int,
    result: AttemptResult,
    ending: Ending,
) -> None:
    """Log the end of one attempt in the request's events, and tell the observer."""
    error_code = result.error_code
    rec.event_json(
        "AGENT_ATTEMPT_END",
        attempt_end_json(
            name,
            number,
            status=result.status,
            seconds=result.seconds,
            error_code=error_code,
            ending=ending,
        ),
    )
    observer.attempt_finished(
        name, status=result.status, error_code=error_code, seconds=result.seconds
    )
