"""Fault suite: the fast subset runs by default; the full set with `--run-slow` or
INTENTUS_FULL_FAULTS=1 (see docs/reliability.md for the one command)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.load import Collector

FULL = os.environ.get("INTENTUS_FULL_FAULTS", "").lower() in ("1", "true", "yes")
AGENTS = "tests.faults.sideeffect_agents:registry"
HERE = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run the slow (full-size) fault scenarios",
    )


def _run_slow(config: pytest.Config) -> bool:
    try:
        flag = bool(config.getoption("--run-slow"))
    except ValueError:  # the option is only known when this folder is named on the command line
        flag = False
    return flag or FULL or bool(config.option.markexpr)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect `slow` fault scenarios unless asked for (or a -m expression chooses itself)."""
    if _run_slow(config):
        return
    keep, drop = [], []
    for item in items:
        inside = HERE in Path(str(item.fspath)).resolve().parents
        (drop if inside and item.get_closest_marker("slow") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def exec_log(tmp_path: Path) -> Path:
    """The side-effect file the test agents append to (one line per execution)."""
    return tmp_path / "executions.log"


@pytest.fixture
def agent_env(exec_log: Path) -> dict[str, str]:
    """Worker environment that loads the side-effect agents."""
    return {"INTENTUS_AGENTS": AGENTS, "INTENTUS_FAULT_EXEC_LOG": str(exec_log)}


@pytest.fixture
def replies(queue_name: str) -> Iterator[Collector]:
    """A collector on the test's durable reply queue `<queue>.replies`."""
    c = Collector(f"{queue_name}.replies")
    yield c
    c.stop()
