"""Shared by the deploy/ checks: paths, the contract's names, external tools (skip locally,
fail under CI), YAML and the dashboard's queries."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.broker import IN_CI
from worker.config import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
RULES_FILE = PROM_DIR / "rules" / "intentus-alerts.yaml"
RULES_TEST_FILE = PROM_DIR / "tests" / "alerts_test.yaml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "intentus-worker.json"
K8S_DIR = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
CONTRACT_DOC = ROOT / "docs" / "contract.md"

# The only INTENTUS_* variables the worker knows: its declared settings (docs/contract.md
# "Configuration" lists them, checked by tests/unit/test_contract_doc.py).
CONTRACT_ENV = tuple(option.env for option in OPTIONS.values())
# Variables of single commands (docs/contract.md "Command line"), not of the worker.
COMMAND_ENV = ("INTENTUS_BROWSER_TOKEN",)

# The PostgreSQL store's tables, named in the operations guide: intentus_* names that are not
# metrics (tests/deploy/test_postgres_role.py checks that they are the store's).
DATABASE_TABLES = frozenset({"intentus_executions", "intentus_schema_version"})

# What Grafana substitutes in the dashboard's queries, for evaluating them directly.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$__interval": "15s", "$__range": "1h"}


def contract_section(title: str) -> str:
    """The text of one `## title` section of docs/contract.md."""
    text = CONTRACT_DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def contract_table_names(title: str) -> list[str]:
    """The first column (a `code` name) of every table row in a section of docs/contract.md."""
    return re.findall(r"^\| `([A-Za-z_]+)` \|", contract_section(title), flags=re.MULTILINE)


def require_tool(name: str) -> str:
    """Path of an external program: skip when missing on a laptop, fail under CI."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (bash deploy/local/ensure-prometheus installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the shipped rules file."""
    return [
        rule
        for group in load_yaml(RULES_FILE)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_panels() -> Iterator[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard()["panels"])


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, Grafana variables substituted."""
    out = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            out.append((panel["title"], expr))
    return out


def intentus_env_names(text: str) -> set[str]:
    return set(re.findall(r"\bINTENTUS_[A-Z0-9_]+\b", text))


def deploy_text_files() -> list[Path]:
    """Every text file under deploy/ plus the operations guide."""
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    return [*files, OPERATIONS_DOC]
