"""From what a caller sent to a valid, normalised request, or to why it was refused.

Every form a request may take (envelope model, dict, JSON bytes or text) becomes JSON bytes
first, so that all are decoded and checked the same way: content type, size, JSON, schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from runtime.canonical import (
    canonical_text,
    dumps,
    encode_envelope,
    execution_id_for,
    names_text,
    rejection_id_for,
    request_id_for_body,
    sha256_hex,
    string_text,
    trace_id_for,
)
from runtime.envelope import (
    MAX_DEPTH,
    Arrival,
    IntentEnvelope,
    RequestContext,
    RoutingStrategy,
    decode_json,
    depth_exceeds,
    normalise,
    request_id_hint,
    trace_from_traceparent,
    validate_envelope,
)
from runtime.errors import EnvelopeError, ErrorCode
from runtime.outcome import Outcome, OutcomeKind, rejection_from_record
from runtime.recorder import (
    ExecutionRecorder,
    RecordHeader,
    RecordKind,
    header_json,
    intent_received_json,
    raw_body_fields,
    record_header,
    unrouted_record,
)
from runtime.response import error_dict, response_body, response_dict
from runtime.stores.base import RecordStore

Incoming = IntentEnvelope | dict[str, Any] | bytes | str


@dataclass(slots=True)
class Request:
    """A valid, normalised request on its way through the runtime."""

    envelope: IntentEnvelope
    arrival: Arrival
    body: bytes  # as received: the envelope as routed can be read from it again
    envelope_json: bytes  # canonical: hashed, embedded in the record, parsed for agents' copies
    envelope_hash: str
    fingerprint: str  # of intent, payload and routing: what a duplicate must match
    execution_id: str
    # Read once from the envelope, before any agent: an agent may be handed the routed
    # envelope itself, and what it does to it must not reach the record.
    request_id: str = ""
    trace_id: str | None = None
    intent: str = ""
    strategy: str = ""
    routed_dict: dict[str, Any] | None = None  # the envelope as routed, once asked for

    @classmethod
    def of(cls, envelope: IntentEnvelope, arrival: Arrival, body: bytes) -> Request:
        """Of an envelope read from `body` and normalised (see `accept`)."""
        envelope_json, envelope_hash, fingerprint = encode_read_envelope(envelope)
        request = cls(
            envelope=envelope,
            arrival=arrival,
            body=body,
            envelope_json=envelope_json,
            envelope_hash=envelope_hash,
            fingerprint=fingerprint,
            execution_id=execution_id_for(envelope.request_id),
        )
        request.refresh()
        return request

    @property
    def envelope_dict(self) -> dict[str, Any]:
        """The envelope as routed, as data (`to_dict()` order): read again from the body,
        since the routed envelope itself may have been handed to an agent since."""
        if self.routed_dict is None:
            arrival = self.arrival
            body = self.body
            envelope = normalise(
                validate_envelope(decode_json(body), body),
                received_at=arrival.received,
                ctx=arrival.context,
                body=body,
            )
            self.routed_dict = envelope.to_dict()
        return self.routed_dict

    def reencode(self) -> None:
        """After middleware changed the envelope (never its requestId)."""
        self.routed_dict = self.envelope.to_dict()
        self.envelope_json, self.envelope_hash, _ = encode_envelope(self.routed_dict)
        self.refresh()

    def refresh(self) -> None:
        envelope = self.envelope
        self.request_id = envelope.request_id
        self.trace_id = envelope.metadata.traceId
        self.intent = envelope.intent.name
        self.strategy = envelope.routing.strategy.value

    @property
    def context(self) -> RequestContext:
        return self.arrival.context

    @property
    def user(self) -> str:
        return self.arrival.context.user_id or ""

    def _header_fields(self, kind: RecordKind, worker_id: str) -> dict[str, Any]:
        """Its record's header fields; only an execution's record is replayable."""
        return {
            "execution_id": self.execution_id,
            "request_id": self.request_id,
            "arrival": self.arrival,
            "envelope_hash": self.envelope_hash,
            "fingerprint": self.fingerprint,
            "kind": kind,
            "replayable": kind == "execution",
            "worker_id": worker_id,
        }

    def header(self, *, kind: RecordKind, worker_id: str) -> RecordHeader:
        """Its record's header."""
        return record_header(**self._header_fields(kind, worker_id))

    def header_json(self, *, kind: RecordKind, worker_id: str) -> str:
        """`header(...)` as JSON text."""
        return header_json(**self._header_fields(kind, worker_id))

    def error_answer(
        self,
        kind: OutcomeKind,
        *,
        error: dict[str, Any],
        latency_ms: float = 0.0,
        same_request: bool = True,
    ) -> Outcome:
        """An answer with `error` and no agent; of another request's id (`same_request`
        false: a conflict) the reply names no strategy. The outcome keeps this request's
        intent either way: it is what was asked for, and what metrics count it under."""
        strategy = self.strategy if same_request else None
        response = response_dict(
            payload=None,
            error=error,
            execution_id=self.execution_id,
            request_id=self.request_id,
            trace_id=self.trace_id,
            agent=None,
            strategy=strategy,
            attempts=0,
            latency_ms=latency_ms,
            replayable=False,
        )
        return Outcome(
            kind=kind,
            execution_id=self.execution_id,
            request_id=self.request_id,
            trace_id=self.trace_id,
            response=response,
            body=response_body(response),
            intent=self.intent,
            strategy=strategy,
        )

    def received_event(self) -> str:
        """The INTENT_RECEIVED event's payload (JSON text)."""
        return intent_received_json(
            intent=self.intent,
            version=self.envelope.intent.version,
            request_id=self.request_id,
            strategy=self.strategy,
        )


