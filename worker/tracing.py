"""OpenTelemetry spans for each delivery: receive → route → agent attempts, record, reply.

`Tracing` is a middleware of the worker's chain, put there by the worker when `enabled()`:
without the `otel` extra (opentelemetry-api and -sdk) it is never enabled. With it, tracing is
on when a tracer provider is configured: by the embedding application, or by
`configure_from_env()` (what `intentus worker` calls) when `OTEL_TRACES_EXPORTER` names an
exporter; `OTEL_SDK_DISABLED=true` turns it off.

The receive span continues the request's `traceparent` header; the reply carries the reply
span's `traceparent`. Span ids stay out of records: the runtime knows nothing of spans, the
spans of routing and attempts are built from its reports after the fact, on the routing
thread, with their measured times (or the thread that carries the request on). What is open
for one delivery is kept on the delivery (`delivery.state`), never in this module.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from typing import TYPE_CHECKING, Any, cast

from worker.errors import ConfigError
from worker.middleware import WorkerMiddleware

if TYPE_CHECKING:
    from worker.pipeline import Decision, Delivery

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the `otel` extra is not installed
    trace = None  # type: ignore[assignment]

log = logging.getLogger("intentus.tracing")

TRACER_NAME = "intentusnet-worker"


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


class _Open:
    """The spans of one delivery, in `delivery.state`."""

    __slots__ = ("context", "receive", "record", "reply", "tokens")

    def __init__(self, receive: Any, context: Any) -> None:
        self.receive = receive
        self.context = context
        self.tokens: tuple[Any, Any] | None = None
        self.record: Any = None
        self.reply: Any = None


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


class Tracing(WorkerMiddleware):
    """Spans for each delivery: receive → route → agent attempts, record, reply. Only made
    when `enabled()`; also usable alone as a runtime's observer (route and attempt spans)."""

    def __init__(self, queue: str = "") -> None:
        self.queue = queue
        # The attempts of the request being routed: a context variable, not a thread-local,
        # because a request whose async agent ended goes on on another thread, in the context
        # it left (the runtime carries it over). The list itself is the delivery's.
        self._attempts_var: contextvars.ContextVar[list[_Attempt] | None] = contextvars.ContextVar(
            f"intentus_attempts_{id(self)}", default=None
        )

    # -- the delivery --------------------------------------------------------------------
    def handling(self, delivery: Delivery) -> None:
        """The receive span, continued from the delivery's `traceparent`, is current while
        the runtime routes it."""
        parent = propagate.extract(delivery.headers, getter=cast(Getter[Any], _GETTER))
        span = _tracer().start_span(
            "intentus.receive",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=_clean(
                {
                    "messaging.system": "rabbitmq",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": self.queue,
                    "messaging.message.id": delivery.message_id,
                    "messaging.message.conversation_id": delivery.correlation_id,
                    "messaging.rabbitmq.message.delivery_tag": delivery.tag,
                    "intentus.redelivered": delivery.redelivered,
                }
            ),
        )
        opened = _Open(span, trace.set_span_in_context(span))
        opened.tokens = (otel_context.attach(opened.context), self._attempts_var.set([]))
        delivery.state[self] = opened

    def handled(self, delivery: Delivery, error: BaseException | None) -> None:
        opened = delivery.state.get(self)
        if opened is None or opened.tokens is None:
            return
        context_token, attempts_token = opened.tokens
        opened.tokens = None
        self._attempts_var.reset(attempts_token)
        otel_context.detach(context_token)
        if error is not None:
            opened.receive.record_exception(error)
            opened.receive.set_status(Status(StatusCode.ERROR, type(error).__name__))
        opened.receive.end()

    def recording(self, delivery: Delivery, decision: Decision) -> None:
        opened = delivery.state.get(self)
        outcome = decision.outcome
        attributes = _clean(
            {
                "intentus.request_id": outcome.request_id,
                "intentus.execution_id": outcome.execution_id,
                "intentus.trace_id": outcome.trace_id,
                "intentus.outcome": outcome.kind,
            }
        )
        if opened is None:
            return
        if opened.receive.is_recording():
            opened.receive.set_attributes(attributes)
        opened.record = _tracer().start_span(
            "intentus.record", context=opened.context, attributes=attributes
        )

    def recorded(
        self, delivery: Delivery, decision: Decision, error: BaseException | None, seconds: float
    ) -> None:
        opened = delivery.state.get(self)
        if opened is None or opened.record is None:
            return
        if error is not None:
            opened.record.record_exception(error)
            opened.record.set_status(Status(StatusCode.ERROR, type(error).__name__))
        opened.record.end()
        opened.record = None

    def replying(self, delivery: Delivery, decision: Decision) -> None:
        """The reply span; the reply's headers carry its `traceparent`."""
        if decision.reply is None and not decision.dead_letter_reason:
            return
        opened = delivery.state.get(self)
        outcome = decision.outcome
        reply = decision.reply
        span = _tracer().start_span(
            "intentus.reply",
            context=opened.context if opened is not None else None,
            kind=SpanKind.PRODUCER,
            attributes=_clean(
                {
                    "messaging.system": "rabbitmq",
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": reply.routing_key if reply else None,
                    "messaging.message.conversation_id": reply.correlation_id if reply else None,
                    "intentus.request_id": outcome.request_id,
                    "intentus.execution_id": outcome.execution_id,
                    "intentus.status": outcome.status,
                    "intentus.error_code": outcome.error_code,
                    "intentus.dead_lettered": bool(decision.dead_letter_reason),
                }
            ),
        )
        if reply is not None:
            propagate.inject(reply.headers, context=trace.set_span_in_context(span))
        if opened is None:
            opened = delivery.state[self] = _Open(None, None)
        opened.reply = span

    def replied(self, delivery: Delivery, decision: Decision, result: str) -> None:
        opened = delivery.state.get(self)
        if opened is None or opened.reply is None:
            return
        span, opened.reply = opened.reply, None
        span.set_attribute("intentus.publish_outcome", result)
        if result != "confirmed":
            span.set_status(Status(StatusCode.ERROR, result))
        span.end()

    # -- the runtime's reports -----------------------------------------------------------
    def _attempts(self) -> list[_Attempt]:
        attempts = self._attempts_var.get()
        if attempts is None:
            attempts = []
            self._attempts_var.set(attempts)
        return attempts

    def attempt_started(self, agent: str, attempt: int) -> None:
        self._attempts().append(_Attempt(agent, attempt, time.time_ns()))

    def attempt_finished(
        self, agent: str, *, status: str, error_code: str | None, seconds: float
    ) -> None:
        for a in self._attempts():
            if a.agent == agent and not a.end_ns:
                a.end_ns = max(a.start_ns, time.time_ns())
                a.status = status
                a.error_code = error_code
                break

    def routed(
        self, intent: str, strategy: str, *, status: str, error_code: str | None, seconds: float
    ) -> None:
        attempts = self._attempts()
        self._attempts_var.set([])
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
