"""Prometheus metrics (prefix `intentus_`), the first middleware of the worker's chain. Label
values come only from the registry, the policy and fixed vocabularies, never from message
content, so cardinality is bounded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from runtime.errors import RecordExists
from runtime.outcome import DUPLICATE_KINDS
from runtime.registry import AgentRegistry
from runtime.version import __version__
from worker.config import DEFAULT_QUEUE
from worker.middleware import WorkerMiddleware

if TYPE_CHECKING:
    from worker.pipeline import Decision, Delivery
    from worker.service import Worker

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
WRITE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
UNKNOWN = "unknown"

# `*_created` series double what every scrape carries and nothing here reads them (rates need
# no creation time); prometheus_client only offers switching them off process-wide.
disable_created_metrics()


class Metrics(WorkerMiddleware):
    """All worker metrics on one CollectorRegistry, kept up to date as a middleware."""

    def __init__(
        self, agents: AgentRegistry, rules: set[str] | None = None, *, queue: str = DEFAULT_QUEUE
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._intents = agents.intent_names()
        self._agents = set(agents.names())
        self._rules = set(rules or ()) | {"default"}
        self.messages_received = self._counter(
            "intentus_messages_received_total", "Deliveries received", ["queue"]
        )
        self.intents = self._counter(
            "intentus_intents_total",
            "Requests answered, by final status",
            ["intent", "status", "error_code"],
        )
        self.route_duration = self._histogram(
            "intentus_route_duration_seconds",
            "Time to route a request (agents included)",
            ["intent", "strategy"],
            buckets=LATENCY_BUCKETS,
        )
        self.agent_attempts = self._counter(
            "intentus_agent_attempts_total", "Agent attempts", ["agent", "status"]
        )
        self.agent_duration = self._histogram(
            "intentus_agent_duration_seconds",
            "Agent attempt duration",
            ["agent"],
            buckets=LATENCY_BUCKETS,
        )
        self.fallbacks = self._counter(
            "intentus_fallbacks_total", "FALLBACK moves to the next agent", ["intent"]
        )
        self.policy_filtered_total = self._counter(
            "intentus_policy_filtered_total", "Candidates removed by policy", ["agent", "rule"]
        )
        self.rejected = self._counter(
            "intentus_messages_rejected_total", "Bad messages dead-lettered", ["reason"]
        )
        self.replies = self._counter(
            "intentus_replies_published_total", "Replies published", ["outcome"]
        )
        self.replies_too_large = self._counter(
            "intentus_replies_too_large_total",
            "Responses over the reply size limit, answered RESPONSE_TOO_LARGE",
        )
        self.duplicates = self._counter(
            "intentus_duplicates_total",
            "Duplicate deliveries answered without running an agent",
            ["kind"],
        )
        self.records_written = self._counter(
            "intentus_records_written_total", "Execution records made durable"
        )
        self.record_write = self._histogram(
            "intentus_record_write_seconds",
            "From record submitted to durable",
            buckets=WRITE_BUCKETS,
        )
        self.record_write_errors = self._counter(
            "intentus_record_write_errors_total", "Record writes that failed"
        )
        self.middleware_errors = self._counter(
            "intentus_middleware_errors_total", "Middleware hooks that raised", ["hook"]
        )
        self.inflight = self._gauge(
            "intentus_inflight", "Deliveries received and not yet acknowledged"
        )
        self.abandoned = self._gauge(
            "intentus_abandoned_agent_threads", "Agent threads still running past their deadline"
        )
        self.async_inflight = self._gauge(
            "intentus_async_inflight",
            "Async agent attempts running (cancelled ones until their cleanup ended)",
        )
        self.agent_cancellations = self._counter(
            "intentus_agent_cancellations_total",
            "Async agents cancelled: at their deadline, as PARALLEL stragglers, at shutdown",
            ["agent"],
        )
        self.async_loop_stalls = self._counter(
            "intentus_async_loop_stalls_total",
            "Times the async agents' event loop was blocked (by blocking code in an async agent)",
        )
        self.broker_connected = self._gauge(
            "intentus_broker_connected", "1 while connected and consuming"
        )
        self.broker_reconnects = self._counter(
            "intentus_broker_reconnects_total", "Reconnections after a broker loss"
        )
        self.consumer_cancels = self._counter(
            "intentus_consumer_cancels_total",
            "Consumers cancelled by the broker (queue deleted, quorum leader moved)",
        )
        self.ready = self._gauge("intentus_ready", "1 while /readyz answers ready")
        self.build_info = self._gauge("intentus_build_info", "Build information", ["version"])
        self.build_info.labels(__version__).set(1)
        for kind in ("replayed", "conflict", "in_doubt"):
            self.duplicates.labels(kind)
        for outcome in ("confirmed", "unroutable", "failed", "skipped"):
            self.replies.labels(outcome)
        # From 0, so that rate() and increase() count an async agent's first cancellations.
        for agent in agents:
            if agent.is_async:
                self.agent_cancellations.labels(agent.name)
        for reason in ("PROTOCOL_ERROR", "VALIDATION_ERROR", "PAYLOAD_TOO_LARGE"):
            self.rejected.labels(reason)
        self._received = self.messages_received.labels(queue)

    def child(self, metric: Any, values: tuple[str, ...]) -> Any:
        """`metric.labels(*values)`, cached: the label sets here are bounded (unknown names
        become one label), and a dictionary hit costs a fraction of `labels()`."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def _counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def _histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def intent_label(self, name: str | None) -> str:
        return name if name in self._intents else UNKNOWN

    def agent_label(self, name: str | None) -> str:
        return name if name in self._agents else UNKNOWN

    # -- the worker's hooks --------------------------------------------------------------
    def started(self, worker: Worker) -> None:
        # Read at each scrape: always current, and nothing to update on the hot path.
        self.inflight.set_function(lambda: worker.inflight)
        self.abandoned.set_function(worker.runtime.invoker.abandoned)
        self.async_inflight.set_function(worker.runtime.aio.inflight)
        self.ready.set_function(lambda: 1 if worker.readiness()[0] else 0)

    def received(self, delivery: Delivery) -> None:
        self._received.inc()

    def decided(self, delivery: Delivery, decision: Decision) -> None:
        outcome = decision.outcome
        intent = self.intent_label(outcome.intent)
        self.child(self.intents, (intent, outcome.status, outcome.error_code or "")).inc()
        if outcome.kind in DUPLICATE_KINDS:
            self.duplicates.labels(outcome.kind).inc()
        elif outcome.kind == "rejected":
            self.rejected.labels(outcome.error_code or "unknown").inc()

    def recorded(
        self, delivery: Delivery, decision: Decision, error: BaseException | None, seconds: float
    ) -> None:
        if error is None:
            self.records_written.inc()
            self.record_write.observe(seconds)
        elif not isinstance(error, RecordExists):  # a lost race is no write error
            self.record_write_errors.inc()

    def claim_failed(self, delivery: Delivery, error: BaseException) -> None:
        self.record_write_errors.inc()

    def replayed(self, delivery: Delivery, decision: Decision) -> None:
        self.duplicates.labels("replayed").inc()

    def reply_too_large(self, delivery: Delivery, decision: Decision) -> None:
        self.replies_too_large.inc()

    def published(self, delivery: Delivery, what: str, result: str) -> None:
        if what == "reply":
            self.child(self.replies, (result,)).inc()

    def replied(self, delivery: Delivery, decision: Decision, result: str) -> None:
        if result == "skipped":
            self.child(self.replies, (result,)).inc()

    def consuming(self, on: bool) -> None:
        self.broker_connected.set(1 if on else 0)

    def reconnected(self) -> None:
        self.broker_reconnects.inc()

    def consumer_cancelled(self) -> None:
        self.consumer_cancels.inc()

    # -- the runtime's reports -----------------------------------------------------------
    def attempt_finished(
        self, agent: str, *, status: str, error_code: str | None, seconds: float
    ) -> None:
        label = self.agent_label(agent)
        self.child(self.agent_attempts, (label, status)).inc()
        self.child(self.agent_duration, (label,)).observe(seconds)

    def attempt_cancelled(self, agent: str) -> None:
        self.child(self.agent_cancellations, (self.agent_label(agent),)).inc()

    def loop_stalled(self, seconds: float) -> None:
        self.async_loop_stalls.inc()

    def fallback(self, intent: str) -> None:
        self.fallbacks.labels(self.intent_label(intent)).inc()

    def policy_filtered(self, agent: str, rule: str) -> None:
        self.policy_filtered_total.labels(
            self.agent_label(agent), rule if rule in self._rules else UNKNOWN
        ).inc()

    def middleware_error(self, middleware: str, hook: str) -> None:
        self.middleware_errors.labels(hook).inc()

    def routed(
        self, intent: str, strategy: str, *, status: str, error_code: str | None, seconds: float
    ) -> None:
        self.child(self.route_duration, (self.intent_label(intent), strategy)).observe(seconds)
