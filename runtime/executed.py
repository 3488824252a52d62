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
    RouterDecision,
    encode_record,
    final_event,
    trace_of,
)
from runtime.response import AgentResponse, response_body, response_dict
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
    """The answer and record of a request that was routed (whether an agent ran or not)."""
    intent, strategy = request.intent, request.strategy
    router_decision: RouterDecision = {
        "agent": out.agent,
        "intent": intent,
        "strategy": strategy,
        "tryOrder": out.try_order,
        "reason": out.reason,
    }
    recorder.event("ROUTER_DECISION", dict(router_decision))
    latency_ms = recorder.elapsed_ms()
    response = response_dict(
        payload=out.payload,
        error=out.error,
        execution_id=request.execution_id,
        request_id=request.request_id,
        trace_id=request.trace_id,
        agent=out.agent,
        strategy=strategy,
        attempts=out.attempts,
        latency_ms=latency_ms,
        replayable=True,
    )
    recorder.event("FINAL_RESPONSE", final_event(response))
    if middleware:
        answer = AgentResponse.model_validate(response)
        run_after(middleware, request.envelope, answer, observer=observer)
    seconds = latency_ms / 1000.0
    error_code = None if out.error is None else out.error["code"]
    observer.routed(
        intent,
        strategy,
        status=response["status"],
        error_code=error_code,
        seconds=seconds,
    )
    body = response_body(response)
    header = request.header(kind="execution", worker_id=worker_id)
    trace = trace_of(
        trace_id=request.trace_id,
        agent=out.agent,
        intent=intent,
        response=response,
        latency_ms=latency_ms,
    )
    record = encode_record(
        header=header,
        envelope_json=request.envelope_json,
        policy=policy,
        events=recorder.events,
        decision=router_decision,
        response_body=body,
        trace=trace,
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
