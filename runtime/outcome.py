"""What the runtime decided for one request: the reply, the record, and how to account for it."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal

from runtime.claims import Claim
from runtime.response import response_body

OutcomeKind = Literal[
    "executed",  # routed: agents ran (or the plan refused), and a record is to be written
    "rejected",  # not a valid request: answered with a structured error, dead-lettered
    "replayed",  # a duplicate answered from its record, byte for byte
    "conflict",  # the requestId is another caller's or another request's
    "denied",  # a duplicate whose recorded agent the policy no longer allows
    "in_doubt",  # an earlier delivery started and its outcome is unknown; never re-run
    "parked",  # a live owner is executing it: wait for its record
]
#: The kinds that answer a duplicate without running an agent.
DUPLICATE_KINDS: tuple[OutcomeKind, ...] = ("replayed", "conflict", "denied", "in_doubt")


@dataclass(slots=True, kw_only=True)
class Outcome:
    """One request's answer (`response`, encoded as `body`) and record, if it gets one."""

    kind: OutcomeKind
    execution_id: str
    request_id: str
    trace_id: str | None
    response: dict[str, Any]
    body: bytes
    record: bytes | None = None
    intent: str | None = None
    strategy: str | None = None
    reject_reason: str | None = None
    seconds: float = 0.0
    claim: Claim | None = None  # won by us: released once the record is durable
    agent_ran: bool = False  # an agent was called: its claim is never given up unrecorded

    @property
    def parked(self) -> bool:
        return self.kind == "parked"

    @property
    def status(self) -> str:
        return str(self.response["status"])

    @property
    def error_code(self) -> str | None:
        error = self.response.get("error")
        return None if error is None else str(error["code"])

    @property
    def agent(self) -> str | None:
        return self.response["metadata"].get("agent")


def replayed(*, execution_id: str, request_id: str, record: dict[str, Any]) -> Outcome:
    """The stored answer, to be sent again byte for byte."""
    stored = record["finalResponse"]
    envelope = record.get("envelope") or {}
    return Outcome(
        kind="replayed",
        execution_id=execution_id,
        request_id=request_id,
        trace_id=(stored.get("metadata") or {}).get("trace_id"),
        response=stored,
        body=response_body(stored),
        intent=(envelope.get("intent") or {}).get("name"),
        strategy=(envelope.get("routing") or {}).get("strategy"),
    )


def rejection_from_record(outcome: Outcome, stored: bytes | None) -> Outcome:
    """A refused message whose body's rejection is recorded already: that record's answer,
    byte for byte. The same body may have been refused for another reason meanwhile (another
    odd property), and nothing is answered that is not the durable record."""
    if stored is None:
        return outcome
    response = json.loads(stored).get("finalResponse")
    if not isinstance(response, dict):
        return outcome
    error = response.get("error") or {}
    return replace(
        outcome,
        trace_id=(response.get("metadata") or {}).get("trace_id") or outcome.trace_id,
        response=response,
        body=response_body(response),
        record=None,
        reject_reason=f"{error.get('code')}: {error.get('message')}",
    )
