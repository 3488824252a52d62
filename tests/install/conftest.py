"""What users install: the sdist and wheel built from a clean copy of the tree, and the wheel
installed into a fresh virtual environment outside the checkout (one of each per session)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.workerproc import ROOT


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path
    log: str  # what the build printed


@dataclass(frozen=True)
class Installed:
    """The wheel installed in a virtual environment; `run` runs from a neutral folder."""

    venv: Path
    workdir: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def intentus(self) -> Path:
        return self.venv / "bin" / "intentus"

    def env(self, **extra: str) -> dict[str, str]:
        """The caller's environment without anything that could reach the checkout or
        configure the worker: no PYTHONPATH, no INTENTUS_* variables, no active venv."""
        keep = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "INTENTUS_", "VIRTUAL_ENV"))
        }
        return {**keep, **extra}

    def run(
        self, *argv: str | Path, timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv],
            cwd=self.workdir,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def source_files() -> list[str]:
    """The tree as it would be committed: tracked files and untracked ones not ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(p for p in out.split("\0") if p and (ROOT / p).is_file())


def _checked(cmd: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        command = " ".join(map(str, cmd))
        pytest.fail(f"{command} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """sdist, then the wheel built from that sdist (`python -m build`), as a release would."""
    base = tmp_path_factory.mktemp("dist")
    src = base / "src"
    for rel in source_files():
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    out = base / "out"
    log = _checked([sys.executable, "-m", "build", "--outdir", out, src], cwd=base)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Dist(wheel=wheel, sdist=sdist, log=log)


@pytest.fixture(scope="session")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The wheel with its `postgres` extra (so the PostgreSQL store imports) in a new venv."""
    base = tmp_path_factory.mktemp("installed")
    venv = base / "venv"
    _checked([sys.executable, "-m", "venv", venv], cwd=base)
    workdir = base / "work"
    workdir.mkdir()
    env = Installed(venv=venv, workdir=workdir)
    _checked(
        [env.python, "-m", "pip", "install", "-q", f"{dist.wheel}[postgres]"],
        cwd=workdir,
        env=env.env(),
    )
    yield env
