"""IntentusRuntime: one request in, one answer out, every execution recorded once.

The sequence of one request (`process`):

1. intake (runtime/intake.py): bytes → a valid, normalised request, or a structured refusal;
2. claim its executionId in the store (runtime/claims.py), before anything runs;
3. a claim not won is a duplicate, answered without running anything (runtime/duplicates.py);
4. a claim won: policy, plan, route (runtime/router.py), and the record (runtime/recorder.py).

It never raises for bad input; it raises RecordStoreError when the store cannot be used
(nothing was executed then). A request whose claim a live owner holds comes back *parked*: the
caller waits for `settled()` and processes it again. Once the record is durable, `finish()`
releases the claim; nothing may be replied before that. `route_intent()` does all of it, for
embedding without a broker.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from runtime import defaults
from runtime.aio import AsyncAgents
from runtime.aio_route import route_intent_async
from runtime.claims import Claim, ClaimState, new_owner_token
from runtime.clock import Clock, SystemClock
from runtime.duplicates import Duplicates
from runtime.envelope import IntentEnvelope, RequestContext
from runtime.errors import RecordExists, RecordStoreError
from runtime.executed import executed as build_executed
from runtime.intake import Arrival, Incoming, Refused, Request, accept
from runtime.invoker import Abandoned, AgentInvoker
from runtime.middleware import Middleware, run_before
from runtime.observer import Observer
from runtime.outcome import Outcome
from runtime.policy import Policy, load_policy
from runtime.recorder import (
    ExecutionRecorder,
)
from runtime.registry import AgentRegistry
from runtime.response import AgentResponse
from runtime.router import RouteOutcome, Router, plan
from runtime.routes import Route
from runtime.stores.base import RecordStore
from runtime.stores.files.store import FileRecordStore
from runtime.stores.memory import MemoryRecordStore

log = logging.getLogger("intentus.runtime")

_POLL_S = 0.02


class _Progress:
    """How far one claimed request got: whether an agent may have started, and whether its
    outcome (holding the claim) was handed over."""

    __slots__ = ("agent_may_run", "handed_over")

    def __init__(self) -> None:
        self.agent_may_run = False
        self.handed_over = False


def _reraise(exc: BaseException) -> Outcome:
    raise exc


class IntentusRuntime:
    """Deterministic routing with durable records and duplicate answers, in-process."""

    def __init__(
        self,
        registry: AgentRegistry,
        records_dir: str | os.PathLike[str] | None = None,
        policy: str | os.PathLike[str] | dict[str, Any] | Policy | None = None,
        middleware: Sequence[Middleware] = (),
        *,
        store: RecordStore | None = None,
        clock: Clock | None = None,
        agent_timeout_s: float = defaults.AGENT_TIMEOUT_S,
        max_message_bytes: int = defaults.MAX_MESSAGE_BYTES,
        worker_id: str | None = None,
        observer: Observer | None = None,
        carry_on: Callable[[Callable[[], None]], None] | None = None,
        resume: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self.registry = registry
        self.policy = load_policy(
            policy if not isinstance(policy, os.PathLike) else os.fspath(policy)
        )
        self.middleware = tuple(middleware)
        self.clock = clock or SystemClock()
        self.observer = observer or Observer()
        # The id names files (owner locks, temp folders): keep it to a safe alphabet.
        worker_id = worker_id or defaults.default_worker_id()
        self.worker_id = re.sub(r"[^A-Za-z0-9._-]", "_", worker_id)[:100]
        self.max_message_bytes = max_message_bytes
        if store is None:
            owner = new_owner_token(self.worker_id)
            store = (
                FileRecordStore(records_dir, owner=owner)
                if records_dir is not None
                else MemoryRecordStore(owner)
            )
        self.store = store
        self.duplicates = Duplicates(
            store=store,
            policy=self.policy,
            monotonic=self.clock.monotonic,
            worker_id=self.worker_id,
        )
        # `carry_on`: starts the thread that finishes a request whose inline handler overstayed;
        # `resume`: runs the rest of a request after its async agent ended. An embedder with
        # routing threads of its own (the worker) passes both to keep requests on them.
        self.invoker = AgentInvoker(self.clock.monotonic, carry_on=carry_on)
        #: The event loop of async agents (started with the first one).
        self.aio = AsyncAgents(self.clock.monotonic, self.observer, resume=resume)
        self.router = Router(self.invoker, self.observer, agent_timeout_s, aio=self.aio)

    # -- embedding API -------------------------------------------------------------------
    def route_intent(
        self, envelope: Incoming, context: RequestContext | None = None
    ) -> AgentResponse:
        """Route one request and return its response once its record is durable."""
        outcome = self.process(envelope, context)
        while outcome.parked:
            # Another thread or worker is executing this request: wait for its record.
            while not self.settled(outcome):
                time.sleep(_POLL_S)
            outcome = self.process(envelope, context)
        outcome = self.commit_sync(outcome)
        return AgentResponse.model_validate(outcome.response)

    async def route_intent_async(
        self, envelope: Incoming, context: RequestContext | None = None
    ) -> AgentResponse:
        """`route_intent` from an application's event loop, which it never blocks; async
        agents run on that loop (see runtime/aio_route.py)."""
        return await route_intent_async(self, envelope, context)

    def settled(self, parked: Outcome) -> bool:
        """Whether a parked request can be processed again (its owner recorded it or died)."""
        return self.duplicates.settled_many([parked])[0]

    def settled_many(self, parked: Sequence[Outcome]) -> list[bool]:
        return self.duplicates.settled_many(parked)

    def commit_sync(self, outcome: Outcome) -> Outcome:
        """Persist the outcome's record (if any) and release its claim; may replace the outcome."""
        if outcome.record is None:
            self.finish(outcome, recorded=False)
            return outcome
        try:
            self.store.put(outcome.execution_id, outcome.record)
        except RecordExists as exc:
            answer = self.settle_write(outcome, exc)
        except RecordStoreError:
            self.finish(outcome, recorded=False)
            raise
        else:
            answer = self.settle_write(outcome, None)
        if answer is None:
            raise RecordStoreError(
                f"request {outcome.request_id} was taken over by another worker and is not "
                "recorded yet; its result here is not the record"
            )
        return answer

    def settle_write(self, outcome: Outcome, exc: RecordExists | None) -> Outcome | None:
        """After a record write that succeeded or was refused as a duplicate (`put`, or the
        callback of `put_async`): release the claim. What to answer with: this outcome, the
        durable record's after a lost race, or None while the worker that took the request over
        has not recorded it yet. Other write failures stay the caller's: it holds or fails."""
        if exc is None:
            self.finish(outcome, recorded=True)
            return outcome
        self.finish(outcome, recorded=False)
        return self.after_lost_race(outcome)

    def finish(self, outcome: Outcome, *, recorded: bool) -> None:
        """Release the claim once the record is durable (or will not be written).

        An agent that ran without its record being written keeps its claim: any duplicate of
        it is then answered EXECUTION_IN_DOUBT, here or (after this process ends) elsewhere,
        and never run again silently."""
        claim = outcome.claim
        if claim is None or not claim.won:
            return  # nothing of ours (a parked outcome names the claim it waits for)
        outcome.claim = None
        try:
            if recorded or not outcome.agent_ran:
                self.store.release(claim)
        finally:
            # Only after the release: until then another thread of ours asking for this id
            # must wait, not find our claim with nobody working on it (in doubt).
            self.duplicates.done_with(claim.execution_id)

    def after_lost_race(self, outcome: Outcome) -> Outcome | None:
        """The durable record's answer after our record was refused; None while there is none
        (answer nothing then)."""
        return self.duplicates.after_lost_race(outcome)

    # -- the sequence --------------------------------------------------------------------
    def process(
        self,
        request: Incoming,
        context: RequestContext | None = None,
        *,
        content_type: str | None = None,
        correlation_id: str | None = None,
    ) -> Outcome:
        """Route one request, each handler on a pool thread: returns at its deadline even if
        the handler never does."""
        outcome = self._process(
            request,
            context,
            content_type=content_type,
            correlation_id=correlation_id,
            deliver=None,
        )
        assert outcome is not None
        return outcome

    def process_inline(
        self,
        request: Incoming,
        context: RequestContext | None = None,
        *,
        content_type: str | None = None,
        correlation_id: str | None = None,
        deliver: Callable[[Outcome], None],
    ) -> None:
        """Route one request with DIRECT, FALLBACK and BROADCAST handlers called on this
        thread, and `deliver(outcome)` exactly once.

        A handler past its deadline is abandoned by the watchdog, which carries the request on
        (`invoker.carry_on`) and delivers from there; this thread then gets `Abandoned` once
        the handler returns, and must let it unwind."""
        outcome = self._process(
            request,
            context,
            content_type=content_type,
            correlation_id=correlation_id,
            deliver=deliver,
        )
        if outcome is not None:
            deliver(outcome)

    def _process(
        self,
        incoming: Incoming,
        context: RequestContext | None,
        *,
        content_type: str | None,
        correlation_id: str | None,
        deliver: Callable[[Outcome], None] | None,
    ) -> Outcome | None:
        """Steps 1 to 4; None if `deliver` will be (or was) called instead."""
        arrival = Arrival(
            context=context or RequestContext(),
            received=self.clock.now(),
            started=self.clock.monotonic(),
            correlation_id=correlation_id,
        )
        try:
            request = accept(
                incoming,
                arrival,
                content_type=content_type,
                max_message_bytes=self.max_message_bytes,
            )
        except Refused as refused:
            return refused.answer(
                arrival, store=self.store, monotonic=self.clock.monotonic, worker_id=self.worker_id
            )
        eid = request.execution_id
        # Registered as ours before the claim is even asked for: winning the claim and being
        # known as this process's running work are one step (see runtime/duplicates.py).
        if not self.duplicates.begin(eid):
            return self.duplicates.parked_here(request)
        try:
            claim = self.store.claim(eid, user_id=request.user, fingerprint=request.fingerprint)
            if claim.state is not ClaimState.WON:
                outcome = self.duplicates.answer(request, claim)
                if outcome.claim is None or not outcome.claim.won:
                    self.duplicates.done_with(eid)
                return outcome
        except BaseException:
            self.duplicates.done_with(eid)
            raise
        return self._execute_claimed(request, claim, deliver)

    def _execute_claimed(
        self, request: Request, claim: Claim, deliver: Callable[[Outcome], None] | None
    ) -> Outcome | None:
        """Run a won claim to its outcome, which carries the claim to `finish`.

        Until an agent may have started, a failure releases the claim (nothing ran). After
        that the claim ends only in a durable record: an error building the outcome answers
        EXECUTION_IN_DOUBT with its record instead, and anything else raised (KeyboardInterrupt
        on the embedder's thread) leaves the claim held as given up, so any duplicate is
        answered in doubt, never run again."""
        progress = _Progress()

        def settle(build: Callable[[], Outcome]) -> Outcome:
            try:
                outcome = build()
            except Exception as exc:
                if not progress.agent_may_run:
                    raise
                log.exception("cannot build the outcome of request %s", request.request_id)
                outcome = self.duplicates.in_doubt(
                    request, claim, cause=f"{type(exc).__name__}: {exc}"
                )
                outcome.agent_ran = True
            progress.handed_over = True
            outcome.claim = claim
            return outcome

        try:
            return self._execute(request, settle, deliver, progress)
        except Abandoned:
            raise  # the request goes on elsewhere, with its claim
        except Exception as exc:
            if progress.handed_over:  # an error of the caller's `deliver` is not ours to undo
                raise
            if not progress.agent_may_run:
                self._give_up(claim, release=True)
                raise
            try:
                outcome = settle(partial(_reraise, exc))
            except BaseException:
                self._give_up(claim, release=False)
                raise
        except BaseException:
            if not progress.handed_over:
                self._give_up(claim, release=not progress.agent_may_run)
            raise
        if deliver is None:
            return outcome
        deliver(outcome)
        return None

    def _give_up(self, claim: Claim, *, release: bool) -> None:
        """Drop a claim that has no outcome: released if nothing can have run, else kept
        held with no thread working on it (so that its duplicates are answered in doubt)."""
        try:
            if release:
                self.store.release(claim)
        finally:
            self.duplicates.done_with(claim.execution_id)

    def _execute(
        self,
        request: Request,
        settle: Callable[[Callable[[], Outcome]], Outcome],
        deliver: Callable[[Outcome], None] | None,
        progress: _Progress,
    ) -> Outcome | None:
        envelope = request.envelope
        recorder = ExecutionRecorder(self.clock.monotonic, request.arrival.started)
        if self.middleware:
            request_id = envelope.metadata.requestId
            run_before(self.middleware, envelope, self.observer)
            if envelope.metadata.requestId != request_id:
                log.warning("middleware changed metadata.requestId; the change is ignored")
                envelope.metadata.requestId = request_id
            request.reencode()
        candidates = self.registry.find_by_capability(request.intent, envelope.intent.version)
        recorder.event_json("INTENT_RECEIVED", request.received_event())
        names = [a.name for a in candidates]
        decision = self.policy.evaluate_envelope(names, envelope, request.context.user_id)
        for denied in decision.filtered:
            self.observer.policy_filtered(denied, decision.rules[denied])
        route_plan = plan(envelope, names, decision)
        policy = decision.to_dict()
        executed = partial(
            build_executed,
            request,
            recorder,
            policy=policy,
            worker_id=self.worker_id,
            middleware=self.middleware,
            observer=self.observer,
        )
        if route_plan.error is not None:
            refused = RouteOutcome(
                payload=None,
                error=route_plan.error,
                agent=route_plan.agent,
                attempts=0,
                reason=route_plan.reason,
                try_order=route_plan.try_order,
            )
            return settle(partial(executed, refused, agent_ran=False))
        route = Route(
            envelope=envelope,
            agents={a.name: a for a in candidates},
            plan=route_plan,
            recorder=recorder,
            fresh=self._private_copies(request),
        )
        progress.agent_may_run = True
        if deliver is None:
            out = self.router.execute(route)
            return settle(partial(executed, out, agent_ran=True))

        def finish(out: RouteOutcome) -> None:
            # Here, or on the thread carrying a timed-out request on: either way the claim
            # ends in a record (the result, or in doubt if building it fails).
            deliver(settle(partial(executed, out, agent_ran=True)))

        self.router.execute_route_inline(route, finish)
        return None

    def _private_copies(self, request: Request) -> Callable[[], IntentEnvelope]:
        """Each agent's private envelope, parsed from the routed one's JSON: a full deep copy,
        several times cheaper than copying the model. The first agent can have the routed
        envelope itself, which nothing reads after that (what the record needs is encoded or
        copied out already), unless middleware will be shown it afterwards."""
        copy = partial(IntentEnvelope.model_validate_json, request.envelope_json)
        if self.middleware:
            return copy
        pending = [request.envelope]

        def fresh() -> IntentEnvelope:
            return pending.pop() if pending else copy()

        return fresh

    def close(self) -> None:
        self.aio.close()
        self.invoker.close()
        self.store.close()


__all__ = ["IntentusRuntime", "Outcome"]
