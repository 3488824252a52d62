"""The shipped Prometheus config and alert rules, checked with promtool (no server needed)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.deploy.common import (
    K8S_DIR,
    OPERATIONS_DOC,
    PROM_DIR,
    RULES_FILE,
    RULES_TEST_FILE,
    alert_rules,
    load_yaml,
    require_tool,
)

# What the issue asks the rules to cover, and the alert that covers it.
REQUIRED_ALERTS = {
    "worker down": "IntentusWorkerDown",
    "no worker at all": "IntentusNoWorkers",
    "worker not ready": "IntentusWorkerNotReady",
    "error ratio high": "IntentusErrorRatioHigh",
    "in-doubt replies": "IntentusExecutionInDoubt",
    "conflict replies": "IntentusIdempotencyConflict",
    "record write errors": "IntentusRecordWriteErrors",
    "abandoned agent threads": "IntentusAbandonedAgentThreads",
    "queue backlog growing": "IntentusQueueBacklogGrowing",
    "DLQ not empty": "IntentusDeadLetterQueueNotEmpty",
    "broker disconnected": "IntentusBrokerDisconnected",
    "event loop of async agents blocked": "IntentusAsyncLoopBlocked",
    "async agents cancelled at a sustained rate": "IntentusAsyncAgentCancellations",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestPromtool:
    """promtool accepts the files and the rule unit tests pass."""

    def test_config_is_valid(self) -> None:
        """`promtool check config` on the compose Prometheus config (rules included)."""
        result = promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr
        # The config pulls in the rules file through its rule_files glob.
        assert "intentus-alerts.yaml" in result.stdout + result.stderr

    def test_rules_are_valid(self) -> None:
        """`promtool check rules` finds every alert of the file."""
        result = promtool("check", "rules", str(RULES_FILE))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout

    def test_rule_unit_tests_pass(self) -> None:
        """`promtool test rules` fires each alert from synthetic series."""
        result = promtool("test", "rules", str(RULES_TEST_FILE))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_rule_unit_tests_can_fail(self, tmp_path) -> None:
        """A wrong expectation makes `promtool test rules` fail (the tests are not vacuous)."""
        text = RULES_TEST_FILE.read_text().replace(
            'summary: "Worker w1:9464 is down"', 'summary: "Worker w2:9464 is down"'
        )
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / RULES_FILE.name).write_text(RULES_FILE.read_text())
        (tmp_path / "tests").mkdir()
        (tmp_path / "tests" / "alerts_test.yaml").write_text(text)
        result = promtool("test", "rules", str(tmp_path / "tests" / "alerts_test.yaml"))
        assert result.returncode != 0
        assert "IntentusWorkerDown" in result.stdout + result.stderr


class TestAlertCoverage:
    """Every alert is tested, documented and carries its runbook."""

    def test_required_alerts_exist(self) -> None:
        """Each failure mode named in the issue has its alert."""
        names = {rule["alert"] for rule in alert_rules()}
        missing = {what: name for what, name in REQUIRED_ALERTS.items() if name not in names}
        assert not missing

    @pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
    def test_alert_has_labels_and_runbook(self, rule) -> None:
        """severity label, summary, description and a runbook pointing at its doc section."""
        assert rule["labels"]["severity"] in {"critical", "warning"}
        annotations = rule["annotations"]
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key, "").strip(), f"{rule['alert']} lacks {key}"
        anchor = f"docs/operations.md#{rule['alert'].lower()}"
        assert anchor in annotations["runbook"]

    def test_every_alert_fires_in_the_unit_tests(self) -> None:
        """The promtool test file expects every alert to fire and also to stay quiet once."""
        tests = load_yaml(RULES_TEST_FILE)["tests"]
        fired: set[str] = set()
        quiet: set[str] = set()
        for case in tests:
            for check in case["alert_rule_test"]:
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
        names = {rule["alert"] for rule in alert_rules()}
        assert fired == names
        assert quiet == names

    def test_every_alert_has_a_runbook_section(self) -> None:
        """docs/operations.md has a heading per alert (the runbook's anchor)."""
        headings = set(re.findall(r"^#{2,4} +(\w+)\s*$", OPERATIONS_DOC.read_text(), re.M))
        missing = {rule["alert"] for rule in alert_rules()} - headings
        assert not missing

    def test_prometheusrule_matches_rules_file(self) -> None:
        """The Kubernetes PrometheusRule carries exactly the groups of the rules file."""
        prometheus_rule = load_yaml(K8S_DIR / "prometheusrule.yaml")
        assert prometheus_rule["kind"] == "PrometheusRule"
        assert prometheus_rule["spec"] == load_yaml(RULES_FILE)
