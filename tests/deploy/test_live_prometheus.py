"""A real Prometheus (config generated from deploy/prometheus/) scraping a real worker process
and the real RabbitMQ after a known load: targets up, counts exact, every dashboard and alert
expression evaluated by the server, the shipped rules loaded and evaluated by it."""

from __future__ import annotations

import copy
import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml

from runtime.errors import ErrorCode
from tests.deploy.common import (
    DASHBOARD_FILE,
    DATABASE_TABLES,
    DOCKERFILE,
    K8S_DIR,
    OPERATIONS_DOC,
    PROM_DIR,
    RULES_FILE,
    alert_rules,
    dashboard_queries,
    load_yaml,
    load_yaml_all,
    require_tool,
)
from tests.support.broker import IN_CI, delete_topology, require_broker, unique
from tests.support.workerproc import WorkerProcess, free_port
from worker.clients.blocking import IntentusClient

pytestmark = pytest.mark.integration

RABBITMQ_PROMETHEUS = ("127.0.0.1", 15692)
SCRAPE_INTERVAL = "1s"
# The demo agents plus an async agent that misses its deadline and one that blocks the loop.
AGENTS = "tests.deploy.agents:registry"

# Phase 1: distinct requests, each routed once. (intent, payload, options, expected status)
LOAD: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    *[("ProcessIntent", {"document_id": f"doc-{i}"}, {}, "success") for i in range(8)],
    *[("TransformIntent", {"text": f"hello {i}"}, {}, "success") for i in range(6)],
    *[("SummarizeIntent", {"text": "short"}, {}, "success") for _ in range(3)],
    # Long text: flaky-primary fails; FALLBACK moves on to stable-backup.
    *[
        (
            "SummarizeIntent",
            {"text": "a text well over twenty characters"},
            {"strategy": "FALLBACK"},
            "success",
        )
        for _ in range(4)
    ],
    # Long text with DIRECT: the primary's failure is the answer.
    ("SummarizeIntent", {"text": "another text over twenty characters"}, {}, "error"),
    # No agent handles it.
    *[("NoSuchIntent", {}, {}, "error") for _ in range(2)],
]


