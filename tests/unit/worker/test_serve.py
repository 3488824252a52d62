"""`serve()`, the CLI's run loop, over the in-memory transport: start-up objects leave the cycle
collector's generations once the worker runs, and the worker still answers and stops cleanly."""

from __future__ import annotations

import gc
import json
import threading
from pathlib import Path

from runtime import AgentRegistry
from tests.unit.worker.conftest import request, unit_config
from worker.cli.commands import serve
from worker.errors import EXIT_OK
from worker.service import Worker
from worker.testing import MemoryTransport


def test_serve_freezes_startup_objects_and_still_answers(
    tmp_path: Path, registry: AgentRegistry
) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    transport = MemoryTransport()
    worker = Worker(unit_config(tmp_path / "records"), registry, transport=transport)
    seen: dict[str, object] = {}

    def drive() -> None:
        # serve() runs on the main thread (it installs signal handlers); this thread plays
        # the caller, then stops the worker the way a signal would end serve's loop.
        try:
            assert transport.wait_for(lambda: transport.consuming)
            transport.wait_for(lambda: gc.get_freeze_count() > 0)
            seen["frozen"] = gc.get_freeze_count()
            transport.publish(request("serve-1"), reply_to="rq")
            assert transport.wait_for(lambda: transport.replies)
            seen["reply"] = json.loads(transport.replies[0].body)
        finally:
            worker.stop()

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        code = serve(worker)
    finally:
        driver.join(30)
        gc.unfreeze()
    assert code == EXIT_OK
    assert isinstance(seen.get("frozen"), int) and seen["frozen"] > 1000, seen
    reply = seen["reply"]
    assert isinstance(reply, dict) and reply["status"] == "success", reply
