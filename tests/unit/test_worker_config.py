"""Configuration errors and the metrics exposition, checked without a broker."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from runtime.demo import registry as demo_registry
from runtime.registry import AgentRegistry
from worker import config
from worker.errors import ConfigError
from worker.health import HealthServer
from worker.loader import load_agents, load_policy_file
from worker.metrics import Metrics

# `INTENTUS_X (--x): why`, with the flag that belongs to the variable.
FORMAT = re.compile(r"^(INTENTUS_[A-Z_]+) \((--[a-z-]+)\): \S")


def assert_format(exc: ConfigError) -> None:
    match = FORMAT.match(str(exc))
    assert match, str(exc)
    env, flag = match.groups()
    assert flag == "--" + env.removeprefix("INTENTUS_").lower().replace("_", "-"), str(exc)


class TestConfigErrorFormat:
    @pytest.mark.parametrize(
        ("env", "value"),
        [
            ("INTENTUS_AMQP_URL", "http://x"),
            ("INTENTUS_QUEUE_TYPE", "stream"),
            ("INTENTUS_CONCURRENCY", "many"),
            ("INTENTUS_AGENT_TIMEOUT_S", "soon"),
            ("INTENTUS_PREFETCH", "-1"),
            ("INTENTUS_LOG_LEVEL", "loud"),
            ("INTENTUS_METRICS_ADDR", "nowhere"),
            ("INTENTUS_RECORDS_URL", "mysql://x"),
            ("INTENTUS_WORKER_ID", "a b"),
            ("INTENTUS_AGENTS", "no-colon"),
        ],
    )
    def test_bad_values(self, env: str, value: str) -> None:
        """Every invalid variable is reported as `INTENTUS_X (--x): why`."""
        with pytest.raises(ConfigError) as caught:
            config.load(env={env: value})
        assert str(caught.value).startswith(f"{env} (")
        assert_format(caught.value)

    @pytest.mark.parametrize(
        "spec", ["no_such_module_here:registry", "runtime.demo:nothing", "runtime.demo:time"]
    )
    def test_bad_agents(self, spec: str) -> None:
        """Agents that cannot be loaded: same format."""
        with pytest.raises(ConfigError) as caught:
            load_agents(spec)
        assert_format(caught.value)

    def test_bad_policy_file(self, tmp_path: Path) -> None:
        """An invalid policy file: same format, with the file's own reason after it."""
        path = tmp_path / "policy.json"
        path.write_text('{"default": "maybe"}')
        with pytest.raises(ConfigError) as caught:
            load_policy_file(str(path))
        assert_format(caught.value)

    def test_metrics_port_taken(self) -> None:
        """A metrics address already in use: same format."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(ConfigError) as caught:
                HealthServer(
                    host="127.0.0.1",
                    port=port,
                    registry=Metrics(demo_registry).registry,
                    readiness=lambda: (True, []),
                )
        assert_format(caught.value)


class TestMetricsExposition:
    def test_no_created_series(self) -> None:
        """Counters and histograms come without their `*_created` companions."""
        metrics = Metrics(demo_registry)
        metrics.intents.labels("ProcessIntent", "success", "").inc()
        metrics.record_write.observe(0.001)
        text = generate_latest(metrics.registry).decode()
        assert "intentus_intents_total{" in text
        assert "intentus_record_write_seconds_count" in text
        assert "_created" not in text

    def test_async_agents_cancellations_start_at_zero(self) -> None:
        """Each async agent's cancellation series is there from the start, at 0 (a series
        born at 1 would hide its first cancellation from rate() and increase()); a sync
        agent, which is never cancelled, has none."""
        agents = AgentRegistry()

        async def waits(envelope: Any) -> dict[str, Any]:
            return {}

        agents.register("waits", waits, intents=["WaitIntent"])
        agents.register("plain", lambda envelope: {}, intents=["PlainIntent"])
        text = generate_latest(Metrics(agents).registry).decode()
        assert 'intentus_agent_cancellations_total{agent="waits"} 0.0' in text
        assert 'agent="plain"' not in text
