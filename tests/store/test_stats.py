"""`records stats` on every backend: a record without an intent or an agent (rejected input)
is counted under "(none)", never under a literal "None"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import IntentusRuntime
from runtime.demo import registry
from runtime.replay import NO_NAME, stats
from tests.store.test_conformance import BACKENDS, Backend, _backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, tmp_path)


def test_records_without_intent_or_agent_are_named_none(backend: Backend) -> None:
    store = backend.open()
    runtime = IntentusRuntime(registry, store=store)
    for body in (b"not json", b'{"version": "1.0", "intent": {}}'):
        runtime.commit_sync(runtime.process(body))
    summary = stats(store)
    assert summary["records"] == 2
    for key in ("by_intent", "by_agent"):
        assert summary[key] == {NO_NAME: 2}, (key, summary)