class Refused(Exception):
    """A message that is not a request: why, its bytes, and what of it could be decoded."""

    def __init__(
        self, error: EnvelopeError, *, body: bytes, data: Any, context: RequestContext
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.body = body
        self.data = data
        self.context = context

    @property
    def request_id(self) -> str:
        """Its own requestId if readable, else the transport's ids, else its body's hash."""
        context = self.context
        return (
            request_id_hint(self.data)
            or context.message_id
            or context.correlation_id
            or request_id_for_body(self.body)
        )

    @property
    def intent(self) -> str | None:
        data = self.data
        if isinstance(data, dict) and isinstance(data.get("intent"), dict):
            name = data["intent"].get("name")
            return name if isinstance(name, str) else None
        return None

    def trace_id(self, request_id: str) -> str:
        return trace_from_traceparent(self.context.traceparent) or trace_id_for(request_id)

    def answer(
        self,
        arrival: Arrival,
        *,
        store: RecordStore,
        monotonic: Callable[[], float],
        worker_id: str,
    ) -> Outcome:
        """The structured error for this message, and its record unless one exists already.

        It claims nothing: a message rejected before routing does not consume its requestId
        (the client may fix it and re-send). Its record is kept under a rejection id derived
        from its raw body, so that its own redeliveries find that record and write none."""
        request_id = self.request_id
        execution_id = rejection_id_for(self.body)
        trace_id = self.trace_id(request_id)
        intent = self.intent
        recorder = ExecutionRecorder(monotonic, arrival.started)
        error = self.error
        response = response_dict(
            payload=None,
            error=error_dict(error.code, error.message, error.details()),
            execution_id=execution_id,
            request_id=request_id,
            trace_id=trace_id,
            agent=None,
            strategy=None,
            attempts=0,
            latency_ms=recorder.elapsed_ms(),
            replayable=False,
        )
        stored = store.get(execution_id)
        record = None
        if stored is None:
            recorder.event(
                "INTENT_RECEIVED",
                {"intent": intent, "version": None, "requestId": request_id, "strategy": None},
            )
            header = record_header(
                execution_id=execution_id,
                request_id=request_id,
                arrival=arrival,
                envelope_hash=None,
                fingerprint=None,
                kind="rejected",
                replayable=False,
                worker_id=worker_id,
            )
            record = unrouted_record(
                recorder,
                header=header,
                envelope=None,
                response=response,
                intent=intent,
                strategy=None,
                reason="invalid_request",
                raw=raw_body_fields(self.body),
            )
        outcome = Outcome(
            kind="rejected",
            execution_id=execution_id,
            request_id=request_id,
            trace_id=trace_id,
            response=response,
            body=response_body(response),
            record=record,
            intent=intent,
            reject_reason=f"{error.code.value}: {error.message}",
        )
        return rejection_from_record(outcome, stored)


def accept(
    request: Incoming,
    arrival: Arrival,
    *,
    content_type: str | None,
    max_message_bytes: int,
) -> Request:
    """The valid, normalised request, or `Refused` (a structured error, never anything else).

    A body is validated straight from its bytes (pydantic's JSON parser) when nothing about it
    can make `read` refuse it where that parser would not: then both give the same envelope
    (tests/unit/test_intake.py). Anything else, and anything that parser or the encoding
    refuses, takes `read`, which says exactly why."""
    try:
        body = request_body(request)
    except EnvelopeError:
        body = None
    if (
        body is not None
        and (content_type is None or _is_json(content_type))
        and len(body) <= max_message_bytes
        and arrival.context.refusal is None
        and _is_utf8(body)
    ):
        accepted = _accept_json(body, arrival)
        if accepted is not None:
            return accepted
    envelope, body = read(
        request, arrival, content_type=content_type, max_message_bytes=max_message_bytes
    )
    return Request.of(envelope, arrival, body)


def _is_json(content_type: str) -> bool:
    return content_type in ("", "application/json") or content_type.startswith("application/json;")


def _is_utf8(body: bytes) -> bool:
    if body.isascii():
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _accept_json(body: bytes, arrival: Arrival) -> Request | None:
    """The request, validated from its bytes; None where `read` must decide.

    That parser is stricter than the stdlib's (control characters, lone surrogates) except
    for NaN, Infinity, numbers out of range and integers too long to write back: those make
    the encoding fail below. Nesting is checked as `validate_envelope` does (only the payload
    can nest)."""
    try:
        envelope = IntentEnvelope.model_validate_json(body)
    except ValidationError:
        return None
    routing = envelope.routing
    if routing.strategy in _NO_NAMED_AGENTS and (routing.targetAgent or routing.fallbackAgents):
        return None
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH and depth_exceeds(
        envelope.payload, MAX_DEPTH - 1
    ):
        return None
    normalise(envelope, received_at=arrival.received, ctx=arrival.context, body=body)
    try:
        return Request.of(envelope, arrival, body)
    except ValueError:  # NaN or infinite, an integer too long, a lone surrogate
        return None


_NO_NAMED_AGENTS = (RoutingStrategy.BROADCAST, RoutingStrategy.PARALLEL)


def encode_read_envelope(envelope: IntentEnvelope) -> tuple[bytes, str, str]:
    """`encode_envelope(envelope.to_dict())` of an envelope validated from JSON and
    normalised, written from its fields: every member but the payload has a fixed shape of
    strings (sorted keys by hand), the payload is JSON data."""
    context, intent, metadata, routing = (
        envelope.context,
        envelope.intent,
        envelope.metadata,
        envelope.routing,
    )
    intent_text = f'{{"name":{string_text(intent.name)},"version":{string_text(intent.version)}}}'
    payload_text = canonical_text(envelope.payload)
    routing_text = (
        f'{{"fallbackAgents":{names_text(routing.fallbackAgents)},'
        f'"strategy":"{routing.strategy.value}",'
        f'"targetAgent":{"null" if routing.targetAgent is None else string_text(routing.targetAgent)}}}'
    )
    # Normalised: the timestamps and both ids are set.
    timestamp, created, request_id, trace_id = (
        context.timestamp,
        metadata.createdAt,
        metadata.requestId,
        metadata.traceId,
    )
    whole = (
        f'{{"context":{{"priority":"{context.priority.value}",'
        f'"sourceAgent":{string_text(context.sourceAgent)},"tags":{names_text(context.tags)},'
        f'"timestamp":{"null" if timestamp is None else string_text(timestamp)}}},'
        f'"intent":{intent_text},'
        f'"metadata":{{"createdAt":{"null" if created is None else string_text(created)},'
        f'"identityChain":{names_text(metadata.identityChain)},'
        f'"requestId":{"null" if request_id is None else string_text(request_id)},'
        f'"source":{string_text(metadata.source)},'
        f'"traceId":{"null" if trace_id is None else string_text(trace_id)}}},'
        f'"payload":{payload_text},"routing":{routing_text},"version":"1.0"}}'
    ).encode()
    fingerprint = (
        f'{{"intent":{intent_text},"payload":{payload_text},"routing":{routing_text}}}'
    ).encode()
    return whole, "sha256:" + sha256_hex(whole), "sha256:" + sha256_hex(fingerprint)


def read(
    request: Incoming,
    arrival: Arrival,
    *,
    content_type: str | None,
    max_message_bytes: int,
) -> tuple[IntentEnvelope, bytes]:
    """The normalised envelope and the body it was read from, or `Refused` (a structured
    error, never anything else)."""
    data: Any = None
    body = b""
    try:
        body = request_body(request)
        if content_type not in (None, "", "application/json") and not content_type.startswith(
            "application/json;"
        ):
            raise EnvelopeError(
                ErrorCode.PROTOCOL_ERROR,
                f"unsupported content type {content_type!r} (expected application/json)",
            )
        if len(body) > max_message_bytes:
            raise EnvelopeError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"message of {len(body)} bytes exceeds the limit of {max_message_bytes} bytes",
            )
        data = decode_json(body)
        if arrival.context.refusal is not None:
            raise arrival.context.refusal
        envelope = normalise(
            validate_envelope(data, body),
            received_at=arrival.received,
            ctx=arrival.context,
            body=body,
        )
        return envelope, body
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
            and (len(body) <= max_message_bytes)
        ):
            # Refused for its content type, yet perhaps readable: its requestId still counts.
            try:
                data = decode_json(body)
            except EnvelopeError:
                data = None
        raise Refused(exc, body=body, data=data, context=arrival.context) from exc


def request_body(request: Any) -> bytes:
    """The request as JSON bytes."""
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
            ) from exc
    raise EnvelopeError(ErrorCode.PROTOCOL_ERROR, f"cannot route a {type(request).__name__}")
