"""What one intent request is made of: the IntentEnvelope JSON, the AMQP priority of its
`context.priority`, its W3C `traceparent`, and the request a client hands to its link. Pure;
shared by both clients, their links in worker/amqp/ and the CLI."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: AMQP `priority` published for each `context.priority`. A classic queue declared with
#: x-max-priority 9 keeps all four apart; RabbitMQ 4 quorum queues serve 5 and above first.
PRIORITIES: dict[str, int] = {"LOW": 0, "NORMAL": 4, "HIGH": 7, "CRITICAL": 9}

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def amqp_priority(priority: str | None) -> int:
    """The AMQP priority of a `context.priority` (None is the envelope default, NORMAL)."""
    name = (priority or "NORMAL").upper()
    if name not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    return PRIORITIES[name]


def new_traceparent() -> str:
    """A fresh W3C traceparent (version 00, sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def check_traceparent(traceparent: str) -> str:
    """A caller's traceparent, normalised to lower case; ValueError if malformed."""
    value = traceparent.strip().lower()
    if not _TRACEPARENT.match(value) or value.split("-")[1] == "0" * 32:
        raise ValueError(f"not a W3C traceparent: {traceparent!r}")
    return value


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def build_envelope(
    intent_name: str,
    payload: Mapping[str, Any] | None = None,
    *,
    version: str = "1.0",
    strategy: str | None = None,
    target_agent: str | None = None,
    fallback_agents: Sequence[str] | None = None,
    priority: str | None = None,
    tags: Sequence[str] | None = None,
    source: str = "client",
    request_id: str | None = None,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """The IntentEnvelope JSON of one request."""
    routing: dict[str, Any] = {"strategy": (strategy or "DIRECT").upper()}
    if target_agent:
        routing["targetAgent"] = target_agent
    if fallback_agents:
        routing["fallbackAgents"] = list(fallback_agents)
    context: dict[str, Any] = {"sourceAgent": source}
    if priority:
        context["priority"] = priority.upper()
    if tags:
        context["tags"] = list(tags)
    metadata: dict[str, Any] = {
        "requestId": request_id or new_request_id(),
        "source": source,
    }
    if trace_id:
        metadata["traceId"] = trace_id
    return {
        "version": "1.0",
        "intent": {"name": intent_name, "version": version},
        "payload": dict(payload or {}),
        "context": context,
        "metadata": metadata,
        "routing": routing,
    }


@dataclass(frozen=True)
class ClientRequest:
    """One request as a client hands it to its link."""

    queue: str
    body: bytes
    correlation_id: str
    message_id: str | None  # the requestId when it fits the property, else none
    reply: bool
    headers: dict[str, Any]
    priority: int | None
    request_id: str = ""
    correlation_chosen: bool = True  # by the caller: never replaced (see ClientBase._register)
