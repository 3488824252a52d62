"""requestIds as the contract allows them (up to 1024 characters) through both clients and
`intentus send`, and the correlation id a caller can match a reply by.

AMQP short strings (message_id, correlation_id) hold at most 255 bytes: a requestId that fits
is sent as both; a longer one travels in the envelope only, with a generated correlation id."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pytest

from tests.support.broker import AMQP_URL, delete_topology, get_all, unique
from tests.support.workerproc import ROOT, WorkerProcess
from worker.clients.aio import AsyncIntentusClient
from worker.clients.blocking import IntentusClient

pytestmark = pytest.mark.integration

LONG_ID = "req-" + "x" * 296  # 300 characters: more than an AMQP short string holds
assert len(LONG_ID) == 300


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker()  # the built-in demo agents


@pytest.fixture
def plain_queue(broker: None) -> Iterator[str]:
    """A queue no worker reads, to look at requests as the broker holds them."""
    name = unique("plain")
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    conn.channel().queue_declare(name, durable=True)
    conn.close()
    yield name
    delete_topology(name)


def cli(*argv: str, queue: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTENTUS_")}
    env.update(INTENTUS_AMQP_URL=AMQP_URL, INTENTUS_QUEUE=queue, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestLongRequestIds:
    def test_blocking_client_sends_and_gets_its_answer(self, worker: WorkerProcess) -> None:
        with IntentusClient(AMQP_URL, queue=worker.queue) as client:
            response = client.send_intent("ProcessIntent", {"n": 1}, request_id=LONG_ID)
            assert response.ok, response
            assert response.metadata.request_id == LONG_ID
            # the same id again: its recorded answer, on the same healthy connection
            again = client.send_intent("ProcessIntent", {"n": 1}, request_id=LONG_ID)
            assert again.metadata.execution_id == response.metadata.execution_id

    def test_async_client_sends_and_gets_its_answer(self, worker: WorkerProcess) -> None:
        async def send() -> str:
            async with AsyncIntentusClient(AMQP_URL, queue=worker.queue) as client:
                response = await client.send_intent("ProcessIntent", {}, request_id=LONG_ID)
                assert response.ok, response
                return response.metadata.request_id

        assert asyncio.run(send()) == LONG_ID

    def test_cli_sends_it(self, worker: WorkerProcess) -> None:
        done = cli("send", "ProcessIntent", "--request-id", LONG_ID, queue=worker.queue)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["metadata"]["request_id"] == LONG_ID
        assert LONG_ID not in done.stderr

    def test_as_the_broker_holds_them(self, plain_queue: str) -> None:
        with IntentusClient(AMQP_URL, queue=plain_queue) as client:
            assert client.send_intent("P", {}, request_id=LONG_ID, wait=False) == LONG_ID
            assert client.send_intent("P", {}, request_id="req-short", wait=False) == "req-short"
        (_m1, long_props, long_body), (_m2, short_props, _b) = get_all(plain_queue)
        assert json.loads(long_body)["metadata"]["requestId"] == LONG_ID
        assert long_props.message_id is None
        assert 0 < len(long_props.correlation_id.encode()) <= 255
        assert short_props.message_id == short_props.correlation_id == "req-short"

    def test_an_unencodable_property_is_not_a_connection_error(self, plain_queue: str) -> None:
        """The caller's mistake is a ValueError; the connection stays up and usable."""
        with IntentusClient(AMQP_URL, queue=plain_queue) as client:
            with pytest.raises(ValueError, match="correlation_id"):
                client.send_raw(b"{}", correlation_id="c" * 256, wait=False)
            with pytest.raises(ValueError, match="correlation_id"):
                client.send_intent("P", {}, correlation_id="c" * 256, wait=False)
            assert client.connected
            assert client.send_intent("P", {}, request_id="after", wait=False) == "after"


class TestSameRequestIdTwice:
    def test_both_callers_get_the_answer(self, worker: WorkerProcess) -> None:
        """A requestId is its own default correlation id; sent again on the same client while
        the first send waits, the second is told apart by a generated one."""
        with IntentusClient(AMQP_URL, queue=worker.queue) as client, ThreadPoolExecutor(2) as pool:
            sends = [
                pool.submit(
                    client.send_intent, "SlowIntent", {"seconds": 0.5}, request_id="req-twice"
                )
                for _ in range(2)
            ]
            first, second = (f.result(timeout=60) for f in sends)
        assert first.ok and second.ok, (first, second)
        assert first.metadata.execution_id == second.metadata.execution_id


class TestNoWait:
    @pytest.mark.parametrize("request_id", ["req-nowait-1", LONG_ID])
    def test_the_printed_correlation_id_is_the_replys(
        self, worker: WorkerProcess, request_id: str
    ) -> None:
        """`send --no-wait` prints what the reply on the default reply queue carries."""
        done = cli(
            "send", "ProcessIntent", "--no-wait", "--request-id", request_id, queue=worker.queue
        )
        assert done.returncode == 0, done.stderr
        printed = json.loads(done.stdout)
        assert printed["requestId"] == request_id
        if len(request_id) <= 255:
            assert printed["correlationId"] == request_id
        replies: list[tuple[Any, pika.BasicProperties, bytes]] = []
        assert worker.wait_until(lambda: replies.extend(get_all(worker.reply_queue)) or replies)
        ((_method, props, body),) = replies
        assert props.correlation_id == printed["correlationId"]
        assert json.loads(body)["metadata"]["request_id"] == request_id
