"""`bash deploy/local/demo --once` against the real broker, on a queue and port of its own."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.support.broker import delete_topology, require_broker, unique
from tests.support.workerproc import ROOT, free_port

pytestmark = pytest.mark.integration


def test_demo_commands_can_be_pasted(tmp_path: Path) -> None:
    """Every command the demo echoes parses back, through a shell, to the arguments it ran."""
    require_broker()
    queue = unique("it-demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENTUS_")}
    metrics_addr = f"127.0.0.1:{free_port()}"
    env.update(
        {
            "INTENTUS_REPLY_QUEUE": f"{queue}.replies",
            "INTENTUS_RECORDS_DIR": str(tmp_path / "records"),
            "INTENTUS_METRICS_ADDR": metrics_addr,
        }
    )
    try:
        done = subprocess.run(
            ["bash", "deploy/local/demo", "--once", "--queue", queue],
            cwd=str(ROOT),
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        delete_topology(queue, f"{queue}.replies")
    assert done.returncode == 0, (done.stdout, done.stderr)
    sends = [line[2:] for line in done.stdout.splitlines() if line.startswith("$ intentus send ")]
    assert len(sends) == 5, done.stdout
    for line in sends:
        argv = shlex.split(line)
        payload = argv[argv.index("--payload") + 1]
        assert isinstance(json.loads(payload), dict), line
    assert '\'{"text": "A long text' in done.stdout
    assert ". .venv/bin/activate" in done.stdout
    assert (tmp_path / "worker.log").is_file()
    # what it uses is said, not assumed: the queue chosen, its reply queue, the port
    assert f"request queue:   {queue}" in done.stdout
    assert f"reply queue:     {queue}.replies" in done.stdout
    assert f"metrics address: {metrics_addr}" in done.stdout
    assert "processed" in done.stdout or '"status": "success"' in done.stdout
