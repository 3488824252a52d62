"""Agents for the claim tests: side effects logged like tests/faults/sideeffect_agents.py, and
handlers that raise what an `except Exception` does not catch.

`INTENTUS_FAULT_EXEC_LOG` names the side-effect file (one `<requestId> <agent> <pid>` line
per execution).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from runtime import AgentRegistry

registry = AgentRegistry()

_fd = -1
_fd_lock = threading.Lock()


class Custom(BaseException):
    """Neither an Exception nor one of Python's own BaseExceptions."""


RAISES: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "Custom": Custom,
}


def _mark(envelope: Any, agent: str) -> None:
    global _fd
    path = os.environ.get("INTENTUS_FAULT_EXEC_LOG")
    if not path:
        return
    with _fd_lock:
        if _fd < 0:
            _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.write(_fd, f"{envelope.metadata.requestId} {agent} {os.getpid()}\n".encode())


@registry.agent("work", intents=["ProcessIntent"])
def work(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "work")
    sleep_ms = envelope.payload.get("sleep_ms", 0)
    if sleep_ms:
        time.sleep(sleep_ms / 1000.0)
    return {"ok": True, "n": envelope.payload.get("n")}


@registry.agent("raiser", intents=["RaiseIntent"], timeout_s=2.0)
def raiser(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "raiser")
    raise RAISES[envelope.payload["raise"]]("raised by the agent")
