"""The Worker with async agents over the in-memory transport: the default prefetch, the
routing threads that carry a request on after its async agent, and shutdown."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from runtime import AgentRegistry
from tests.unit.worker.conftest import Running, request, unit_config
from worker.config import Config
from worker.errors import EXIT_GRACE_EXPIRED
from worker.service import Worker
from worker.testing import MemoryTransport


def async_registry(seen: list[str], cleaned: threading.Event) -> AgentRegistry:
    reg = AgentRegistry()

    @reg.agent("waiter", intents=["ProcessIntent"])
    async def waiter(env: Any) -> dict[str, Any]:
        try:
            await asyncio.sleep(float(env.payload.get("seconds", 0.05)))
        except asyncio.CancelledError:
            cleaned.set()
            raise
        return {"ok": True}

    @reg.agent("after", intents=["ProcessIntent"], node_priority=200)
    def after(env: Any) -> dict[str, Any]:
        seen.append(threading.current_thread().name)
        return {"by": "after"}

    return reg


def start(reg: AgentRegistry, tmp_path: Path, **overrides: Any) -> Running:
    cfg = unit_config(tmp_path / "records", **{"worker_id": "unit-async", **overrides})
    transport = MemoryTransport()
    worker = Worker(cfg, reg, transport=transport)
    running = Running(worker, transport)
    running.start()
    assert transport.wait_for(lambda: transport.consuming)
    return running


def close(worker: Worker) -> None:
    """A worker made and never run."""
    worker.http.httpd.server_close()
    worker.runtime.close()


def body(request_id: str, strategy: str = "DIRECT", **payload: Any) -> bytes:
    data = json.loads(request(request_id, **payload))
    data["routing"]["strategy"] = strategy
    return json.dumps(data).encode()


class TestPrefetch:
    def test_default_prefetch_follows_the_agents(self, tmp_path: Path) -> None:
        sync = AgentRegistry()
        sync.register("s", lambda env: {}, intents=["X"])
        aio = async_registry([], threading.Event())
        for reg, expected in ((sync, 64), (aio, 1024)):
            worker = Worker(
                Config(records_dir=str(tmp_path / "r"), metrics_addr="127.0.0.1:0"),
                reg,
                transport=MemoryTransport(),
            )
            assert worker.cfg.prefetch == expected
            close(worker)

    def test_an_explicit_prefetch_stands(self, tmp_path: Path) -> None:
        worker = Worker(
            Config(records_dir=str(tmp_path / "r"), metrics_addr="127.0.0.1:0", prefetch=10),
            async_registry([], threading.Event()),
            transport=MemoryTransport(),
        )
        assert worker.cfg.prefetch == 10
        close(worker)


class TestRouting:
    def test_the_rest_of_the_request_runs_on_a_routing_thread(self, tmp_path: Path) -> None:
        """BROADCAST: after the async agent, the sync one runs on one of the worker's routing
        threads (not a thread of the runtime's own), then record, reply, ack."""
        seen: list[str] = []
        running = start(async_registry(seen, threading.Event()), tmp_path)
        t = running.transport
        try:
            t.publish(body("b-1", strategy="BROADCAST"), reply_to="rq")
            assert t.wait_for(lambda: t.acked == [1])
            assert json.loads(t.replies[0].body)["payload"] == {"by": "after"}
            assert seen and seen[0].startswith("intentus-pipeline-")
        finally:
            running.stop()

    def test_shutdown_past_the_grace_cancels_and_acks_nothing(self, tmp_path: Path) -> None:
        cleaned = threading.Event()
        running = start(async_registry([], cleaned), tmp_path, shutdown_grace_s=0.5)
        t = running.transport
        t.publish(body("g-1", seconds=60), reply_to="rq")
        assert t.wait_for(lambda: running.worker.runtime.aio.inflight() == 1)
        assert running.stop() == EXIT_GRACE_EXPIRED
        assert cleaned.wait(5)
        assert t.acked == [] and t.replies == []
