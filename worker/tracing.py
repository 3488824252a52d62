"""OpenTelemetry spans for each delivery: receive → route → agent attempts, record, reply.

Optional: without the `otel` extra (opentelemetry-api and -sdk) every function here is a
no-op. With it, tracing is on when a tracer provider is configured: by the embedding
application, or by `configure_from_env()` (what `intentus worker` calls) when
`OTEL_TRACES_EXPORTER` names an exporter; `OTEL_SDK_DISABLED=true` turns it off.

The receive span continues the request's `traceparent` header; the reply carries the reply
span's `traceparent`. Span ids stay out of records: the runtime knows nothing of spans, the
spans of routing and attempts are built from Observer hooks after the fact, on the routing
thread, with their measured times (or the thread that carries the request on).
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from runtime.observer import Observer
from worker.errors import ConfigError

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the `otel` extra is not installed
    trace = None  # type: ignore[assignment]

log = logging.getLogger("intentus.tracing")

TRACER_NAME = "intentusnet-worker"
# Receive contexts of deliveries not replied to yet. At most `prefetch` (≤ 65535) deliveries
# are unsettled at once, so keeping the newest 65536 never drops a live one, and bounds what
# deliveries that end without a reply (handed back, no reply destination) leave behind.
_MAX_OPEN = 65_536

_active = False
_open: OrderedDict[int, Any] = OrderedDict()  # id(delivery) → the receive span's context
_open_lock = threading.Lock()
# The attempts of the request being routed: a context variable, not a thread-local, because a
# request whose async agent ended goes on on another thread, in the context it left (the
# runtime carries it over).
_request_attempts: contextvars.ContextVar[list[_Attempt] | None] = contextvars.ContextVar(
    "intentus_request_attempts", default=None
)


def _disabled_by_env() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def configure_from_env() -> bool:
    """Install an SDK tracer provider for `OTEL_TRACES_EXPORTER` (comma-separated: `console`,
    `otlp`); True if tracing is now configured. Unset or `none`: nothing happens."""
    names = [
        n.strip().lower()
        for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if n.strip()
    ]
    names = [n for n in names if n != "none"]
    if not names or _disabled_by_env():
        return False
    if trace is None:
        log.warning(
            "OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed "
            "(pip install 'intentusnet-worker[otel]'); tracing stays off"
        )
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("opentelemetry-sdk is not installed; tracing stays off")
        return False
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": TRACER_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        else:
            log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored", name)
    trace.set_tracer_provider(provider)
    return True


def _otlp_exporter() -> Any:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
    except ImportError:
        raise ConfigError(
            "OTEL_TRACES_EXPORTER=otlp needs the package opentelemetry-exporter-otlp"
        ) from None
    return OTLPSpanExporter()


def enabled() -> bool:
    """OpenTelemetry installed, not disabled, and a real tracer provider configured."""
    if trace is None or _disabled_by_env():
        return False
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def observer(inner: Observer) -> Observer:
    """`inner`, plus spans for routing and agent attempts when tracing is enabled. Also turns
    the worker's span hooks below on or off."""
    global _active
    _active = enabled()
    if not _active:
        return inner
    return cast(Observer, _TracingObserver(inner))


def _tracer() -> Any:
    return trace.get_tracer(TRACER_NAME)


class _Attempt:
    __slots__ = ("agent", "end_ns", "error_code", "number", "start_ns", "status")

    def __init__(self, agent: str, number: int, start_ns: int) -> None:
        self.agent = agent
        self.number = number
        self.start_ns = start_ns
        self.end_ns = 0
        self.status = ""
        self.error_code: str | None = None


class _TracingObserver:
    """Forwards every hook to the worker's observer (the metrics) and keeps, per routing
    thread, the attempts of the request being routed; `routed` turns them into spans."""

    def __init__(self, inner: Observer) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _attempts(self) -> list[_Attempt]:
        attempts = _request_attempts.get()
        if attempts is None:
            attempts = []
            _request_attempts.set(attempts)
        return attempts

    def attempt_started(self, agent: str, attempt: int) -> None:
        self._inner.attempt_started(agent, attempt)
        self._attempts().append(_Attempt(agent, attempt, time.time_ns()))

    def attempt_finished(
        self, agent: str, *, status: str, error_code: str | None, seconds: float
    ) -> None:
        self._inner.attempt_finished(agent, status=status, error_code=error_code, seconds=seconds)
        for a in self._attempts():
            if a.agent == agent and not a.end_ns:
                a.end_ns = max(a.start_ns, time.time_ns())
                a.status = status
                a.error_code = error_code
                break

    def routed(
        self, intent: str, strategy: str, *, status: str, error_code: str | None, seconds: float
    ) -> None:
        self._inner.routed(intent, strategy, status=status, error_code=error_code, seconds=seconds)
        attempts = self._attempts()
        _request_attempts.set([])
        end = time.time_ns()
        start = min([end - int(seconds * 1e9), *(a.start_ns for a in attempts)])
        route = _tracer().start_span(
            "intentus.route",
            start_time=start,
            attributes=_clean(
                {
                    "intentus.intent": intent,
                    "intentus.strategy": strategy,
                    "intentus.status": status,
                    "intentus.error_code": error_code,
                    "intentus.attempts": len(attempts),
                }
            ),
        )
        if status == "error":
            route.set_status(Status(StatusCode.ERROR, error_code or ""))
        parent = trace.set_span_in_context(route)
        for a in attempts:
            span = _tracer().start_span(
                f"intentus.attempt {a.agent}",
                context=parent,
                start_time=a.start_ns,
                attributes=_clean(
                    {
                        "intentus.agent": a.agent,
                        "intentus.attempt": a.number,
                        "intentus.status": a.status or "abandoned",
                        "intentus.error_code": a.error_code,
                    }
                ),
            )
            if a.status != "success":
                span.set_status(Status(StatusCode.ERROR, a.error_code or "abandoned"))
            span.end(end_time=a.end_ns or end)
        route.end(end_time=end)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}


