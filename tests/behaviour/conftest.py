"""Every behaviour test runs twice: over the in-memory transport and over the real RabbitMQ."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.behaviour.drivers import TRANSPORT_PARAMS, Driver, open_driver


@pytest.fixture(params=TRANSPORT_PARAMS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start(transport: str, tmp_path: Path) -> Iterator[Callable[..., Driver]]:
    """Start a worker on the test's transport (settings by Config field name); stopped after."""
    started = iter(range(1_000))
    with ExitStack() as stack:

        def make(**settings: Any) -> Driver:
            folder = tmp_path / f"worker-{next(started)}"
            folder.mkdir()
            return stack.enter_context(open_driver(transport, folder, **settings))

        yield make
