"""OpenTelemetry spans of one request: in the runtime alone, and through a worker on the real
broker (run in-process so the SDK's in-memory exporter sees its spans)."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from runtime import AgentError, AgentRegistry, ErrorCode, IntentusRuntime
from runtime.canonical import execution_id_for
from tests.integration.wire import Wire, envelope, load_record, record_path
from tests.support.broker import AMQP_URL
from tests.support.workerproc import free_port
from worker import tracing
from worker.config import Config
from worker.middleware import Chain
from worker.service import Worker
from worker.testing import MemoryTransport

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"

_EXPORTER = InMemorySpanExporter()


def _install_provider() -> None:
    # A process has one global tracer provider; the first test to need it installs it.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    assert isinstance(trace.get_tracer_provider(), TracerProvider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The in-memory exporter behind the global SDK tracer provider, emptied."""
    _install_provider()
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def registry() -> AgentRegistry:
    reg = AgentRegistry()

    @reg.agent("alpha", intents=["ProcessIntent"], node_priority=10)
    def alpha(envelope: Any) -> dict[str, Any]:
        return {"by": "alpha"}

    @reg.agent("down", intents=["SummarizeIntent"], node_priority=10)
    def down(envelope: Any) -> dict[str, Any]:
        raise AgentError(ErrorCode.AGENT_UNAVAILABLE, "backend down")

    @reg.agent("up", intents=["SummarizeIntent"], node_priority=20)
    def up(envelope: Any) -> dict[str, Any]:
        return {"by": "up"}

    @reg.agent("adown", intents=["AsyncSummarizeIntent"], node_priority=10)
    async def adown(envelope: Any) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        raise AgentError(ErrorCode.AGENT_UNAVAILABLE, "backend down")

    @reg.agent("aup", intents=["AsyncSummarizeIntent"], node_priority=20)
    def aup(envelope: Any) -> dict[str, Any]:
        return {"by": "aup"}

    return reg


