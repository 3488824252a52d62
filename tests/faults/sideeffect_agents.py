"""Agents for the fault suite: each execution appends one line to a shared file.

`INTENTUS_FAULT_EXEC_LOG` names the file. A line is `<requestId> <agent> <pid>`; lines are
written with one O_APPEND write each, so concurrent workers never interleave them and a line
survives a SIGKILL of its writer. "Executed twice" is then counted from real side effects.

The `Adv*` agents serve the adversarial suite: their line's first field is `<who>/<requestId>`
(percent-encoded, so any requestId stays one field), `who` being the payload's name of the
broker user that sent it, so executions are counted per (user, requestId). Each ends its own
way: returns, raises, overruns its timeout, raises `SystemExit`, or forks a child that
outlives it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any
from urllib.parse import quote

from runtime import AgentError, AgentRegistry, ErrorCode

registry = AgentRegistry()

_fd = -1
_fd_lock = threading.Lock()


def _mark(envelope: Any, agent: str, key: str | None = None) -> None:
    global _fd
    path = os.environ.get("INTENTUS_FAULT_EXEC_LOG")
    if not path:
        return
    with _fd_lock:
        if _fd < 0:
            _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.write(_fd, f"{key or envelope.metadata.requestId} {agent} {os.getpid()}\n".encode())


def _adv_mark(envelope: Any, agent: str) -> None:
    who = str(envelope.payload.get("who", ""))
    _mark(envelope, agent, key=quote(f"{who}/{envelope.metadata.requestId}", safe="/"))


@registry.agent("work", intents=["ProcessIntent"])
def work(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "work")
    sleep_ms = envelope.payload.get("sleep_ms", 0)
    if sleep_ms:
        time.sleep(sleep_ms / 1000.0)
    return {"ok": True, "n": envelope.payload.get("n")}


@registry.agent("slow", intents=["SlowIntent"], timeout_s=120)
def slow(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "slow")
    time.sleep(float(envelope.payload.get("sleep_s", 1.0)))
    return {"ok": True}


@registry.agent("hang", intents=["HangIntent"], timeout_s=1.0)
def hang(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "hang")
    threading.Event().wait(float(envelope.payload.get("hang_s", 3600)))
    return {"ok": True, "late": True}


@registry.agent("mix-a", intents=["MixIntent"], node_priority=10)
def mix_a(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "mix-a")
    raise AgentError(ErrorCode.AGENT_UNAVAILABLE, "mix-a is always down")


@registry.agent("mix-b", intents=["MixIntent"], node_priority=20)
def mix_b(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "mix-b")
    return {"ok": True, "by": "mix-b", "echo": envelope.payload}


@registry.agent("mix-c", intents=["MixIntent"], node_priority=30)
def mix_c(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "mix-c")
    return {"ok": True, "by": "mix-c"}


@registry.agent("secret", intents=["SecretIntent"])
def secret(envelope: Any) -> dict[str, Any]:
    _mark(envelope, "secret")
    return {"ok": True, "secret": "granted"}


@registry.agent("big", intents=["BigIntent"])
def big(envelope: Any) -> dict[str, Any]:
    """A response of `bytes` bytes or so, from a small request."""
    _mark(envelope, "big")
    return {"ok": True, "blob": "x" * int(envelope.payload.get("bytes", 0))}


@registry.agent("adv-work", intents=["AdvWork"])
def adv_work(envelope: Any) -> dict[str, Any]:
    _adv_mark(envelope, "adv-work")
    time.sleep(float(envelope.payload.get("sleep_ms", 0)) / 1000.0)
    return {"ok": True, "who": envelope.payload.get("who")}


@registry.agent("adv-raise", intents=["AdvRaise"])
def adv_raise(envelope: Any) -> dict[str, Any]:
    _adv_mark(envelope, "adv-raise")
    raise RuntimeError("adv-raise always fails")


@registry.agent("adv-hang", intents=["AdvHang"], timeout_s=1.0)
def adv_hang(envelope: Any) -> dict[str, Any]:
    _adv_mark(envelope, "adv-hang")
    threading.Event().wait(float(envelope.payload.get("hang_s", 2.5)))
    return {"ok": True, "late": True}


@registry.agent("adv-exit", intents=["AdvExit"])
def adv_exit(envelope: Any) -> dict[str, Any]:
    _adv_mark(envelope, "adv-exit")
    raise SystemExit(3)


@registry.agent("adv-fork", intents=["AdvFork"])
def adv_fork(envelope: Any) -> dict[str, Any]:
    """Forks a child that keeps every descriptor the worker had and outlives this call."""
    _adv_mark(envelope, "adv-fork")
    child_s = float(envelope.payload.get("child_s", 5.0))
    if os.fork() == 0:  # the child: no Python clean-up, no flush of the parent's buffers
        try:
            time.sleep(child_s)
        finally:
            os._exit(0)
    return {"ok": True, "forked": True}
