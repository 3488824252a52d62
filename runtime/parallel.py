"""PARALLEL: every candidate at once, each with its own envelope; the first success answers.

Sync handlers run on the agent pool, async ones on the event loop; this thread waits for the
first success, or the nearest sync deadline (the loop keeps async deadlines itself). The
stragglers are detached (a sync thread runs on, counted) or cancelled (an async task).
"""

from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING, Any, cast

from runtime.aio import AsyncAttempt, Ending
from runtime.invoker import Attempt, AttemptResult

if TYPE_CHECKING:
    from runtime.router import Route, Router, RouteReason


def run_parallel(router: Router, route: Route) -> tuple[str, AttemptResult, RouteReason]:
    """Run every agent of the plan at once; the agent whose result answers, and why."""
    agents, p, rec = route.agents, route.plan, route.recorder
    done: queue.SimpleQueue[Attempt | AsyncAttempt] = queue.SimpleQueue()
    pending: dict[Attempt | AsyncAttempt, int] = {}
    results: dict[str, AttemptResult] = {}
    runner = router.aio.current()
    for number, name in enumerate(p.try_order, start=1):
        agent = agents[name]
        rec.event("AGENT_ATTEMPT_START", {"agent": name, "attempt": number})
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
            router.end_attempt(rec, nearest.agent, number=number, result=result, ending="abandoned")
            results[nearest.agent] = result
            continue
        if finished not in pending:
            continue  # already timed out and recorded
        result = finished.result()
        ending: Ending = "returned"
        if isinstance(finished, AsyncAttempt) and finished.ending == "cancelled":
            ending = "cancelled"
        number = pending.pop(finished)
        router.end_attempt(rec, finished.agent, number=number, result=result, ending=ending)
        results[finished.agent] = result
        if result.status == "success":
            winner = (finished.agent, result)
    for straggler, number in sorted(pending.items(), key=lambda item: item[1]):
        detached = straggler.detach()
        event: dict[str, Any] = {
            "agent": straggler.agent,
            "attempt": number,
            "reason": "first_success_elsewhere",
        }
        if detached and isinstance(straggler, AsyncAttempt):
            event["cancelled"] = True  # its task was cancelled, not left running
        rec.event("AGENT_ATTEMPT_ABANDONED", event)
    if winner is not None:
        return winner[0], winner[1], "parallel_first_success"
    last_name = p.try_order[-1]
    return last_name, results[last_name], "all_failed"
