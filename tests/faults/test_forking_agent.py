"""An agent that starts a child process: the child must not keep its dead worker looking alive.

The files store tells a live owner from a dead one by a lock the owner's process holds. A child
forked by an agent (os.fork without exec, or a subprocess) lives on after a SIGKILL of its
worker; if it inherited the lock, every duplicate of the request would wait for the child.
"""

from __future__ import annotations

import os
import signal
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.wire import Wire, envelope
from tests.support import pg
from tests.support.workerproc import ROOT, WorkerProcess

pytestmark = pytest.mark.integration

AGENTS = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from runtime import AgentRegistry

    registry = AgentRegistry()
    PIDS = os.environ["FORK_TEST_PIDS"]


    def note(pid):
        with open(PIDS, "a") as f:
            f.write(f"{pid}\\n")


    @registry.agent("forker", intents=["ForkIntent"], timeout_s=900)
    def forker(envelope):
        how = envelope.payload["how"]
        if how == "fork":
            pid = os.fork()
            if pid == 0:
                time.sleep(600)
                os._exit(0)
        else:
            pid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]).pid
        note(pid)
        note(f"agent {os.getpid()}")
        time.sleep(600)
        return {"ok": True}
    """
)


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Path]:
    """The children's pids, written by the agent; every child is killed at teardown."""
    path = tmp_path / "pids"
    yield path
    if path.exists():
        for line in path.read_text().splitlines():
            if line.isdigit():
                try:
                    os.kill(int(line), signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(params=["files", "postgres"])
def store_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The workers' shared execution store: a records folder, or a PostgreSQL database."""
    if request.param == "files":
        yield {}
        return
    with pg.temporary_database() as url:
        yield {"INTENTUS_RECORDS_URL": url}


@pytest.mark.parametrize("how", ["fork", "subprocess"])
def test_duplicate_of_a_killed_worker_with_a_live_child_is_in_doubt(
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    pids: Path,
    store_env: dict[str, str],
    how: str,
) -> None:
    """SIGKILL the worker while its agent's child sleeps on: a duplicate of the request sent
    to a second worker is answered EXECUTION_IN_DOUBT, without waiting for the child.

    (The original delivery comes back only when the broker gives up on the dead worker's
    connection: a forked child holds a copy of its socket, too.)"""
    folder = tmp_path / "agents"
    folder.mkdir()
    (folder / "forking_agents.py").write_text(AGENTS)
    env = {
        "INTENTUS_AGENTS": "forking_agents:registry",
        "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]),
        "FORK_TEST_PIDS": str(pids),
        **store_env,
    }
    first = start_worker(env=env)
    wire = Wire()
    body = json_body(envelope("ForkIntent", {"how": how}, request_id=f"fork-{how}"))
    try:
        wire.publish(first.queue, body, correlation_id=f"cid-{how}")
        assert first.wait_until(lambda: "agent" in _read(pids), timeout=30), first.logs()
        first.kill()
        child = int(_read(pids).splitlines()[0])
        os.kill(child, 0)  # the child lives on (and holds copies of the worker's descriptors)
        second = start_worker(env=env)
        wire.publish(first.queue, body, correlation_id=f"cid-{how}-again")
        try:
            reply = wire.get(wire.reply_queue, timeout=60)
        except TimeoutError:
            raise AssertionError(second.logs()) from None
        assert reply.props.correlation_id in (f"cid-{how}", f"cid-{how}-again")
        assert reply.json["status"] == "error"
        assert reply.json["error"]["code"] == "EXECUTION_IN_DOUBT"
        os.kill(child, 0)  # answered while the child still runs
    finally:
        wire.close()


def json_body(value: object) -> bytes:
    import json

    return json.dumps(value).encode()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
