"""Defaults the runtime and the worker share, each written once.

`worker.config.OPTIONS` declares every setting; the values the runtime itself needs (it cannot
import the worker) are declared here and referenced from there.
"""

from __future__ import annotations

import os
import socket

#: Default per-agent deadline, in seconds.
AGENT_TIMEOUT_S = 30.0

#: Largest request body accepted, in bytes.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024


def default_worker_id() -> str:
    """This process's worker id when none is configured: `hostname-pid`."""
    return f"{socket.gethostname()}-{os.getpid()}"


__all__ = ["AGENT_TIMEOUT_S", "MAX_MESSAGE_BYTES", "default_worker_id"]