# -- the worker's hooks (service.py) ---------------------------------------------------------


class _HeaderGetter:
    """Reads AMQP headers, whose values may arrive as bytes."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: dict[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


@contextmanager
def receive(delivery: Any, queue: str) -> Iterator[None]:
    """Around the routing of one delivery on its pipeline thread: the receive span, continued
    from the delivery's `traceparent`, is current while the runtime routes it."""
    if not _active:
        yield
        return
    _request_attempts.set([])
    parent = propagate.extract(delivery.headers, getter=cast(Getter[Any], _GETTER))
    span = _tracer().start_span(
        "intentus.receive",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=_clean(
            {
                "messaging.system": "rabbitmq",
                "messaging.operation.name": "process",
                "messaging.destination.name": queue,
                "messaging.message.id": delivery.message_id,
                "messaging.message.conversation_id": delivery.correlation_id,
                "messaging.rabbitmq.message.delivery_tag": delivery.tag,
                "intentus.redelivered": delivery.redelivered,
            }
        ),
    )
    ctx = trace.set_span_in_context(span)
    with _open_lock:
        _open[id(delivery)] = ctx
        while len(_open) > _MAX_OPEN:
            _open.popitem(last=False)
    token = otel_context.attach(ctx)
    try:
        yield
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        otel_context.detach(token)
        span.end()


def _parent(delivery: Any, *, done: bool = False) -> Any:
    with _open_lock:
        return _open.pop(id(delivery), None) if done else _open.get(id(delivery))


def record(delivery: Any, outcome: Any) -> Any:
    """Start the span of writing the delivery's record; end it with `end()`."""
    if not _active:
        return None
    parent = _parent(delivery)
    receiving = trace.get_current_span(parent) if parent is not None else None
    attributes = _clean(
        {
            "intentus.request_id": outcome.request_id,
            "intentus.execution_id": outcome.execution_id,
            "intentus.trace_id": outcome.trace_id,
            "intentus.outcome": outcome.kind,
        }
    )
    if receiving is not None and receiving.is_recording():
        receiving.set_attributes(attributes)
    return _tracer().start_span("intentus.record", context=parent, attributes=attributes)


def reply(delivery: Any, decision: Any) -> Any:
    """Start the span of publishing the reply (and dead letter) and put its `traceparent`
    into the reply's headers; end it with `end()` once the broker confirmed."""
    if not _active:
        return None
    outcome = decision.outcome
    span = _tracer().start_span(
        "intentus.reply",
        context=_parent(delivery, done=True),
        kind=SpanKind.PRODUCER,
        attributes=_clean(
            {
                "messaging.system": "rabbitmq",
                "messaging.operation.name": "publish",
                "messaging.destination.name": decision.reply.routing_key
                if decision.reply is not None
                else None,
                "messaging.message.conversation_id": decision.reply.correlation_id
                if decision.reply is not None
                else None,
                "intentus.request_id": outcome.request_id,
                "intentus.execution_id": outcome.execution_id,
                "intentus.status": outcome.status,
                "intentus.error_code": outcome.error_code,
                "intentus.dead_lettered": bool(decision.dead_letter_reason),
            }
        ),
    )
    if decision.reply is not None:
        propagate.inject(decision.reply.headers, context=trace.set_span_in_context(span))
    return span


def end(span: Any, result: BaseException | str | None = None) -> None:
    """End a span from `record()` (`result`: the write's exception, if any) or `reply()`
    (`result`: the publish outcome, `confirmed` or what went wrong)."""
    if span is None:
        return
    if isinstance(result, BaseException):
        span.record_exception(result)
        span.set_status(Status(StatusCode.ERROR, type(result).__name__))
    elif result:
        span.set_attribute("intentus.publish_outcome", result)
        if result != "confirmed":
            span.set_status(Status(StatusCode.ERROR, result))
    span.end()
