"""The wheel and sdist as users get them: complete, importable outside the checkout, and
working end to end against the real broker with the installed commands."""

from __future__ import annotations

import json
import subprocess
import tarfile
import textwrap
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.install.conftest import Dist, Installed, source_files
from tests.support.broker import AMQP_URL, delete_topology, require_broker, unique
from tests.support.workerproc import free_port

PACKAGES = ("runtime", "worker")


def shipped_files() -> list[str]:
    """What the packages must carry: every module, the browser's files, both py.typed."""
    return [
        p
        for p in source_files()
        if p.startswith(tuple(f"{pkg}/" for pkg in PACKAGES))
        and (p.endswith((".py", "/py.typed")) or p.startswith("worker/browser/static/"))
    ]


def modules() -> set[str]:
    out = set()
    for path in shipped_files():
        if not path.endswith(".py"):
            continue
        name = path[: -len(".py")].replace("/", ".")
        out.add(name.removesuffix(".__init__"))
    return out


def test_the_checkout_has_what_the_packages_must_carry() -> None:
    files = shipped_files()
    assert {"runtime/py.typed", "worker/py.typed", "worker/browser/static/index.html"} <= set(files)
    assert {"worker.amqp.consumer", "runtime.stores.postgres"} <= modules()


def test_the_build_uses_nothing_its_backend_has_deprecated(dist: Dist) -> None:
    """A deprecation in the build configuration is a build that stops working later."""
    assert "deprecated" not in dist.log.lower(), dist.log


def test_the_wheel_holds_every_module_static_file_and_py_typed(dist: Dist) -> None:
    names = set(zipfile.ZipFile(dist.wheel).namelist())
    missing = [p for p in shipped_files() if p not in names]
    assert not missing, f"not in the wheel: {missing}"
    entry_points = zipfile.ZipFile(dist.wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    )
    assert b"intentus = worker.cli:main" in entry_points


def test_the_sdist_holds_every_module_static_file_and_py_typed(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as tar:
        names = tar.getnames()
    root = names[0].split("/", 1)[0]
    inside = {n.split("/", 1)[1] for n in names if "/" in n}
    missing = [p for p in [*shipped_files(), "pyproject.toml", "README.md"] if p not in inside]
    assert not missing, f"not in the sdist {root}: {missing}"


WALK = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    names = []
    for top in sys.argv[1:]:
        package = importlib.import_module(top)
        names.append(top)
        for info in pkgutil.walk_packages(package.__path__, prefix=top + "."):
            importlib.import_module(info.name)
            names.append(info.name)
    print(json.dumps({"names": names, "files": {t: sys.modules[t].__file__ for t in sys.argv[1:]}}))
    """
)


def test_every_module_imports_from_the_installed_wheel(installed: Installed) -> None:
    proc = installed.run(installed.python, "-c", WALK, *PACKAGES)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    for top, file in found["files"].items():
        assert str(installed.venv) in file, f"{top} imported from {file}, not the venv"
    assert set(found["names"]) == modules()


def test_installed_commands_answer_help(installed: Installed) -> None:
    for argv in ([installed.intentus, "--help"], [installed.python, "-m", "worker", "--help"]):
        proc = installed.run(*argv)
        assert proc.returncode == 0, proc.stderr
        assert "worker" in proc.stdout and "records" in proc.stdout


@pytest.fixture
def queue() -> Iterator[str]:
    require_broker()
    name = unique("inst")
    yield name
    delete_topology(name, f"{name}.replies")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.mark.integration
def test_installed_worker_answers_the_installed_client_and_records_it(
    installed: Installed, queue: str, tmp_path: Path
) -> None:
    records = tmp_path / "records"
    port = free_port()
    settings = {
        "INTENTUS_AMQP_URL": AMQP_URL,
        "INTENTUS_QUEUE": queue,
        "INTENTUS_REPLY_QUEUE": f"{queue}.replies",
        "INTENTUS_RECORDS_DIR": str(records),
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [installed.intentus, "worker", "--metrics-addr", f"127.0.0.1:{port}"],
        cwd=installed.workdir,
        env=installed.env(**settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not _ready(port):
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        sent = installed.run(
            installed.intentus,
            "send",
            "ProcessIntent",
            "--payload",
            '{"document_id": "doc-installed"}',
            "--request-id",
            "req-installed-1",
            "--timeout",
            "30",
            **settings,
        )
        assert sent.returncode == 0, sent.stderr
        reply = json.loads(sent.stdout)
        assert reply["status"] == "success"
        assert reply["payload"]["echo"] == {"document_id": "doc-installed"}
        assert reply["metadata"]["agent"] == "echo"

        listed = installed.run(installed.intentus, "records", "list", "--json", **settings)
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [r["requestId"] for r in rows] == ["req-installed-1"]
    finally:
        worker.terminate()
        code = worker.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "worker.log").read_text()
