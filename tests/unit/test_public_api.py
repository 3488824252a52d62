"""The public API: what `runtime` and `worker` export is exactly what they expose."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

import runtime
import worker


@pytest.mark.parametrize("package", [runtime, worker], ids=lambda p: p.__name__)
def test_all_is_what_the_package_exposes(package: types.ModuleType) -> None:
    """Every public, non-module name of the package is in `__all__`, and nothing else."""
    exposed = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    exported = set(package.__all__) - {"__version__"}
    assert exposed - {"annotations"} == exported
    assert len(package.__all__) == len(set(package.__all__))


@pytest.mark.parametrize("package", [runtime, worker], ids=lambda p: p.__name__)
def test_exports_come_from_the_package(package: types.ModuleType) -> None:
    """Each export is defined in one of the package's own modules (no re-exported plumbing)."""
    for name in package.__all__:
        value = getattr(package, name)
        module = getattr(value, "__module__", package.__name__)
        if name != "__version__":
            assert module.split(".")[0] == package.__name__, name


def test_worker_exports_the_clients_and_their_errors() -> None:
    """An embedder sending intents needs both clients, Config and every client exception."""
    from worker.errors import ClientError

    errors = {n for n in worker.__all__ if isinstance(getattr(worker, n), type)}
    errors = {n for n in errors if issubclass(getattr(worker, n), ClientError)}
    assert {"IntentusClient", "AsyncIntentusClient", "Config"} <= set(worker.__all__)
    assert errors == {
        name
        for name, value in vars(__import__("worker.errors").errors).items()
        if isinstance(value, type) and issubclass(value, ClientError)
    }


def test_worker_exports_the_embeddable_worker_and_its_middleware() -> None:
    """An application embeds `Worker` and extends it with `WorkerMiddleware`, both from `worker`."""
    from worker.middleware import WorkerMiddleware
    from worker.service import Worker

    assert worker.Worker is Worker
    assert worker.WorkerMiddleware is WorkerMiddleware


class TestEntryPoints:
    def test_console_scripts_resolve(self) -> None:
        """Every console script in pyproject.toml names a callable that imports."""
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        scripts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["scripts"]
        assert scripts == {"intentus": "worker.cli:main"}
        for target in scripts.values():
            module, _, attribute = target.partition(":")
            assert callable(getattr(importlib.import_module(module), attribute)), target

    @pytest.mark.parametrize("module", ["worker", "worker.cli"])
    def test_python_m_runs_the_cli(self, module: str) -> None:
        """`python -m worker` and `python -m worker.cli` both answer `--help` with the CLI's."""
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "usage: intentus" in done.stdout
