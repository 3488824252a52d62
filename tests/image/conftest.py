"""Fixtures of the image tests: podman set up once, the image built once per session, and
worker containers removed after each test. Where podman cannot run the tests skip with the
reason; under CI (CI=true) that is a failure, as a missing broker is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.image.podman import Container, Podman, Unavailable, build, prepare
from tests.support.broker import IN_CI


@pytest.fixture(scope="session")
def podman() -> Podman:
    try:
        return prepare()
    except Unavailable as exc:
        message = f"podman cannot run here: {exc}"
        print(message, flush=True)
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.fixture(scope="session")
def image(podman: Podman) -> Podman:
    """deploy/Dockerfile built on the local base image (a failed build fails every test)."""
    result = build(podman)
    if result.returncode != 0:
        pytest.fail(f"podman build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return podman


@pytest.fixture
def containers(image: Podman, queue_name: str) -> Iterator[Callable[..., Container]]:
    """Start worker containers of the image on the test's queue; removed at teardown."""
    started: list[Container] = []

    def start(**kwargs: Any) -> Container:
        c = Container(image, queue_name, **kwargs)
        started.append(c)
        return c.start()

    yield start
    for c in started:
        c.remove()
