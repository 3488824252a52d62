"""The client library against the real worker: many in flight, raw bodies, timeouts."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from tests.integration.conftest import Agents
from tests.support.broker import AMQP_URL
from tests.support.workerproc import WorkerProcess
from worker.client import IntentusClient
from worker.errors import RequestTimeout

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess], agents: Agents) -> WorkerProcess:
    return start_worker(env=agents.env)


def test_many_threads_share_one_client(worker: WorkerProcess, agents: Agents) -> None:
    """Ten threads send at once over one client; each gets its own answer."""
    results: dict[int, object] = {}
    with IntentusClient(AMQP_URL, queue=worker.queue) as client:

        def send(i: int) -> None:
            results[i] = client.send_intent(
                "ProcessIntent", {"document_id": f"d-{i}"}, request_id=f"req-thr-{i}", timeout=15
            )

        threads = [threading.Thread(target=send, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted(results) == list(range(10))
    for i, response in results.items():
        assert response.ok  # type: ignore[attr-defined]
        assert response.payload == {"by": "alpha", "doc": f"d-{i}"}  # type: ignore[attr-defined]
        assert response.metadata.request_id == f"req-thr-{i}"  # type: ignore[attr-defined]
    assert len(agents.calls()) == 10


def test_send_raw_returns_the_reply_bytes(worker: WorkerProcess) -> None:
    """send_raw gives back the body as published, including error replies to bad input."""
    with IntentusClient(AMQP_URL, queue=worker.queue) as client:
        body = client.send_raw(b"{not json", timeout=15)
    assert body is not None
    assert b'"PROTOCOL_ERROR"' in body


def test_timeout_raises(worker: WorkerProcess) -> None:
    """No reply in time → RequestTimeout with a clear message."""
    with IntentusClient(AMQP_URL, queue=worker.queue) as client:
        with pytest.raises(RequestTimeout, match=r"no (reply|publisher confirm)"):
            client.send_intent("SleepIntent", {"seconds": 1.5}, timeout=0.3)
        # the late reply is ignored; the client keeps working
        response = client.send_intent("ProcessIntent", {"document_id": "after"}, timeout=15)
    assert response is not None and response.payload == {"by": "alpha", "doc": "after"}
