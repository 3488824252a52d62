"""The duplicate protocol: what a request's claim says, and the answers that run no agent.

A claim that is not won is one of:

    RECORDED  -> same caller (user id) and same request (fingerprint)?  no -> conflict
                 the recorded agent still allowed by the policy?         no -> denied
                 otherwise the stored answer, byte for byte                  -> replayed
    RUNNING   -> another caller's request holds the id                      -> conflict
                 ours (no thread of ours works on it, or the caller could
                 not have begun: its record could not be written)           -> in doubt
                 otherwise a live owner executes it: wait for its record    -> parked
    ORPHANED  -> its owner died before recording: take the claim over, then
                 record and answer that its outcome is unknown              -> in doubt
                 (or, if the take-over finds a record or a new live owner,
                 as above)

Nothing here ever runs an agent: a request that started once is never run again silently.

A thread *begins* an executionId (`begin`) before it claims it in the store, and ends it
(`done_with`) only after the claim is released or given up; while one thread of this process
has begun an id, any other thread of this process asking for it is parked at once, without
looking at the store. So a claim of ours that the store shows as running while no thread of
ours has begun it was given up without a record (in doubt): it is never mistaken for the
window between winning a claim and registering it, because there is no such window.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from runtime.claims import Claim, ClaimState, Holder
from runtime.errors import ErrorCode
from runtime.intake import Request
from runtime.outcome import Outcome, rejection_from_record, replayed
from runtime.policy import Policy, PolicySubject
from runtime.recorder import ExecutionRecorder, unrouted_record
from runtime.response import error_dict
from runtime.stores.base import RecordStore

log = logging.getLogger("intentus.runtime")


class Duplicates:
    """Answers requests whose claim was not won, and tracks the claims this process works on."""

    def __init__(
        self,
        *,
        store: RecordStore,
        policy: Policy,
        monotonic: Callable[[], float],
        worker_id: str,
    ) -> None:
        self.store = store
        self.policy = policy
        self._monotonic = monotonic
        self._worker_id = worker_id
        # Claims this process won and is still working on; a claim of ours that is not here
        # was given up unrecorded (its record could not be written): that request is in doubt.
        self._active: set[str] = set()
        self._active_lock = threading.Lock()

    # -- the claims this process works on ------------------------------------------------
    def begin(self, execution_id: str) -> bool:
        """Register this thread's work on an id, before claiming it; False if another
        thread of this process works on it already (the caller is parked)."""
        with self._active_lock:
            if execution_id in self._active:
                return False
            self._active.add(execution_id)
            return True

    def done_with(self, execution_id: str) -> None:
        with self._active_lock:
            self._active.discard(execution_id)

    def is_active(self, execution_id: str) -> bool:
        with self._active_lock:
            return execution_id in self._active

    def settled_many(self, parked: Sequence[Outcome]) -> list[bool]:
        """Whether each parked request can be processed again (recorded, or owner gone)."""
        states = self.store.probe([o.execution_id for o in parked])
        settled = []
        for outcome in parked:
            if self.is_active(outcome.execution_id):
                settled.append(False)  # a thread of ours works on it: wait for it
                continue
            state = states.get(outcome.execution_id)
            holder = outcome.claim.holder if outcome.claim is not None else None
            own = holder is not None and holder.owner == self.store.owner
            settled.append(state is not ClaimState.RUNNING or own)
        return settled

    def parked_here(self, request: Request) -> Outcome:
        """Another thread of this process works on this request: wait for its record."""
        holder = Holder(self.store.owner, request.user, request.fingerprint)
        return self.parked(request, Claim(ClaimState.RUNNING, request.execution_id, holder=holder))

    # -- answers -------------------------------------------------------------------------
    def answer(self, request: Request, claim: Claim) -> Outcome:
        """The answer to a request whose claim was not won (see the module's table).

        The caller has begun the id (`begin`); an answer holding a won claim (in doubt) keeps
        it begun until `done_with`, any other answer does not need it any more."""
        if claim.state is ClaimState.RECORDED:
            assert claim.record is not None
            return self.from_record(request, json.loads(claim.record))
        holder = claim.holder
        if (
            holder is not None
            and holder.known
            and (holder.user_id != request.user or holder.fingerprint != request.fingerprint)
        ):
            # Another caller's request holds this requestId: never wait for, or answer
            # with, what it will record.
            return self.conflict(request, recorded_at=None)
        if claim.state is ClaimState.RUNNING:
            if holder is not None and holder.owner == self.store.owner:
                # Ours, and no other thread of ours works on it (the caller began it): its
                # record could not be written. We hold the claim already, so no take-over:
                # record that it is in doubt.
                return self.in_doubt(
                    request, Claim(ClaimState.WON, request.execution_id, holder=holder)
                )
            return self.parked(request, claim)
        claim = self.store.take_over(claim, user_id=request.user, fingerprint=request.fingerprint)
        if claim.state is ClaimState.WON:
            return self.in_doubt(request, claim)
        if claim.state is ClaimState.RECORDED:
            assert claim.record is not None
            return self.from_record(request, json.loads(claim.record))
        return self.parked(request, claim)

    def from_record(self, request: Request, record: dict[str, Any]) -> Outcome:
        """The stored answer, for the same caller asking the same thing only."""
        header = record.get("header", {})
        stored = record.get("finalResponse")
        if (
            (header.get("userId") or "") != request.user
            or header.get("fingerprint") != request.fingerprint
            or not isinstance(stored, dict)
        ):
            return self.conflict(request, recorded_at=header.get("createdAt"))
        agent = (stored.get("metadata") or {}).get("agent")
        if agent:
            # The policy may have changed since: the stored answer is for those it allows now.
            decision = self.policy.evaluate(
                [agent], PolicySubject.of(request.envelope, request.context.user_id)
            )
            if agent in decision.filtered:
                return self._denied(request, agent=agent, reason=decision.reasons[agent])
        return replayed(
            execution_id=request.execution_id, request_id=request.request_id, record=record
        )

    def after_lost_race(self, outcome: Outcome) -> Outcome | None:
        """Our record was refused: the request is another worker's now (it took over our claim
        while we looked dead), or recorded already. Answer from the durable record; None if
        there is none yet (the other worker has not recorded it): then nothing may be
        answered here, since our own result is not the record and never will be.

        A rejected message found its body's rejection recorded meanwhile (a redelivery or a
        twin racing it): it is answered from that record, and still dead-lettered."""
        stored = self.store.get(outcome.execution_id)
        if outcome.kind == "rejected":
            return rejection_from_record(outcome, stored)
        if stored is None:
            log.warning(
                "request %s was taken over by another worker while this one looked dead, and "
                "it is not recorded yet; not answering the result that ran here",
                outcome.request_id,
            )
            return None
        log.warning(
            "request %s was recorded by another worker meanwhile; answering from that record",
            outcome.request_id,
        )
        return replayed(
            execution_id=outcome.execution_id,
            request_id=outcome.request_id,
            record=json.loads(stored),
        )

    def parked(self, request: Request, claim: Claim) -> Outcome:
        """A live owner is executing this request: the caller waits for its record."""
        return Outcome(
            kind="parked",
            execution_id=request.execution_id,
            request_id=request.request_id,
            trace_id=request.trace_id,
            response={},
            body=b"",
            intent=request.intent,
            strategy=request.strategy,
            claim=claim,
        )

    def _denied(self, request: Request, *, agent: str, reason: str) -> Outcome:
        message = (
            f"the recorded answer came from agent '{agent}', which policy no longer "
            f"allows for this caller ({reason})"
        )
        details = {"execution_id": request.execution_id, "agent": agent}
        return request.error_answer(
            "denied", error=error_dict(ErrorCode.UNAUTHORIZED, message, details)
        )

    def conflict(self, request: Request, *, recorded_at: str | None) -> Outcome:
        message = f"requestId '{request.request_id}' was already used for a different request"
        details = {"execution_id": request.execution_id, "recorded_at": recorded_at}
        return request.error_answer(
            "conflict",
            error=error_dict(ErrorCode.IDEMPOTENCY_CONFLICT, message, details),
            same_request=False,
        )

    def in_doubt(self, request: Request, claim: Claim, *, cause: str | None = None) -> Outcome:
        """Record and answer that an execution's outcome is unknown (never re-run): an
        earlier delivery's, or (`cause`) this one's, which failed after an agent may have
        started and before its result could be recorded."""
        recorder = ExecutionRecorder(self._monotonic, request.arrival.started)
        if cause is None:
            message = (
                "an earlier delivery of this request started executing and its worker stopped "
                "before recording the result; it is not run again"
            )
        else:
            message = (
                f"executing this request failed after an agent may have started ({cause}); "
                "its outcome is unknown and it is not run again"
            )
        details = {"execution_id": request.execution_id}
        outcome = request.error_answer(
            "in_doubt",
            error=error_dict(ErrorCode.EXECUTION_IN_DOUBT, message, details),
            latency_ms=recorder.elapsed_ms(),
        )
        recorder.event_json("INTENT_RECEIVED", request.received_event())
        if cause is None:
            recorder.event(
                "DUPLICATE_DELIVERY",
                {"kind": "in_doubt", "redelivered": request.context.redelivered},
            )
        outcome.record = unrouted_record(
            recorder,
            header=request.header(kind="in_doubt", worker_id=self._worker_id),
            envelope=request.envelope_dict,
            response=outcome.response,
            intent=request.intent,
            strategy=request.strategy,
            reason="execution_in_doubt",
        )
        outcome.claim = claim
        return outcome
