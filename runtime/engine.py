"""IntentusRuntime: one request in, one answer out, every execution recorded once.

`process()` is the whole per-request pipeline except persisting: decode, validate, claim the
executionId (runtime/claims.py), then answer a duplicate from its record, or plan, route and
build the record. It never raises for bad input; it raises RecordStoreError when the store
cannot be used (nothing was executed then). A request whose claim a live owner holds comes
back *parked*: the caller waits for `settled()` and processes it again. Once the record is
durable, `finish()` releases the claim; nothing may be replied before that. `route_intent()`
does all of it, for embedding without a broker.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from runtime import defaults
from runtime.canonical import (
    dumps,
    encode_envelope,
    envelope_hash,
    execution_id_for,
    request_id_for_body,
    trace_id_for,
)
from runtime.claims import Claim, ClaimState, new_owner_token
from runtime.clock import Clock, SystemClock, format_timestamp
from runtime.envelope import (
    IntentEnvelope,
    RequestContext,
    RoutingStrategy,
    _trace_from_traceparent,
    decode_json,
    normalise,
    request_id_hint,
    validate_envelope,
)
from runtime.errors import EnvelopeError, ErrorCode, RecordExists, RecordStoreError
from runtime.invoker import Abandoned, AgentInvoker
from runtime.middleware import Middleware, run_after, run_before
from runtime.observer import Observer
from runtime.policy import Policy, PolicySubject, load_policy
from runtime.recorder import ExecutionRecorder, build_record, encode_record, raw_body_fields
from runtime.registry import AgentDefinition, AgentRegistry
from runtime.response import AgentResponse, error_dict, response_body, response_dict
from runtime.router import Plan, RouteOutcome, Router, plan
from runtime.store import FileRecordStore, MemoryRecordStore, RecordStore
from runtime.version import __version__

log = logging.getLogger("intentus.runtime")

_POLL_S = 0.02


@dataclass(slots=True)
class Outcome:
    """What to answer, what to record, and how to account for it."""

    kind: str  # executed | rejected | replayed | conflict | denied | in_doubt | parked
    execution_id: str
    request_id: str
    trace_id: str | None
    response: dict[str, Any]
    body: bytes
    record: bytes | None
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


@dataclass(slots=True)
class _Received:
    """What is known of any delivery: its transport context and when it arrived."""

    ctx: RequestContext
    received: datetime
    correlation_id: str | None


@dataclass(slots=True)
class _Request:
    """A valid, normalised request on its way through the runtime."""

    envelope: IntentEnvelope
    ctx: RequestContext
    t0: float
    received: datetime
    correlation_id: str | None
    env_dict: dict[str, Any]
    env_json: bytes  # canonical: hashed, embedded in the record, parsed for agents' copies
    env_hash: str
    fp: str
    eid: str

    # Read once from the envelope, before any agent: an agent may be handed the routed
    # envelope itself (see `_execute`), and what it does to it must not reach the record.
    rid: str = ""
    trace_id: str | None = None
    intent: str = ""
    strategy: str = ""

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        envelope = self.envelope
        self.rid = envelope.request_id
        self.trace_id = envelope.metadata.traceId
        self.intent = envelope.intent.name
        self.strategy = envelope.routing.strategy.value

    @property
    def user(self) -> str:
        return self.ctx.user_id or ""

    def received_event(self) -> dict[str, Any]:
        return {
            "intent": self.intent,
            "version": self.envelope.intent.version,
            "requestId": self.rid,
            "strategy": self.strategy,
        }


def _handed_over_first(
    envelope: IntentEnvelope, copy: Callable[[], IntentEnvelope]
) -> Callable[[], IntentEnvelope]:
    """`envelope` itself the first time, then copies."""
    pending = [envelope]

    def fresh() -> IntentEnvelope:
        return pending.pop() if pending else copy()

    return fresh


def _final_event(response: dict[str, Any]) -> dict[str, Any]:
    error = response.get("error")
    return {
        "status": response["status"],
        "has_error": error is not None,
        "error_code": None if error is None else error["code"],
    }


def _replayed(eid: str, rid: str, record: dict[str, Any]) -> Outcome:
    """The stored answer, to be sent again byte for byte."""
    stored = record["finalResponse"]
    env = record.get("envelope") or {}
    return Outcome(
        "replayed",
        eid,
        rid,
        (stored.get("metadata") or {}).get("trace_id"),
        stored,
        response_body(stored),
        None,
        (env.get("intent") or {}).get("name"),
        (env.get("routing") or {}).get("strategy"),
    )


def _trace(
    trace_id: str | None,
    agent: str | None,
    intent: str | None,
    response: dict[str, Any],
    latency_ms: float,
) -> dict[str, Any]:
    error = response.get("error")
    return {
        "traceId": trace_id,
        "agent": agent,
        "intent": intent,
        "status": response["status"],
        "latencyMs": round(latency_ms, 3),
        "error": None if error is None else error["message"],
    }


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
    ) -> None:
        self.registry = registry
        self.policy = load_policy(
            policy if not isinstance(policy, os.PathLike) else os.fspath(policy)
        )
        self.middleware = tuple(middleware)
        self.clock = clock or SystemClock()
        self.observer = observer or Observer()
        # The id names files (journal, temp folder): keep it to a safe alphabet.
        self.worker_id = re.sub(r"[^A-Za-z0-9._-]", "_", worker_id or defaults.default_worker_id())[
            :100
        ]
        self.max_message_bytes = max_message_bytes
        if store is None:
            store = (
                FileRecordStore(records_dir, owner=new_owner_token(self.worker_id))
                if records_dir is not None
                else MemoryRecordStore(new_owner_token(self.worker_id))
            )
        self.store = store
        # Claims this process won and is still working on; a claim of ours that is not here
        # was given up unrecorded (its record could not be written): that request is in doubt.
        self._active: set[str] = set()
        self._active_lock = threading.Lock()
        self.invoker = AgentInvoker(self.clock.monotonic)
        self.router = Router(self.invoker, self.observer, agent_timeout_s)

    # -- embedding API -------------------------------------------------------------------
    def route_intent(
        self,
        envelope: IntentEnvelope | dict[str, Any] | bytes | str,
        context: RequestContext | None = None,
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

    def settled(self, parked: Outcome) -> bool:
        """Whether a parked request can be processed again (its owner recorded it or died)."""
        return self.settled_many([parked])[0]

    def settled_many(self, parked: Sequence[Outcome]) -> list[bool]:
        states = self.store.probe([o.execution_id for o in parked])
        out = []
        for o in parked:
            state = states.get(o.execution_id)
            holder = o.claim.holder if o.claim is not None else None
            own = holder is not None and holder.owner == self.store.owner
            out.append(
                state is not ClaimState.RUNNING or (own and not self._is_active(o.execution_id))
            )
        return out

    def commit_sync(self, outcome: Outcome) -> Outcome:
        """Persist the outcome's record (if any) and release its claim; may replace the outcome."""
        if outcome.record is None:
            self.finish(outcome, recorded=False)
            return outcome
        try:
            self.store.put(outcome.execution_id, outcome.record)
        except RecordExists:
            self.finish(outcome, recorded=False)
            return self.after_lost_race(outcome)
        except RecordStoreError:
            self.finish(outcome, recorded=False)
            raise
        self.finish(outcome, recorded=True)
        return outcome

    def finish(self, outcome: Outcome, recorded: bool) -> None:
        """Release the claim once the record is durable (or will not be written).

        An agent that ran without its record being written keeps its claim: any duplicate of
        it is then answered EXECUTION_IN_DOUBT, here or (after this process ends) elsewhere,
        and never run again silently."""
        claim = outcome.claim
        if claim is None:
            return
        outcome.claim = None
        with self._active_lock:
            self._active.discard(claim.execution_id)
        if recorded or not outcome.agent_ran:
            self.store.release(claim)

    def after_lost_race(self, outcome: Outcome) -> Outcome:
        """Another worker recorded this request first (it took over our claim while we
        looked dead): answer from its record."""
        log.warning(
            "request %s was recorded by another worker meanwhile; answering from that record",
            outcome.request_id,
        )
        stored = self.store.get(outcome.execution_id)
        if stored is None:  # pragma: no cover - the record was deleted in between
            return outcome
        return _replayed(outcome.execution_id, outcome.request_id, json.loads(stored))

    def _is_active(self, execution_id: str) -> bool:
        with self._active_lock:
            return execution_id in self._active

    # -- the pipeline --------------------------------------------------------------------
    def process(
        self,
        request: IntentEnvelope | dict[str, Any] | bytes | str,
        context: RequestContext | None = None,
        *,
        content_type: str | None = None,
        correlation_id: str | None = None,
    ) -> Outcome:
        """Route one request, each handler on a pool thread: returns at its deadline even if
        the handler never does."""
        outcome = self._process(request, context, content_type, correlation_id, deliver=None)
        assert outcome is not None
        return outcome

    def process_inline(
        self,
        request: bytes,
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
        outcome = self._process(request, context, content_type, correlation_id, deliver=deliver)
        if outcome is not None:
            deliver(outcome)

    def _process(
        self,
        request: IntentEnvelope | dict[str, Any] | bytes | str,
        context: RequestContext | None,
        content_type: str | None,
        correlation_id: str | None,
        deliver: Callable[[Outcome], None] | None,
    ) -> Outcome | None:
        ctx = context or RequestContext()
        t0 = self.clock.monotonic()
        received = self.clock.now()
        data: Any = None
        body = b""
        try:
            body = self._body(request)
            if content_type not in (None, "", "application/json") and not content_type.startswith(
                "application/json;"
            ):
                raise EnvelopeError(
                    ErrorCode.PROTOCOL_ERROR,
                    f"unsupported content type {content_type!r} (expected application/json)",
                )
            if len(body) > self.max_message_bytes:
                raise EnvelopeError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"message of {len(body)} bytes exceeds the limit of {self.max_message_bytes} bytes",
                )
            data = decode_json(body)
            envelope = normalise(validate_envelope(data, body), received, ctx, body)
        except EnvelopeError as exc:
            if not body and isinstance(request, (bytes, bytearray, memoryview, str)):
                body = (
                    bytes(request, "utf-8", "surrogatepass")
                    if isinstance(request, str)
                    else bytes(request)
                )
            if data is None and isinstance(request, dict):
                data = request
            if (
                data is None
                and exc.code is ErrorCode.PROTOCOL_ERROR
                and content_type
                and (len(body) <= self.max_message_bytes)
            ):
                # Refused for its content type, yet perhaps readable: its requestId still counts.
                try:
                    data = decode_json(body)
                except EnvelopeError:
                    data = None
            return self._rejected(exc, body, data, ctx, t0, received, correlation_id)
        return self._route(envelope, ctx, t0, received, correlation_id, deliver)

    def _body(self, request: Any) -> bytes:
        """The request as JSON bytes: every form is then decoded and checked the same way."""
        if isinstance(request, (bytes, bytearray, memoryview)):
            return bytes(request)
        if isinstance(request, str):
            return request.encode("utf-8", "surrogatepass")
        if isinstance(request, IntentEnvelope):
            request = request.model_dump(mode="json")
        if isinstance(request, dict):
            try:
                return dumps(request)
            except RecursionError:
                raise EnvelopeError(
                    ErrorCode.VALIDATION_ERROR, "JSON nesting deeper than 64 levels", "envelope"
                ) from None
            except (TypeError, ValueError) as exc:
                raise EnvelopeError(
                    ErrorCode.PROTOCOL_ERROR, f"envelope is not JSON-serialisable: {exc}"
                ) from None
        raise EnvelopeError(ErrorCode.PROTOCOL_ERROR, f"cannot route a {type(request).__name__}")

    def _route(
        self,
        envelope: IntentEnvelope,
        ctx: RequestContext,
        t0: float,
        received: datetime,
        correlation_id: str | None,
        deliver: Callable[[Outcome], None] | None = None,
    ) -> Outcome | None:
        env_dict = envelope.to_dict()
        env_json, env_hash, fp = encode_envelope(env_dict)
        req = _Request(
            envelope,
            ctx,
            t0,
            received,
            correlation_id,
            env_dict,
            env_json,
            env_hash,
            fp,
            execution_id_for(envelope.request_id),
        )
        claim = self.store.claim(req.eid, user_id=req.user, fingerprint=fp)
        if claim.state is ClaimState.WON:
            return self._execute_claimed(req, claim, deliver)
        if claim.state is ClaimState.RECORDED:
            assert claim.record is not None
            return self._from_record(req, json.loads(claim.record))
        holder = claim.holder
        if (
            holder is not None
            and holder.known
            and (holder.user_id != req.user or holder.fingerprint != fp)
        ):
            # Another caller's request holds this requestId: never wait for, or answer
            # with, what it will record.
            return self._conflict(req, {})
        if claim.state is ClaimState.RUNNING:
            if self._abandoned_here(claim):
                # Ours, and no thread works on it: its record could not be written. We hold
                # the claim already, so no take-over: record that it is in doubt.
                with self._active_lock:
                    self._active.add(req.eid)
                return self._in_doubt(req, Claim(ClaimState.WON, req.eid, holder=holder))
            return self._parked(req, claim)
        # Orphaned: its owner died before recording. Take the claim over to record that.
        claim = self.store.take_over(claim, user_id=req.user, fingerprint=fp)
        if claim.state is ClaimState.WON:
            with self._active_lock:
                self._active.add(req.eid)
            return self._in_doubt(req, claim)
        if claim.state is ClaimState.RECORDED:
            assert claim.record is not None
            return self._from_record(req, json.loads(claim.record))
        return self._parked(req, claim)

    def _abandoned_here(self, claim: Claim) -> bool:
        holder = claim.holder
        return (
            holder is not None
            and holder.owner == self.store.owner
            and not self._is_active(claim.execution_id)
        )

    def _execute_claimed(
        self, req: _Request, claim: Claim, deliver: Callable[[Outcome], None] | None
    ) -> Outcome | None:
        with self._active_lock:
            self._active.add(req.eid)
        handed_over = False

        def claimed(outcome: Outcome) -> Outcome:
            nonlocal handed_over
            handed_over = True
            outcome.claim = claim
            return outcome

        try:
            candidates = self.registry.find_by_capability(req.intent, req.envelope.intent.version)
            return self._execute(req, candidates, claimed, deliver)
        except Abandoned:
            raise  # the request goes on elsewhere, with its claim
        except BaseException:
            if not handed_over:  # an error of the caller's `deliver` is not ours to undo
                with self._active_lock:
                    self._active.discard(req.eid)
                self.store.release(claim)
            raise

    def _parked(self, req: _Request, claim: Claim) -> Outcome:
        """A live owner is executing this request: the caller waits for its record."""
        return Outcome(
            "parked",
            req.eid,
            req.rid,
            req.trace_id,
            {},
            b"",
            None,
            req.intent,
            req.strategy,
            claim=claim,
        )

    def _execute(
        self,
        req: _Request,
        candidates: Sequence[AgentDefinition],
        claimed: Callable[[Outcome], Outcome],
        deliver: Callable[[Outcome], None] | None,
    ) -> Outcome | None:
        envelope = req.envelope
        rec = ExecutionRecorder(self.clock.monotonic, req.t0)
        if self.middleware:
            request_id = envelope.metadata.requestId
            run_before(self.middleware, envelope, self.observer)
            if envelope.metadata.requestId != request_id:
                log.warning("middleware changed metadata.requestId; the change is ignored")
                envelope.metadata.requestId = request_id
            req.env_dict = envelope.to_dict()
            req.env_json, req.env_hash, _ = encode_envelope(req.env_dict)
            req.refresh()
            candidates = self.registry.find_by_capability(
                envelope.intent.name, envelope.intent.version
            )
        rec.event("INTENT_RECEIVED", req.received_event())
        names = [a.name for a in candidates]
        decision = self.policy.evaluate(names, PolicySubject.of(envelope, req.ctx.user_id))
        for denied in decision.filtered:
            self.observer.policy_filtered(denied, decision.rules[denied])
        p: Plan = plan(envelope, names, decision)
        env_json = req.env_json
        policy = decision.to_dict()
        if p.error is not None:
            out = RouteOutcome(None, p.error, p.agent, 0, p.reason, p.try_order)
            return claimed(self._executed(req, rec, out, env_json, policy, agent_ran=False))
        agents = {a.name: a for a in candidates}
        # Each agent's private envelope is parsed from the routed one's JSON: a full deep
        # copy, several times cheaper than copying the model. The first agent can have the
        # routed envelope itself, which nothing reads after that (what the record needs is
        # encoded or copied out already), unless middleware will be shown it afterwards.
        fresh: Callable[[], IntentEnvelope] = partial(IntentEnvelope.model_validate_json, env_json)
        if not self.middleware:
            fresh = _handed_over_first(envelope, fresh)
        if deliver is None or req.envelope.routing.strategy is RoutingStrategy.PARALLEL:
            out = self.router.execute(envelope, agents, p, rec, fresh)
            return claimed(self._executed(req, rec, out, env_json, policy, agent_ran=True))

        def finish(out: RouteOutcome) -> None:
            deliver(claimed(self._executed(req, rec, out, env_json, policy, agent_ran=True)))

        self.router.execute_inline(self.router.steps(envelope, agents, p, rec, fresh), finish)
        return None

    def _executed(
        self,
        req: _Request,
        rec: ExecutionRecorder,
        out: RouteOutcome,
        env_json: bytes,
        policy: dict[str, Any],
        *,
        agent_ran: bool,
    ) -> Outcome:
        """The answer and record of a request that was routed (whether an agent ran or not)."""
        envelope = req.envelope
        intent, strategy = req.intent, req.strategy
        router_decision = {
            "agent": out.agent,
            "intent": intent,
            "strategy": strategy,
            "tryOrder": out.try_order,
            "reason": out.reason,
        }
        rec.event("ROUTER_DECISION", router_decision)
        latency_ms = rec.elapsed_ms()
        response = response_dict(
            payload=out.payload,
            error=out.error,
            execution_id=req.eid,
            request_id=req.rid,
            trace_id=req.trace_id,
            agent=out.agent,
            strategy=strategy,
            attempts=out.attempts,
            latency_ms=latency_ms,
            replayable=True,
        )
        rec.event("FINAL_RESPONSE", _final_event(response))
        if self.middleware:
            run_after(
                self.middleware, envelope, AgentResponse.model_validate(response), self.observer
            )
        seconds = latency_ms / 1000.0
        error_code = None if out.error is None else out.error["code"]
        self.observer.routed(intent, strategy, response["status"], error_code, seconds)
        body = response_body(response)
        record = encode_record(
            header=self._header(req.eid, req.rid, req, req.env_hash, req.fp, "execution", True),
            envelope_json=env_json,
            policy=policy,
            events=rec.events,
            decision=router_decision,
            response_body=body,
            trace=_trace(req.trace_id, out.agent, intent, response, latency_ms),
        )
        return Outcome(
            "executed",
            req.eid,
            req.rid,
            req.trace_id,
            response,
            body,
            record,
            intent,
            strategy,
            None,
            seconds,
            agent_ran=agent_ran,
        )

    # -- answers that run no agent -------------------------------------------------------
    def _header(
        self,
        eid: str,
        rid: str,
        req: _Request | _Received,
        env_hash: str | None,
        fp: str | None,
        kind: str,
        replayable: bool,
    ) -> dict[str, Any]:
        return {
            "executionId": eid,
            "requestId": rid,
            "correlationId": req.correlation_id or req.ctx.correlation_id,
            "createdAt": format_timestamp(req.received),
            "envelopeHash": env_hash,
            "fingerprint": fp,
            "replayable": replayable,
            "kind": kind,
            "workerId": self.worker_id,
            "runtimeVersion": __version__,
            "userId": req.ctx.user_id,
            "recordFormat": 1,
        }

    def _unrouted_record(
        self,
        rec: ExecutionRecorder,
        header: dict[str, Any],
        envelope: dict[str, Any] | None,
        response: dict[str, Any],
        intent: str | None,
        strategy: str | None,
        reason: str,
        raw: dict[str, Any] | None = None,
    ) -> bytes:
        """The record of a request that reached no agent: its last two events and the rest."""
        decision: dict[str, Any] = {
            "agent": None,
            "intent": intent,
            "strategy": strategy,
            "tryOrder": [],
            "reason": reason,
        }
        rec.event("ROUTER_DECISION", decision)
        rec.event("FINAL_RESPONSE", _final_event(response))
        trace_id = response["metadata"]["trace_id"]
        return dumps(
            build_record(
                header=header,
                envelope=envelope,
                raw=raw,
                policy={"allowed": [], "filtered": [], "reasons": {}},
                events=rec.events,
                decision=decision,
                response=response,
                trace=_trace(trace_id, None, intent, response, rec.elapsed_ms()),
            )
        )

    def _from_record(self, req: _Request, record: dict[str, Any]) -> Outcome:
        """The stored answer, for the same caller asking the same thing only."""
        header = record.get("header", {})
        stored = record.get("finalResponse")
        if (
            (header.get("userId") or "") != req.user
            or header.get("fingerprint") != req.fp
            or not isinstance(stored, dict)
        ):
            return self._conflict(req, header)
        agent = (stored.get("metadata") or {}).get("agent")
        if agent:
            # The policy may have changed since: the stored answer is for those it allows now.
            decision = self.policy.evaluate(
                [agent], PolicySubject.of(req.envelope, req.ctx.user_id)
            )
            if agent in decision.filtered:
                return self._denied(req, agent, decision.reasons[agent])
        return _replayed(req.eid, req.rid, record)

    def _denied(self, req: _Request, agent: str, reason: str) -> Outcome:
        response = response_dict(
            payload=None,
            error=error_dict(
                ErrorCode.UNAUTHORIZED,
                f"the recorded answer came from agent '{agent}', which policy no longer "
                f"allows for this caller ({reason})",
                {"execution_id": req.eid, "agent": agent},
            ),
            execution_id=req.eid,
            request_id=req.rid,
            trace_id=req.trace_id,
            agent=None,
            strategy=req.strategy,
            attempts=0,
            latency_ms=0.0,
            replayable=False,
        )
        return Outcome(
            "denied",
            req.eid,
            req.rid,
            req.trace_id,
            response,
            response_body(response),
            None,
            req.intent,
            req.strategy,
        )

    def _conflict(self, req: _Request, header: dict[str, Any]) -> Outcome:
        response = response_dict(
            payload=None,
            error=error_dict(
                ErrorCode.IDEMPOTENCY_CONFLICT,
                f"requestId '{req.rid}' was already used for a different request",
                {"execution_id": req.eid, "recorded_at": header.get("createdAt")},
            ),
            execution_id=req.eid,
            request_id=req.rid,
            trace_id=req.trace_id,
            agent=None,
            strategy=None,
            attempts=0,
            latency_ms=0.0,
            replayable=False,
        )
        return Outcome(
            "conflict", req.eid, req.rid, req.trace_id, response, response_body(response), None
        )

    def _in_doubt(self, req: _Request, claim: Claim) -> Outcome:
        """Record and answer that an earlier execution's outcome is unknown (never re-run)."""
        rec = ExecutionRecorder(self.clock.monotonic, req.t0)
        message = (
            "an earlier delivery of this request started executing and its worker stopped "
            "before recording the result; it is not run again"
        )
        response = response_dict(
            payload=None,
            error=error_dict(ErrorCode.EXECUTION_IN_DOUBT, message, {"execution_id": req.eid}),
            execution_id=req.eid,
            request_id=req.rid,
            trace_id=req.trace_id,
            agent=None,
            strategy=req.strategy,
            attempts=0,
            latency_ms=rec.elapsed_ms(),
            replayable=False,
        )
        rec.event("INTENT_RECEIVED", req.received_event())
        rec.event("DUPLICATE_DELIVERY", {"kind": "in_doubt", "redelivered": req.ctx.redelivered})
        header = self._header(
            req.eid, req.rid, req, envelope_hash(req.env_dict), req.fp, "in_doubt", False
        )
        record_bytes = self._unrouted_record(
            rec, header, req.env_dict, response, req.intent, req.strategy, "execution_in_doubt"
        )
        return Outcome(
            "in_doubt",
            req.eid,
            req.rid,
            req.trace_id,
            response,
            response_body(response),
            record_bytes,
            req.intent,
            req.strategy,
            claim=claim,
        )

    def _rejected(
        self,
        exc: EnvelopeError,
        body: bytes,
        data: Any,
        ctx: RequestContext,
        t0: float,
        received: datetime,
        correlation_id: str | None,
    ) -> Outcome:
        rid = (
            request_id_hint(data)
            or ctx.message_id
            or ctx.correlation_id
            or request_id_for_body(body)
        )
        eid = execution_id_for(rid)
        trace_id = _trace_from_traceparent(ctx.traceparent) or trace_id_for(rid)
        rec = ExecutionRecorder(self.clock.monotonic, t0)
        intent = None
        if isinstance(data, dict) and isinstance(data.get("intent"), dict):
            name = data["intent"].get("name")
            intent = name if isinstance(name, str) else None
        response = response_dict(
            payload=None,
            error=error_dict(exc.code, exc.message, exc.details()),
            execution_id=eid,
            request_id=rid,
            trace_id=trace_id,
            agent=None,
            strategy=None,
            attempts=0,
            latency_ms=rec.elapsed_ms(),
            replayable=False,
        )
        record_bytes = None
        # Recorded only under a claim we win: a malformed twin never writes over, or in
        # place of, the record of the request whose requestId it carries.
        claim: Claim | None = self.store.claim(eid, user_id=ctx.user_id or "", fingerprint=None)
        if claim is not None and not claim.won:
            claim = None
        if claim is not None:
            rec.event(
                "INTENT_RECEIVED",
                {"intent": intent, "version": None, "requestId": rid, "strategy": None},
            )
            header = self._header(
                eid, rid, _Received(ctx, received, correlation_id), None, None, "rejected", False
            )
            record_bytes = self._unrouted_record(
                rec, header, None, response, intent, None, "invalid_request", raw_body_fields(body)
            )
        return Outcome(
            "rejected",
            eid,
            rid,
            trace_id,
            response,
            response_body(response),
            record_bytes,
            intent,
            None,
            f"{exc.code.value}: {exc.message}",
            claim=claim,
        )

    def close(self) -> None:
        self.invoker.close()
        self.store.close()
