"""PARALLEL: every candidate at once, each with its own envelope; the first success answers.

Sync handlers run on the agent pool, async ones on the event loop; this thread waits for the
first success, or the nearest sync deadline (the loop keeps async deadlines itself). The
stragglers are detached (a sync thread runs on, counted) or cancelled (an async task). When
every agent is async, `race_async` runs the race without holding a thread at all.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, cast

from runtime.aio import AsyncAgents, AsyncAttempt, Ending
from runtime.invoker import AgentInvoker, Attempt, AttemptResult
from runtime.observer import Observer
from runtime.recorder import ExecutionRecorder, RouteReason, attempt_start_json
from runtime.registry import AgentDefinition
from runtime.routes import Route, end_attempt


class Racer(Protocol):
    """What running agents at once needs of the router, which calls in here."""

    aio: AsyncAgents
    observer: Observer
    invoker: AgentInvoker

    def timeout_for(self, agent: AgentDefinition) -> float: ...


def run_parallel(router: Racer, route: Route) -> tuple[str, AttemptResult, RouteReason]:
    """Run every agent of the plan at once; the agent whose result answers, and why."""
    agents, p, rec = route.agents, route.plan, route.recorder
    done: queue.SimpleQueue[Attempt | AsyncAttempt] = queue.SimpleQueue()
    pending: dict[Attempt | AsyncAttempt, int] = {}
    results: dict[str, AttemptResult] = {}
    runner = router.aio.current()
    for number, name in enumerate(p.try_order, start=1):
        agent = agents[name]
        rec.event_json("AGENT_ATTEMPT_START", attempt_start_json(name, number))
        router.observer.attempt_started(name, number)
        attempt: Attempt | AsyncAttempt
        if agent.is_async:  # its deadline is kept by the loop, which then ends it
            attempt = runner.start(
                name,
                agent.handler,
                envelope=route.fresh(),
                timeout_s=router.timeout_for(agent),
                on_end=done.put,
            )
        else:
            attempt = router.invoker.start(
                name,
                agent.handler,
                envelope=route.fresh(),
                timeout_s=router.timeout_for(agent),
                notify=cast("queue.SimpleQueue[Attempt]", done),
            )
        pending[attempt] = number
    mono = time.monotonic
    winner: tuple[str, AttemptResult] | None = None
    while pending and winner is None:
        nearest = min(pending, key=lambda a: a.deadline)
        wait = nearest.deadline - mono()
        try:
            finished = done.get(timeout=None if wait == float("inf") else max(0.0, wait))
        except queue.Empty:
            assert isinstance(nearest, Attempt)  # async attempts have no deadline here
            if not nearest.detach():
                continue  # it returned just now; its completion is in the queue
            result = router.invoker.timeout_result(nearest)
            number = pending.pop(nearest)
            end_attempt(
                router.observer,
                rec,
                nearest.agent,
                number=number,
                result=result,
                ending="abandoned",
            )
            results[nearest.agent] = result
            continue
        if finished not in pending:
            continue  # already timed out and recorded
        result = finished.result()
        ending: Ending = "returned"
        if isinstance(finished, AsyncAttempt) and finished.ending == "cancelled":
            ending = "cancelled"
        number = pending.pop(finished)
        end_attempt(
            router.observer, rec, finished.agent, number=number, result=result, ending=ending
        )
        results[finished.agent] = result
        if result.status == "success":
            winner = (finished.agent, result)
    for straggler, number in sorted(pending.items(), key=lambda item: item[1]):
        _abandon(rec, straggler, number)
    if winner is not None:
        return winner[0], winner[1], "parallel_first_success"
    last_name = p.try_order[-1]
    return last_name, results[last_name], "all_failed"


def race_async(
    router: Racer,
    route: Route,
    finish: Callable[[str, AttemptResult, RouteReason], None],
) -> None:
    """PARALLEL over async agents only, holding no thread: each attempt's end is recorded on
    a thread given by the loop's `resume` (never on the loop); the end that decides the race
    cancels the stragglers and calls `finish` there."""
    agents, p, rec = route.agents, route.plan, route.recorder
    runner = router.aio.current()
    context = contextvars.copy_context()
    lock = threading.Lock()
    pending: dict[AsyncAttempt, int] = {}
    results: dict[str, AttemptResult] = {}

    def ended(attempt: AsyncAttempt) -> None:
        with lock:
            number = pending.pop(attempt, None)
            if number is None:
                return  # the race was decided before it ended
            result = attempt.result()
            ending: Ending = "cancelled" if attempt.ending == "cancelled" else "returned"
            end_attempt(
                router.observer, rec, attempt.agent, number=number, result=result, ending=ending
            )
            results[attempt.agent] = result
            if result.status != "success" and pending:
                return
            stragglers = sorted(pending.items(), key=lambda item: item[1])
            pending.clear()
            for straggler, straggler_number in stragglers:
                _abandon(rec, straggler, straggler_number)
        if result.status == "success":
            finish(attempt.agent, result, "parallel_first_success")
        else:
            last = p.try_order[-1]
            finish(last, results[last], "all_failed")

    def on_end(attempt: AsyncAttempt) -> None:  # on the loop: hand over, nothing more
        runner.resume(partial(context.run, ended, attempt))

    with lock:  # no end is recorded before every attempt has started
        for number, name in enumerate(p.try_order, start=1):
            agent = agents[name]
            rec.event_json("AGENT_ATTEMPT_START", attempt_start_json(name, number))
            router.observer.attempt_started(name, number)
            attempt = runner.start(
                name,
                agent.handler,
                envelope=route.fresh(),
                timeout_s=router.timeout_for(agent),
                on_end=on_end,
            )
            pending[attempt] = number


def _abandon(rec: ExecutionRecorder, straggler: Attempt | AsyncAttempt, number: int) -> None:
    detached = straggler.detach()
    event: dict[str, Any] = {
        "agent": straggler.agent,
        "attempt": number,
        "reason": "first_success_elsewhere",
    }
    if detached and isinstance(straggler, AsyncAttempt):
        event["cancelled"] = True  # its task was cancelled, not left running
    rec.event("AGENT_ATTEMPT_ABANDONED", event)
