"""The four strategies over an ordered, policy-filtered candidate list.

`plan` decides the try order (or the error that stops the request before any agent);
`execute` runs it. Both are deterministic given the registry, the policy and the envelope;
only PARALLEL's winner depends on timing.
"""

from __future__ import annotations

import contextvars
import logging
import time
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from runtime.aio import AsyncAgents, AsyncAttempt, Ending
from runtime.envelope import IntentEnvelope, RoutingStrategy
from runtime.errors import ErrorCode
from runtime.invoker import Abandoned, AgentInvoker, AttemptResult
from runtime.observer import Observer
from runtime.parallel import race_async, run_parallel
from runtime.policy import PolicyDecision
from runtime.recorder import RouteReason, attempt_start_json
from runtime.registry import AgentDefinition
from runtime.response import error_dict
from runtime.routes import Plan, Route, end_attempt

log = logging.getLogger("intentus.runtime.router")

_HANDOFF_WAIT_S = 60.0


class _Handoff:
    """Who carries an abandoned inline attempt's request on: the carry-on thread (None), or,
    if it could not be started, the handler's own thread with the timeout result. One per
    inline attempt, so a bare lock (held until decided) rather than an Event."""

    __slots__ = ("_decided", "_result")

    def __init__(self) -> None:
        self._decided = _allocate_lock()
        self._decided.acquire()
        self._result: AttemptResult | None = None

    def decide(self, result: AttemptResult | None) -> None:
        self._result = result
        self._decided.release()

    def wait(self) -> AttemptResult | None:
        # The watchdog decides right after it abandoned the attempt, before or while the
        # handler returns: a wait here is short. Undecided (cannot happen unless the
        # watchdog itself failed): leave it to the carry-on, as if it had started.
        if not self._decided.acquire(timeout=_HANDOFF_WAIT_S):
            return None
        self._decided.release()
        return self._result


@dataclass(slots=True)
class AttemptCall:
    """One handler call a route asks for."""

    agent: AgentDefinition
    envelope: IntentEnvelope
    timeout_s: float


Steps = Generator[AttemptCall, tuple[AttemptResult, Ending], "RouteOutcome"]


@dataclass(slots=True, kw_only=True)
class RouteOutcome:
    payload: dict[str, Any] | None
    error: dict[str, Any] | None
    agent: str | None
    attempts: int
    reason: RouteReason
    try_order: list[str]

    @property
    def status(self) -> str:
        return "error" if self.error is not None else "success"

    @classmethod
    def of(
        cls,
        agent: str,
        result: AttemptResult,
        *,
        attempts: int,
        reason: RouteReason,
        try_order: list[str],
    ) -> RouteOutcome:
        """The route's answer is `agent`'s attempt `result`."""
        return cls(
            payload=result.payload,
            error=result.error,
            agent=agent,
            attempts=attempts,
            reason=reason,
            try_order=try_order,
        )


def plan(envelope: IntentEnvelope, candidates: Sequence[str], decision: PolicyDecision) -> Plan:
    routing = envelope.routing
    strategy = routing.strategy
    if not candidates:
        return Plan(
            [],
            "no_candidates",
            error_dict(
                ErrorCode.CAPABILITY_NOT_FOUND,
                f"no agent handles intent '{envelope.intent.name}' version '{envelope.intent.version}'",
                {"intent": envelope.intent.name, "version": envelope.intent.version},
            ),
        )
    filtered = decision.reasons
    named: list[str] = []
    if strategy is RoutingStrategy.DIRECT and routing.targetAgent:
        named = [routing.targetAgent]
    elif strategy is RoutingStrategy.FALLBACK and (routing.targetAgent or routing.fallbackAgents):
        named = ([routing.targetAgent] if routing.targetAgent else []) + list(
            routing.fallbackAgents
        )
        named = list(dict.fromkeys(named))  # each agent at most once
    if named:
        unknown = [n for n in named if n not in candidates]
        if unknown:
            return Plan(
                [],
                "invalid_request",
                error_dict(
                    ErrorCode.ROUTING_ERROR,
                    f"agent '{unknown[0]}' is not a candidate for intent '{envelope.intent.name}'",
                    {"agent": unknown[0], "candidates": list(candidates)},
                ),
            )
        order = [n for n in named if n not in filtered]
        skipped = {n: filtered[n] for n in named if n in filtered}
        if not order:
            return Plan([], "all_filtered", _unauthorized(named, filtered), skipped=skipped)
        first_reason: RouteReason = (
            "fallback_attempt"
            if skipped and not (routing.targetAgent and order[0] == routing.targetAgent)
            else "target_specified"
        )
        return Plan(order, first_reason, skipped=skipped)
    if not decision.allowed:
        return Plan([], "all_filtered", _unauthorized(list(candidates), filtered))
    if strategy is RoutingStrategy.DIRECT:
        return Plan([decision.allowed[0]], "deterministic_match")
    return Plan(list(decision.allowed), "deterministic_match")


