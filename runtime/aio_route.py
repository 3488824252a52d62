"""`IntentusRuntime.route_intent_async`: `route_intent` for an application's own event loop.

The same routing, recording and duplicate rules, without blocking the caller's loop:

- async agents run on the caller's loop, so that they may use what the application made on it
  (an HTTP client's connection pool, locks, queues);
- everything else (intake, the claim, sync agents, the record and its durable write) runs on
  threads: the loop's default executor until the first async agent, the runtime's own
  continuation threads after it. A sync agent that overstays its deadline holds one of them.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any, Protocol

from runtime.aio import AsyncAgents
from runtime.envelope import RequestContext
from runtime.intake import Incoming
from runtime.invoker import Abandoned
from runtime.outcome import Outcome
from runtime.response import AgentResponse


class Engine(Protocol):
    """What this needs of `IntentusRuntime`, which calls in here."""

    aio: AsyncAgents

    def settled(self, parked: Outcome) -> bool: ...

    def commit_sync(self, outcome: Outcome) -> Outcome: ...

    def process_inline(
        self,
        request: Incoming,
        context: RequestContext | None,
        *,
        deliver: Callable[[Outcome], None],
    ) -> None: ...


_POLL_S = 0.02


async def route_intent_async(
    runtime: Engine, envelope: Incoming, context: RequestContext | None = None
) -> AgentResponse:
    loop = asyncio.get_running_loop()
    token = AsyncAgents.use(runtime.aio.on_loop(loop))
    try:
        outcome = await _process(runtime, loop, envelope, context)
        while outcome.parked:
            # Another request with this requestId is running: wait for its record.
            while not await asyncio.to_thread(runtime.settled, outcome):
                await asyncio.sleep(_POLL_S)
            outcome = await _process(runtime, loop, envelope, context)
    finally:
        AsyncAgents.reset(token)
    return AgentResponse.model_validate(outcome.response)


async def _process(
    runtime: Engine,
    loop: asyncio.AbstractEventLoop,
    envelope: Incoming,
    context: RequestContext | None,
) -> Outcome:
    """`process_inline` on a thread; its outcome, recorded durably by whichever thread
    delivers it: even if the caller stops waiting, a request that ran ends in its record."""
    answer: asyncio.Future[Outcome] = loop.create_future()

    def settle(outcome: Outcome | None, exc: BaseException | None) -> None:
        if answer.done():
            return
        if exc is not None:
            answer.set_exception(exc)
        else:
            answer.set_result(outcome)  # type: ignore[arg-type]

    def deliver(outcome: Outcome) -> None:
        try:
            if not outcome.parked:
                outcome = runtime.commit_sync(outcome)
        except BaseException as exc:
            _tell(loop, settle, None, exc)
            return
        _tell(loop, settle, outcome, None)

    def run() -> None:
        try:
            runtime.process_inline(envelope, context, deliver=deliver)
        except Abandoned:
            pass  # a sync agent overstayed: the request was delivered from another thread
        except BaseException as exc:  # the caller gets it (RecordStoreError…)
            _tell(loop, settle, None, exc)

    # Not awaited: a sync agent stuck past its deadline keeps this thread, not the caller.
    loop.run_in_executor(None, contextvars.copy_context().run, run)
    return await answer


def _tell(loop: asyncio.AbstractEventLoop, settle: Any, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(settle, *args)
    except RuntimeError:
        pass  # the caller's loop is closed: nobody waits for the answer (it is recorded)
