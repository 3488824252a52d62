"""The IntentEnvelope wire model and the one function that turns request bytes into it.

Field names are the seeds' camelCase JSON names, so handlers read `envelope.metadata.requestId`.
Enum strings are accepted in any case and always written in upper case.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from runtime.canonical import request_id_for_body, trace_id_for
from runtime.clock import format_timestamp
from runtime.errors import EnvelopeError, ErrorCode

MAX_DEPTH = 64
MAX_ID_LENGTH = 1024


class Priority(StrEnum):
    LOW = "LOW"
    NORMAL = "NORMAL"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


class RoutingStrategy(StrEnum):
    DIRECT = "DIRECT"
    FALLBACK = "FALLBACK"
    BROADCAST = "BROADCAST"
    PARALLEL = "PARALLEL"


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _iso8601(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 string")
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO 8601 timestamp") from None
    return value


Timestamp = Annotated[str | None, BeforeValidator(_iso8601)]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class IntentRef(_Model):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    version: Annotated[str, Field(min_length=1, max_length=64)] = "1.0"


class IntentContext(_Model):
    sourceAgent: str = "unknown"
    timestamp: Timestamp = None
    priority: Annotated[Priority, BeforeValidator(_upper)] = Priority.NORMAL
    tags: list[str] = Field(default_factory=list)


class IntentMetadata(_Model):
    requestId: Id | None = None
    source: str = "unknown"
    createdAt: Timestamp = None
    traceId: Id | None = None
    identityChain: list[str] = Field(default_factory=list)


class RoutingOptions(_Model):
    strategy: Annotated[RoutingStrategy, BeforeValidator(_upper)] = RoutingStrategy.DIRECT
    targetAgent: str | None = None
    fallbackAgents: list[str] = Field(default_factory=list)


class IntentEnvelope(_Model):
    version: Literal["1.0"]
    intent: IntentRef
    payload: dict[str, Any] = Field(default_factory=dict)
    context: IntentContext = Field(default_factory=IntentContext)
    metadata: IntentMetadata = Field(default_factory=IntentMetadata)
    routing: RoutingOptions = Field(default_factory=RoutingOptions)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def request_id(self) -> str:
        assert self.metadata.requestId is not None, "envelope not normalised"
        return self.metadata.requestId


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the transport knows about a request besides its body (all optional)."""

    message_id: str | None = None
    correlation_id: str | None = None
    user_id: str | None = None
    traceparent: str | None = None
    redelivered: bool = False
    # The transport could not use one of its properties (an id not UTF-8, say): the message
    # is refused with this error before routing, like a body that is not a request.
    refusal: EnvelopeError | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (_INF, -_INF):  # 1e400: not representable, and not storable as JSON
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_INF = float("inf")
_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)
# A JSON escape of a UTF-16 surrogate; only these can decode to text that is not valid UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend(
                (child, depth + 1) for child in node.values() if isinstance(child, (dict, list))
            )
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, (dict, list)))
    return False


