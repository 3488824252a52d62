"""The answer and the record of a request that was routed, built once routing ended.

Split from runtime/engine.py: everything here runs after the route, whether an agent ran or
not, and is what the claim's record will hold (an error here, once an agent may have run,
makes the engine answer EXECUTION_IN_DOUBT instead).
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime.intake import Request
from runtime.middleware import Middleware, run_after
from runtime.observer import Observer
from runtime.outcome import Outcome
from runtime.recorder import (
    ExecutionRecorder,
    RecordPolicy,
    decision_json,
    encode_record,
    final_event_json,
    policy_json,
    trace_json,
)
from runtime.response import AgentResponse, metadata_json, response_dict, response_json
from runtime.router import RouteOutcome


def executed(
    request: Request,
    recorder: ExecutionRecorder,
    out: RouteOutcome,
    *,
    policy: RecordPolicy,
    agent_ran: bool,
    worker_id: str,
    middleware: Sequence[Middleware],
    observer: Observer,
) -> Outcome:
    """The answer and record of a request that was routed (whether an agent ran or not).

    The record's parts and the reply are written as JSON text straight from their values,
    each once: the decision serves its event and the record, the reply's bytes are embedded
    in the record as they are sent."""
    intent, strategy, agent, error = request.intent, request.strategy, out.agent, out.error
    decision = decision_json(
        agent=agent, intent=intent, strategy=strategy, try_order=out.try_order, reason=out.reason
    )
    recorder.event_json("ROUTER_DECISION", decision)
    latency_ms = recorder.elapsed_ms()
    response = response_dict(
        payload=out.payload,
        error=error,
        execution_id=request.execution_id,
        request_id=request.request_id,
        trace_id=request.trace_id,
        agent=agent,
        strategy=strategy,
        attempts=out.attempts,
        latency_ms=latency_ms,
        replayable=True,
    )
    status = response["status"]
    error_code = None if error is None else error["code"]
    recorder.event_json("FINAL_RESPONSE", final_event_json(status, error_code))
    if middleware:
        answer = AgentResponse.model_validate(response)
        run_after(middleware, request.envelope, answer, observer=observer)
    seconds = latency_ms / 1000.0
    observer.routed(intent, strategy, status=status, error_code=error_code, seconds=seconds)
    metadata = metadata_json(
        execution_id=request.execution_id,
        request_id=request.request_id,
        trace_id=request.trace_id,
        agent=agent,
        strategy=strategy,
        attempts=out.attempts,
        latency_ms=response["metadata"]["latency_ms"],
        replayable=True,
    )
    body = response_json(payload=response["payload"], error=error, metadata=metadata)
    record = encode_record(
        header=request.header_json(kind="execution", worker_id=worker_id),
        envelope_json=request.envelope_json,
        policy=policy_json(policy),
        events=recorder.events_json(),
        decision=decision,
        response_body=body,
        trace=trace_json(
            trace_id=request.trace_id,
            agent=agent,
            intent=intent,
            status=status,
            latency_ms=latency_ms,
            error=error,
        ),
    )
    return Outcome(
        kind="executed",
        execution_id=request.execution_id,
        request_id=request.request_id,
        trace_id=request.trace_id,
        response=response,
        body=body,
        record=record,
        intent=intent,
        strategy=strategy,
        seconds=seconds,
        agent_ran=agent_ran,
    )
