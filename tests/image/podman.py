"""The worker's container image, built from deploy/Dockerfile and run with podman.

`prepare()` runs deploy/local/ensure-podman (podman, its configuration of the checkout's own,
a local base image) and returns the environment podman runs with; `build()` builds the image;
`Container` runs one worker container on the host's network, as the tests' broker and
PostgreSQL listen on the host's loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

from tests.support.broker import AMQP_URL
from tests.support.workerproc import ROOT, free_port

ENSURE = ROOT / "deploy" / "local" / "ensure-podman"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
TAG = "localhost/intentusnet-worker:test"


class Unavailable(Exception):
    """Podman cannot run on this machine (the reason is the message)."""


@dataclass
class Podman:
    env: dict[str, str]
    base_image: str
    image: str = TAG

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result


def prepare() -> Podman:
    """Set podman up (idempotent; the first run installs and makes the base image)."""
    if not shutil.which("bash") or os.uname().sysname != "Linux":
        raise Unavailable("the image tests need Linux with bash")
    result = subprocess.run(
        ["bash", str(ENSURE)], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        raise Unavailable(f"deploy/local/ensure-podman failed:\n{result.stderr.strip()}")
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    env = {
        **os.environ,
        "CONTAINERS_CONF": values["CONTAINERS_CONF"],
        "CONTAINERS_STORAGE_CONF": values["CONTAINERS_STORAGE_CONF"],
    }
    return Podman(env=env, base_image=values["BASE_IMAGE"])


def build(podman: Podman) -> subprocess.CompletedProcess[str]:
    """Build deploy/Dockerfile on the local base image (docker format keeps HEALTHCHECK),
    then drop untagged images older than a day (earlier builds), so the storage does not
    grow; recent ones are the layer cache of the next build."""
    result = podman.run(
        "build",
        "--file",
        str(DOCKERFILE),
        # Docker reads <Dockerfile>.dockerignore by itself; this podman needs to be told.
        "--ignorefile",
        str(DOCKERFILE.with_name("Dockerfile.dockerignore")),
        "--build-arg",
        f"BASE_IMAGE={podman.base_image}",
        "--pull=never",
        "--network",
        "host",
        "--format",
        "docker",
        "--tag",
        podman.image,
        str(ROOT),
        timeout=600,
        check=False,
    )
    if result.returncode == 0:
        podman.run("image", "prune", "--force", "--filter", "until=24h", check=False)
    return result


@dataclass
class Container:
    """One worker container on the host's network, its metrics on a free loopback port."""

    podman: Podman
    queue: str
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    name: str = field(default_factory=lambda: f"intentus-test-{uuid.uuid4().hex[:10]}")
    port: int = field(default_factory=free_port)

    def start(self) -> Container:
        env = {
            "INTENTUS_AMQP_URL": AMQP_URL,
            "INTENTUS_QUEUE": self.queue,
            "INTENTUS_REPLY_QUEUE": f"{self.queue}.replies",
            "INTENTUS_METRICS_ADDR": f"127.0.0.1:{self.port}",
            "INTENTUS_LOG_FORMAT": "text",
            **self.env,
        }
        args = ["run", "--detach", "--name", self.name, "--network", "host", "--no-healthcheck"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        for volume in self.volumes:
            args += ["--volume", volume]
        self.podman.run(*args, self.podman.image)
        return self

    def restart(self) -> Container:
        """Start the same (stopped or killed) container again."""
        self.podman.run("start", self.name)
        return self

    def http(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def ready(self) -> bool:
        try:
            return self.http("/readyz")[0] == 200
        except OSError:
            return False

    def inflight(self) -> float:
        """intentus_inflight: deliveries received and not yet acknowledged."""
        for line in self.http("/metrics")[1].decode().splitlines():
            if line.startswith("intentus_inflight "):
                return float(line.split()[1])
        return 0.0

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def wait_ready(self, timeout: float = 60.0) -> Container:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return self
            if not self.running():
                raise RuntimeError(f"container {self.name} exited:\n{self.logs()}")
            time.sleep(0.2)
        raise TimeoutError(f"container {self.name} not ready within {timeout} s:\n{self.logs()}")

    def inspect(self, template: str) -> str:
        return self.podman.run("inspect", "--format", template, self.name).stdout.strip()

    def host_pid(self) -> int:
        return int(self.inspect("{{.State.Pid}}"))

    def stop(self, grace_s: int = 60) -> int:
        """`podman stop` (SIGTERM, SIGKILL after `grace_s`); the container's exit code."""
        self.podman.run("stop", "--time", str(grace_s), self.name, timeout=grace_s + 60)
        return int(self.inspect("{{.State.ExitCode}}"))

    def kill(self) -> None:
        self.podman.run("kill", "--signal", "KILL", self.name)
        self.podman.run("wait", self.name)

    def logs(self) -> str:
        result = self.podman.run("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-4000:]

    def remove(self) -> None:
        self.podman.run("rm", "--force", "--volumes", self.name, check=False)