def hex_span(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


def parent_of(span: ReadableSpan) -> str | None:
    return format(span.parent.span_id, "016x") if span.parent is not None else None


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def check_attempts(finished: tuple[ReadableSpan, ...], route: ReadableSpan) -> None:
    """FALLBACK over down → up: two attempt spans under the route span, in order."""
    attempts = sorted(
        (s for s in finished if s.name.startswith("intentus.attempt ")),
        key=lambda s: s.attributes["intentus.attempt"] if s.attributes else 0,
    )
    assert [s.name for s in attempts] == ["intentus.attempt down", "intentus.attempt up"]
    assert [parent_of(s) for s in attempts] == [hex_span(route)] * 2
    first, second = (dict(s.attributes or {}) for s in attempts)
    assert first == {
        "intentus.agent": "down",
        "intentus.attempt": 1,
        "intentus.status": "error",
        "intentus.error_code": "AGENT_UNAVAILABLE",
    }
    assert second == {"intentus.agent": "up", "intentus.attempt": 2, "intentus.status": "success"}
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attempts[1].status.status_code is StatusCode.UNSET
    assert attempts[0].end_time is not None and attempts[1].start_time is not None
    assert attempts[0].end_time <= attempts[1].start_time
    assert dict(route.attributes or {}) == {
        "intentus.intent": "SummarizeIntent",
        "intentus.strategy": "FALLBACK",
        "intentus.status": "success",
        "intentus.attempts": 2,
    }


class TestRuntimeSpans:
    def test_fallback_attempts_are_children_of_the_route_span(
        self, spans: InMemorySpanExporter
    ) -> None:
        """Routing in-process under a caller's span: route → two attempts; records hold no span ids."""
        runtime = IntentusRuntime(registry(), observer=tracing.Tracing())
        caller = trace.get_tracer("test").start_span("caller")
        try:
            with trace.use_span(caller, end_on_exit=True):
                response = runtime.route_intent(
                    envelope("SummarizeIntent", request_id="rid-fb", strategy="FALLBACK")
                )
        finally:
            runtime.close()
        assert response.ok
        finished = spans.get_finished_spans()
        (route,) = by_name(finished, "intentus.route")
        assert parent_of(route) == hex_span(caller)  # type: ignore[arg-type]
        check_attempts(finished, route)
        stored = runtime.store.get(execution_id_for("rid-fb"))
        assert stored is not None
        for span in finished:
            assert hex_span(span).encode() not in stored

    def test_off_when_disabled_by_environment(
        self, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """OTEL_SDK_DISABLED=true: a worker puts no tracing middleware in its chain."""
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        assert not tracing.enabled()
        assert not any(isinstance(mw, tracing.Tracing) for mw in _chain_of(tmp_path))
        assert spans.get_finished_spans() == ()

    def test_off_without_the_package(
        self, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """Without OpenTelemetry importable there is no tracing, whatever the environment."""
        monkeypatch.setattr(tracing, "trace", None)
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
        assert not tracing.configure_from_env()
        assert not tracing.enabled()
        assert not any(isinstance(mw, tracing.Tracing) for mw in _chain_of(tmp_path))
        assert spans.get_finished_spans() == ()

    @pytest.mark.parametrize("value", ["", "none"])
    def test_configure_from_env_needs_an_exporter(
        self, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        """Without OTEL_TRACES_EXPORTER (or with `none`) the worker installs no provider."""
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
        assert not tracing.configure_from_env()


def _chain_of(tmp_path: Path) -> tuple[object, ...]:
    """The middlewares of a worker made (and closed unstarted) with these settings."""
    cfg = Config(records_dir=str(tmp_path / "r"), metrics_addr="127.0.0.1:0")
    w = Worker(cfg, registry(), transport=MemoryTransport())
    w.stop()
    assert isinstance(w.hooks, Chain)
    return w.hooks.middlewares


@pytest.fixture
def worker(queue_name: str, tmp_path: Path, spans: InMemorySpanExporter) -> Iterator[Worker]:
    """A worker in this process on the test's queue, tracing into the in-memory exporter."""
    cfg = Config(
        amqp_url=AMQP_URL,
        queue=queue_name,
        reply_queue=f"{queue_name}.replies",
        records_dir=str(tmp_path / "records"),
        metrics_addr=f"127.0.0.1:{free_port()}",
        worker_id=f"trace-{queue_name.rsplit('.', 1)[-1]}",
        concurrency=2,
    )
    w = Worker(cfg, registry())
    w.start()
    deadline = time.monotonic() + 30
    while not w.conn.consuming:
        assert time.monotonic() < deadline, "in-process worker did not start consuming"
        time.sleep(0.05)
    yield w
    assert w.stop() == 0
    # pika's SelectConnection leaves its ioloop's wake-up socket pair to the garbage collector;
    # a subprocess worker never notices, an in-process one would warn at some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def wait_spans(exporter: InMemorySpanExporter, name: str, count: int) -> tuple[ReadableSpan, ...]:
    deadline = time.monotonic() + 10
    while True:
        finished = exporter.get_finished_spans()
        if len(by_name(finished, name)) >= count or time.monotonic() > deadline:
            return finished
        time.sleep(0.02)


@pytest.mark.integration
class TestWorkerSpans:
    def test_direct_request(
        self, worker: Worker, spans: InMemorySpanExporter, queue_name: str
    ) -> None:
        """receive (from traceparent) → route → attempt, record and reply; the reply carries
        the reply span's traceparent; the record holds no span id."""
        wire = Wire()
        try:
            reply = wire.request(
                queue_name,
                envelope(request_id="rid-direct"),
                headers={"traceparent": TRACEPARENT},
            )
        finally:
            wire.close()
        assert reply.json["status"] == "success"
        finished = wait_spans(spans, "intentus.reply", 1)
        assert {s.context.trace_id for s in finished if s.context} == {int(TRACE_ID, 16)}
        (receive,) = by_name(finished, "intentus.receive")
        (route,) = by_name(finished, "intentus.route")
        (attempt,) = by_name(finished, "intentus.attempt alpha")
        (record,) = by_name(finished, "intentus.record")
        (sent,) = by_name(finished, "intentus.reply")
        assert parent_of(receive) == CALLER_SPAN
        assert receive.parent is not None and receive.parent.is_remote
        assert receive.kind is SpanKind.CONSUMER
        assert sent.kind is SpanKind.PRODUCER
        assert parent_of(route) == parent_of(record) == parent_of(sent) == hex_span(receive)
        assert parent_of(attempt) == hex_span(route)
        eid = execution_id_for("rid-direct")
        attrs = dict(receive.attributes or {})
        assert attrs["messaging.system"] == "rabbitmq"
        assert attrs["messaging.destination.name"] == queue_name
        assert attrs["messaging.message.conversation_id"] == "cid-rid-direct"
        assert attrs["intentus.request_id"] == "rid-direct"
        assert attrs["intentus.execution_id"] == eid
        assert attrs["intentus.trace_id"] == TRACE_ID
        assert dict(route.attributes or {})["intentus.strategy"] == "DIRECT"
        assert dict(attempt.attributes or {})["intentus.attempt"] == 1
        assert dict(record.attributes or {})["intentus.execution_id"] == eid
        assert dict(sent.attributes or {})["intentus.publish_outcome"] == "confirmed"
        assert reply.headers["traceparent"] == f"00-{TRACE_ID}-{hex_span(sent)}-01"
        stored = record_path(Path(worker.cfg.records_dir), eid).read_bytes()
        for span in finished:
            assert hex_span(span).encode() not in stored
        assert load_record(Path(worker.cfg.records_dir), eid)["trace"]["traceId"] == TRACE_ID

    def test_fallback_request(
        self, worker: Worker, spans: InMemorySpanExporter, queue_name: str
    ) -> None:
        """A FALLBACK request: two attempt spans under the route span, under the receive span."""
        wire = Wire()
        try:
            reply = wire.request(
                queue_name,
                envelope("SummarizeIntent", request_id="rid-fallback", strategy="FALLBACK"),
                headers={"traceparent": TRACEPARENT},
            )
        finally:
            wire.close()
        assert reply.json["metadata"]["agent"] == "up"
        finished = wait_spans(spans, "intentus.reply", 1)
        (receive,) = by_name(finished, "intentus.receive")
        (route,) = by_name(finished, "intentus.route")
        assert parent_of(route) == hex_span(receive)
        check_attempts(finished, route)

    def test_fallback_from_an_async_agent(
        self, worker: Worker, spans: InMemorySpanExporter, queue_name: str
    ) -> None:
        """The request goes on on another thread after its async agent: both attempt spans
        still sit under its route span, under its receive span."""
        wire = Wire()
        try:
            reply = wire.request(
                queue_name,
                envelope("AsyncSummarizeIntent", request_id="rid-async", strategy="FALLBACK"),
                headers={"traceparent": TRACEPARENT},
            )
        finally:
            wire.close()
        assert reply.json["metadata"]["agent"] == "aup"
        finished = wait_spans(spans, "intentus.reply", 1)
        (receive,) = by_name(finished, "intentus.receive")
        (route,) = by_name(finished, "intentus.route")
        assert parent_of(route) == hex_span(receive)
        attempts = [s for s in finished if s.name.startswith("intentus.attempt ")]
        assert sorted(s.name for s in attempts) == [
            "intentus.attempt adown",
            "intentus.attempt aup",
        ]
        assert {parent_of(s) for s in attempts} == {hex_span(route)}
        statuses = {s.name: dict(s.attributes or {})["intentus.status"] for s in attempts}
        assert statuses == {"intentus.attempt adown": "error", "intentus.attempt aup": "success"}
