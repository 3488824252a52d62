"""Error replies that stand in for an answer the worker cannot send as it is: a response too
large for the broker, or one whose record the store refused. Each keeps the answer's
destination, correlation id and metadata, so it names the execution it stands for."""

from __future__ import annotations

import logging
from typing import Any

from runtime.errors import ErrorCode
from runtime.response import error_dict, response_body, response_dict
from worker.pipeline import Decision
from worker.transport import Reply

log = logging.getLogger("intentus.worker")


def error_instead(
    reply: Reply,
    response: dict[str, Any],
    *,
    code: ErrorCode,
    message: str,
    details: dict[str, Any],
) -> Reply:
    """The same reply (destination, correlation id, headers) with an error in place of the
    response: its metadata kept, so the error names the execution it stands for."""
    meta = response.get("metadata") or {}
    body = response_body(
        response_dict(
            payload=None,
            error=error_dict(code, message, details),
            execution_id=str(meta.get("execution_id", "")),
            request_id=meta.get("request_id"),
            trace_id=meta.get("trace_id"),
            agent=meta.get("agent"),
            strategy=meta.get("strategy"),
            attempts=int(meta.get("attempts") or 0),
            latency_ms=float(meta.get("latency_ms") or 0.0),
            replayable=bool(meta.get("replayable")),
        )
    )
    return Reply(
        routing_key=reply.routing_key,
        body=body,
        correlation_id=reply.correlation_id,
        headers={**reply.headers, "x-intentus-status": "error"},
    )


def unstorable(decision: Decision, why: str) -> Decision:
    """The answer to a message whose record the store refuses (a value it cannot hold): an
    error reply and a dead letter. An agent that ran is never run again for its requestId (its
    claim stays, so a duplicate is answered EXECUTION_IN_DOUBT), and this reply says the same;
    without an agent, the answer already is an error and goes as it is."""
    outcome = decision.outcome
    log.error(
        "record %s not stored: %s; answering and dead-lettering that message",
        outcome.execution_id,
        why,
        extra={"request_id": outcome.request_id, "trace_id": outcome.trace_id},
    )
    reply = decision.reply
    if reply is not None and outcome.agent_ran:
        reply = error_instead(
            reply,
            outcome.response,
            code=ErrorCode.EXECUTION_IN_DOUBT,
            message=(
                f"the record of this execution could not be stored ({why}); its agent may have"
                " run, and is not run again for this requestId"
            ),
            details={"execution_id": outcome.execution_id},
        )
    return Decision(outcome, reply, f"record not stored: {why}")


def too_large(decision: Decision, limit: int) -> Decision:
    """The decision with its reply over `limit` bytes (a response recorded whole already)
    replaced by RESPONSE_TOO_LARGE, naming its executionId."""
    reply = decision.reply
    assert reply is not None
    outcome = decision.outcome
    log.warning(
        "the response of %s is %d bytes, over the reply limit of %d: answering %s",
        outcome.execution_id,
        len(reply.body),
        limit,
        ErrorCode.RESPONSE_TOO_LARGE.value,
        extra={"request_id": outcome.request_id, "trace_id": outcome.trace_id},
    )
    replaced = error_instead(
        reply,
        outcome.response,
        code=ErrorCode.RESPONSE_TOO_LARGE,
        message=(
            f"the response is {len(reply.body)} bytes, more than the broker accepts as a"
            f" message ({limit} bytes); it is recorded in full in {outcome.execution_id}"
        ),
        details={
            "execution_id": outcome.execution_id,
            "response_bytes": len(reply.body),
            "limit_bytes": limit,
        },
    )
    return Decision(outcome, replaced, decision.dead_letter_reason)