def _unauthorized(names: Sequence[str], reasons: dict[str, str]) -> dict[str, Any]:
    return error_dict(
        ErrorCode.UNAUTHORIZED,
        "policy allows none of the candidate agents",
        {"filtered": {n: reasons[n] for n in names if n in reasons}},
    )


class Router:
    """Runs a plan through the invoker, recording every attempt."""

    def __init__(
        self,
        invoker: AgentInvoker,
        observer: Observer,
        default_timeout_s: float,
        aio: AsyncAgents | None = None,
    ) -> None:
        self.invoker = invoker
        self.observer = observer
        self.default_timeout_s = default_timeout_s
        self.aio = aio if aio is not None else AsyncAgents(time.monotonic, observer)

    def timeout_for(self, agent: AgentDefinition) -> float:
        return agent.timeout_s if agent.timeout_s is not None else self.default_timeout_s

    def execute(self, route: Route) -> RouteOutcome:
        """Run the plan, each handler on a pool thread (or, async, on the loop), and wait."""
        if route.envelope.routing.strategy is RoutingStrategy.PARALLEL:
            name, result, reason = run_parallel(self, route)
            return RouteOutcome.of(
                name,
                result,
                attempts=len(route.plan.try_order),
                reason=reason,
                try_order=route.plan.try_order,
            )
        steps = self.steps(route)
        try:
            call = next(steps)
            while True:
                ending: Ending
                if call.agent.is_async:
                    result, ending = self.aio.current().call(
                        call.agent.name,
                        call.agent.handler,
                        envelope=call.envelope,
                        timeout_s=call.timeout_s,
                    )
                else:
                    result, timed_out = self.invoker.call(
                        call.agent.name,
                        call.agent.handler,
                        envelope=call.envelope,
                        timeout_s=call.timeout_s,
                    )
                    ending = "abandoned" if timed_out else "returned"
                call = steps.send((result, ending))
        except StopIteration as stop:
            outcome: RouteOutcome = stop.value
            return outcome

    def execute_route_inline(self, route: Route, finish: Callable[[RouteOutcome], None]) -> None:
        """Run the plan for the worker: sequential plans with `execute_inline`; PARALLEL over
        async agents only without holding this thread; any other PARALLEL waits here."""
        if route.envelope.routing.strategy is not RoutingStrategy.PARALLEL:
            self.execute_inline(self.steps(route), finish)
            return
        if not all(route.agents[name].is_async for name in route.plan.try_order):
            finish(self.execute(route))
            return
        try_order = route.plan.try_order

        def decided(name: str, result: AttemptResult, reason: RouteReason) -> None:
            outcome = RouteOutcome.of(
                name, result, attempts=len(try_order), reason=reason, try_order=try_order
            )
            finish(outcome)

        race_async(self, route, decided)

    def execute_inline(
        self,
        steps: Steps,
        finish: Callable[[RouteOutcome], None],
        resume: tuple[AttemptResult, Ending] | None = None,
    ) -> None:
        """Run a sequential plan's handlers on this thread; `finish(outcome)` once, here or,
        if a handler overstays its deadline, on the thread that carries the request on.

        An async handler is handed to the event loop, and this returns at once: the plan goes
        on, on a thread given by the loop's `resume`, once the handler ended.

        Raises `Abandoned` on the thread whose handler was abandoned, when it returns."""
        try:
            call = next(steps) if resume is None else steps.send(resume)
            while True:
                if call.agent.is_async:
                    self._hand_to_loop(call, steps, finish)
                    return
                handoff = _Handoff()

                def timed_out(result: AttemptResult, handoff: _Handoff = handoff) -> None:
                    try:
                        self.invoker.carry_on(
                            partial(
                                self.execute_inline, steps, finish, resume=(result, "abandoned")
                            )
                        )
                    except BaseException:
                        # No thread to carry it on (out of threads): it goes on here once
                        # the handler returns, rather than never (its claim held until
                        # restart, its duplicates parked as long).
                        log.exception(
                            "cannot start a thread to carry a timed-out request on; it goes "
                            "on when the handler returns"
                        )
                        handoff.decide(result)
                    else:
                        handoff.decide(None)

                result = self.invoker.call_inline(
                    call.agent.name,
                    call.agent.handler,
                    envelope=call.envelope,
                    timeout_s=call.timeout_s,
                    on_timeout=timed_out,
                )
                if result is None:
                    held = handoff.wait()
                    if held is None:
                        raise Abandoned(call.agent.name)
                    call = steps.send((held, "abandoned"))
                    continue
                call = steps.send((result, "returned"))
        except StopIteration as stop:
            finish(stop.value)

    def _hand_to_loop(
        self, call: AttemptCall, steps: Steps, finish: Callable[[RouteOutcome], None]
    ) -> None:
        runner = self.aio.current()
        # The rest of the request runs in this thread's context (the runner, tracing).
        context = contextvars.copy_context()

        def ended(attempt: AsyncAttempt) -> None:  # on the loop: hand over, nothing more
            assert attempt.ending in ("returned", "cancelled")
            resume = (attempt.result(), attempt.ending)
            runner.resume(partial(context.run, self.execute_inline, steps, finish, resume))

        runner.start(
            call.agent.name,
            call.agent.handler,
            envelope=call.envelope,
            timeout_s=call.timeout_s,
            on_end=ended,
        )

    def steps(self, route: Route) -> Steps:
        """DIRECT, FALLBACK and BROADCAST as a generator: it yields each attempt to make and
        is sent its (result, how it ended), so that whichever thread holds it can go on."""
        envelope, agents, p, rec = route.envelope, route.agents, route.plan, route.recorder
        strategy = envelope.routing.strategy
        intent = envelope.intent.name  # read now: the first agent may be given `envelope`
        stop_on_success = strategy is not RoutingStrategy.BROADCAST
        fallback = strategy is RoutingStrategy.FALLBACK
        last_success: tuple[str, AttemptResult] | None = None
        last: tuple[str, AttemptResult] | None = None
        attempts = 0
        for index, name in enumerate(p.try_order):
            if last is not None and fallback:
                rec.event(
                    "FALLBACK_TRIGGERED",
                    {"from": last[0], "to": name, "reason": last[1].error_code},
                )
                self.observer.fallback(intent)
            attempts += 1
            agent = agents[name]
            rec.event_json("AGENT_ATTEMPT_START", attempt_start_json(name, attempts))
            self.observer.attempt_started(name, attempts)
            result, ending = yield AttemptCall(agent, route.fresh(), self.timeout_for(agent))
            end_attempt(self.observer, rec, name, number=attempts, result=result, ending=ending)
            last = (name, result)
            if result.status == "success":
                last_success = last
                if stop_on_success:
                    reason = p.reason if index == 0 else "fallback_attempt"
                    return RouteOutcome.of(
                        name, result, attempts=attempts, reason=reason, try_order=p.try_order
                    )
        assert last is not None
        if strategy is RoutingStrategy.BROADCAST and last_success is not None:
            return RouteOutcome.of(
                last_success[0],
                last_success[1],
                attempts=attempts,
                reason="broadcast_last_success",
                try_order=p.try_order,
            )
        reason = p.reason if strategy is RoutingStrategy.DIRECT else "all_failed"
        return RouteOutcome.of(
            last[0], last[1], attempts=attempts, reason=reason, try_order=p.try_order
        )
