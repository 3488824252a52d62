"""Driving the local RabbitMQ node with rabbitmqctl (stop/start the app, users, listeners)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.support.broker import broker_up

_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/lib/rabbitmq/bin"])


def rabbitmqctl_path() -> str | None:
    return shutil.which("rabbitmqctl", path=_PATH)


def require_rabbitmqctl() -> str:
    path = rabbitmqctl_path()
    if path is None:
        pytest.skip("rabbitmqctl is not available (the broker is not local)")
    return path


def ctl(*args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_rabbitmqctl(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env={**os.environ, "PATH": _PATH},
    )


def wait_up(timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker_up():
            return True
        time.sleep(0.2)
    return False


def ensure_running() -> None:
    """Leave the broker running whatever a test did to it."""
    if broker_up():
        return
    ctl("start_app", check=False, timeout=120)
    if not wait_up(60):
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env={**os.environ, "PATH": _PATH},
            check=False,
            capture_output=True,
        )
        wait_up(120)


class TempUser:
    """A RabbitMQ user with full rights on vhost /, deleted on exit."""

    def __init__(self, name: str, password: str) -> None:
        self.name = name
        self.password = password

    def __enter__(self) -> TempUser:
        ctl("add_user", self.name, self.password)
        ctl("set_permissions", "-p", "/", self.name, ".*", ".*", ".*")
        return self

    def __exit__(self, *exc: object) -> None:
        ctl("delete_user", self.name, check=False)

    @property
    def url(self) -> str:
        from urllib.parse import quote

        return (
            f"amqp://{quote(self.name, safe='')}:{quote(self.password, safe='')}@127.0.0.1:5672/%2F"
        )
