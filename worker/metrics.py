"""Prometheus metrics (prefix `intentus_`). Label values come only from the registry, the
policy and fixed vocabularies, never from message content, so cardinality is bounded."""

from __future__ import annotations

from typing import Any

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

from runtime.observer import Observer
from runtime.registry import AgentRegistry
from runtime.version import __version__

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


class Metrics(Observer):
    """All worker metrics on one CollectorRegistry; also the runtime's Observer."""

    def __init__(self, agents: AgentRegistry, rules: set[str] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._intents = agents.intent_names()
        self._agents = set(agents.names())
        self._rules = set(rules or ()) | {"default"}
        self.messages_received = Counter(
            "intentus_messages_received_total", "Deliveries received", ["queue"], registry=r
        )
        self.intents = Counter(
            "intentus_intents_total",
            "Requests answered, by final status",
            ["intent", "status", "error_code"],
            registry=r,
        )
        self.route_duration = Histogram(
            "intentus_route_duration_seconds",
            "Time to route a request (agents included)",
            ["intent", "strategy"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.agent_attempts = Counter(
            "intentus_agent_attempts_total", "Agent attempts", ["agent", "status"], registry=r
        )
        self.agent_duration = Histogram(
            "intentus_agent_duration_seconds",
            "Agent attempt duration",
            ["agent"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "intentus_fallbacks_total", "FALLBACK moves to the next agent", ["intent"], registry=r
        )
        self.policy_filtered_total = Counter(
            "intentus_policy_filtered_total",
            "Candidates removed by policy",
            ["agent", "rule"],
            registry=r,
        )
        self.rejected = Counter(
            "intentus_messages_rejected_total", "Bad messages dead-lettered", ["reason"], registry=r
        )
        self.replies = Counter(
            "intentus_replies_published_total", "Replies published", ["outcome"], registry=r
        )
        self.duplicates = Counter(
            "intentus_duplicates_total",
            "Duplicate deliveries answered without running an agent",
            ["kind"],
            registry=r,
        )
        self.records_written = Counter(
            "intentus_records_written_total", "Execution records made durable", registry=r
        )
        self.record_write = Histogram(
            "intentus_record_write_seconds",
            "From record submitted to durable",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.record_write_errors = Counter(
            "intentus_record_write_errors_total", "Record writes that failed", registry=r
        )
        self.middleware_errors = Counter(
            "intentus_middleware_errors_total", "Middleware hooks that raised", ["hook"], registry=r
        )
        self.inflight = Gauge(
            "intentus_inflight", "Deliveries received and not yet acknowledged", registry=r
        )
        self.abandoned = Gauge(
            "intentus_abandoned_agent_threads",
            "Agent threads still running past their deadline",
            registry=r,
        )
        self.broker_connected = Gauge(
            "intentus_broker_connected", "1 while connected and consuming", registry=r
        )
        self.broker_reconnects = Counter(
            "intentus_broker_reconnects_total", "Reconnections after a broker loss", registry=r
        )
        self.consumer_cancels = Counter(
            "intentus_consumer_cancels_total",
            "Consumers cancelled by the broker (queue deleted, quorum leader moved)",
            registry=r,
        )
        self.ready = Gauge("intentus_ready", "1 while /readyz answers ready", registry=r)
        self.build_info = Gauge("intentus_build_info", "Build information", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        for kind in ("replayed", "conflict", "in_doubt"):
            self.duplicates.labels(kind)
        for outcome in ("confirmed", "unroutable", "failed", "skipped"):
            self.replies.labels(outcome)
        for reason in ("PROTOCOL_ERROR", "VALIDATION_ERROR", "PAYLOAD_TOO_LARGE"):
            self.rejected.labels(reason)

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, cached: the label sets here are bounded (unknown names
        become one label), and a dictionary hit costs a fraction of `labels()`."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def intent_label(self, name: str | None) -> str:
        return name if name in self._intents else UNKNOWN

    def agent_label(self, name: str | None) -> str:
        return name if name in self._agents else UNKNOWN

    # -- runtime Observer ----------------------------------------------------------------
    def attempt_finished(
        self, agent: str, status: str, error_code: str | None, seconds: float
    ) -> None:
        label = self.agent_label(agent)
        self.child(self.agent_attempts, label, status).inc()
        self.child(self.agent_duration, label).observe(seconds)

    def fallback(self, intent: str) -> None:
        self.fallbacks.labels(self.intent_label(intent)).inc()

    def policy_filtered(self, agent: str, rule: str) -> None:
        self.policy_filtered_total.labels(
            self.agent_label(agent), rule if rule in self._rules else UNKNOWN
        ).inc()

    def middleware_error(self, middleware: str, hook: str) -> None:
        self.middleware_errors.labels(hook).inc()

    def routed(
        self, intent: str, strategy: str, status: str, error_code: str | None, seconds: float
    ) -> None:
        self.child(self.route_duration, self.intent_label(intent), strategy).observe(seconds)