def decode_json(body: bytes) -> Any:
    """Bytes → JSON value, or EnvelopeError (PROTOCOL_ERROR / VALIDATION_ERROR)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError(
            ErrorCode.PROTOCOL_ERROR, f"body is not valid UTF-8: {exc.reason} at byte {exc.start}"
        ) from None
    try:
        value = _decoder.decode(text)
    except RecursionError:
        raise EnvelopeError(
            ErrorCode.VALIDATION_ERROR, f"JSON nesting deeper than {MAX_DEPTH} levels"
        ) from None
    except json.JSONDecodeError as exc:
        raise EnvelopeError(
            ErrorCode.PROTOCOL_ERROR,
            f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except ValueError as exc:
        raise EnvelopeError(ErrorCode.PROTOCOL_ERROR, f"body is not JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise EnvelopeError(
            ErrorCode.PROTOCOL_ERROR, "body is not JSON: a string contains a lone UTF-16 surrogate"
        )
    return value


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _validation_message(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors(include_url=False)[0]
    loc = tuple(
        item for item in err["loc"] if not (isinstance(item, str) and item.startswith("function-"))
    )
    path = _field_path(loc) or "envelope"
    kind = err["type"]
    if kind == "extra_forbidden":
        return path, f"unknown field '{path}'"
    if kind == "missing":
        return path, f"missing required field '{path}'"
    if path == "version" and kind == "literal_error":
        return path, f"unsupported version {err.get('input')!r} (supported: '1.0')"
    msg = err["msg"]
    if kind == "enum":
        msg = "must be one of " + err.get("ctx", {}).get("expected", "")
    return path, f"invalid field '{path}': {msg}"


def validate_envelope(data: Any, body: bytes | None = None) -> IntentEnvelope:
    """A decoded JSON value → IntentEnvelope (not yet normalised), or EnvelopeError.

    `body`, the bytes `data` came from, lets the depth check be skipped when the body has too
    few brackets to nest that deep."""
    if not isinstance(data, dict):
        raise EnvelopeError(
            ErrorCode.VALIDATION_ERROR,
            f"envelope must be a JSON object, not {_json_type(data)}",
            "envelope",
        )
    if (body is None or body.count(b"{") + body.count(b"[") > MAX_DEPTH) and depth_exceeds(
        data, MAX_DEPTH
    ):
        raise EnvelopeError(
            ErrorCode.VALIDATION_ERROR, f"JSON nesting deeper than {MAX_DEPTH} levels", "envelope"
        )
    try:
        envelope = IntentEnvelope.model_validate(data)
    except ValidationError as exc:
        path, message = _validation_message(exc)
        raise EnvelopeError(ErrorCode.VALIDATION_ERROR, message, path) from None
    routing = envelope.routing
    if routing.strategy in (RoutingStrategy.BROADCAST, RoutingStrategy.PARALLEL):
        for name in ("targetAgent", "fallbackAgents"):
            if getattr(routing, name):
                raise EnvelopeError(
                    ErrorCode.VALIDATION_ERROR,
                    f"routing.{name} is not allowed with strategy {routing.strategy.value}",
                    f"routing.{name}",
                )
    return envelope


def _json_type(value: Any) -> str:
    return {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
    }.get(type(value), "null")


def trace_from_traceparent(traceparent: str | None) -> str | None:
    # version-traceid-parentid-flags; all-zero trace ids are invalid per W3C.
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        try:
            int(parts[1], 16)
        except ValueError:
            return None
        return parts[1].lower()
    return None


def normalise(
    envelope: IntentEnvelope, *, received_at: datetime, ctx: RequestContext, body: bytes
) -> IntentEnvelope:
    """Fill in every default that depends on the receipt (ids, timestamps), in place."""
    meta = envelope.metadata
    if meta.requestId is None:
        meta.requestId = ctx.message_id or ctx.correlation_id or request_id_for_body(body)
    if meta.traceId is None:
        meta.traceId = trace_from_traceparent(ctx.traceparent) or trace_id_for(meta.requestId)
    stamp = None
    if envelope.context.timestamp is None:
        stamp = format_timestamp(received_at)
        envelope.context.timestamp = stamp
    if meta.createdAt is None:
        meta.createdAt = stamp or format_timestamp(received_at)
    return envelope


def request_id_hint(data: Any) -> str | None:
    """The requestId of a body that failed validation, when it can still be read."""
    if isinstance(data, dict):
        meta = data.get("metadata")
        if isinstance(meta, dict):
            rid = meta.get("requestId")
            if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_LENGTH:
                return rid
    return None


@dataclass(slots=True)
class Arrival:
    """What is known of any delivery: its transport context and when it arrived."""

    context: RequestContext
    received: datetime  # wall clock, for the record
    started: float  # the runtime clock's monotonic time, for latencies
    correlation_id: str | None
