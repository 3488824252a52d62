"""The worker as a real subprocess (`python -m worker`), as users run it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.broker import AMQP_URL

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """Start with `start()`, wait with `wait_ready()`, stop with `stop()`; logs in `log_path`."""

    def __init__(
        self,
        queue: str,
        records_dir: Path,
        *,
        reply_queue: str | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.queue = queue
        self.records_dir = Path(records_dir)
        self.port = free_port()
        self.log_path = log_path or self.records_dir.parent / f"worker-{self.port}.log"
        self.env = {
            **os.environ,
            "INTENTUS_AMQP_URL": AMQP_URL,
            "INTENTUS_QUEUE": queue,
            "INTENTUS_REPLY_QUEUE": reply_queue if reply_queue is not None else f"{queue}.replies",
            "INTENTUS_RECORDS_DIR": str(self.records_dir),
            "INTENTUS_METRICS_ADDR": f"127.0.0.1:{self.port}",
            "INTENTUS_SHUTDOWN_GRACE_S": "20",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def reply_queue(self) -> str:
        return self.env["INTENTUS_REPLY_QUEUE"]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", *self.args],
            cwd=str(ROOT),
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def http(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def ready(self) -> bool:
        try:
            return self.http("/readyz")[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.logs()}")
            if self.ready():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready within {timeout} s:\n{self.logs()}")

    def wait_until(self, predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return False

    def metrics(self) -> dict[str, float]:
        """Samples of intentus_* series: `name{labels}` → value."""
        _code, body = self.http("/metrics")
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line.startswith("intentus_"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for key, value in self.metrics().items():
            series, _, rest = key.partition("{")
            if series != name:
                continue
            got = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
            if all(got.get(k) == json.dumps(v) for k, v in labels.items()):
                total += value
        return total

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