def _http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class PrometheusServer:
    """A prometheus process on a free loopback port, with its own data folder."""

    binary: str
    config: Path
    data: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        _wait(self._ready, 30, "prometheus /-/ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.logs()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            body = _http_json(f"{self.url}/api/v1/{path}?{query}")
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        return body

    def query(self, expr: str) -> dict[str, Any]:
        """The API's full answer for an instant query at the current time."""
        return self.api("query", query=expr)

    def vector(self, expr: str) -> list[tuple[dict[str, str], float]]:
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        data = answer["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def value(self, expr: str) -> float | None:
        result = self.vector(expr)
        return result[0][1] if result else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def prometheus_config(worker_port: int, rabbitmq: bool) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its targets pointed at this machine."""
    config = copy.deepcopy(load_yaml(PROM_DIR / "prometheus.yml"))
    config["global"]["scrape_interval"] = SCRAPE_INTERVAL
    config["global"]["scrape_timeout"] = SCRAPE_INTERVAL
    config["global"]["evaluation_interval"] = SCRAPE_INTERVAL
    config["rule_files"] = [str(RULES_FILE)]
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name == "intentus-worker":
            job.pop("dns_sd_configs")
            job["static_configs"] = [{"targets": [f"127.0.0.1:{worker_port}"]}]
        elif name.startswith("rabbitmq"):
            if not rabbitmq:
                continue
            host, port = RABBITMQ_PROMETHEUS
            job["static_configs"] = [{"targets": [f"{host}:{port}"]}]
        else:
            raise AssertionError(f"unexpected scrape job {name} in prometheus.yml")
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


@dataclass
class Stack:
    worker: WorkerProcess
    prometheus: PrometheusServer
    queue: str
    sent: int
    rabbitmq: bool
    replies: list[Any]
    extras_sent: bool = False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_broker()
    binary = require_tool("prometheus")
    rabbitmq = _port_open(*RABBITMQ_PROMETHEUS)
    if not rabbitmq and IN_CI:
        pytest.fail(
            "RabbitMQ's Prometheus plugin does not answer on 127.0.0.1:15692 "
            "(bash deploy/local/ensure-prometheus enables rabbitmq_prometheus)"
        )

    tmp = tmp_path_factory.mktemp("deploy-live")
    # Matches the rules' request-queue pattern (intentus.requests*), so queue alerts see it.
    queue = unique("intentus.requests.deploytest")
    worker = WorkerProcess(
        queue, tmp / "records", env={"INTENTUS_AGENTS": AGENTS}, log_path=tmp / "worker.log"
    )
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(worker.port, rabbitmq), sort_keys=False))
    prometheus = PrometheusServer(binary, config, tmp / "tsdb", tmp / "prometheus.log")
    try:
        worker.start().wait_ready()
        prometheus.start()
        replies = []
        with IntentusClient(worker.env["INTENTUS_AMQP_URL"], queue=queue) as client:
            for intent, payload, options, _expected in LOAD:
                replies.append(client.send_intent(intent, payload, timeout=20, **options))
        yield Stack(worker, prometheus, queue, len(LOAD), rabbitmq, replies)
    finally:
        prometheus.stop()
        worker.stop()
        delete_topology(queue, worker.reply_queue)


@pytest.fixture(scope="module")
def after_extras(stack: Stack) -> Stack:
    """Phase 2: a duplicate, a bad message, an async agent cancelled at its deadline and one
    blocking the event loop, once the exact count has been checked."""
    intent, payload, _options, _expected = LOAD[0]
    with IntentusClient(stack.worker.env["INTENTUS_AMQP_URL"], queue=stack.queue) as client:
        first = client.send_intent(intent, payload, timeout=20, request_id="req-deploy-dup")
        again = client.send_intent(intent, payload, timeout=20, request_id="req-deploy-dup")
        assert first is not None and again is not None
        assert again == first  # answered from the record
        bad = client.send_raw(b"this is not json", timeout=20)
        late = client.send_intent("LateIntent", {}, timeout=20)
        blocked = client.send_intent("BlockingIntent", {"block_s": 1.2}, timeout=20)
    assert bad is not None and b"PROTOCOL_ERROR" in bad
    assert late.error is not None and late.error.code == ErrorCode.AGENT_TIMEOUT
    assert blocked.status == "success"
    stack.extras_sent = True
    p = stack.prometheus
    _wait(
        lambda: p.value('sum(intentus_duplicates_total{kind="replayed"})') == 1,
        20,
        "the replayed duplicate in Prometheus",
    )
    _wait(
        lambda: p.value('sum(intentus_messages_rejected_total{reason="PROTOCOL_ERROR"})') == 1,
        20,
        "the rejected message in Prometheus",
    )
    _wait(
        lambda: p.value('sum(intentus_agent_cancellations_total{agent="late-async"})') == 1,
        20,
        "the cancelled async agent in Prometheus",
    )
    _wait(
        lambda: (p.value("sum(intentus_async_loop_stalls_total)") or 0) >= 1,
        20,
        "the blocked event loop in Prometheus",
    )
    return stack


class TestScrape:
    """Prometheus scrapes the worker (and RabbitMQ) and sees exactly the load sent."""

    def test_replies_are_as_expected(self, stack: Stack) -> None:
        """The load itself behaved as intended (successes, fallbacks, errors)."""
        statuses = [reply.status for reply in stack.replies]
        assert statuses == [expected for *_rest, expected in LOAD]

    def test_worker_target_is_up(self, stack: Stack) -> None:
        """The targets API reports the worker target up."""

        def worker_target() -> dict[str, Any] | None:
            targets = stack.prometheus.api("targets")["data"]["activeTargets"]
            for target in targets:
                if target["labels"]["job"] == "intentus-worker" and target["health"] == "up":
                    return target
            return None

        target = _wait(worker_target, 20, "the worker target to be up")
        assert target["scrapeUrl"] == f"http://127.0.0.1:{stack.worker.port}/metrics"
        assert stack.prometheus.value('up{job="intentus-worker"}') == 1

    def test_rabbitmq_targets_are_up(self, stack: Stack) -> None:
        """RabbitMQ's aggregated and per-queue endpoints are scraped."""
        if not stack.rabbitmq:
            pytest.skip("rabbitmq_prometheus is not enabled on the local broker")
        for job in ("rabbitmq", "rabbitmq-queues"):
            _wait(
                lambda job=job: stack.prometheus.value(f'up{{job="{job}"}}') == 1,
                20,
                f"{job} target up",
            )

    def test_sum_of_intents_equals_number_sent(self, stack: Stack) -> None:
        """sum(intentus_intents_total) in Prometheus equals the requests sent."""
        assert not stack.extras_sent, "runs before the phase-2 messages (file order)"
        p = stack.prometheus
        _wait(
            lambda: p.value("sum(intentus_intents_total)") == stack.sent,
            20,
            f"sum(intentus_intents_total) == {stack.sent}",
        )
        # And the break-down is the load's, not only the total.
        by_status = {
            m["status"]: v for m, v in p.vector("sum by (status) (intentus_intents_total)")
        }
        expected_errors = sum(1 for *_rest, expected in LOAD if expected == "error")
        assert by_status == {"success": stack.sent - expected_errors, "error": expected_errors}
        assert p.value('sum(intentus_fallbacks_total{intent="SummarizeIntent"})') == 4
        assert (
            p.value(
                'sum(intentus_intents_total{intent="unknown", error_code="CAPABILITY_NOT_FOUND"})'
            )
            == 2
        )
        assert p.value("sum(intentus_records_written_total)") == stack.sent


class TestAlertRules:
    """The shipped rules, loaded and evaluated by the real server."""

    def test_rules_loaded_and_healthy(self, stack: Stack) -> None:
        """Every alert of the rules file is loaded and evaluates without error."""
        names = {rule["alert"] for rule in alert_rules()}

        def evaluated() -> list[dict[str, Any]] | None:
            groups = stack.prometheus.api("rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            done = [r for r in rules if not r.get("lastEvaluation", "0001").startswith("0001")]
            return rules if len(done) == len(rules) == len(names) else None

        rules = _wait(evaluated, 20, "every rule evaluated once")
        assert {rule["name"] for rule in rules} == names
        unhealthy = {
            rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"
        }
        assert not unhealthy

    @pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
    def test_alert_expression_parses(self, stack: Stack, rule: dict[str, Any]) -> None:
        """The server accepts the expression as a query."""
        answer = stack.prometheus.query(rule["expr"])
        assert answer["status"] == "success", answer

    def test_healthy_worker_raises_no_worker_alerts(self, stack: Stack) -> None:
        """With the worker up, ready and connected, its health alerts' conditions are empty."""
        p = stack.prometheus
        for name in (
            "IntentusWorkerDown",
            "IntentusNoWorkers",
            "IntentusWorkerNotReady",
            "IntentusBrokerDisconnected",
        ):
            (rule,) = [r for r in alert_rules() if r["alert"] == name]
            assert p.vector(rule["expr"]) == [], name

    def test_dead_letter_alert_sees_the_real_dlq(self, after_extras: Stack) -> None:
        """The bad message lands in the real DLQ; the DLQ rule's condition selects it and the
        server puts the alert in pending/firing for that queue."""
        stack = after_extras
        if not stack.rabbitmq:
            pytest.skip("rabbitmq_prometheus is not enabled on the local broker")
        dlq = f"{stack.queue}.dlq"
        (rule,) = [r for r in alert_rules() if r["alert"] == "IntentusDeadLetterQueueNotEmpty"]

        def dlq_selected() -> list[tuple[dict[str, str], float]]:
            return [
                (m, v) for m, v in stack.prometheus.vector(rule["expr"]) if m.get("queue") == dlq
            ]

        # RabbitMQ refreshes queue statistics every 5 s.
        ((labels, value),) = _wait(dlq_selected, 30, f"{dlq} in the DLQ alert's result")
        assert value == 1
        assert labels["vhost"] == "/"

        def alert_active() -> dict[str, Any] | None:
            for alert in stack.prometheus.api("alerts")["data"]["alerts"]:
                if (
                    alert["labels"]["alertname"] == rule["alert"]
                    and alert["labels"].get("queue") == dlq
                ):
                    return alert
            return None

        alert = _wait(alert_active, 15, "the DLQ alert pending or firing")
        assert alert["state"] in {"pending", "firing"}
        assert alert["annotations"]["summary"] == f"Dead-letter queue {dlq} holds 1 message(s)"

    def test_backlog_rule_sees_the_request_queue(self, after_extras: Stack) -> None:
        """The backlog rule's selector matches the real request queue's series (empty now)."""
        stack = after_extras
        if not stack.rabbitmq:
            pytest.skip("rabbitmq_prometheus is not enabled on the local broker")
        selector = re.search(
            r"rabbitmq_detailed_queue_messages_ready\{[^}]*\}",
            alert_rules_expr("IntentusQueueBacklogGrowing"),
        )
        assert selector is not None
        series = _wait(
            lambda: [
                m
                for m, _v in stack.prometheus.vector(selector.group(0))
                if m.get("queue") == stack.queue
            ],
            20,
            "the request queue's ready-messages series",
        )
        assert series
        dlq_series = [
            m for m, _v in stack.prometheus.vector(selector.group(0)) if m["queue"].endswith(".dlq")
        ]
        assert dlq_series == []

    def test_loop_stall_alert_fires_for_the_worker(self, after_extras: Stack) -> None:
        """The agent that blocked the event loop makes the server fire the stall alert for
        this worker, at once (a stall is a bug: the rule has no `for`)."""
        stack = after_extras
        instance = f"127.0.0.1:{stack.worker.port}"

        def firing() -> dict[str, Any] | None:
            for alert in stack.prometheus.api("alerts")["data"]["alerts"]:
                labels = alert["labels"]
                if (
                    labels["alertname"] == "IntentusAsyncLoopBlocked"
                    and labels.get("instance") == instance
                    and alert["state"] == "firing"
                ):
                    return alert
            return None

        alert = _wait(firing, 20, "the loop stall alert firing")
        assert alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["summary"] == (
            f"Worker {instance}: the event loop of async agents was blocked"
        )
        assert "agent 'blocking-async'" in stack.worker.logs()

    def test_cancellation_rule_sees_the_cancelled_agent(self, after_extras: Stack) -> None:
        """The cancellation rule's rate, without its threshold, has the cancelled agent's
        series; one cancellation is no sustained rate, so the condition itself stays empty."""
        stack = after_extras
        expr = alert_rules_expr("IntentusAsyncAgentCancellations")
        rate, threshold = expr.rsplit(">", 1)
        assert float(threshold) > 0
        per_agent = _wait(
            lambda: {m["agent"]: v for m, v in stack.prometheus.vector(rate) if v > 0},
            20,
            "the cancelled agent's rate",
        )
        assert set(per_agent) == {"late-async"}
        assert stack.prometheus.vector(expr) == []


def alert_rules_expr(name: str) -> str:
    (rule,) = [r for r in alert_rules() if r["alert"] == name]
    return str(rule["expr"])


class TestDashboard:
    """Every dashboard query parses and shows data after the load."""

    @pytest.mark.parametrize(
        ("title", "expr"),
        dashboard_queries(),
        ids=[f"{t}: {e[:40]}" for t, e in dashboard_queries()],
    )
    def test_query_returns_data(self, after_extras: Stack, title: str, expr: str) -> None:
        """Non-empty result with at least one finite value."""
        stack = after_extras
        if "rabbitmq_" in expr and not stack.rabbitmq:
            pytest.skip("rabbitmq_prometheus is not enabled on the local broker")

        def data() -> list[tuple[dict[str, str], float]]:
            return [(m, v) for m, v in stack.prometheus.vector(expr) if math.isfinite(v)]

        assert _wait(data, 15, f"data for {title!r}: {expr}")

    def test_dashboard_metric_names_exist(self, after_extras: Stack) -> None:
        """Every intentus_* series the dashboard and the rules name is exposed by the worker
        (after phase 2: a labelled series appears with its first sample)."""
        stack = after_extras
        exposed = set(
            re.findall(r"^(intentus_\w+?)(?:\{| )", stack.worker.http("/metrics")[1].decode(), re.M)
        )
        text = DASHBOARD_FILE.read_text() + RULES_FILE.read_text() + OPERATIONS_DOC.read_text()
        named = set(re.findall(r"\bintentus_[a-z_]+\b", text)) - DATABASE_TABLES
        assert named, "no metric names found"
        assert named - exposed == set()


class TestProbes:
    """What the container and Kubernetes probes call works against the real worker."""

    def test_dockerfile_healthcheck_command(self, stack: Stack) -> None:
        """The HEALTHCHECK command exits 0 against a live worker and non-zero without one."""
        (healthcheck,) = [
            c for c in dockerfile.parse_file(str(DOCKERFILE)) if c.cmd == "HEALTHCHECK"
        ]
        assert healthcheck.json and healthcheck.value[0] == "CMD"
        argv = list(healthcheck.value[1:])
        assert argv[0] == "python"
        argv[0] = sys.executable
        env = dict(stack.worker.env)
        ok = subprocess.run(argv, env=env, capture_output=True, timeout=20, check=False)
        assert ok.returncode == 0, ok.stderr
        env["INTENTUS_METRICS_ADDR"] = f"0.0.0.0:{free_port()}"
        down = subprocess.run(argv, env=env, capture_output=True, timeout=20, check=False)
        assert down.returncode != 0

    def test_kubernetes_probe_paths_answer(self, stack: Stack) -> None:
        """The Deployment's startup, liveness and readiness paths answer 200."""
        (deployment,) = [
            d for d in load_yaml_all(K8S_DIR / "deployment.yaml") if d["kind"] == "Deployment"
        ]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        paths = {
            probe: container[probe]["httpGet"]["path"]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert paths == {
            "startupProbe": "/healthz",
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        for path in paths.values():
            assert stack.worker.http(path)[0] == 200, path


class TestShutdown:
    """Runs last in this module: the stop the orchestrators' grace periods rely on."""

    def test_sigterm_exits_zero_within_grace(self, after_extras: Stack) -> None:
        """SIGTERM → exit code 0 well within INTENTUS_SHUTDOWN_GRACE_S."""
        worker = after_extras.worker
        started = time.monotonic()
        worker.signal()
        code = worker.wait(float(worker.env["INTENTUS_SHUTDOWN_GRACE_S"]) + 5)
        assert code == 0, worker.logs()[-4000:]
        assert time.monotonic() - started < float(worker.env["INTENTUS_SHUTDOWN_GRACE_S"])


def test_config_generation_keeps_shipped_jobs() -> None:
    """The generated config differs from the shipped one only in targets and intervals."""
    shipped = load_yaml(PROM_DIR / "prometheus.yml")
    generated = prometheus_config(9464, rabbitmq=True)
    assert [j["job_name"] for j in generated["scrape_configs"]] == [
        j["job_name"] for j in shipped["scrape_configs"]
    ]
    for ours, theirs in zip(generated["scrape_configs"], shipped["scrape_configs"], strict=True):
        for key in ("metrics_path", "params"):
            assert ours.get(key) == theirs.get(key)
