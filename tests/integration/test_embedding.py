"""The README's embedding example, run as written against the real broker (only the queue,
the broker address and the metrics port are the test's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.broker import AMQP_URL
from tests.support.workerproc import free_port

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(# embedded\.py\n.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, "the README has one embedding example"
    return str(blocks[0])


def test_the_readme_embedding_example_runs(queue_name: str, tmp_path: Path) -> None:
    """A Worker embedded with a user middleware answers a request; the middleware saw it."""
    code = readme_example()
    expected = code.rstrip().splitlines()[-1].removeprefix("# ")
    for old, new in (
        ("embedded.requests", queue_name),
        ("amqp://guest:guest@localhost:5672/%2F", AMQP_URL),
        ("127.0.0.1:9464", f"127.0.0.1:{free_port()}"),
    ):
        assert old in code
        code = code.replace(old, new)
    script = tmp_path / "embedded.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected, (done.stdout, done.stderr)
    assert (tmp_path / "records").is_dir()
